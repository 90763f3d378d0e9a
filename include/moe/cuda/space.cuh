// moe/cuda/space.cuh — the CUDA execution space: the primitives of moe::execution_space on a stream.
//
//   cudaStream_t stream;  cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
//   moe::cuda space(stream);                       // does not own the stream
//   moe::presets::switch_transformer<float, moe::cuda>::layer layer(cfg, space);
//
// Every primitive is asynchronous on the stream, except copy_to_host() and synchronize(), which
// wait for it. Forward and backward of a layer call only asynchronous primitives, so a whole step
// can be captured in a CUDA graph (docs/cuda.md). The space is a cheap handle: copies share one
// state (stream, cuBLAS handle and workspace, CUB scratch, the non-finite record).
//
// Scratch memory. CUB's scans, histograms and reductions (and group_row_sums's partial sums) need
// temporary storage; the concept's signatures do not pass any (only the sort gets its scratch from
// the layer's workspace, radix_sort_scratch_bytes). The space keeps one scratch block, reserved when the state is created
// for every primitive on up to 2^24 elements and grown only when a call needs more. Growing is
// stream-ordered (cudaFreeAsync + cudaMallocAsync on the stream: no host synchronisation) and is
// refused while the stream is being captured, with an error saying to call reserve_scratch() or to
// run one step eagerly first. All uses are ordered on the one stream, so reusing the block from
// one primitive to the next is safe.
//
// Determinism: parallel_for bodies write disjoint outputs; scans, reductions (CUB's fixed
// reduction trees) and GEMMs (cuBLAS with a fixed workspace, and the tiled kernels of
// grouped_gemm.cuh) give the same bits run to run on one GPU; histograms and the non-finite probe
// use integer atomics only. No floating-point atomics anywhere.
//
// The device: the state is created on the device current when the first primitive runs (or when
// the space is constructed with a stream); callers keep that device current while using it.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cub/device/device_histogram.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_reduce.cuh>
#include <cub/device/device_scan.cuh>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include "moe/core/config.hpp"
#include "moe/core/error.hpp"
#include "moe/core/numeric.hpp"
#include "moe/core/op.hpp"
#include "moe/core/workspace.hpp"
#include "moe/cuda/blas.cuh"
#include "moe/cuda/error.cuh"
#include "moe/cuda/grouped_gemm.cuh"
#include "moe/cuda/launch.cuh"
#include "moe/cuda/nonfinite.cuh"
#include "moe/cuda/reduce.cuh"
#include "moe/cuda/rows.cuh"
#include "moe/cuda/tiles.cuh"

namespace moe {

// How moe::cuda runs grouped GEMMs (grouped_gemm, grouped_gemm_tn: the expert FFNs of the sorted
// dispatcher, and expert parallelism's local experts).
enum class cuda_grouped_gemm {
  // The library's tiled kernels (grouped_gemm.cuh) read the group offsets in device memory: no host
  // synchronisation, so a step can be captured in a CUDA graph. The default.
  device_offsets,
  // Each call copies the offsets to the host (one stream synchronisation) and runs one cuBLAS GEMM
  // per non-empty group: cuBLAS's kernels, for few experts with many rows each. Refused while the
  // stream is being captured. Deterministic run to run; the sums are ordered differently from the
  // tiled kernels', so results agree with them within rounding, not bit for bit.
  cublas_per_group,
};

// Settings of a moe::cuda space, fixed when it is created (shared by its copies).
struct cuda_options {
  cuda_grouped_gemm grouped_gemm = cuda_grouped_gemm::device_offsets;
};

namespace cuda_detail {

template <class F>
__global__ void __launch_bounds__(for_threads) parallel_for_kernel(index_t n, F f) {
  for (index_t i = blockIdx.x * index_t(blockDim.x) + threadIdx.x; i < n; i += index_t(blockDim.x) * gridDim.x) f(i);
}


// max that skips NaN, like the host's sequential `v > acc ? v : acc` from a non-NaN init: with any
// reduction tree the result is the largest non-NaN value (or init).
struct nan_skipping_max {
  template <class T>
  __host__ __device__ T operator()(const T& a, const T& b) const {
    if (a != a) return b;
    return b > a ? b : a;
  }
};

// cuBLAS's recommended workspace on Hopper; set explicitly so that cuBLAS never allocates inside a
// captured step and its algorithm choice (hence its bits) does not depend on what it could get.
inline constexpr std::size_t blas_workspace_bytes = std::size_t(32) << 20;
// Elements the scratch block is reserved for up front.
inline constexpr index_t reserved_elements = index_t(1) << 24;

// C[i / n, i % n] = beta · C (row stride ldc); beta == 0 writes zeros without reading C (BLAS rule).
template <class TC>
struct scale_matrix {
  TC* c;
  index_t ldc, n;
  acc_t<TC> beta;
  MOE_HOST_DEVICE void operator()(index_t i) const {
    TC& v = c[(i / n) * ldc + i % n];
    v = beta == acc_t<TC>(0) ? TC(0.0f) : convert<TC>(beta * convert<acc_t<TC>>(v));
  }
};

// The shared state of a space and its copies.
struct cuda_state {
  cudaStream_t stream = nullptr;
  cuda_options options;
  std::vector<int> host_offsets;  // cuda_grouped_gemm::cublas_per_group: the last call's offsets
  int device = 0;
  int sm_count = 1;
  cublasHandle_t blas = nullptr;
  void* blas_workspace = nullptr;
  void* scratch = nullptr;
  std::size_t scratch_bytes = 0;
  nonfinite_record* record = nullptr;    // device
  unsigned long long* probe = nullptr;   // device: the current check's lowest non-finite index

  cuda_state(cudaStream_t s, cuda_options o) : stream(s), options(o) {
    try {
      check(cudaGetDevice(&device), "cudaGetDevice");
      check(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
      check_blas(cublasCreate(&blas), "cublasCreate");
      check_blas(cublasSetStream(blas, stream), "cublasSetStream");
      check_blas(cublasSetMathMode(blas, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
      check(cudaMalloc(&blas_workspace, blas_workspace_bytes), "cudaMalloc (cuBLAS workspace)");
      check_blas(cublasSetWorkspace(blas, blas_workspace, blas_workspace_bytes), "cublasSetWorkspace");
      check(cudaMalloc(&record, sizeof(nonfinite_record)), "cudaMalloc (non-finite record)");
      check(cudaMalloc(&probe, sizeof(unsigned long long)), "cudaMalloc (non-finite probe)");
      const nonfinite_record empty{};
      check(cudaMemcpy(record, &empty, sizeof empty, cudaMemcpyHostToDevice), "cudaMemcpy (non-finite record)");
    } catch (...) {
      release();
      throw;
    }
  }
  cuda_state(const cuda_state&) = delete;
  cuda_state& operator=(const cuda_state&) = delete;
  ~cuda_state() { release(); }

  // No throwing here: this runs in destructors. cudaFree waits for the device, so nothing still
  // queued on the stream can use the memory afterwards.
  void release() noexcept {
    if (blas) cublasDestroy(blas);
    if (blas_workspace) cudaFree(blas_workspace);
    if (scratch) cudaFree(scratch);
    if (record) cudaFree(record);
    if (probe) cudaFree(probe);
    blas = nullptr;
    blas_workspace = scratch = nullptr;
    record = nullptr;
    probe = nullptr;
  }
};

}  // namespace cuda_detail

class cuda {
 public:
  static constexpr const char* name = "cuda";
  // Memory of this space is device memory: host code must not dereference it.
  static constexpr bool host_accessible = false;

  // The legacy default stream (0), with a process-wide state created on first use; cheap, touches
  // no device (so that default-constructed buffers and layers are free to build).
  cuda() = default;
  // `stream` (not owned: destroy the space and every layer using it before the stream). Creates the
  // state (cuBLAS handle, workspace, scratch) on the current device.
  explicit cuda(cudaStream_t stream, cuda_options options = {})
      : state_(std::make_shared<cuda_detail::cuda_state>(stream, options)) {
    reserve_default_scratch();
  }

  cudaStream_t stream() const { return state().stream; }
  const cuda_options& options() const { return state().options; }
  int multiprocessors() const { return state().sm_count; }
  cublasHandle_t blas_handle() const { return state().blas; }

  // ---- memory -------------------------------------------------------------------------------
  void* allocate(std::size_t bytes) const {
    if (bytes == 0) return nullptr;
    void* p = nullptr;
    cuda_detail::check(cudaMalloc(&p, bytes), "cudaMalloc", "(", bytes, " bytes)");
    return p;
  }
  // Never throws (buffers free memory in destructors); cudaFree waits for pending work.
  void deallocate(void* p, std::size_t) const noexcept {
    if (p) cudaFree(p);
  }
  void copy(void* dst, const void* src, std::size_t bytes) const {
    if (bytes)
      cuda_detail::check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream()), "cudaMemcpyAsync (copy)");
  }
  // Waits for the stream: dst holds the data on return.
  void copy_to_host(void* dst, const void* src, std::size_t bytes) const {
    if (!bytes) return;
    cuda_detail::check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream()), "cudaMemcpyAsync (to host)");
    cuda_detail::check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize (copy_to_host)");
  }
  // src may be reused on return (pageable sources are staged before the call returns).
  void copy_from_host(void* dst, const void* src, std::size_t bytes) const {
    if (bytes)
      cuda_detail::check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream()),
                         "cudaMemcpyAsync (from host)");
  }
  void fill_zero(void* dst, std::size_t bytes) const {
    if (bytes) cuda_detail::check(cudaMemsetAsync(dst, 0, bytes, stream()), "cudaMemsetAsync");
  }

  // Waits for the stream, raises any asynchronous CUDA error, then check_status().
  void synchronize() const {
    cuda_detail::check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
    check_status();
  }

  // Raises the moe::numeric_error a host space would have raised for the first non-finite value
  // recorded by check_finite() since the last report (and clears it). Waits for the stream.
  void check_status() const {
    const cuda_detail::cuda_state& st = state();
    cuda_detail::nonfinite_record r;
    cuda_detail::check(cudaMemcpyAsync(&r, st.record, sizeof r, cudaMemcpyDeviceToHost, st.stream),
                       "cudaMemcpyAsync (non-finite record)");
    cuda_detail::check(cudaStreamSynchronize(st.stream), "cudaStreamSynchronize (non-finite record)");
    if (r.index == cuda_detail::no_index) return;
    const cuda_detail::nonfinite_record empty{};
    cuda_detail::check(cudaMemcpyAsync(st.record, &empty, sizeof empty, cudaMemcpyHostToDevice, st.stream),
                       "cudaMemcpyAsync (non-finite record)");
    cuda_detail::check(cudaStreamSynchronize(st.stream), "cudaStreamSynchronize (non-finite record)");
    const auto str = [](std::uint64_t p) { return reinterpret_cast<const char*>(static_cast<std::uintptr_t>(p)); };
    const long long cols = r.cols > 0 ? r.cols : 1;
    throw numeric_error(detail::concat(str(r.what), ": non-finite value ", r.value, " at ", str(r.row_name), " ",
                                       static_cast<long long>(r.index) / cols, ", ", str(r.col_name), " ",
                                       static_cast<long long>(r.index) % cols));
  }

  // Device pointer to the flat index of the first non-finite value recorded and not yet reported
  // (~0ull: none). Device code reads it to learn, in stream order, that the step has failed before
  // the host does (moe::expert_parallel tells its peers so in its count exchange).
  const unsigned long long* nonfinite_index_device() const { return &state().record->index; }

  // ---- parallel loops -----------------------------------------------------------------------
  // f(i) for every i in [0, n) on the device (f is copied to the kernel: capture by value).
  template <class F>
  void parallel_for(index_t n, F&& f) const {
    if (n <= 0) return;
    using Fn = std::decay_t<F>;
    const index_t blocks = cuda_detail::grid_stride_blocks(n, cuda_detail::for_threads, max_grid_blocks());
    MOE_CUDA_LAUNCH(unsigned(blocks), cuda_detail::for_threads, stream(), cuda_detail::parallel_for_kernel<Fn>)(n, Fn(f));
    cuda_detail::check_launch("parallel_for kernel", "(n=", n, ")");
  }

  // f(i) for every i in [0, n), in index order on the calling thread, where f is a host function
  // issuing calls on this space (moe::execution_space): every call queues on the one stream, which
  // runs them in order, so host threads would add contention and nothing else.
  template <class F>
  void parallel_tasks(index_t n, F&& f) const {
    for (index_t i = 0; i < n; ++i) f(i);
  }

  // Per-group column sums (see moe::host::group_row_sums): two passes (reduce.cuh), the partials in
  // the scratch block; f is copied to the kernel (capture by value).
  template <class R, class F>
  void group_row_sums(int groups, index_t rows, index_t cols, F&& f, R* out) const {
    if (groups <= 0 || cols <= 0) return;
    if (rows <= 0) {
      fill_zero(out, sizeof(R) * std::size_t(groups) * std::size_t(cols));
      return;
    }
    using Fn = std::decay_t<F>;
    const cuda_detail::group_sum_shape sh = cuda_detail::group_sum_layout(groups, rows, cols);
    require(sh.blocks <= index_t(2147483647), "group_row_sums", "groups=", groups, " rows=", rows, " cols=", cols,
            " need more than 2^31 - 1 blocks");
    // One chunk per group: the partials are the sums (same layout), written straight into out. Else
    // at most 2·rows/chunk_rows partials per column, within the reserved scratch for 2^24 elements.
    R* partial = sh.chunks == 1 ? out
                                : static_cast<R*>(scratch(sizeof(R) * std::size_t(groups) * std::size_t(sh.chunks) *
                                                          std::size_t(cols)));
    MOE_CUDA_LAUNCH(unsigned(sh.blocks), cuda_detail::group_sum_threads, stream(),
                    cuda_detail::group_row_partials_kernel<R, Fn>)(sh, rows, cols, Fn(f), partial);
    cuda_detail::check_launch("group_row_partials_kernel", "(groups=", groups, " rows=", rows, " cols=", cols, ")");
    if (sh.chunks == 1) return;
    const index_t n = index_t(groups) * cols;
    const index_t blocks = cuda_detail::grid_stride_blocks(n, cuda_detail::for_threads, max_grid_blocks());
    MOE_CUDA_LAUNCH(unsigned(blocks), cuda_detail::for_threads, stream(), cuda_detail::group_row_finish_kernel<R>)(
        n, sh.chunks, cols, partial, out);
    cuda_detail::check_launch("group_row_finish_kernel", "(groups=", groups, " cols=", cols, ")");
  }

  // Per-group column sums of the values rows hand to a few columns (see moe::host::group_pair_sums):
  // group_row_sums of the cells, each cell adding its row's pairs that name its column. A GPU has a
  // thread per cell to spare, and the cells keep the fixed summation order without atomics. Columns
  // must be below cols (the host space checks; here a pair naming a larger column is in no cell).
  template <class R, class C, class V>
  void group_pair_sums(int groups, index_t rows, index_t cols, int pairs, C&& column_of, V&& value_of,
                       R* out) const {
    using Cells = cuda_detail::pair_cells<R, std::decay_t<C>, std::decay_t<V>>;
    group_row_sums(groups, rows, cols, Cells{column_of, value_of, pairs}, out);
  }

  // ---- row gathers of the dispatchers (rows.cuh) --------------------------------------------
  // moe/dispatch/rows.hpp calls these instead of its generic element loops when a space declares
  // row_kernels: the same results, with 16-byte accesses where the rows allow.
  static constexpr bool row_kernels = true;

  // xp[r] = scale_r · x[row_token[r]] for rows with row_expert[r] >= 0 (zeros where row_token[r] < 0),
  // scale_r = pair_scale[row_pair[r]], or 1 when pair_scale is null.
  template <class T, class R>
  void gather_rows(index_t rows, index_t d, const int* row_token, const int* row_expert, const int* row_pair,
                   const R* pair_scale, const T* x, T* xp) const {
    if (rows <= 0 || d <= 0) return;
    const auto launch = [&](auto piece) {
      constexpr int N = decltype(piece)::value;
      const index_t blocks = cuda_detail::grid_stride_blocks(rows * (d / N), cuda_detail::for_threads,
                                                             max_grid_blocks());
      MOE_CUDA_LAUNCH(unsigned(blocks), cuda_detail::for_threads, stream(), cuda_detail::gather_rows_kernel<T, R, N>)(
          rows, d, row_token, row_expert, row_pair, pair_scale, x, xp);
      cuda_detail::check_launch("gather_rows_kernel", "(rows=", rows, " d=", d, " piece=", N, ")");
    };
    cuda_detail::by_pieces<T>(cuda_detail::pieces_fit<cuda_detail::row_piece_elements<T>>(d, x, xp), launch);
  }

  // y[t] = Σ over the token's pairs q (CSR offsets/pairs, in order) of gate[p_q] · rows[pair_row[p_q]]
  // (gate null: 1), accumulated in R and stored as Out.
  template <class T, class R, class Out>
  void combine_rows(index_t tokens, index_t d, const int* offsets, const int* pairs, const int* pair_row,
                    const R* gate, const T* rows, Out* y) const {
    if (tokens <= 0 || d <= 0) return;
    const auto launch = [&](auto piece) {
      constexpr int N = decltype(piece)::value;
      const index_t blocks = cuda_detail::grid_stride_blocks(tokens * (d / N), cuda_detail::for_threads,
                                                             max_grid_blocks());
      MOE_CUDA_LAUNCH(unsigned(blocks), cuda_detail::for_threads, stream(),
                      cuda_detail::combine_rows_kernel<T, R, Out, N>)(tokens, d, offsets, pairs, pair_row, gate, rows, y);
      cuda_detail::check_launch("combine_rows_kernel", "(tokens=", tokens, " d=", d, " piece=", N, ")");
    };
    cuda_detail::by_pieces<T>(cuda_detail::pieces_fit<cuda_detail::row_piece_elements<T>>(d, rows, y), launch);
  }

  // dgate[p] = <dy[p / K], rows[pair_row[p]]> (0 where pair_row[p] < 0).
  template <class T, class R>
  void pair_row_dots(index_t pairs, int K, index_t d, const int* pair_row, const T* dy, const T* rows,
                     R* dgate) const {
    if (pairs <= 0) return;
    const auto launch = [&](auto piece) {
      constexpr int N = decltype(piece)::value;
      const index_t blocks = cuda_detail::grid_stride_blocks(pairs, cuda_detail::pair_dot_warps, max_grid_blocks());
      MOE_CUDA_LAUNCH(unsigned(blocks), cuda_detail::for_threads, stream(), cuda_detail::pair_row_dots_kernel<T, R, N>)(
          pairs, K, d, pair_row, dy, rows, dgate);
      cuda_detail::check_launch("pair_row_dots_kernel", "(pairs=", pairs, " d=", d, " piece=", N, ")");
    };
    cuda_detail::by_pieces<T>(cuda_detail::pieces_fit<cuda_detail::row_piece_elements<T>>(d, dy, rows), launch);
  }

  // ---- scans, sorts, histograms, reductions (CUB) -------------------------------------------
  // out[i] = in[0] + … + in[i-1]; out may alias in.
  template <class T>
  void exclusive_scan(const T* in, T* out, index_t n) const {
    if (n <= 0) return;
    require_int_range(n, "exclusive_scan");
    std::size_t bytes = 0;
    cuda_detail::check(cub::DeviceScan::ExclusiveSum(nullptr, bytes, in, out, int(n), stream()),
                       "cub::DeviceScan::ExclusiveSum (size)");
    void* tmp = scratch(bytes);
    cuda_detail::check(cub::DeviceScan::ExclusiveSum(tmp, bytes, in, out, int(n), stream()),
                       "cub::DeviceScan::ExclusiveSum", "(n=", n, ")");
  }

  // offsets[0..n]: offsets[0] = 0, offsets[i+1] = counts[0] + … + counts[i] (an inclusive scan into
  // offsets + 1: the total lands at offsets[n] on the device, no host read needed).
  template <class T>
  void offsets_from_counts(const T* counts, T* offsets, index_t n) const {
    cuda_detail::check(cudaMemsetAsync(offsets, 0, sizeof(T), stream()), "cudaMemsetAsync (offsets[0])");
    if (n <= 0) return;
    require_int_range(n, "offsets_from_counts");
    std::size_t bytes = 0;
    cuda_detail::check(cub::DeviceScan::InclusiveSum(nullptr, bytes, counts, offsets + 1, int(n), stream()),
                       "cub::DeviceScan::InclusiveSum (size)");
    void* tmp = scratch(bytes);
    cuda_detail::check(cub::DeviceScan::InclusiveSum(tmp, bytes, counts, offsets + 1, int(n), stream()),
                       "cub::DeviceScan::InclusiveSum", "(n=", n, ")");
  }

  // *out = in[0] + … + in[n-1] (0 for n = 0) in CUB's fixed reduction order; out in device memory.
  template <class T>
  void reduce_sum(const T* in, index_t n, T* out) const {
    if (n <= 0) {
      fill_zero(out, sizeof(T));
      return;
    }
    require_int_range(n, "reduce_sum");
    std::size_t bytes = 0;
    cuda_detail::check(cub::DeviceReduce::Sum(nullptr, bytes, in, out, int(n), stream()),
                       "cub::DeviceReduce::Sum (size)");
    void* tmp = scratch(bytes);
    cuda_detail::check(cub::DeviceReduce::Sum(tmp, bytes, in, out, int(n), stream()), "cub::DeviceReduce::Sum",
                       "(n=", n, ")");
  }
  // *out = max(init, in[0], …, in[n-1]), NaNs skipped (as the host's loop does).
  template <class T>
  void reduce_max(const T* in, index_t n, T init, T* out) const {
    require_int_range(n < 0 ? 0 : n, "reduce_max");
    std::size_t bytes = 0;
    const int count = n < 0 ? 0 : int(n);
    cuda_detail::check(
        cub::DeviceReduce::Reduce(nullptr, bytes, in, out, count, cuda_detail::nan_skipping_max{}, init, stream()),
        "cub::DeviceReduce::Reduce (size)");
    void* tmp = scratch(bytes);
    cuda_detail::check(
        cub::DeviceReduce::Reduce(tmp, bytes, in, out, count, cuda_detail::nan_skipping_max{}, init, stream()),
        "cub::DeviceReduce::Reduce (max)", "(n=", n, ")");
  }

  // counts[b] = number of i with keys[i] == b, for b in [0, bins); other keys are ignored.
  void histogram(const int* keys, index_t n, int* counts, int bins) const {
    if (bins <= 0) return;
    fill_zero(counts, sizeof(int) * std::size_t(bins));
    if (n <= 0) return;
    require_int_range(n, "histogram");
    require(bins < (1 << 30), "histogram", "bins=", bins, " must be below 2^30");
    std::size_t bytes = 0;
    cuda_detail::check(
        cub::DeviceHistogram::HistogramEven(nullptr, bytes, keys, counts, bins + 1, 0, bins, int(n), stream()),
        "cub::DeviceHistogram::HistogramEven (size)");
    void* tmp = scratch(bytes);
    cuda_detail::check(
        cub::DeviceHistogram::HistogramEven(tmp, bytes, keys, counts, bins + 1, 0, bins, int(n), stream()),
        "cub::DeviceHistogram::HistogramEven", "(n=", n, " bins=", bins, ")");
  }

  // Scratch bytes radix_sort_pairs needs for n pairs (CUB's own figure for the widest keys, so any
  // key_bits fits). Asks CUB on the current device; no stream work.
  static std::size_t radix_sort_scratch_bytes(index_t n) {
    if (n <= 0) return 0;
    require_int_range(n, "radix_sort_pairs");
    std::size_t bytes = 0;
    cuda_detail::check(cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const std::uint64_t*>(nullptr),
                                                       static_cast<std::uint64_t*>(nullptr),
                                                       static_cast<const int*>(nullptr), static_cast<int*>(nullptr),
                                                       int(n), 0, 64),
                       "cub::DeviceRadixSort::SortPairs (size)");
    return bytes;
  }

  // Stable sort of (key, value) pairs by the low `key_bits` bits of the keys, ascending; inputs are
  // left untouched. CUB's LSD radix sort is stable, like the host's.
  void radix_sort_pairs(const std::uint64_t* keys_in, std::uint64_t* keys_out, const int* values_in, int* values_out,
                        index_t n, int key_bits, void* scratch_mem, std::size_t scratch_bytes) const {
    require(key_bits >= 0 && key_bits <= 64, "radix_sort_pairs", "key_bits=", key_bits, " must be in [0, 64]");
    if (n <= 0) return;
    require_int_range(n, "radix_sort_pairs");
    if (key_bits == 0) {  // every key equal: the stable order is the input order
      copy(keys_out, keys_in, sizeof(std::uint64_t) * std::size_t(n));
      copy(values_out, values_in, sizeof(int) * std::size_t(n));
      return;
    }
    std::size_t bytes = 0;
    cuda_detail::check(cub::DeviceRadixSort::SortPairs(nullptr, bytes, keys_in, keys_out, values_in, values_out, int(n),
                                                       0, key_bits, stream()),
                       "cub::DeviceRadixSort::SortPairs (size)");
    if (scratch_bytes < bytes)
      fail("radix_sort_pairs", "scratch of ", scratch_bytes, " bytes, ", bytes, " needed");
    cuda_detail::check(cub::DeviceRadixSort::SortPairs(scratch_mem, bytes, keys_in, keys_out, values_in, values_out,
                                                       int(n), 0, key_bits, stream()),
                       "cub::DeviceRadixSort::SortPairs", "(n=", n, " key_bits=", key_bits, ")");
  }

  // The host space's radix_sort_segment_heads contract (each segment's first min(head, size) pairs
  // in stable order, the rest of it in any order), met here by the full sort: CUB has no segmented
  // selection, and cutting the sort to the kept pairs would need their count on the host.
  void radix_sort_segment_heads(const std::uint64_t* keys_in, std::uint64_t* keys_out, const int* values_in,
                                int* values_out, index_t n, int key_bits, int segment_shift, index_t head,
                                void* scratch_mem, std::size_t scratch_bytes) const {
    require(key_bits >= 0 && key_bits <= 64, "radix_sort_segment_heads", "key_bits=", key_bits,
            " must be in [0, 64]");
    require(segment_shift >= 0 && segment_shift <= key_bits, "radix_sort_segment_heads", "segment_shift=",
            segment_shift, " must be in [0, key_bits=", key_bits, "]");
    require(head >= 0, "radix_sort_segment_heads", "head=", head, " must be >= 0");
    radix_sort_pairs(keys_in, keys_out, values_in, values_out, n, key_bits, scratch_mem, scratch_bytes);
  }

  // Records the first non-finite element of the [rows, cols] matrix for the next synchronize() (see
  // moe/cuda/nonfinite.cuh); `what`, `row_name` and `col_name` must be string literals (or outlive
  // that report).
  template <class V>
  void check_finite(const V* data, index_t rows, index_t cols, const char* what, const char* row_name,
                    const char* col_name) const {
    const index_t n = rows * cols;
    if (n <= 0) return;
    const cuda_detail::cuda_state& st = state();
    cuda_detail::check(cudaMemsetAsync(st.probe, 0xff, sizeof(unsigned long long), st.stream),
                       "cudaMemsetAsync (non-finite probe)");
    const index_t blocks = cuda_detail::grid_stride_blocks(n, cuda_detail::for_threads, max_grid_blocks());
    MOE_CUDA_LAUNCH(unsigned(blocks), cuda_detail::for_threads, st.stream, cuda_detail::find_nonfinite_kernel<V>)(
        data, n, st.probe);
    cuda_detail::check_launch("find_nonfinite_kernel", "(", what, ")");
    const auto id = [](const char* s) { return static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(s)); };
    MOE_CUDA_LAUNCH(1, 1, st.stream, cuda_detail::record_nonfinite_kernel<V>)(data, cols, st.probe, st.record,
                                                                          id(what), id(row_name), id(col_name));
    cuda_detail::check_launch("record_nonfinite_kernel", "(", what, ")");
  }

  // ---- dense linear algebra -----------------------------------------------------------------
  // C = alpha · op(A) · op(B) + beta · C, row-major; cuBLAS where it takes the types (blas.cuh),
  // else the tiled kernel. float accumulation (double for double).
  template <class TA, class TB, class TC>
  void gemm(op opa, op opb, index_t m, index_t n, index_t k, acc_t<TC> alpha, const TA* a, index_t lda, const TB* b,
            index_t ldb, acc_t<TC> beta, TC* c, index_t ldc) const {
    if (m < 0 || n < 0 || k < 0) fail("gemm", "negative size m=", m, " n=", n, " k=", k);
    if (m == 0 || n == 0) return;
    if constexpr (cuda_detail::blas_supported<TA, TB, TC>) {
      constexpr index_t int_max = 2147483647;
      if (m <= int_max && n <= int_max && k <= int_max && lda <= int_max && ldb <= int_max && ldc <= int_max) {
        cuda_detail::blas_gemm(state().blas, opa, opb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
      }
    }
    using Acc = acc_t<TC>;
    const cuda_detail::tile_job<TA, TB, TC, Acc> job{
        a, lda, opa == op::transpose, b, ldb, opb == op::transpose, c, ldc, m, n, k, alpha, beta};
    cuda_detail::launch_dense_gemm(stream(), job);
  }

  // Strided-batched GEMM (see moe::host::batched_gemm): one cublasGemmStridedBatchedEx where cuBLAS
  // takes the types, else one gemm per batch entry.
  template <class TA, class TB, class TC>
  void batched_gemm(op opa, op opb, int batch, index_t m, index_t n, index_t k, acc_t<TC> alpha, const TA* a,
                    index_t lda, index_t a_stride, const TB* b, index_t ldb, index_t b_stride, acc_t<TC> beta,
                    TC* c, index_t ldc, index_t c_stride) const {
    if (batch < 0 || m < 0 || n < 0 || k < 0)
      fail("batched_gemm", "negative size batch=", batch, " m=", m, " n=", n, " k=", k);
    if (batch == 0 || m == 0 || n == 0) return;
    if constexpr (cuda_detail::blas_supported<TA, TB, TC>) {
      constexpr index_t int_max = 2147483647;
      if (m <= int_max && n <= int_max && k <= int_max && lda <= int_max && ldb <= int_max && ldc <= int_max) {
        cuda_detail::blas_gemm_strided_batched(state().blas, opa, opb, batch, m, n, k, alpha, a, lda, a_stride, b,
                                               ldb, b_stride, beta, c, ldc, c_stride);
        return;
      }
    }
    for (int i = 0; i < batch; ++i)
      gemm(opa, opb, m, n, k, alpha, a + i * a_stride, lda, b + i * b_stride, ldb, beta, c + i * c_stride, ldc);
  }

  // Expert-contiguous grouped GEMM (see moe::host::grouped_gemm); `offsets` ([groups + 1]) is
  // device memory, read by the kernel (grouped_gemm.cuh), or by the host under
  // cuda_grouped_gemm::cublas_per_group.
  template <class TA, class TB, class TC>
  void grouped_gemm(op opb, int groups, const int* offsets, index_t n, index_t k, acc_t<TC> alpha, const TA* a,
                    index_t lda, const TB* b, index_t b_stride, index_t ldb, acc_t<TC> beta, TC* c,
                    index_t ldc) const {
    if (groups > 0 && n > 0 && options().grouped_gemm == cuda_grouped_gemm::cublas_per_group) {
      const int* off = host_group_offsets("grouped_gemm", groups, offsets);
      for (int g = 0; g < groups; ++g) {
        const index_t r0 = off[g], rows = off[g + 1] - r0;
        if (rows > 0)
          gemm(op::none, opb, rows, n, k, alpha, a + r0 * lda, lda, b + g * b_stride, ldb, beta, c + r0 * ldc, ldc);
      }
      return;
    }
    using Acc = acc_t<TC>;
    const cuda_detail::tile_job<TA, TB, TC, Acc> job{
        a, lda, false, b, ldb, opb == op::transpose, c, ldc, 0, n, k, alpha, beta};
    cuda_detail::launch_grouped_gemm(stream(), job, groups, offsets, b_stride, index_t(state().sm_count) * 4);
  }

  // Grouped weight-gradient GEMM (see moe::host::grouped_gemm_tn); groups without rows get
  // C_g = beta · C_g.
  template <class TA, class TB, class TC>
  void grouped_gemm_tn(int groups, const int* offsets, index_t m, index_t n, acc_t<TC> alpha, const TA* a,
                       index_t lda, const TB* b, index_t ldb, acc_t<TC> beta, TC* c, index_t c_stride,
                       index_t ldc) const {
    if (groups > 0 && m > 0 && n > 0 && options().grouped_gemm == cuda_grouped_gemm::cublas_per_group) {
      const int* off = host_group_offsets("grouped_gemm_tn", groups, offsets);
      for (int g = 0; g < groups; ++g) {
        const index_t r0 = off[g], rows = off[g + 1] - r0;
        TC* cg = c + g * c_stride;
        if (rows > 0)
          gemm(op::transpose, op::none, m, n, rows, alpha, a + r0 * lda, lda, b + r0 * ldb, ldb, beta, cg, ldc);
        else if (beta != acc_t<TC>(1))  // no rows: C_g = beta · C_g, without a depth-0 cuBLAS call
          parallel_for(m * n, cuda_detail::scale_matrix<TC>{cg, ldc, n, beta});
      }
      return;
    }
    using Acc = acc_t<TC>;
    const cuda_detail::tile_job<TA, TB, TC, Acc> job{a, lda, true, b, ldb, false, c, ldc, m, n, 0, alpha, beta};
    cuda_detail::launch_grouped_gemm_tn(stream(), job, groups, offsets, c_stride);
  }

  // ---- scratch ------------------------------------------------------------------------------
  // Makes the CUB scratch block at least `bytes` (stream-ordered; see the top of this file).
  void reserve_scratch(std::size_t bytes) const { (void)scratch(bytes); }
  std::size_t scratch_bytes() const { return state().scratch_bytes; }

 private:
  static void require_int_range(index_t n, const char* what) {
    require(n <= index_t(2147483647), what, "n=", n, " exceeds 2^31 - 1 elements");
  }

  // cuda_grouped_gemm::cublas_per_group: the offsets copied to the host (waits for the stream) and
  // checked, since a host loop trusts them for its pointers.
  const int* host_group_offsets(const char* what, int groups, const int* offsets) const {
    cuda_detail::cuda_state& st = state();
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    cuda_detail::check(cudaStreamIsCapturing(st.stream, &capture), "cudaStreamIsCapturing");
    if (capture != cudaStreamCaptureStatusNone)
      fail(what, "cuda_grouped_gemm::cublas_per_group reads the group offsets on the host, which a stream being "
                 "captured cannot do; capture with cuda_grouped_gemm::device_offsets (the default)");
    st.host_offsets.resize(std::size_t(groups) + 1);
    copy_to_host(st.host_offsets.data(), offsets, sizeof(int) * (std::size_t(groups) + 1));
    const int* off = st.host_offsets.data();
    for (int g = 0; g < groups; ++g)
      if (off[g] < 0 || off[g + 1] < off[g])
        fail(what, "group offsets must ascend from 0 or more: offsets[", g, "]=", off[g], ", offsets[", g + 1,
             "]=", off[g + 1]);
    return off;
  }

  // The grid-stride kernels need no more blocks than fill the device a few times over.
  index_t max_grid_blocks() const { return index_t(state().sm_count) * 32; }

  cuda_detail::cuda_state& state() const {
    if (state_) return *state_;
    return default_state();
  }
  // Never destroyed, on purpose: at static destruction the CUDA runtime may already be torn down,
  // and cuBLAS must not be called then.
  static cuda_detail::cuda_state& default_state() {
    static cuda_detail::cuda_state* const st = [] {
      auto* s = new cuda_detail::cuda_state(cudaStream_t(nullptr), cuda_options{});
      reserve_defaults(*s);
      return s;
    }();
    return *st;
  }

  void reserve_default_scratch() const { reserve_defaults(*state_); }
  static void reserve_defaults(cuda_detail::cuda_state& st) {
    // CUB's own figures for the largest primitive calls on reserved_elements elements.
    const int n = int(cuda_detail::reserved_elements);
    std::size_t need = 0, b = 0;
    const auto take = [&](cudaError_t e) {
      cuda_detail::check(e, "CUB scratch size query");
      need = b > need ? b : need;
    };
    take(cub::DeviceScan::ExclusiveSum(nullptr, b, static_cast<const int*>(nullptr), static_cast<int*>(nullptr), n));
    take(cub::DeviceScan::InclusiveSum(nullptr, b, static_cast<const int*>(nullptr), static_cast<int*>(nullptr), n));
    take(cub::DeviceReduce::Sum(nullptr, b, static_cast<const double*>(nullptr), static_cast<double*>(nullptr), n));
    take(cub::DeviceReduce::Sum(nullptr, b, static_cast<const float*>(nullptr), static_cast<float*>(nullptr), n));
    take(cub::DeviceReduce::Reduce(nullptr, b, static_cast<const double*>(nullptr), static_cast<double*>(nullptr), n,
                                   cuda_detail::nan_skipping_max{}, 0.0));
    take(cub::DeviceHistogram::HistogramEven(nullptr, b, static_cast<const int*>(nullptr), static_cast<int*>(nullptr),
                                             (1 << 12) + 1, 0, 1 << 12, n));
    // group_row_sums over n elements with two or more chunks per group: at most 2·n/128 partials
    // (chunks of at least 128 rows), in double at worst.
    b = std::size_t(2) * (std::size_t(n) / cuda_detail::group_sum_min_chunk_rows + 1) * sizeof(double);
    need = b > need ? b : need;
    grow(st, need);
  }

  static void grow(cuda_detail::cuda_state& st, std::size_t bytes) {
    if (bytes <= st.scratch_bytes) return;
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    cuda_detail::check(cudaStreamIsCapturing(st.stream, &capture), "cudaStreamIsCapturing");
    if (capture != cudaStreamCaptureStatusNone)
      fail("cuda", "a primitive needs ", bytes, " bytes of CUB scratch but the space has ", st.scratch_bytes,
           " and the stream is being captured; call reserve_scratch(", bytes,
           ") or run the step once before capturing it");
    const std::size_t target = std::size_t(align_up(bytes > 2 * st.scratch_bytes ? bytes : 2 * st.scratch_bytes,
                                                     workspace_alignment));
    if (st.scratch) cuda_detail::check(cudaFreeAsync(st.scratch, st.stream), "cudaFreeAsync (scratch)");
    st.scratch = nullptr;
    st.scratch_bytes = 0;
    cuda_detail::check(cudaMallocAsync(&st.scratch, target, st.stream), "cudaMallocAsync (scratch)", "(", target,
                       " bytes)");
    st.scratch_bytes = target;
  }

  void* scratch(std::size_t bytes) const {
    cuda_detail::cuda_state& st = state();
    if (bytes > st.scratch_bytes) grow(st, bytes);
    return st.scratch;
  }

  std::shared_ptr<cuda_detail::cuda_state> state_;
};

}  // namespace moe

namespace moe::detail {
// The routing step's gating kernel for this space is defined in moe/cuda/gating.cuh, which
// <moe/cuda.cuh> includes. Declared here so that a translation unit that included this header alone
// cannot route with the generic loop while another uses the kernel: using it without the
// definition is a compile error.
template <class Space>
struct token_gating;
template <>
struct token_gating<cuda>;
}  // namespace moe::detail
