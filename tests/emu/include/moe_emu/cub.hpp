// moe_emu/cub.hpp — the CUB device algorithms the CUDA space calls, on the host, queued on the
// stream. Each asks for temporary storage proportional to its input and scribbles over all of it
// when it runs, so a caller that hands out too little or overlapping scratch is caught (under
// AddressSanitizer, or by the results).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

#include "moe_emu/runtime.hpp"

namespace moe_emu::cub_detail {

inline std::size_t temp_bytes(int n, std::size_t per_item) { return 512 + std::size_t(n > 0 ? n : 0) * per_item; }

// The size query (temp == nullptr) or the run: checks the storage and queues `work`.
template <class Work>
cudaError_t call(void* temp, std::size_t& bytes, std::size_t need, cudaStream_t s, Work work) {
  if (!temp) {
    bytes = need;
    return cudaSuccess;
  }
  if (bytes < need || !device_range(temp, need)) return cudaErrorInvalidValue;
  enqueue(s, [temp, need, work] {
    std::memset(temp, 0xa5, need);
    work();
  });
  return cudaSuccess;
}

}  // namespace moe_emu::cub_detail

namespace cub {

struct DeviceScan {
  template <class In, class Out>
  static cudaError_t ExclusiveSum(void* temp, std::size_t& bytes, In in, Out out, int n, cudaStream_t s = nullptr) {
    return moe_emu::cub_detail::call(temp, bytes, moe_emu::cub_detail::temp_bytes(n, 4), s, [in, out, n] {
      using T = std::remove_cv_t<std::remove_reference_t<decltype(*in)>>;
      T acc{};
      for (int i = 0; i < n; ++i) {
        const T v = in[i];
        out[i] = acc;
        acc = acc + v;
      }
    });
  }
  template <class In, class Out>
  static cudaError_t InclusiveSum(void* temp, std::size_t& bytes, In in, Out out, int n, cudaStream_t s = nullptr) {
    return moe_emu::cub_detail::call(temp, bytes, moe_emu::cub_detail::temp_bytes(n, 4), s, [in, out, n] {
      using T = std::remove_cv_t<std::remove_reference_t<decltype(*in)>>;
      T acc{};
      for (int i = 0; i < n; ++i) {
        acc = acc + in[i];
        out[i] = acc;
      }
    });
  }
};

struct DeviceReduce {
  template <class In, class Out>
  static cudaError_t Sum(void* temp, std::size_t& bytes, In in, Out out, int n, cudaStream_t s = nullptr) {
    return moe_emu::cub_detail::call(temp, bytes, moe_emu::cub_detail::temp_bytes(n, 0), s, [in, out, n] {
      using T = std::remove_cv_t<std::remove_reference_t<decltype(*in)>>;
      T acc{};
      for (int i = 0; i < n; ++i) acc = acc + in[i];
      *out = acc;
    });
  }
  template <class In, class Out, class Op, class T>
  static cudaError_t Reduce(void* temp, std::size_t& bytes, In in, Out out, int n, Op op, T init,
                            cudaStream_t s = nullptr) {
    return moe_emu::cub_detail::call(temp, bytes, moe_emu::cub_detail::temp_bytes(n, 0), s, [in, out, n, op, init] {
      T acc = init;
      for (int i = 0; i < n; ++i) acc = op(acc, T(in[i]));
      *out = acc;
    });
  }
};

struct DeviceHistogram {
  // Evenly spaced bins [lower, upper) over num_levels - 1 bins; other samples are ignored. The
  // counters are zeroed first, as CUB does.
  template <class Sample, class Counter, class Level>
  static cudaError_t HistogramEven(void* temp, std::size_t& bytes, const Sample* samples, Counter* counts,
                                   int num_levels, Level lower, Level upper, int n, cudaStream_t s = nullptr) {
    if (num_levels < 2 || !(lower < upper)) return cudaErrorInvalidValue;
    return moe_emu::cub_detail::call(temp, bytes, moe_emu::cub_detail::temp_bytes(num_levels, 8), s,
                                     [samples, counts, num_levels, lower, upper, n] {
                                       const int bins = num_levels - 1;
                                       for (int b = 0; b < bins; ++b) counts[b] = 0;
                                       for (int i = 0; i < n; ++i) {
                                         const Sample v = samples[i];
                                         if (v < lower || !(v < upper)) continue;
                                         const long long b = (long long)(v - lower) * bins / (long long)(upper - lower);
                                         ++counts[b];
                                       }
                                     });
  }
};

struct DeviceRadixSort {
  // Stable, ascending by bits [begin_bit, end_bit) of the keys.
  template <class K, class V>
  static cudaError_t SortPairs(void* temp, std::size_t& bytes, const K* keys_in, K* keys_out, const V* values_in,
                               V* values_out, int n, int begin_bit = 0, int end_bit = int(sizeof(K) * 8),
                               cudaStream_t s = nullptr) {
    if (begin_bit < 0 || end_bit > int(sizeof(K) * 8) || begin_bit >= end_bit) return cudaErrorInvalidValue;
    return moe_emu::cub_detail::call(
        temp, bytes, moe_emu::cub_detail::temp_bytes(n, sizeof(K) + sizeof(V)), s,
        [keys_in, keys_out, values_in, values_out, n, begin_bit, end_bit] {
          const int width = end_bit - begin_bit;
          const K mask = width >= int(sizeof(K) * 8) ? ~K(0) : K((K(1) << width) - 1);
          std::vector<int> order(std::size_t(n > 0 ? n : 0));
          std::iota(order.begin(), order.end(), 0);
          std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
            return K((keys_in[a] >> begin_bit) & mask) < K((keys_in[b] >> begin_bit) & mask);
          });
          std::vector<K> k(order.size());
          std::vector<V> v(order.size());
          for (std::size_t i = 0; i < order.size(); ++i) {
            k[i] = keys_in[order[i]];
            v[i] = values_in[order[i]];
          }
          std::copy(k.begin(), k.end(), keys_out);
          std::copy(v.begin(), v.end(), values_out);
        });
  }
};

}  // namespace cub
