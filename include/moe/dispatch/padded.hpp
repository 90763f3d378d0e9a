// moe/dispatch/padded.hpp — padded dispatch: every (expert, group) owns C rows, empty slots are
// zero rows, and the experts run as a batched GEMM over [E, G·C, d] (GShard's dispatched tensor
// shape, Tutel's and DeepSpeed's capacity buffers). Static shapes, so it needs a capacity factor;
// the work is E·G·C rows whatever the routing.
#pragma once

#include "moe/dispatch/rows.hpp"

namespace moe {

struct padded_dispatch : detail::row_dispatch</*Padded=*/true> {
  static constexpr const char* name = "padded";
};

}  // namespace moe
