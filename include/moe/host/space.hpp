// moe/host/space.hpp — the host (CPU) execution space: the reference every other space is
// tested against.
//
// An execution space is a cheap handle (copyable) that supplies the primitives policies are written
// against: memory, parallel_for, scans, a stable radix sort of pairs, histograms, and GEMMs.
// Every primitive here is deterministic: results do not depend on the number of threads.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "moe/core/config.hpp"
#include "moe/core/error.hpp"
#include "moe/core/numeric.hpp"
#include "moe/core/workspace.hpp"
#include "moe/host/blas.hpp"
#include "moe/host/huge_pages.hpp"
#include "moe/host/radix_sort.hpp"
#include "moe/host/thread_pool.hpp"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace moe {

class host {
 public:
  static constexpr const char* name = "host";
  // Memory of this space can be read and written by host code directly.
  static constexpr bool host_accessible = true;

  // The shared pool: one thread per CPU this process may use (available_cpus()), or
  // $MOE_NUM_THREADS.
  host() : pool_(shared_pool()) {}
  // A private pool of `threads` threads (1 = serial).
  explicit host(int threads) : pool_(make_pool(threads)) {}

  int threads() const { return pool_->size(); }

  // The CPUs this process may use: its affinity mask's count capped by its cgroup CPU quota
  // (Docker's --cpus, Kubernetes limits), not the machine's count (moe/host/cpus.hpp).
  static int available_cpus() { return detail::available_cpus(); }

  // Element-wise loops over [rows, cols] matrices hand each parallel_for body a run of up to this
  // many contiguous columns of one row (moe::detail::elementwise_columns): the inner loop then
  // vectorises, and the row index is divided out once per run instead of once per element.
  static constexpr index_t elementwise_columns = 256;

  // ---- memory -------------------------------------------------------------------------------
  // Buffers of at least huge_page_bytes start on such a boundary and ask Linux for transparent huge
  // pages (madvise, as moe::host_huge_pages() decides: $MOE_HUGE_PAGES, and not by default on a
  // guest that reports free pages to its hypervisor; nothing changes where THP is off): a layer's
  // weights, gradients and workspace are then first touched in 2 MiB page faults instead of 4 KiB
  // ones (constructing a 134 M-parameter layer: 4.7 -> 3.7 s on one VM, layer_init benchmark).
  // Where the kernel compacts memory for such faults (THP defrag "madvise"), an allocation may wait.
  static constexpr std::size_t huge_page_bytes = std::size_t(1) << 21;
  // The alignment a buffer of `bytes` gets: allocate and deallocate must agree on it.
  static constexpr std::size_t alignment_for(std::size_t bytes) {
    return bytes < huge_page_bytes ? workspace_alignment : huge_page_bytes;
  }
  void* allocate(std::size_t bytes) const {
    if (bytes == 0) return nullptr;
    const std::size_t alignment = alignment_for(bytes);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    // Decided at every large allocation (next to one of 2 MiB or more, a getenv is free; the guest
    // check reads /sys once per process). May throw: before new.
    const bool advise = alignment == huge_page_bytes && host_huge_pages().advised;
#endif
    void* p = ::operator new(bytes, std::align_val_t(alignment));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (advise) ::madvise(p, bytes, MADV_HUGEPAGE);  // advice: a refusal leaves ordinary pages
#endif
    return p;
  }
  void deallocate(void* p, std::size_t bytes) const {
    if (p) ::operator delete(p, std::align_val_t(alignment_for(bytes)));
  }
  void copy(void* dst, const void* src, std::size_t bytes) const {
    if (bytes) std::memmove(dst, src, bytes);
  }
  void copy_to_host(void* dst, const void* src, std::size_t bytes) const { copy(dst, src, bytes); }
  void copy_from_host(void* dst, const void* src, std::size_t bytes) const { copy(dst, src, bytes); }
  void fill_zero(void* dst, std::size_t bytes) const {
    if (bytes) std::memset(dst, 0, bytes);
  }
  void synchronize() const {}

  // ---- parallel loops -----------------------------------------------------------------------
  // f(i) for every i in [0, n), in parallel; f must not write what another index reads.
  template <class F>
  void parallel_for(index_t n, F&& f) const {
    if (n <= 0) return;
    if (n < 64 || pool_->size() == 1) {
      for (index_t i = 0; i < n; ++i) f(i);
      return;
    }
    pool_->run_chunks(n, [&](index_t b, index_t e) {
      for (index_t i = b; i < e; ++i) f(i);
    });
  }

  // f(i) for every i in [0, n), one contiguous run of indices per pool thread, however small n is
  // (moe::execution_space's task loop): for indices that are each a sizeable piece of work issuing
  // space calls, such as a GEMM (parallel_for runs fewer than 64 indices serially, as cheap
  // element-wise indices are not worth a fork-join). Space calls made by f run on the calling pool
  // thread alone, with the bits they have on any thread count.
  template <class F>
  void parallel_tasks(index_t n, F&& f) const {
    if (n <= 0) return;
    pool_->run_chunks(n, [&](index_t b, index_t e) {
      for (index_t i = b; i < e; ++i) f(i);
    });
  }

  // Per-group column sums of a virtual [groups·rows, cols] matrix given element-wise:
  //   out[g·cols + c] = Σ_{r < rows} f(g·rows + r, c)   (f(index_t row, index_t col) → R),
  // added in row order (the CUDA space adds in a fixed tree order: the same bits run to run).
  // The routing statistics the auxiliary losses read are such sums over each group's tokens.
  // Columns are summed in blocks of group_sum_columns: a block walks its group's rows once, reading
  // adjacent columns of each row (a cache line of floats), where one column at a time would stride
  // down the matrix (router probabilities at E = 256: a 1 KiB stride). Each column still adds its
  // rows in order, so the bits are those of a column walk. Blocks go to the pool's threads when the
  // sums are large enough to be worth a fork-join.
  template <class R, class F>
  void group_row_sums(int groups, index_t rows, index_t cols, F&& f, R* out) const {
    if (groups <= 0 || cols <= 0) return;
    constexpr index_t width = group_sum_columns;
    const index_t blocks = (cols + width - 1) / width, n = index_t(groups) * blocks;
    const auto block = [&](index_t i) {
      const index_t g = i / blocks, c0 = (i - g * blocks) * width, w = std::min(width, cols - c0);
      R acc[width];
      for (index_t j = 0; j < w; ++j) acc[j] = R(0);
      for (index_t r = g * rows; r < (g + 1) * rows; ++r)
        for (index_t j = 0; j < w; ++j) acc[j] += f(r, c0 + j);
      for (index_t j = 0; j < w; ++j) out[g * cols + c0 + j] = acc[j];
    };
    if (n > 1 && index_t(groups) * rows * cols >= group_sum_parallel_elements)
      parallel_tasks(n, block);
    else
      for (index_t i = 0; i < n; ++i) block(i);
  }

  // Per-group column sums of values that rows hand to a few columns each. Row r has `pairs` pairs
  // (column_of(r, j) → column in [0, cols), or negative for none; value_of(r, j) → R):
  //   out[g·cols + c] = Σ_{r < rows} cell(g·rows + r, c),   cell(r, c) = Σ_{j : column_of(r, j) = c} value_of(r, j)
  // — group_row_sums of `cell`, with the same bits: a cell adds its values in j order from 0, a
  // column adds its cells in row order, and the cells a row leaves empty would add +0, which
  // changes no sum (a sum that starts at +0 never becomes -0). The routing statistics count each
  // token's few chosen experts: a walk over the pairs visits rows·pairs of them where
  // group_row_sums would evaluate rows·cols cells (E = 256, k = 2: 128 times fewer).
  template <class R, class C, class V>
  void group_pair_sums(int groups, index_t rows, index_t cols, int pairs, C&& column_of, V&& value_of,
                       R* out) const {
    if (groups <= 0 || cols <= 0) return;
    const auto group = [&](index_t g) {
      R* acc = out + g * cols;
      for (index_t c = 0; c < cols; ++c) acc[c] = R(0);
      for (index_t r = g * rows; r < (g + 1) * rows; ++r)
        for (int j = 0; j < pairs; ++j) {
          const index_t c = index_t(column_of(r, j));
          if (c < 0) continue;
          require(c < cols, "group_pair_sums", "row ", r, " pair ", j, ": column=", c, " is not below cols=", cols);
          bool summed = false;  // an earlier pair of this row names the same column: its cell is added
          for (int i = 0; i < j; ++i) summed |= index_t(column_of(r, i)) == c;
          if (summed) continue;
          R cell = R(0);
          for (int i = j; i < pairs; ++i)
            if (index_t(column_of(r, i)) == c) cell += value_of(r, i);
          acc[c] += cell;
        }
    };
    if (groups > 1 && index_t(groups) * rows * pairs >= group_sum_parallel_elements)
      parallel_tasks(groups, group);
    else
      for (index_t g = 0; g < groups; ++g) group(g);
  }

  // ---- scans, sorts, histograms -------------------------------------------------------------
  // out[i] = in[0] + … + in[i-1]; out may alias in.
  template <class T>
  void exclusive_scan(const T* in, T* out, index_t n) const {
    T running = T(0);
    for (index_t i = 0; i < n; ++i) {
      const T v = in[i];
      out[i] = running;
      running += v;
    }
  }

  // offsets[0..n]: offsets[i] = counts[0] + … + counts[i-1], offsets[n] = the total.
  template <class T>
  void offsets_from_counts(const T* counts, T* offsets, index_t n) const {
    T running = T(0);
    for (index_t i = 0; i < n; ++i) {
      offsets[i] = running;
      running += counts[i];
    }
    offsets[n] = running;
  }

  // *out = in[0] + … + in[n-1] (0 for n = 0); `out` is in this space's memory. The order of the
  // additions depends on n alone, so any thread count gives the same bits: the elements fall into
  // blocks of reduce_block; in a block, lane j of reduce_lanes adds elements j, j + 8, j + 16, … in
  // turn, and the lanes are added as ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)); then the
  // block sums are added in adjacent pairs, level by level (an odd last one moves up as it is).
  // A running sum's rounding error grows with n (the trainer's gradient norm adds ~10^6 float
  // squares); this one's with reduce_block / 8 + log2(blocks). The lanes vectorise, and the blocks
  // of a large sum are spread over the pool.
  template <class T>
  void reduce_sum(const T* in, index_t n, T* out) const {
    if (n <= 0) {
      *out = T(0);
      return;
    }
    const auto block_sum = [in, n](index_t b) {
      const index_t begin = b * reduce_block, end = std::min(n, begin + reduce_block);
      T lane[reduce_lanes] = {};
      index_t i = begin;
      for (; i + reduce_lanes <= end; i += reduce_lanes)
        for (int j = 0; j < reduce_lanes; ++j) lane[j] += in[i + j];
      for (int j = 0; i + j < end; ++j) lane[j] += in[i + j];
      return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
    };
    const index_t blocks = (n + reduce_block - 1) / reduce_block;
    if (blocks == 1) {
      *out = block_sum(0);
      return;
    }
    std::vector<T> sums(static_cast<std::size_t>(blocks));
    const auto sum_blocks = [&](index_t first, index_t last) {
      for (index_t b = first; b < last; ++b) sums[std::size_t(b)] = block_sum(b);
    };
    if (pool_->size() > 1 && n >= reduce_parallel_elements)
      pool_->run_chunks(blocks, sum_blocks);
    else
      sum_blocks(0, blocks);
    T* s = sums.data();
    for (index_t count = blocks; count > 1; count = (count + 1) / 2) {
      for (index_t k = 0; k < count / 2; ++k) s[k] = s[2 * k] + s[2 * k + 1];
      if (count % 2) s[count / 2] = s[count - 1];
    }
    *out = s[0];
  }
  // *out = max(init, in[0], …, in[n-1]).
  template <class T>
  void reduce_max(const T* in, index_t n, T init, T* out) const {
    T acc = init;
    for (index_t i = 0; i < n; ++i) acc = in[i] > acc ? in[i] : acc;
    *out = acc;
  }

  // counts[b] = number of i with keys[i] == b, for b in [0, bins); other keys are ignored.
  void histogram(const int* keys, index_t n, int* counts, int bins) const {
    std::fill(counts, counts + bins, 0);
    for (index_t i = 0; i < n; ++i)
      if (keys[i] >= 0 && keys[i] < bins) ++counts[keys[i]];
  }

  // Scratch bytes radix_sort_pairs needs for n pairs.
  static std::size_t radix_sort_scratch_bytes(index_t n) {
    return align_up(std::size_t(n) * sizeof(std::uint64_t), workspace_alignment) +
           align_up(std::size_t(n) * sizeof(int), workspace_alignment);
  }

  // Stable sort of (key, value) pairs by the low `key_bits` bits of the keys, ascending.
  // Inputs are left untouched; the sorted pairs land in keys_out/values_out.
  //
  // Radix sort, 8 bits a digit (moe/host/radix_sort.hpp). A digit that is the same in every key is
  // skipped (found from the keys' OR and AND): token-choice slot keys leave two bytes of their
  // priority zero. More pairs than a core's cache holds with two digits or more: one pass splits
  // them by the top varying digit, and the parts are sorted side by side on the pool's threads, each
  // in cache. Otherwise least-significant-digit passes. From 2 · radix_chunk_pairs pairs on a pool
  // of several threads, a pass over the whole array is cut into one contiguous chunk per thread (at
  // least radix_chunk_pairs each): every chunk counts its digits, the counts are turned into offsets
  // digit by digit and chunk by chunk, and every chunk scatters its pairs in order from its own
  // offsets. That is where the serial pass puts each pair: the result is the stable order, the same
  // on any thread count.
  void radix_sort_pairs(const std::uint64_t* keys_in, std::uint64_t* keys_out, const int* values_in,
                        int* values_out, index_t n, int key_bits, void* scratch, std::size_t scratch_bytes) const {
    require(key_bits >= 0 && key_bits <= 64, "radix_sort_pairs", "key_bits=", key_bits, " must be in [0, 64]");
    if (scratch_bytes < radix_sort_scratch_bytes(n))
      fail("radix_sort_pairs", "scratch of ", scratch_bytes, " bytes, ", radix_sort_scratch_bytes(n), " needed");
    radix_sort(keys_in, keys_out, values_in, values_out, n, key_bits, scratch, detail::radix_heads{});
  }

  // radix_sort_pairs where only the head of each segment must be in order: the pairs come out
  // grouped by segment (the low key_bits from bit segment_shift up), ascending and stable, and each
  // segment starts with its min(head, size) smallest keys in stable order; its other pairs follow
  // in an order left unspecified (a full sort, as the CUDA space does, meets the contract). Here: a
  // segment whose head is a small enough part of it (detail::radix_heads::worth_selecting) is
  // selected rather than sorted (detail::radix_sort_head), its other pairs in input order; other
  // segments, and arrays small enough for the in-cache sort, are sorted whole. Either way the
  // result is the same on any thread count. Expert choice keeps C of each expert's S proposals.
  // Same scratch as radix_sort_pairs.
  void radix_sort_segment_heads(const std::uint64_t* keys_in, std::uint64_t* keys_out, const int* values_in,
                                int* values_out, index_t n, int key_bits, int segment_shift, index_t head,
                                void* scratch, std::size_t scratch_bytes) const {
    require(key_bits >= 0 && key_bits <= 64, "radix_sort_segment_heads", "key_bits=", key_bits,
            " must be in [0, 64]");
    require(segment_shift >= 0 && segment_shift <= key_bits, "radix_sort_segment_heads", "segment_shift=",
            segment_shift, " must be in [0, key_bits=", key_bits, "]");
    require(head >= 0, "radix_sort_segment_heads", "head=", head, " must be >= 0");
    if (scratch_bytes < radix_sort_scratch_bytes(n))
      fail("radix_sort_segment_heads", "scratch of ", scratch_bytes, " bytes, ", radix_sort_scratch_bytes(n),
           " needed");
    radix_sort(keys_in, keys_out, values_in, values_out, n, key_bits, scratch,
               detail::radix_heads{segment_shift, head});
  }

 private:
  void radix_sort(const std::uint64_t* keys_in, std::uint64_t* keys_out, const int* values_in, int* values_out,
                  index_t n, int key_bits, void* scratch, detail::radix_heads heads) const {
    if (n <= 0) return;
    auto* tmp_keys = static_cast<std::uint64_t*>(scratch);
    auto* tmp_vals = reinterpret_cast<int*>(static_cast<std::byte*>(scratch) +
                                            align_up(std::size_t(n) * sizeof(std::uint64_t), workspace_alignment));
    using detail::radix_buckets, detail::radix_digit;
    constexpr int max_chunks = 64;
    const int chunks = pool_->size() > 1 && n >= 2 * radix_chunk_pairs
                           ? int(std::min<index_t>({index_t(pool_->size()), n / radix_chunk_pairs, max_chunks}))
                           : 1;
    const auto chunk_begin = [n, chunks](int c) { return n * c / chunks; };
    const auto over_chunks = [&](auto&& f) {
      if (chunks == 1)
        f(0);
      else
        parallel_tasks(chunks, [&](index_t c) { f(int(c)); });
    };

    std::uint64_t key_or[max_chunks], key_and[max_chunks];
    over_chunks([&](int c) {
      std::uint64_t a = 0, b = ~std::uint64_t(0);
      for (index_t i = chunk_begin(c); i < chunk_begin(c + 1); ++i) a |= keys_in[i], b &= keys_in[i];
      key_or[c] = a, key_and[c] = b;
    });
    std::uint64_t all_or = 0, all_and = ~std::uint64_t(0);
    for (int c = 0; c < chunks; ++c) all_or |= key_or[c], all_and &= key_and[c];
    int shifts[detail::radix_max_digits];
    const std::uint64_t varying = detail::radix_varying_bits(all_or, all_and, key_bits);
    const int passes = detail::radix_digits(varying, key_bits, shifts);
    if (passes == 0) {  // already in order: every key has the same low key_bits
      std::memcpy(keys_out, keys_in, std::size_t(n) * sizeof(std::uint64_t));
      std::memcpy(values_out, values_in, std::size_t(n) * sizeof(int));
      return;
    }
    if (heads.selects(varying, n)) {  // one segment: its head, on this thread (the input is const: copied)
      std::memcpy(tmp_keys, keys_in, std::size_t(n) * sizeof(std::uint64_t));
      std::memcpy(tmp_vals, values_in, std::size_t(n) * sizeof(int));
      detail::radix_sort_head(tmp_keys, tmp_vals, keys_out, values_out, n, key_bits, shifts, passes, all_and,
                              heads.head, /*into_y=*/true);
      return;
    }

    // One stable pass over the whole array by `digit`, chunk by chunk; `begin` (when given) gets
    // where each digit's pairs start, and begin[radix_buckets] = n.
    // offsets[c · radix_buckets + d]: where chunk c's first pair with digit d goes (several chunks).
    std::vector<index_t> offsets(chunks > 1 ? std::size_t(chunks) * radix_buckets : 0);
    const auto pass = [&](const std::uint64_t* from_k, const int* from_v, std::uint64_t* to_k, int* to_v,
                          radix_digit digit, index_t* begin) {
      // Counts and positions live in each chunk's own array (the stores into to_k could alias a
      // shared index_t array, and the compiler would reload every position).
      const auto count_chunk = [=](int c, index_t* count) {
        std::fill(count, count + radix_buckets, index_t(0));
        for (index_t i = chunk_begin(c); i < chunk_begin(c + 1); ++i) ++count[digit(from_k[i])];
      };
      const auto scatter_chunk = [=](int c, index_t* next) {
        const index_t b = chunk_begin(c), m = chunk_begin(c + 1) - b;
        if (n >= detail::radix_buffered_pairs)
          detail::radix_scatter_buffered(from_k + b, from_v + b, m, digit, to_k, to_v, next);
        else
          detail::radix_scatter(from_k + b, from_v + b, m, digit, to_k, to_v, next);
      };
      if (chunks == 1) {
        index_t next[radix_buckets];
        count_chunk(0, next);
        detail::radix_offsets(next, radix_buckets);
        if (begin) std::copy(next, next + radix_buckets, begin);
        scatter_chunk(0, next);
      } else {
        over_chunks([&](int c) {
          index_t count[radix_buckets];
          count_chunk(c, count);
          std::copy(count, count + radix_buckets, offsets.data() + std::size_t(c) * radix_buckets);
        });
        index_t running = 0;
        for (int d = 0; d < radix_buckets; ++d) {
          if (begin) begin[d] = running;
          for (int c = 0; c < chunks; ++c) {
            index_t& slot = offsets[std::size_t(c) * radix_buckets + std::size_t(d)];
            const index_t here = slot;
            slot = running;
            running += here;
          }
        }
        over_chunks([&](int c) {
          index_t next[radix_buckets];
          std::copy(offsets.data() + std::size_t(c) * radix_buckets,
                    offsets.data() + std::size_t(c + 1) * radix_buckets, next);
          scatter_chunk(c, next);
        });
      }
      if (begin) begin[radix_buckets] = n;
    };

    if (passes >= 2 && n > detail::radix_cache_pairs) {
      // Split by the top varying digit, then sort the parts on the pool's threads, each landing in the
      // output. The split goes where the parts' own passes (passes − 1 if their keys vary as much as
      // the whole array's) end in the output without a copy. Parts to be cut to their segments'
      // heads move once per segment digit left (splits) and once more (radix_sort_head's gather).
      int moves = passes - 1;
      if (heads.expects_selection(varying, n)) {
        moves = 0;
        for (int p = 0; p < passes; ++p) moves += shifts[p] + detail::radix_digit_bits > heads.segment_shift;
      }
      const bool split_into_out = moves % 2 == 0;
      std::uint64_t* const split_k = split_into_out ? keys_out : tmp_keys;
      int* const split_v = split_into_out ? values_out : tmp_vals;
      std::uint64_t* const other_k = split_into_out ? tmp_keys : keys_out;
      int* const other_v = split_into_out ? tmp_vals : values_out;
      const radix_digit top(shifts[passes - 1], key_bits);
      index_t begin[radix_buckets + 1];
      pass(keys_in, values_in, split_k, split_v, top, begin);
      parallel_tasks(radix_buckets, [&](index_t d) {
        const index_t b = begin[d], m = begin[d + 1] - b;
        if (m > 0)
          detail::radix_sort_range(split_k + b, split_v + b, other_k + b, other_v + b, m, top.shift, !split_into_out,
                                   heads);
      });
      return;
    }

    // LSD passes, ping-pong so that the last one writes into the output buffers.
    const std::uint64_t* src_k = keys_in;
    const int* src_v = values_in;
    for (int p = 0; p < passes; ++p) {
      const bool to_out = ((passes - 1 - p) % 2) == 0;
      std::uint64_t* const dst_k = to_out ? keys_out : tmp_keys;
      int* const dst_v = to_out ? values_out : tmp_vals;
      pass(src_k, src_v, dst_k, dst_v, radix_digit(shifts[p], key_bits), nullptr);
      src_k = dst_k;
      src_v = dst_v;
    }
  }

 public:
  // Raises moe::numeric_error naming the first non-finite element of the [rows, cols] matrix, e.g.
  // "router logits: non-finite value nan at token 3, expert 1".
  // Large matrices are scanned by the pool's threads, one contiguous chunk each; the first
  // non-finite element of the lowest chunk that has one is the first of the matrix.
  template <class V>
  void check_finite(const V* data, index_t rows, index_t cols, const char* what, const char* row_name,
                    const char* col_name) const {
    const index_t n = rows * cols;
    const auto first_bad = [data](index_t begin, index_t end) {
      for (index_t i = begin; i < end; ++i)
        if (!is_finite(widen(data[i]))) return i;
      return end;
    };
    index_t bad = n;
    if (pool_->size() > 1 && n >= 2 * check_finite_chunk) {
      constexpr int max_chunks = 64;
      const int chunks = int(std::min<index_t>({index_t(pool_->size()), n / check_finite_chunk, max_chunks}));
      index_t found[max_chunks];
      parallel_tasks(chunks, [&](index_t c) {
        const index_t end = n * (c + 1) / chunks, at = first_bad(n * c / chunks, end);
        found[c] = at < end ? at : n;
      });
      for (int c = 0; c < chunks && bad == n; ++c) bad = found[c];
    } else {
      bad = first_bad(0, n);
    }
    if (bad < n)
      throw numeric_error(detail::concat(what, ": non-finite value ", widen(data[bad]), " at ", row_name, " ",
                                         bad / cols, ", ", col_name, " ", bad % cols));
  }

  // ---- dense linear algebra -----------------------------------------------------------------
  // C = alpha · op(A) · op(B) + beta · C, row-major; float accumulation (double for double).
  template <class TA, class TB, class TC>
  void gemm(op opa, op opb, index_t m, index_t n, index_t k, acc_t<TC> alpha, const TA* a, index_t lda,
            const TB* b, index_t ldb, acc_t<TC> beta, TC* c, index_t ldc) const {
    host_gemm(pool_.get(), opa, opb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }

  // Strided-batched GEMM: for each b in [0, batch),
  //   C_b = alpha · op(A_b) · op(B_b) + beta · C_b,  A_b = a + b·a_stride, B_b = b + b·b_stride,
  //   C_b = c + b·c_stride (row-major, leading dimensions as in gemm).
  // The padded dispatcher's experts, which all have the same number of rows, run as one such call.
  template <class TA, class TB, class TC>
  void batched_gemm(op opa, op opb, int batch, index_t m, index_t n, index_t k, acc_t<TC> alpha, const TA* a,
                    index_t lda, index_t a_stride, const TB* b, index_t ldb, index_t b_stride, acc_t<TC> beta,
                    TC* c, index_t ldc, index_t c_stride) const {
    // host_grouped_gemm: entries too small to be tiled run side by side on the pool, the others are
    // tiled one by one; each entry has the bits of gemm on its shape.
    host_grouped_gemm<TA, TB, TC>(pool_.get(), batch, alpha, beta, [&](int i) {
      return gemm_operands<TA, TB, TC>{opa, opb, m, n, k, a + i * a_stride, lda, b + i * b_stride, ldb,
                                       c + i * c_stride, ldc};
    });
  }

  // Expert-contiguous grouped GEMM: for each group g with rows [offsets[g], offsets[g+1]),
  //   C[rows] = alpha · A[rows] · op(B_g) + beta · C[rows],  B_g = b + g·b_stride,
  // A is [rows, k] with row stride lda, C is [rows, n] with row stride ldc,
  // op(B_g) is [k, n]: B_g stored [k, n] (op::none) or [n, k] (op::transpose) with row stride ldb.
  // `offsets` lives in this space's memory (the CUDA space never copies it to the host).
  template <class TA, class TB, class TC>
  void grouped_gemm(op opb, int groups, const int* offsets, index_t n, index_t k, acc_t<TC> alpha, const TA* a,
                    index_t lda, const TB* b, index_t b_stride, index_t ldb, acc_t<TC> beta, TC* c,
                    index_t ldc) const {
    // host_grouped_gemm, as batched_gemm: each group gets the bits of gemm on its rows. A group with
    // no rows has no C to write.
    host_grouped_gemm<TA, TB, TC>(pool_.get(), groups, alpha, beta, [&](int g) {
      const index_t r0 = offsets[g], rows = offsets[g + 1] - offsets[g];
      return gemm_operands<TA, TB, TC>{op::none, opb, rows, n, k, a + r0 * lda, lda, b + g * b_stride, ldb,
                                       c + r0 * ldc, ldc};
    });
  }

  // Grouped weight-gradient GEMM: for each group g,
  //   C_g = alpha · A[rows]ᵀ · B[rows] + beta · C_g,  C_g = c + g·c_stride, [m, n] with row stride ldc,
  // A[rows] is [rows, m] (row stride lda), B[rows] is [rows, n] (row stride ldb). Groups with no rows
  // still get C_g = beta · C_g.
  template <class TA, class TB, class TC>
  void grouped_gemm_tn(int groups, const int* offsets, index_t m, index_t n, acc_t<TC> alpha, const TA* a,
                       index_t lda, const TB* b, index_t ldb, acc_t<TC> beta, TC* c, index_t c_stride,
                       index_t ldc) const {
    host_grouped_gemm<TA, TB, TC>(pool_.get(), groups, alpha, beta, [&](int g) {
      const index_t r0 = offsets[g], rows = offsets[g + 1] - offsets[g];
      return gemm_operands<TA, TB, TC>{op::transpose, op::none, m, n, rows, a + r0 * lda, lda, b + r0 * ldb, ldb,
                                       c + g * c_stride, ldc};
    });
  }

 private:
  // group_row_sums: columns per block, and the elements from which its blocks are spread over the
  // pool (a polled fork-join costs about as much as summing a few thousand elements).
  static constexpr index_t group_sum_columns = 16;
  static constexpr index_t group_sum_parallel_elements = index_t(1) << 14;
  // radix_sort_pairs: the fewest pairs a thread's chunk of a pass gets. On the 2-core development VM
  // splitting a pass paid from 2 × 2^19 random keys on (1M: 16 -> 15 ms, 2M: 36 -> 26 ms) and cost
  // below that (256K: 3.0 -> 4.2 ms; the scatter is bound by the memory system, which the two cores
  // share); a machine with more memory bandwidth per core would gain earlier.
  static constexpr index_t radix_chunk_pairs = index_t(1) << 19;
  // reduce_sum: elements per block, lanes per block (the pairwise lane sum is written out for 8),
  // and the elements from which blocks are spread over the pool.
  static constexpr index_t reduce_block = 1024;
  static constexpr int reduce_lanes = 8;
  static constexpr index_t reduce_parallel_elements = index_t(1) << 16;
  // check_finite: the fewest elements a thread's chunk gets.
  static constexpr index_t check_finite_chunk = index_t(1) << 15;

  static std::shared_ptr<detail::thread_pool> shared_pool() {
    static const std::shared_ptr<detail::thread_pool> pool = [] {
      int n = available_cpus();
      if (const char* env = std::getenv("MOE_NUM_THREADS")) {
        char* end = nullptr;
        const long v = std::strtol(env, &end, 10);
        require(end != env && *end == '\0' && v >= 1 && v <= 4096, "MOE_NUM_THREADS", "'", env,
                "' is not a thread count in [1, 4096]");
        n = int(v);
      }
      return std::make_shared<detail::thread_pool>(n);
    }();
    return pool;
  }
  static std::shared_ptr<detail::thread_pool> make_pool(int threads) {
    require(threads >= 1, "host", "threads=", threads, " must be at least 1");
    return std::make_shared<detail::thread_pool>(threads);
  }

  std::shared_ptr<detail::thread_pool> pool_;
};

}  // namespace moe
