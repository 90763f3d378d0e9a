// moe/core/buffer.hpp — an owning block of an execution space's memory.
#pragma once

#include <cstddef>
#include <utility>

#include "moe/core/config.hpp"

namespace moe {

template <class Space>
class buffer {
 public:
  buffer() = default;
  buffer(const Space& space, std::size_t bytes) : space_(space), bytes_(bytes), data_(space_.allocate(bytes)) {}
  buffer(buffer&& o) noexcept
      : space_(o.space_), bytes_(std::exchange(o.bytes_, 0)), data_(std::exchange(o.data_, nullptr)) {}
  buffer& operator=(buffer&& o) noexcept {
    if (this != &o) {
      release();
      space_ = o.space_;
      bytes_ = std::exchange(o.bytes_, 0);
      data_ = std::exchange(o.data_, nullptr);
    }
    return *this;
  }
  buffer(const buffer&) = delete;
  buffer& operator=(const buffer&) = delete;
  ~buffer() { release(); }

  void* data() const { return data_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  std::size_t bytes() const { return bytes_; }
  const Space& space() const { return space_; }

  // Grows to at least `bytes` (contents are not kept).
  void reserve(std::size_t bytes) {
    if (bytes <= bytes_) return;
    release();
    data_ = space_.allocate(bytes);
    bytes_ = bytes;
  }

 private:
  void release() {
    if (data_) space_.deallocate(data_, bytes_);
    data_ = nullptr;
    bytes_ = 0;
  }
  Space space_{};
  std::size_t bytes_ = 0;
  void* data_ = nullptr;
};

}  // namespace moe
