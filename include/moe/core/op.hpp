// moe/core/op.hpp — how a GEMM operand is used.
#pragma once

namespace moe {

// Whether an operand of a GEMM is used as stored or transposed.
enum class op { none, transpose };

}  // namespace moe
