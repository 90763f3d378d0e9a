// moe/core/workspace.hpp — CUB-style two-phase scratch memory.
//
// An operation that needs scratch describes it once, as a sequence of `take<T>(count)` calls on a
// workspace_carver. Run against a null buffer the carver only adds up the bytes (phase one:
// "how much do you need?"); run against a real buffer it hands out aligned pointers into it
// (phase two). The same code path does both, so the size and the layout can never disagree.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "moe/core/config.hpp"
#include "moe/core/error.hpp"

namespace moe {

// Every carved block starts on this boundary (enough for 16-byte vector access and for CUB).
inline constexpr std::size_t workspace_alignment = 256;

constexpr std::uintmax_t align_up(std::uintmax_t n, std::uintmax_t a) { return (n + a - 1) / a * a; }

class workspace_carver {
 public:
  // Measuring carver: hands out null pointers and counts bytes.
  workspace_carver() = default;
  // Carving carver over [base, base + capacity). Blocks are aligned relative to the first
  // 256-byte boundary at or after `base`, so any buffer works; bytes() includes the slack this
  // may take (up to 255 bytes), so a buffer of the measured size always suffices.
  workspace_carver(void* base, std::size_t capacity) {
    if (!base) return;
    const auto addr = reinterpret_cast<std::uintptr_t>(base);
    const std::size_t skip = std::size_t(align_up(addr, workspace_alignment) - addr);
    base_ = static_cast<std::byte*>(base) + skip;
    capacity_ = capacity >= skip ? capacity - skip : 0;
    given_ = capacity;
  }

  template <class T>
  T* take(index_t count) {
    if (count < 0) fail("workspace", "negative block size ", count);
    const std::size_t offset = align_up(used_, workspace_alignment);
    used_ = offset + std::size_t(count) * sizeof(T);
    if (!base_) return nullptr;
    if (used_ > capacity_)
      fail("workspace", given_, " bytes given, at least ", bytes(), " needed (ask workspace_bytes() first)");
    return reinterpret_cast<T*>(base_ + offset);
  }

  bool measuring() const { return base_ == nullptr; }
  // Bytes a buffer must have for the blocks taken so far, whatever its alignment.
  std::size_t bytes() const {
    return used_ == 0 ? 0 : std::size_t(align_up(used_, workspace_alignment)) + workspace_alignment - 1;
  }

 private:
  std::byte* base_ = nullptr;
  std::size_t capacity_ = 0;
  std::size_t given_ = 0;
  std::size_t used_ = 0;
};

// A span of caller-provided scratch memory (device memory for device spaces).
struct workspace_span {
  void* data = nullptr;
  std::size_t bytes = 0;
};

}  // namespace moe
