// moe_emu/device.hpp — runs CUDA kernels on the host, one fiber per CUDA thread.
//
// The CUDA space's kernels are plain C++ with a few CUDA built-ins (thread indices, __shared__,
// __syncthreads, warp shuffles, WMMA). This header gives those built-ins host meanings, so g++
// compiles the kernels unchanged and the emulator runs them: every thread of a block is a fiber
// on the OS thread that runs the kernel, and the block's fibers run in turn until each finishes or
// waits at a barrier. Blocks run one after another. What it checks, beyond the results:
//   - __syncthreads: every thread of the block reaches the same call (file and line); a thread that
//     exits or waits elsewhere while others wait is reported (a hang or undefined on a GPU);
//   - warp collectives (__syncwarp, __shfl_xor_sync, WMMA load/store/mma): all 32 lanes of a full
//     warp reach the same call with a full mask; WMMA pointers and leading dimensions are uniform
//     over the warp and aligned as the PTX ISA requires (256-bit pointers, 16-byte ldm);
//   - a block whose threads can no longer all proceed (a deadlock) is reported with where each waits;
//   - cp.async: a copy lands only when its thread waits for its group; a thread that exits with
//     copies it never waited for, or a copy that is not 16-byte aligned, is reported;
//   - under AddressSanitizer, every global and __shared__ access of a kernel is bounds-checked (the
//     fiber switches are annotated for ASan);
//   - under ThreadSanitizer, every CUDA thread is a TSan fiber and __syncthreads and __syncwarp are
//     its only synchronisation (plus the launch boundaries), so TSan reports the hazards
//     compute-sanitizer's racecheck looks for: accesses to shared or global memory by two threads
//     of a block (or two lanes of a warp) with no barrier between them. Blocks of a grid are ordered
//     one after the other (they reuse the static __shared__ arrays), so races between blocks are not
//     reported.
// A failed check prints "moe_emu: ..." naming the kernel, block and thread, and aborts.
//
// What it does not model: concurrency between blocks or streams (they run in issue order), the
// memory model, timing, and arithmetic of the hardware units (WMMA sums in float in k order).
#pragma once

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <source_location>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define MOE_EMU_ASAN 1
#else
#define MOE_EMU_ASAN 0
#endif
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define MOE_EMU_TSAN 1
#else
#define MOE_EMU_TSAN 0
#endif
// The emulator's own bookkeeping (who runs, who waits) is shared by all fibers without
// synchronisation; ThreadSanitizer must not instrument it, only the kernels' accesses.
#if MOE_EMU_TSAN
#define MOE_EMU_INTERNAL __attribute__((no_sanitize_thread))
#else
#define MOE_EMU_INTERNAL
#endif

namespace moe_emu {

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

[[noreturn]] inline void die(const std::string& message) {
  std::fprintf(stderr, "moe_emu: %s\n", message.c_str());
  std::fflush(stderr);
  std::abort();
}

inline std::string where(const std::source_location& l) {
  const char* f = l.file_name();
  const char* slash = std::strrchr(f, '/');
  return std::string(slash ? slash + 1 : f) + ":" + std::to_string(l.line());
}
inline bool same_site(const std::source_location& a, const std::source_location& b) {
  return a.line() == b.line() && std::strcmp(a.file_name(), b.file_name()) == 0;
}

// ---- fiber contexts -----------------------------------------------------------------------------
// On x86-64 a switch saves the callee-saved registers, MXCSR and the x87 control word on the old
// stack and loads the new stack pointer (no system call, unlike swapcontext's signal-mask save, which
// made the emulator spend most of its time in the kernel). Elsewhere: ucontext.
#if defined(__x86_64__)
// Weak: every translation unit that includes this header defines it.
asm(R"(
  .text
  .weak moe_emu_switch
  .type moe_emu_switch,@function
moe_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size moe_emu_switch,.-moe_emu_switch
)");
extern "C" void moe_emu_switch(void** save_sp, void* load_sp);

struct context {
  void* sp = nullptr;
};
// Prepares `c` to enter entry() on the given stack at the first switch to it.
MOE_EMU_INTERNAL inline void start_context(context& c, char* stack, std::size_t bytes, void (*entry)()) {
  auto top = (reinterpret_cast<std::uintptr_t>(stack) + bytes) & ~std::uintptr_t(15);
  auto* frame = reinterpret_cast<std::uint64_t*>(top - 72);
  std::uint32_t control[2] = {0x1f80u, 0x037fu};  // MXCSR, x87 control word: the defaults
  std::memcpy(frame, control, sizeof control);
  for (int i = 1; i <= 6; ++i) frame[i] = 0;      // r15 r14 r13 r12 rbx rbp
  frame[7] = reinterpret_cast<std::uint64_t>(entry);  // "returned" to: rsp ≡ 8 (mod 16) as after a call
  frame[8] = 0;                                     // entry's own return address: none
  c.sp = frame;
}
MOE_EMU_INTERNAL inline void switch_context(context& from, context& to) { moe_emu_switch(&from.sp, to.sp); }
#else
struct context {
  ucontext_t uc;
};
MOE_EMU_INTERNAL inline void start_context(context& c, char* stack, std::size_t bytes, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
MOE_EMU_INTERNAL inline void switch_context(context& from, context& to) { swapcontext(&from.uc, &to.uc); }
#endif

enum class fiber_state { runnable, block_wait, warp_wait, done };

// One cp.async copy of a thread: its bytes are read at issue and written to shared memory only when
// the thread waits for its group (async_wait), never sooner.
struct async_copy {
  void* dst;
  int bytes;
  unsigned char data[16];
};

struct fiber {
  moe_emu::context context;
  uint3 tid;
  int linear = 0;
  fiber_state state = fiber_state::runnable;
  std::source_location site;  // where it waits
  const char* waits_in = "";  // which collective
  std::vector<async_copy> open_copies;                 // issued, not yet committed
  std::vector<std::vector<async_copy>> copy_groups;  // committed, oldest first, not yet waited for
};

struct warp_state {
  int size = 0;     // threads of the block in this warp (32 but in a partial last warp)
  int lanes = 0;    // of those, the ones that have not exited
  int arrived = 0;  // lanes waiting at the current collective
  const char* kind = "";
  std::source_location site;
  alignas(16) unsigned char slot[32][32];  // per-lane payload of a collective
  unsigned generation = 0;                 // collectives completed
  char sync[2];                            // ThreadSanitizer sync objects of even and odd collectives
  unsigned mma_generation = ~0u;           // the collective whose MMA result `mma` holds
  float mma[16][16];                       // one WMMA product per warp (every lane's is the same)
};

// Stacks are kept between blocks and launches.
inline constexpr std::size_t stack_bytes =
    MOE_EMU_ASAN || MOE_EMU_TSAN ? std::size_t(512) << 10 : std::size_t(128) << 10;

// A fiber's stack, and its ThreadSanitizer context (kept with the stack: a later fiber on the same
// stack is ordered after the earlier one anyway, through the launch and block boundaries).
struct fiber_slot {
  std::unique_ptr<char[]> stack;
  void* tsan = nullptr;
};

struct block_run {
  const char* kernel = "";
  dim3 grid, block;
  uint3 block_idx;
  int threads = 0;
  std::vector<fiber> fibers;
  std::vector<warp_state> warps;
  moe_emu::context scheduler;
  fiber* current = nullptr;
  int live = 0;
  int block_arrived = 0;
  unsigned block_generation = 0;  // __syncthreads completed
  std::source_location block_site;
  // ThreadSanitizer sync objects: the host's work before a block, a block's work before the host
  // goes on, and even and odd __syncthreads.
  char launch_sync = 0, end_sync = 0, barrier_sync[2] = {0, 0};
  void* scheduler_tsan = nullptr;
  const std::function<void()>* body = nullptr;
#if MOE_EMU_ASAN
  void* scheduler_fake_stack = nullptr;
  const void* scheduler_stack_bottom = nullptr;
  std::size_t scheduler_stack_size = 0;
#endif

  std::string who() const {
    const fiber& f = *current;
    return std::string(kernel) + " block (" + std::to_string(block_idx.x) + "," + std::to_string(block_idx.y) + "," +
           std::to_string(block_idx.z) + ") thread (" + std::to_string(f.tid.x) + "," + std::to_string(f.tid.y) +
           "," + std::to_string(f.tid.z) + ")";
  }
};

MOE_EMU_INTERNAL inline block_run*& active_block() {
  static thread_local block_run* b = nullptr;
  return b;
}
MOE_EMU_INTERNAL inline block_run& this_block() {
  block_run* b = active_block();
  if (!b) die("a CUDA built-in (threadIdx, __syncthreads, ...) was used outside an emulated kernel");
  return *b;
}

// Shared by every host thread that runs kernels (they run one at a time, under kernel_mutex), so a
// thread per emulated GPU does not create stacks and sanitizer fibers of its own.
MOE_EMU_INTERNAL inline std::vector<fiber_slot>& stack_pool() {
  static std::vector<fiber_slot> pool;
  return pool;
}

// ---- thread identity ------------------------------------------------------------------------------
MOE_EMU_INTERNAL inline const uint3& thread_idx() { return this_block().current->tid; }
MOE_EMU_INTERNAL inline const uint3& block_idx() { return this_block().block_idx; }
MOE_EMU_INTERNAL inline const dim3& block_dim() { return this_block().block; }
MOE_EMU_INTERNAL inline const dim3& grid_dim() { return this_block().grid; }

// ---- switching -------------------------------------------------------------------------------------
// From a fiber to the scheduler (the fiber resumes here when it is runnable again).
MOE_EMU_INTERNAL inline void yield_to_scheduler(block_run& b) {
  fiber& f = *b.current;
#if MOE_EMU_TSAN
  __tsan_switch_to_fiber(b.scheduler_tsan, __tsan_switch_to_fiber_no_sync);
#endif
#if MOE_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, b.scheduler_stack_bottom, b.scheduler_stack_size);
#endif
  switch_context(f.context, b.scheduler);
#if MOE_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

MOE_EMU_INTERNAL inline void fiber_main() {
  block_run& b = *active_block();
#if MOE_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &b.scheduler_stack_bottom, &b.scheduler_stack_size);
#endif
#if MOE_EMU_TSAN
  __tsan_acquire(&b.launch_sync);
#endif
  try {
    (*b.body)();
  } catch (const std::exception& e) {
    die(b.who() + ": an exception escaped the kernel: " + e.what());
  } catch (...) {
    die(b.who() + ": an exception escaped the kernel");
  }
  fiber& f = *b.current;
  std::size_t pending = f.open_copies.size();
  for (const auto& g : f.copy_groups) pending += g.size();
  if (pending > 0)
    die(b.who() + " exited with " + std::to_string(pending) +
        " cp.async copies it never waited for (cp.async.wait_group): undefined on a GPU");
  f.state = fiber_state::done;
  --b.live;
  warp_state& w = b.warps[std::size_t(f.linear / 32)];
  --w.lanes;
  if (w.arrived > 0)
    die(b.who() + " exited while " + std::to_string(w.arrived) + " lanes of its warp wait at " + w.kind + " (" +
        where(w.site) + ")");
#if MOE_EMU_TSAN
  __tsan_release(&b.end_sync);
  __tsan_switch_to_fiber(b.scheduler_tsan, __tsan_switch_to_fiber_no_sync);
#endif
#if MOE_EMU_ASAN
  __sanitizer_start_switch_fiber(nullptr, b.scheduler_stack_bottom, b.scheduler_stack_size);
#endif
  switch_context(f.context, b.scheduler);  // never resumed
  die("a finished fiber was resumed");
}

// ---- barriers ----------------------------------------------------------------------------------------
MOE_EMU_INTERNAL inline void block_barrier(std::source_location loc) {
  block_run& b = this_block();
  if (b.block_arrived == 0) {
    b.block_site = loc;
  } else if (!same_site(b.block_site, loc)) {
    die(b.who() + " reached __syncthreads at " + where(loc) + " while other threads wait at " + where(b.block_site));
  }
  b.current->state = fiber_state::block_wait;
  b.current->site = loc;
  b.current->waits_in = "__syncthreads";
  [[maybe_unused]] char* const sync = &b.barrier_sync[b.block_generation & 1u];
#if MOE_EMU_TSAN
  __tsan_release(sync);
#endif
  if (++b.block_arrived == b.threads) {
    b.block_arrived = 0;
    ++b.block_generation;
    for (fiber& f : b.fibers)
      if (f.state == fiber_state::block_wait) f.state = fiber_state::runnable;
  }
  yield_to_scheduler(b);  // even the last to arrive: the scheduler picks who runs first
#if MOE_EMU_TSAN
  __tsan_acquire(sync);
#endif
}

MOE_EMU_INTERNAL inline int lane_id() { return this_block().current->linear % 32; }
MOE_EMU_INTERNAL inline warp_state& this_warp() {
  block_run& b = this_block();
  return b.warps[std::size_t(b.current->linear / 32)];
}

// All 32 lanes of the warp meet at one collective: the same kind, the same call site, a full mask.
// Only __syncwarp orders the lanes' memory accesses (orders_memory): shuffles and WMMA operations
// converge the lanes but are no memory barrier, so ThreadSanitizer is not told they synchronise.
MOE_EMU_INTERNAL inline void warp_barrier(const char* kind, unsigned mask, std::source_location loc,
                                          bool orders_memory = false) {
  block_run& b = this_block();
  warp_state& w = this_warp();
  if (mask != 0xffffffffu) die(b.who() + ": " + kind + " at " + where(loc) + " with a partial mask (not emulated)");
  if (w.size != 32) die(b.who() + ": " + kind + " at " + where(loc) + " in a partial warp with a full mask");
  if (w.arrived == 0) {
    w.kind = kind;
    w.site = loc;
  } else if (std::strcmp(w.kind, kind) != 0 || !same_site(w.site, loc)) {
    die(b.who() + " reached " + kind + " at " + where(loc) + " while other lanes of its warp wait at " + w.kind +
        " (" + where(w.site) + ")");
  }
  b.current->state = fiber_state::warp_wait;
  b.current->site = loc;
  b.current->waits_in = kind;
  [[maybe_unused]] char* const sync = &w.sync[w.generation & 1u];
#if MOE_EMU_TSAN
  if (orders_memory) __tsan_release(sync);
#endif
  if (++w.arrived == w.lanes) {
    if (w.lanes != 32)
      die(b.who() + ": " + kind + " at " + where(loc) + " with " + std::to_string(32 - w.lanes) +
          " lanes of the warp exited");
    w.arrived = 0;
    ++w.generation;
    const int first = b.current->linear / 32 * 32;
    for (int l = first; l < first + 32 && l < b.threads; ++l)
      if (b.fibers[std::size_t(l)].state == fiber_state::warp_wait) b.fibers[std::size_t(l)].state = fiber_state::runnable;
  }
  yield_to_scheduler(b);
#if MOE_EMU_TSAN
  if (orders_memory) __tsan_acquire(sync);
#endif
}

// A warp collective exchanging a payload: each lane deposits `bytes`, then all read.
MOE_EMU_INTERNAL inline unsigned char* deposit(const void* p, std::size_t bytes) {
  warp_state& w = this_warp();
  if (bytes > sizeof w.slot[0]) die("collective payload too large");
  unsigned char* s = w.slot[lane_id()];
  std::memcpy(s, p, bytes);
  return s;
}

// ---- cp.async: copies from global to shared memory that land when the thread waits ------------------------
// Issue (cp.async.cg.shared.global, 16 bytes, `src_bytes` of them read and the rest zero-filled),
// commit the thread's open copies as a group (cp.async.commit_group), wait until at most `newest`
// groups are still pending (cp.async.wait_group). The copies of a group land in the waiting thread,
// in issue order, when it waits for them: a kernel that reads a stage before waiting reads stale
// data, as it may on a GPU, and other threads see the data only after a barrier (TSan reports the
// access otherwise). Alignment as the PTX ISA requires: 16-byte source and destination.
MOE_EMU_INTERNAL inline void async_copy_16(void* dst, const void* src, int src_bytes, std::source_location loc) {
  block_run& b = this_block();
  if (reinterpret_cast<std::uintptr_t>(dst) % 16 != 0 || reinterpret_cast<std::uintptr_t>(src) % 16 != 0)
    die(b.who() + ": cp.async at " + where(loc) + " with a source or destination not 16-byte aligned");
  if (src_bytes < 0 || src_bytes > 16) die(b.who() + ": cp.async at " + where(loc) + " reads more than 16 bytes");
  async_copy c{dst, 16, {}};
  if (src_bytes > 0) std::memcpy(c.data, src, std::size_t(src_bytes));
  b.current->open_copies.push_back(c);
}
MOE_EMU_INTERNAL inline void async_commit() {
  fiber& f = *this_block().current;
  f.copy_groups.push_back(std::move(f.open_copies));
  f.open_copies.clear();
}
MOE_EMU_INTERNAL inline void async_wait(int newest) {
  fiber& f = *this_block().current;
  while (f.copy_groups.size() > std::size_t(newest)) {
    for (const async_copy& c : f.copy_groups.front()) std::memcpy(c.dst, c.data, std::size_t(c.bytes));
    f.copy_groups.erase(f.copy_groups.begin());
  }
}

// ---- running a grid ------------------------------------------------------------------------------------
MOE_EMU_INTERNAL inline void run_block(block_run& b) {
  std::vector<fiber_slot>& pool = stack_pool();
  while (pool.size() < std::size_t(b.threads)) {
    fiber_slot slot{std::make_unique<char[]>(stack_bytes), nullptr};
#if MOE_EMU_TSAN
    slot.tsan = __tsan_create_fiber(0);
#endif
    pool.push_back(std::move(slot));
  }
  b.fibers.assign(std::size_t(b.threads), fiber{});
  b.warps.assign(std::size_t((b.threads + 31) / 32), warp_state{});
  for (int i = 0; i < b.threads; ++i) {
    fiber& f = b.fibers[std::size_t(i)];
    f.linear = i;
    f.tid = {unsigned(i) % b.block.x, unsigned(i) / b.block.x % b.block.y, unsigned(i) / (b.block.x * b.block.y)};
    ++b.warps[std::size_t(i / 32)].size;
    ++b.warps[std::size_t(i / 32)].lanes;
#if MOE_EMU_ASAN
    // A reused stack still carries the poisoned redzones of the frames of its last fiber.
    __asan_unpoison_memory_region(pool[std::size_t(i)].stack.get(), stack_bytes);
#endif
    start_context(f.context, pool[std::size_t(i)].stack.get(), stack_bytes, fiber_main);
  }
  b.live = b.threads;
  b.block_arrived = 0;
#if MOE_EMU_TSAN
  b.scheduler_tsan = __tsan_get_current_fiber();
  __tsan_release(&b.launch_sync);
#endif
  while (b.live > 0) {
    bool ran = false;
    // Highest thread first: after a barrier, the other threads run ahead of thread (lane) 0, which is
    // the one that usually does serial work, so a missing barrier shows in the results.
    for (auto it = b.fibers.rbegin(); it != b.fibers.rend(); ++it) {
      fiber& f = *it;
      if (f.state != fiber_state::runnable) continue;
      ran = true;
      b.current = &f;
#if MOE_EMU_TSAN
      __tsan_switch_to_fiber(pool[std::size_t(f.linear)].tsan, __tsan_switch_to_fiber_no_sync);
#endif
#if MOE_EMU_ASAN
      __sanitizer_start_switch_fiber(&b.scheduler_fake_stack, pool[std::size_t(f.linear)].stack.get(), stack_bytes);
#endif
      switch_context(b.scheduler, f.context);
#if MOE_EMU_ASAN
      __sanitizer_finish_switch_fiber(b.scheduler_fake_stack, nullptr, nullptr);
#endif
    }
    if (b.live > 0 && !ran) {
      std::string m = std::string(b.kernel) + " block (" + std::to_string(b.block_idx.x) + "," +
                      std::to_string(b.block_idx.y) + "," + std::to_string(b.block_idx.z) + ") deadlocked:";
      int shown = 0;
      for (const fiber& f : b.fibers) {
        if (shown == 8) break;
        if (f.state == fiber_state::done) continue;
        m += " thread " + std::to_string(f.linear) + " waits at " + f.waits_in + " (" + where(f.site) + ");";
        ++shown;
      }
      m += " " + std::to_string(b.threads - b.live) + " threads exited";
      die(m);
    }
  }
#if MOE_EMU_TSAN
  __tsan_acquire(&b.end_sync);
#endif
  b.current = nullptr;
}

// Kernels run one at a time in the process, whichever host thread runs them (one per emulated GPU
// with expert parallelism): their __shared__ arrays are statics.
inline std::mutex& kernel_mutex() {
  static std::mutex m;
  return m;
}

// Runs `body` (the kernel call with its parameters) for every thread of the grid.
MOE_EMU_INTERNAL inline void run_grid(const char* kernel, dim3 grid, dim3 block, const std::function<void()>& body) {
  const std::lock_guard<std::mutex> one_kernel_at_a_time(kernel_mutex());
  block_run b;
  b.kernel = kernel;
  b.grid = grid;
  b.block = block;
  b.threads = int(block.x * block.y * block.z);
  b.body = &body;
  block_run* const outer = active_block();
  if (outer) die(std::string("kernel ") + kernel + " launched from inside kernel " + outer->kernel);
  active_block() = &b;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        b.block_idx = {x, y, z};
        run_block(b);
      }
  active_block() = nullptr;
}

// ---- device functions ------------------------------------------------------------------------------
template <class T>
MOE_EMU_INTERNAL T shfl_xor(unsigned mask, T v, int lane_mask, int width, std::source_location loc) {
  static_assert(sizeof(T) <= 32 && std::is_trivially_copyable_v<T>);
  if (width != 32 || lane_mask < 0 || lane_mask > 31)
    die(this_block().who() + ": __shfl_xor_sync at " + where(loc) + " with width " + std::to_string(width) +
        " and lane mask " + std::to_string(lane_mask) + " (not emulated)");
  deposit(&v, sizeof v);
  warp_barrier("__shfl_xor_sync", mask, loc);
  T out;
  std::memcpy(&out, this_warp().slot[lane_id() ^ lane_mask], sizeof out);
  warp_barrier("__shfl_xor_sync (read)", mask, loc);
  return out;
}

// Every lane of the warp passes the same value (a WMMA pointer or leading dimension).
template <class T>
MOE_EMU_INTERNAL void require_uniform(const char* what, const T& v, std::source_location loc) {
  deposit(&v, sizeof v);
  warp_barrier(what, 0xffffffffu, loc);
  T first;
  std::memcpy(&first, this_warp().slot[0], sizeof first);
  const bool same = std::memcmp(&first, &v, sizeof v) == 0;
  warp_barrier(what, 0xffffffffu, loc);
  if (!same) die(this_block().who() + ": " + what + " at " + where(loc) + " with arguments that differ across the warp");
}

}  // namespace moe_emu

// ---- the CUDA built-ins ------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// One copy for all blocks: kernels run one at a time (run_grid's kernel_mutex) and blocks one after
// another. Plain statics are globals to AddressSanitizer, so __shared__ arrays get redzones
// (thread_local ones would not).
#define __shared__ static

#define threadIdx (::moe_emu::thread_idx())
#define blockIdx (::moe_emu::block_idx())
#define blockDim (::moe_emu::block_dim())
#define gridDim (::moe_emu::grid_dim())

using uint3 = ::moe_emu::uint3;
using dim3 = ::moe_emu::dim3;

inline void __syncthreads(std::source_location loc = std::source_location::current()) {
  ::moe_emu::block_barrier(loc);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, std::source_location loc = std::source_location::current()) {
  ::moe_emu::warp_barrier("__syncwarp", mask, loc, true);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32,
                  std::source_location loc = std::source_location::current()) {
  return ::moe_emu::shfl_xor(mask, v, lane_mask, width, loc);
}
// An atomic minimum (GCC atomics, so ThreadSanitizer sees an atomic, not a race).
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
  unsigned long long old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (v < old && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
