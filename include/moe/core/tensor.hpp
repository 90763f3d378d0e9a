// moe/core/tensor.hpp — non-owning, row-major views of memory that belongs to an execution space.
//
// A view never dereferences its pointer on construction, so views of device memory are built and
// passed around on the host freely; only code running in the owning space reads through them.
#pragma once

#include <cstddef>
#include <type_traits>

#include "moe/core/config.hpp"

namespace moe {

template <class T, int Rank>
struct tensor_view {
  static_assert(Rank >= 1 && Rank <= 4, "tensor_view: Rank must be 1..4");
  using element_type = T;
  static constexpr int rank = Rank;

  T* data = nullptr;
  index_t extent[Rank] = {};

  tensor_view() = default;
  template <class... I, class = std::enable_if_t<sizeof...(I) == Rank>>
  MOE_HOST_DEVICE tensor_view(T* p, I... e) : data(p), extent{index_t(e)...} {}
  // A view of const T from a view of T.
  template <class U, class = std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>>>
  MOE_HOST_DEVICE tensor_view(const tensor_view<U, Rank>& o) : data(o.data) {
    for (int i = 0; i < Rank; ++i) extent[i] = o.extent[i];
  }

  MOE_HOST_DEVICE index_t size() const {
    index_t n = 1;
    for (int i = 0; i < Rank; ++i) n *= extent[i];
    return n;
  }
  MOE_HOST_DEVICE index_t rows() const { return extent[0]; }
  MOE_HOST_DEVICE index_t cols() const {
    static_assert(Rank >= 2, "cols() needs a matrix");
    return extent[Rank - 1];
  }
  MOE_HOST_DEVICE bool empty() const { return size() == 0; }

  MOE_HOST_DEVICE T& operator[](index_t i) const { return data[i]; }
  MOE_HOST_DEVICE T& operator()(index_t i) const {
    static_assert(Rank == 1);
    return data[i];
  }
  MOE_HOST_DEVICE T& operator()(index_t i, index_t j) const {
    static_assert(Rank == 2);
    return data[i * extent[1] + j];
  }
  MOE_HOST_DEVICE T& operator()(index_t i, index_t j, index_t k) const {
    static_assert(Rank == 3);
    return data[(i * extent[1] + j) * extent[2] + k];
  }
  // Row i of a matrix, or slab i of a higher-rank view.
  MOE_HOST_DEVICE T* row(index_t i) const {
    index_t stride = 1;
    for (int r = 1; r < Rank; ++r) stride *= extent[r];
    return data + i * stride;
  }
};

template <class T>
using vector_view = tensor_view<T, 1>;
template <class T>
using matrix_view = tensor_view<T, 2>;

}  // namespace moe
