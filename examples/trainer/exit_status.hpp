// examples/trainer/exit_status.hpp — moe-train's exit status for a run that throws.
#pragma once

#include <cstdio>
#include <exception>

#include "checkpoint.hpp"

namespace trainer {

// Runs f() (which returns the exit status) and turns an exception escaping it into moe-train's
// exit status, with its message on stderr: 3 for a checkpoint that cannot be read or written, 1 for
// any other failure. main and the CUDA module's entry both use it (an exception does not cross
// the module's C boundary).
template <class F>
int exit_status_of(F&& f) noexcept {
  try {
    return f();
  } catch (const checkpoint_error& e) {
    std::fprintf(stderr, "moe-train: %s\n", e.what());
    return 3;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe-train: %s\n", e.what());
    return 1;
  } catch (...) {
    std::fprintf(stderr, "moe-train: unknown exception\n");
    return 1;
  }
}

}  // namespace trainer
