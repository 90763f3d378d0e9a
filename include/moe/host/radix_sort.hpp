// moe/host/radix_sort.hpp — the serial pieces of the host space's stable radix sort of (key, value)
// pairs (moe::host::radix_sort_pairs drives them over the pool).
//
// Digits are 8 bits. A digit that is the same in every key of a range is skipped (found from the
// keys' OR and AND). A range small enough to stay in a core's cache (radix_cache_pairs) is sorted by
// least-significant-digit passes, packed into one 64-bit element a pair when its keys differ only in
// a 32-bit window (radix_sort_packed); a larger one is first split by its most significant varying
// digit (a stable counting scatter) and each part sorted the same way. Passes over arrays far larger
// than the cache buffer their stores (radix_scatter_buffered). Expert choice sorts T·E (expert,
// probability) keys, 1M at T 4096 and E 256: five or six 8-bit passes over the whole array before,
// now one split and three packed passes per expert in cache (docs/benchmarks.md has the numbers).
// Where only each segment's first `head` pairs must be in order (radix_heads: expert choice keeps C
// of each expert's proposals), a segment is selected rather than sorted (radix_sort_head).
//
// Any stable sort by the low key_bits gives the same output, so how a range is split changes no bit.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>

#include "moe/core/config.hpp"

namespace moe::detail {

inline constexpr int radix_digit_bits = 8;
inline constexpr int radix_buckets = 1 << radix_digit_bits;
inline constexpr int radix_max_digits = 64 / radix_digit_bits;
// The largest range sorted by LSD passes alone: its pairs and their scratch (24 bytes a pair, 384
// KiB) fit a core's L2 on the x86 servers we run on (512 KiB to 2 MiB). On the development VM (Xeon,
// 2 MiB L2) 2^13 to 2^16 sorted expert-choice keys within the run-to-run noise (±15 %).
inline constexpr index_t radix_cache_pairs = index_t(1) << 14;

// The bits below key_bits in which keys differ, given the OR and the AND of all keys.
inline std::uint64_t radix_varying_bits(std::uint64_t key_or, std::uint64_t key_and, int key_bits) {
  std::uint64_t varying = key_or ^ key_and;
  if (key_bits < 64) varying &= (std::uint64_t(1) << key_bits) - 1u;
  return varying;
}

// The shifts of the digits that vary, lowest first; returns how many.
inline int radix_digits(std::uint64_t varying, int key_bits, int* shifts) {
  int count = 0;
  for (int shift = 0; shift < key_bits; shift += radix_digit_bits)
    if ((varying >> shift) & std::uint64_t(radix_buckets - 1)) shifts[count++] = shift;
  return count;
}

// The digit at `shift`, no wider than the bits left below key_bits (bits at or above key_bits
// must not take part).
struct radix_digit {
  int shift = 0;
  std::uint64_t mask = 0;
  radix_digit() = default;
  radix_digit(int shift_, int key_bits)
      : shift(shift_), mask((std::uint64_t(1) << std::min(radix_digit_bits, key_bits - shift_)) - 1u) {}
  int operator()(std::uint64_t key) const { return int((key >> shift) & mask); }
};

// Stable counting scatter of n pairs by one digit, from `next[d]` = where the first pair with digit
// d goes (advanced as pairs are placed).
inline void radix_scatter(const std::uint64_t* keys, const int* values, index_t n, radix_digit digit,
                          std::uint64_t* keys_to, int* values_to, index_t* next) {
  for (index_t i = 0; i < n; ++i) {
    const index_t pos = next[digit(keys[i])]++;
    keys_to[pos] = keys[i];
    values_to[pos] = values[i];
  }
}

// radix_scatter for arrays far larger than the cache: each digit's pairs are gathered in a buffer
// of radix_buffer_pairs (in L1) and written out together, a few cache lines at a time. Scattered
// one pair at a time, every store may open a line (and a 4 KiB page) of its own, and when the
// parts have power-of-two sizes (expert choice: T proposals per expert, so the parts start
// T · 8 bytes apart) all 256 write streams fall into the same L1 set. Measured on the 2-core Xeon VM,
// 1M pairs: 11–12 ns a pair scattered directly with that layout, 5–6 buffered; random digits 4.3–4.5
// vs 3.6–3.9. Within L2 (64K pairs) direct stores were faster (2.5–3.4 vs 3.3–4.7 ns): use this
// from radix_buffered_pairs.
inline constexpr int radix_buffer_pairs = 32;
inline constexpr index_t radix_buffered_pairs = index_t(1) << 18;
inline void radix_scatter_buffered(const std::uint64_t* keys, const int* values, index_t n, radix_digit digit,
                                   std::uint64_t* keys_to, int* values_to, index_t* next) {
  constexpr int width = radix_buffer_pairs;
  struct buffers {
    alignas(64) std::uint64_t keys[radix_buckets][width];
    alignas(64) int values[radix_buckets][width];
    std::uint8_t fill[radix_buckets];
  };
  // 96 KiB: on the heap, so that a caller's small thread stack is not at risk.
  const std::unique_ptr<buffers> b(new buffers);
  std::fill(b->fill, b->fill + radix_buckets, std::uint8_t(0));
  for (index_t i = 0; i < n; ++i) {
    const int d = digit(keys[i]), f = b->fill[d];
    b->keys[d][f] = keys[i];
    b->values[d][f] = values[i];
    if (f + 1 < width) {
      b->fill[d] = std::uint8_t(f + 1);
      continue;
    }
    const index_t pos = next[d];
    std::memcpy(keys_to + pos, b->keys[d], sizeof b->keys[d]);
    std::memcpy(values_to + pos, b->values[d], sizeof b->values[d]);
    next[d] = pos + width;
    b->fill[d] = 0;
  }
  for (int d = 0; d < radix_buckets; ++d) {
    const index_t pos = next[d];
    const int f = b->fill[d];
    std::copy(b->keys[d], b->keys[d] + f, keys_to + pos);
    std::copy(b->values[d], b->values[d] + f, values_to + pos);
    next[d] = pos + f;
  }
}

// Turns the first `buckets` counts into exclusive offsets; returns the total.
template <class Count>
Count radix_offsets(Count* counts, int buckets) {
  Count running = 0;
  for (int d = 0; d < buckets; ++d) {
    const Count here = counts[d];
    counts[d] = running;
    running += here;
  }
  return running;
}

// Which pairs a sort must order: all of them (the default), or only the first `head` of each
// segment, a segment being the pairs whose low key_bits agree from bit `segment_shift` up (the
// rest of a segment may follow in any order). A range whose keys all lie in one segment and whose
// head is a small enough part of it is then selected (radix_sort_head) rather than sorted.
struct radix_heads {
  int segment_shift = 0;
  index_t head = std::numeric_limits<index_t>::max();

  // Whether a segment of n pairs is faster selected than sorted. Measured on the development VM
  // (2-core Xeon) with expert-choice keys, full sort time / selection time: a segment within the
  // cache (4096 pairs) gains only with a head of at most 1/16 of it (1.5-1.7x at 1/256, 0.8-1.6x
  // at 1/16, 1.0-1.1x at 1/8, 0.8-0.9x at 1/4), a larger one (65536) up to 1/4 (1.9-2.8x at 1/256,
  // 1.1-1.4x at 1/4, 0.8-0.9x at 1/2). docs/benchmarks.md has the rest.
  bool worth_selecting(index_t n) const { return head < n && head <= (n > radix_cache_pairs ? n / 4 : n / 16); }

  // Whether a range of n pairs whose keys differ in `varying` (within key_bits) is one segment to
  // cut to its head.
  bool selects(std::uint64_t varying, index_t n) const {
    return worth_selecting(n) && (segment_shift >= 64 || (varying >> segment_shift) == 0);
  }

  // Whether the segments of a range of n pairs (keys differing in `varying`) are likely to be cut to
  // their heads, taking them as of equal size: where its parts should be split to (the selection's
  // gather moves them once more).
  bool expects_selection(std::uint64_t varying, index_t n) const {
    if (segment_shift >= 64 || head >= n) return false;
    return worth_selecting(n >> std::bit_width(varying >> segment_shift));
  }
};

// The packed LSD sort of a range whose keys differ only in a window of at most 32 bits and agree
// everywhere else (no differing bits above key_bits either): each pair becomes one 64-bit element,
// (the key's window << 32) | the pair's index in the range, so a pass moves 8 bytes a pair in one
// stream instead of 12 in two, and digits of up to 11 bits cover the window in at most three
// passes where bytes took four. The keys are rebuilt from the window and the bits they
// share; the values are gathered by index at the end. Same contract as radix_sort_range.
inline void radix_sort_packed(std::uint64_t* x_keys, int* x_values, std::uint64_t* y_keys, int* y_values, index_t n,
                              std::uint64_t shared_bits, int window_low, int window_bits, bool into_y) {
  constexpr int max_passes = 4, max_width = 11;  // 32 bits: four 8-bit or three 11-bit digits
  const std::uint64_t window_mask = (std::uint64_t(1) << window_bits) - 1u;
  // Small ranges take 8-bit digits: a pass's offsets cost as much as the counts' buckets.
  const int widest = n >= index_t(1) << max_width ? max_width : radix_digit_bits;
  const int passes = (window_bits + widest - 1) / widest, width = (window_bits + passes - 1) / passes;
  const std::uint32_t digit_mask = (std::uint32_t(1) << width) - 1u;
  std::uint32_t counts[max_passes][1 << max_width] = {};

  // Pack into y (x's keys are rebuilt later, so x is free to take the next pass).
  std::uint64_t* packed = y_keys;
  for (index_t i = 0; i < n; ++i) {
    const std::uint64_t window = (x_keys[i] >> window_low) & window_mask;
    packed[i] = (window << 32) | std::uint64_t(i);
    for (int p = 0; p < passes; ++p) ++counts[p][std::uint32_t(window >> (p * width)) & digit_mask];
  }
  std::uint64_t *from = y_keys, *to = x_keys;
  for (int p = 0; p < passes; ++p) {
    std::uint32_t* next = counts[p];
    radix_offsets(next, int(digit_mask) + 1);
    const int shift = 32 + p * width;
    for (index_t i = 0; i < n; ++i) {
      const std::uint64_t e = from[i];
      to[next[std::uint32_t(e >> shift) & digit_mask]++] = e;
    }
    std::swap(from, to);
  }
  // `from` holds the sorted elements. Values by index into y, then to x if wanted there (x's own
  // values are the source); keys rebuilt in place or across.
  const std::uint64_t keep = ~(window_mask << window_low) & shared_bits;
  for (index_t i = 0; i < n; ++i) y_values[i] = x_values[std::uint32_t(from[i])];
  std::uint64_t* keys_to = into_y ? y_keys : x_keys;
  for (index_t i = 0; i < n; ++i) keys_to[i] = keep | ((from[i] >> 32) << window_low);
  if (!into_y) std::memcpy(x_values, y_values, std::size_t(n) * sizeof(int));
}

// Stable sort of the n pairs in (x_keys, x_values) by their low key_bits (the bits above travel
// along), on the calling thread. (y_keys, y_values) has room for n pairs; both buffers may be
// overwritten, and the sorted pairs end in y when `into_y`, in x otherwise. With `heads`, only
// each segment's head needs to be in order (radix_heads).
inline void radix_sort_range(std::uint64_t* x_keys, int* x_values, std::uint64_t* y_keys, int* y_values, index_t n,
                             int key_bits, bool into_y, radix_heads heads = {});

// The head of a range of n > head pairs: its `head` smallest keys (ties: the earlier pairs) in
// stable order, then the other pairs in their input order. `shifts` are the range's `passes`
// varying digits (lowest first) and key_and the AND of its keys. Expert choice keeps C = cf·S/E
// of each expert's S proposals (16 of 4096 at E 256 and capacity factor 1): a selection reads the
// range a few times in order where a sort would move every pair three or four times.
//
// The threshold, the head-th smallest key, is found a digit at a time from the top: the keys that
// agree with it above the digit are counted by the digit, and the digit is the one where the
// running count reaches what is still needed. It stops early where that digit's keys are exactly
// what is needed. Then one pass takes the keys below the threshold and the first of those equal to
// it, in order, and the head (a few dozen pairs) is sorted.
inline void radix_sort_head(std::uint64_t* x_keys, int* x_values, std::uint64_t* y_keys, int* y_values, index_t n,
                            int key_bits, const int* shifts, int passes, std::uint64_t key_and, index_t head,
                            bool into_y) {
  const std::uint64_t key_mask = key_bits == 64 ? ~std::uint64_t(0) : (std::uint64_t(1) << key_bits) - 1u;
  // Varying digits are 0 in key_and: the threshold's digits are filled in as they are found.
  std::uint64_t threshold = key_and & key_mask;
  index_t need = head;
  int level = shifts[0];
  for (int p = passes - 1; p >= 0; --p) {
    const radix_digit digit(shifts[p], key_bits);
    const int above = digit.shift + radix_digit_bits;  // keys must match the threshold from here up
    const std::uint64_t match = above >= 64 ? 0 : threshold >> above;
    index_t counts[radix_buckets] = {};
    if (above >= 64) {
      for (index_t i = 0; i < n; ++i) ++counts[digit(x_keys[i])];
    } else {
      for (index_t i = 0; i < n; ++i) {
        const std::uint64_t key = x_keys[i] & key_mask;
        if ((key >> above) == match) ++counts[digit(key)];
      }
    }
    index_t below = 0;
    int d = 0;
    while (below + counts[d] < need) below += counts[d++];
    threshold |= std::uint64_t(d) << digit.shift;
    need -= below;
    level = digit.shift;
    if (counts[d] == need) break;  // every key of this digit is in the head
  }
  // Keys whose bits from `level` up are below the threshold's are in; of those equal to it, the
  // first `need`.
  const std::uint64_t bound = threshold >> level;
  index_t taken = 0, in = 0, out = head;
  for (index_t i = 0; i < n; ++i) {
    const std::uint64_t high = (x_keys[i] & key_mask) >> level;
    const index_t at = high < bound || (high == bound && taken++ < need) ? in++ : out++;
    y_keys[at] = x_keys[i];
    y_values[at] = x_values[i];
  }
  // The head, sorted where it lies in y (x's first pairs are its scratch), then all of y to x if
  // the range must end there.
  radix_sort_range(y_keys, y_values, x_keys, x_values, head, key_bits, /*into_y=*/false);
  if (!into_y) {
    std::memcpy(x_keys, y_keys, std::size_t(n) * sizeof(std::uint64_t));
    std::memcpy(x_values, y_values, std::size_t(n) * sizeof(int));
  }
}

inline void radix_sort_range(std::uint64_t* x_keys, int* x_values, std::uint64_t* y_keys, int* y_values, index_t n,
                             int key_bits, bool into_y, radix_heads heads) {
  std::uint64_t key_or = 0, key_and = ~std::uint64_t(0);
  for (index_t i = 0; i < n; ++i) key_or |= x_keys[i], key_and &= x_keys[i];
  int shifts[radix_max_digits];
  const std::uint64_t varying = radix_varying_bits(key_or, key_and, key_bits);
  const int passes = radix_digits(varying, key_bits, shifts);
  const auto move_to_y = [&] {
    std::memcpy(y_keys, x_keys, std::size_t(n) * sizeof(std::uint64_t));
    std::memcpy(y_values, x_values, std::size_t(n) * sizeof(int));
  };
  if (passes == 0) {  // already in order
    if (into_y) move_to_y();
    return;
  }
  if (heads.selects(varying, n)) {
    radix_sort_head(x_keys, x_values, y_keys, y_values, n, key_bits, shifts, passes, key_and, heads.head, into_y);
    return;
  }
  if (n > radix_cache_pairs && passes >= 2) {
    // Split by the top varying digit into y, then sort each part (its keys agree from that digit up)
    // back into x, or on into y.
    const radix_digit top(shifts[passes - 1], key_bits);
    index_t next[radix_buckets] = {};
    for (index_t i = 0; i < n; ++i) ++next[top(x_keys[i])];
    index_t begin[radix_buckets + 1];
    begin[radix_buckets] = radix_offsets(next, radix_buckets);
    std::copy(next, next + radix_buckets, begin);
    radix_scatter(x_keys, x_values, n, top, y_keys, y_values, next);
    for (int d = 0; d < radix_buckets; ++d) {
      const index_t b = begin[d], m = begin[d + 1] - b;
      if (m > 0)
        radix_sort_range(y_keys + b, y_values + b, x_keys + b, x_values + b, m, top.shift, !into_y, heads);
    }
    return;
  }
  // LSD passes. Keys that differ only in a window of 32 bits or fewer (routing's keys within one
  // segment: a 32-bit probability key) are packed when that saves passes (one digit: a single
  // direct pass is cheaper than packing, a pass and the gather), as long as indices and counts fit
  // 32 bits.
  const int window_low = std::countr_zero(varying), window_bits = std::bit_width(varying) - window_low;
  const bool same_above = key_bits == 64 || ((key_or ^ key_and) >> key_bits) == 0;
  if (passes >= 2 && window_bits <= 32 && same_above && n < index_t(1) << 32) {
    radix_sort_packed(x_keys, x_values, y_keys, y_values, n, key_and, window_low, window_bits, into_y);
    return;
  }
  // Otherwise pairs as they are, ping-pong between x and y; every digit counted in one read.
  radix_digit digits[radix_max_digits];
  for (int p = 0; p < passes; ++p) digits[p] = radix_digit(shifts[p], key_bits);
  index_t counts[radix_max_digits][radix_buckets] = {};
  for (index_t i = 0; i < n; ++i)
    for (int p = 0; p < passes; ++p) ++counts[p][digits[p](x_keys[i])];
  std::uint64_t *from_k = x_keys, *to_k = y_keys;
  int *from_v = x_values, *to_v = y_values;
  for (int p = 0; p < passes; ++p) {
    radix_offsets(counts[p], radix_buckets);
    radix_scatter(from_k, from_v, n, digits[p], to_k, to_v, counts[p]);
    std::swap(from_k, to_k);
    std::swap(from_v, to_v);
  }
  const bool in_y = passes % 2 == 1;
  if (in_y == into_y) return;
  if (into_y)
    move_to_y();
  else {
    std::memcpy(x_keys, y_keys, std::size_t(n) * sizeof(std::uint64_t));
    std::memcpy(x_values, y_values, std::size_t(n) * sizeof(int));
  }
}

}  // namespace moe::detail
