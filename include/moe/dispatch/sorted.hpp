// moe/dispatch/sorted.hpp — sorted dispatch: kept tokens are permuted into expert-contiguous rows
// with no padding, each expert's rows go through one grouped GEMM, and the results are gathered
// back per token (MegaBlocks, Gale et al. 2022; Megatron-Core's token permutation). Work is
// proportional to the kept pairs, and it is the dispatcher that supports dropless capacity (padded
// and one-hot need a static capacity).
#pragma once

#include "moe/dispatch/rows.hpp"

namespace moe {

struct sorted_dispatch : detail::row_dispatch</*Padded=*/false> {
  static constexpr const char* name = "sorted";
};

}  // namespace moe
