// moe_emu/runtime.hpp — the part of the CUDA runtime API the CUDA space and its tests use, on the host.
//
// MOE_EMU_DEVICES emulated devices (default 1; compute capability 9.0, MOE_EMU_SMS multiprocessors,
// default 1, so that the grid-stride and persistent loops run more than one pass on small tests).
// The current device is per host thread (cudaSetDevice), as in CUDA. Device memory is host memory
// from the allocator (so AddressSanitizer bounds-checks it); allocations are tracked, and a copy or
// memset whose device side leaves its allocation is an error.
//
// Streams are asynchronous: kernels, copies, memsets, cuBLAS, CUB and NCCL calls are queued on their
// stream's device and run in issue order when the host synchronises with that device
// (cudaStreamSynchronize, cudaDeviceSynchronize, cudaEventSynchronize, cudaMemcpy, cudaFree). Code
// that reads device results without synchronising sees stale data, as on a GPU. Host-to-device
// async copies stage their source at the call (pageable memory semantics). A stream being captured
// records its work into a graph instead; cudaGraphLaunch queues the recording. Synchronising calls
// during a capture invalidate it, as CUDA's global capture mode does.
//
// Several host threads may drive devices at once (one thread per GPU, as expert parallelism over
// NCCL does): the runtime's bookkeeping is locked, each device's queue is run by one thread at a
// time, and kernels run one at a time (their __shared__ arrays are statics, see device.hpp).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "moe_emu/device.hpp"

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorInsufficientDriver = 35,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchFailure = 719,
  cudaErrorStreamCaptureUnsupported = 900,
  cudaErrorStreamCaptureInvalidated = 901,
  cudaErrorStreamCaptureWrongThread = 908,
};
using cudaError = cudaError_t;

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};
enum cudaStreamCaptureStatus {
  cudaStreamCaptureStatusNone = 0,
  cudaStreamCaptureStatusActive = 1,
  cudaStreamCaptureStatusInvalidated = 2
};
enum cudaStreamCaptureMode {
  cudaStreamCaptureModeGlobal = 0,
  cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2
};
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16, cudaDevAttrComputeCapabilityMajor = 75,
                      cudaDevAttrComputeCapabilityMinor = 76 };
inline constexpr unsigned cudaStreamDefault = 0x0, cudaStreamNonBlocking = 0x1;

namespace moe_emu {

using op_fn = std::function<void()>;

struct graph_rec {
  std::vector<op_fn> ops;
};

}  // namespace moe_emu

struct CUstream_st {
  unsigned flags = 0;
  int device = 0;                         // the device current when it was created
  moe_emu::graph_rec* capture = nullptr;  // the graph being recorded
  bool capture_invalidated = false;
};
using cudaStream_t = CUstream_st*;
struct CUgraph_st {
  moe_emu::graph_rec rec;
};
using cudaGraph_t = CUgraph_st*;
struct CUgraphExec_st {
  moe_emu::graph_rec rec;
};
using cudaGraphExec_t = CUgraphExec_st*;

namespace moe_emu {

inline int env_count(const char* name, int fallback, int most) {
  const char* e = std::getenv(name);
  const int n = e ? std::atoi(e) : fallback;
  return n < 1 ? fallback : n > most ? most : n;
}
inline int device_count() {
  static const int n = env_count("MOE_EMU_DEVICES", 1, 64);
  return n;
}
inline int multiprocessors() { return env_count("MOE_EMU_SMS", 1, 1024); }

// Per host thread, as in CUDA.
inline int& current_device() {
  static thread_local int d = 0;
  return d;
}
inline cudaError_t& last_error() {
  static thread_local cudaError_t e = cudaSuccess;
  return e;
}

struct allocation {
  std::size_t bytes = 0;
  int device = 0;
};

struct device_queue {
  std::deque<op_fn> ops;    // work in issue order, not yet run
  std::thread::id drainer;  // the thread running it, if any
};

// The runtime's shared bookkeeping; every access holds `m`, which is never held while work runs.
struct runtime_state {
  std::mutex m;
  std::condition_variable drained;  // a device's queue stopped being run
  std::map<std::uintptr_t, allocation> allocations;  // base → size, device
  std::vector<device_queue> queues = std::vector<device_queue>(std::size_t(device_count()));
  int capturing = 0;  // streams being captured
  std::vector<CUstream_st*> capture_streams;
};
inline runtime_state& rt() {
  static runtime_state r;
  return r;
}
inline std::unique_lock<std::mutex> lock_state() { return std::unique_lock<std::mutex>(rt().m); }

inline int device_of(cudaStream_t s) { return s ? s->device : current_device(); }

// Runs everything queued on `device`, in order. If another thread is running that queue, waits until
// it is done (so a synchronising call returns only after the work before it ran).
inline void drain(int device) {
  runtime_state& r = rt();
  std::unique_lock<std::mutex> lock(r.m);
  device_queue& q = r.queues[std::size_t(device)];
  const std::thread::id me = std::this_thread::get_id();
  if (q.drainer == me) return;  // work that synchronises from inside the queue
  r.drained.wait(lock, [&] { return q.drainer == std::thread::id(); });
  q.drainer = me;
  while (!q.ops.empty()) {
    op_fn f = std::move(q.ops.front());
    q.ops.pop_front();
    lock.unlock();  // the work may block (NCCL waits for its peers) or use the runtime
    f();
    lock.lock();
  }
  q.drainer = std::thread::id();
  r.drained.notify_all();
}
inline void drain() { drain(current_device()); }

// Whether a synchronising call is allowed now; invalidates active captures otherwise.
inline bool sync_allowed() {
  const auto lock = lock_state();
  runtime_state& r = rt();
  if (r.capturing == 0) return true;
  for (CUstream_st* s : r.capture_streams) s->capture_invalidated = true;
  return false;
}

inline void enqueue(cudaStream_t s, op_fn f) {
  const auto lock = lock_state();
  if (s && s->capture) {
    s->capture->ops.push_back(std::move(f));
    return;
  }
  rt().queues[std::size_t(device_of(s))].ops.push_back(std::move(f));
}

// The allocation holding p: its base (0 if none) and size.
inline std::pair<std::uintptr_t, allocation> allocation_of(const void* p) {
  const auto lock = lock_state();
  const auto& a = rt().allocations;
  const auto u = reinterpret_cast<std::uintptr_t>(p);
  auto it = a.upper_bound(u);
  if (it == a.begin()) return {0, {}};
  --it;
  if (u >= it->first && u < it->first + (it->second.bytes ? it->second.bytes : 1)) return *it;
  return {0, {}};
}
inline bool is_device(const void* p) { return allocation_of(p).first != 0; }
// A device range [p, p + bytes) inside one allocation.
inline bool device_range(const void* p, std::size_t bytes) {
  const auto [base, a] = allocation_of(p);
  if (!base) return false;
  return reinterpret_cast<std::uintptr_t>(p) + bytes <= base + a.bytes;
}

inline void* allocate(std::size_t bytes) {
  // 256-byte aligned like cudaMalloc, but exactly `bytes` long: AddressSanitizer reports an access
  // one element past the end even where a GPU's allocation granularity would hide it.
  void* p = nullptr;
  if (posix_memalign(&p, 256, bytes ? bytes : 1) != 0) return nullptr;
  const auto lock = lock_state();
  rt().allocations[reinterpret_cast<std::uintptr_t>(p)] = {bytes, current_device()};
  return p;
}
inline cudaError_t release(void* p) {
  if (!p) return cudaSuccess;
  {
    const auto lock = lock_state();
    auto& a = rt().allocations;
    auto it = a.find(reinterpret_cast<std::uintptr_t>(p));
    if (it == a.end()) return cudaErrorInvalidDevicePointer;
    a.erase(it);
  }
  std::free(p);
  return cudaSuccess;
}

inline cudaError_t check_copy(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind) {
  const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (dst_dev && !device_range(dst, bytes)) return cudaErrorInvalidValue;
  if (src_dev && !device_range(src, bytes)) return cudaErrorInvalidValue;
  if (kind == cudaMemcpyDefault) {
    if (is_device(dst) && !device_range(dst, bytes)) return cudaErrorInvalidValue;
    if (is_device(src) && !device_range(src, bytes)) return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

// ---- kernel launches (MOE_CUDA_LAUNCH, moe/cuda/launch.cuh) -----------------------------------------
template <class... P>
struct launcher {
  const char* name;
  dim3 grid, block;
  cudaStream_t stream;
  void (*kernel)(P...);

  template <class... A>
  void operator()(A&&... args) const {
    const unsigned long long threads = 1ull * block.x * block.y * block.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0 || threads > 1024 || block.z > 64 ||
        grid.y > 65535 || grid.z > 65535 || grid.x > 2147483647u) {
      last_error() = cudaErrorInvalidConfiguration;
      return;
    }
    // The parameters are copied at the launch, as CUDA does.
    auto params = std::make_shared<std::tuple<std::decay_t<P>...>>(std::forward<A>(args)...);
    const char* n = name;
    const dim3 g = grid, b = block;
    void (*k)(P...) = kernel;
    enqueue(stream, [n, g, b, k, params] {
      const std::function<void()> body = [k, params] { std::apply(k, *params); };
      run_grid(n, g, b, body);
    });
  }
};
template <class... P>
launcher<P...> launch(const char* name, dim3 grid, dim3 block, cudaStream_t stream, void (*kernel)(P...)) {
  return {name, grid, block, stream, kernel};
}

}  // namespace moe_emu

// ---- errors ------------------------------------------------------------------------------------------
inline const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureWrongThread: return "cudaErrorStreamCaptureWrongThread";
  }
  return "cudaErrorUnknown";
}
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    default: return cudaGetErrorName(e);
  }
}
inline cudaError_t cudaGetLastError() {
  const cudaError_t e = moe_emu::last_error();
  moe_emu::last_error() = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return moe_emu::last_error(); }

// ---- device ------------------------------------------------------------------------------------------
namespace moe_emu {
inline bool valid_device(int d) { return d >= 0 && d < device_count(); }
}  // namespace moe_emu
inline cudaError_t cudaGetDeviceCount(int* n) {
  *n = moe_emu::device_count();
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* d) {
  *d = moe_emu::current_device();
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int d) {
  if (!moe_emu::valid_device(d)) return cudaErrorInvalidDevice;
  moe_emu::current_device() = d;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int device) {
  if (!moe_emu::valid_device(device)) return cudaErrorInvalidDevice;
  switch (a) {
    case cudaDevAttrMultiProcessorCount: *v = moe_emu::multiprocessors(); return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *v = 9; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *v = 0; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}
inline cudaError_t cudaDeviceSynchronize() {
  if (!moe_emu::sync_allowed()) return cudaErrorStreamCaptureUnsupported;
  moe_emu::drain();
  return cudaSuccess;
}

// ---- memory ------------------------------------------------------------------------------------------
inline cudaError_t cudaMalloc(void** p, std::size_t bytes) {
  if (!moe_emu::sync_allowed()) return cudaErrorStreamCaptureUnsupported;
  *p = moe_emu::allocate(bytes);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
template <class T>
cudaError_t cudaMalloc(T** p, std::size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(p), bytes);
}
inline cudaError_t cudaFree(void* p) {
  if (!moe_emu::sync_allowed()) return cudaErrorStreamCaptureUnsupported;
  const auto [base, a] = moe_emu::allocation_of(p);
  moe_emu::drain(base ? a.device : moe_emu::current_device());  // cudaFree waits for the device
  return moe_emu::release(p);
}
inline cudaError_t cudaMallocAsync(void** p, std::size_t bytes, cudaStream_t s) {
  if (s && s->capture) return cudaErrorStreamCaptureUnsupported;  // graph memory nodes are not emulated
  *p = moe_emu::allocate(bytes);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
template <class T>
cudaError_t cudaMallocAsync(T** p, std::size_t bytes, cudaStream_t s) {
  return cudaMallocAsync(reinterpret_cast<void**>(p), bytes, s);
}
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t s) {
  if (s && s->capture) return cudaErrorStreamCaptureUnsupported;
  if (p && !moe_emu::is_device(p)) return cudaErrorInvalidDevicePointer;
  moe_emu::enqueue(s, [p] { moe_emu::release(p); });
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind) {
  if (!moe_emu::sync_allowed()) return cudaErrorStreamCaptureUnsupported;
  if (const cudaError_t e = moe_emu::check_copy(dst, src, bytes, kind)) return e;
  moe_emu::drain();
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind,
                                   cudaStream_t s = nullptr) {
  if (const cudaError_t e = moe_emu::check_copy(dst, src, bytes, kind)) return e;
  if (!bytes) return cudaSuccess;
  if (!moe_emu::is_device(src)) {
    // A pageable host source is staged before the call returns.
    auto staged = std::make_shared<std::vector<unsigned char>>(static_cast<const unsigned char*>(src),
                                                               static_cast<const unsigned char*>(src) + bytes);
    moe_emu::enqueue(s, [dst, staged] { std::memcpy(dst, staged->data(), staged->size()); });
    return cudaSuccess;
  }
  moe_emu::enqueue(s, [dst, src, bytes] { std::memmove(dst, src, bytes); });
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* dst, int value, std::size_t bytes, cudaStream_t s = nullptr) {
  if (bytes && !moe_emu::device_range(dst, bytes)) return cudaErrorInvalidValue;
  moe_emu::enqueue(s, [dst, value, bytes] { std::memset(dst, value, bytes); });
  return cudaSuccess;
}
inline cudaError_t cudaMemset(void* dst, int value, std::size_t bytes) {
  if (!moe_emu::sync_allowed()) return cudaErrorStreamCaptureUnsupported;
  if (bytes && !moe_emu::device_range(dst, bytes)) return cudaErrorInvalidValue;
  moe_emu::drain();
  std::memset(dst, value, bytes);
  return cudaSuccess;
}

// ---- streams and graphs ------------------------------------------------------------------------------
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags) {
  *s = new CUstream_st{flags, moe_emu::current_device(), nullptr, false};
  return cudaSuccess;
}
inline cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }
inline cudaError_t cudaStreamDestroy(cudaStream_t s) {
  if (!s) return cudaErrorInvalidValue;
  moe_emu::drain(s->device);
  delete s;
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  if (!moe_emu::sync_allowed()) return cudaErrorStreamCaptureUnsupported;
  moe_emu::drain(moe_emu::device_of(s));
  return cudaSuccess;
}
inline cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* status) {
  *status = s && s->capture ? (s->capture_invalidated ? cudaStreamCaptureStatusInvalidated
                                                      : cudaStreamCaptureStatusActive)
                            : cudaStreamCaptureStatusNone;
  return cudaSuccess;
}
inline cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode) {
  if (!s || s->capture) return cudaErrorInvalidValue;
  if (mode != cudaStreamCaptureModeGlobal) return cudaErrorInvalidValue;  // only global mode is emulated
  const auto lock = moe_emu::lock_state();
  s->capture = new moe_emu::graph_rec;
  s->capture_invalidated = false;
  ++moe_emu::rt().capturing;
  moe_emu::rt().capture_streams.push_back(s);
  return cudaSuccess;
}
inline cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph) {
  const auto lock = moe_emu::lock_state();
  if (!s || !s->capture) return cudaErrorInvalidValue;
  auto& r = moe_emu::rt();
  --r.capturing;
  std::erase(r.capture_streams, s);
  std::unique_ptr<moe_emu::graph_rec> rec(s->capture);
  s->capture = nullptr;
  if (s->capture_invalidated) {
    s->capture_invalidated = false;
    *graph = nullptr;
    return cudaErrorStreamCaptureInvalidated;
  }
  *graph = new CUgraph_st{std::move(*rec)};
  return cudaSuccess;
}
inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long = 0) {
  if (!graph) return cudaErrorInvalidValue;
  *exec = new CUgraphExec_st{graph->rec};
  return cudaSuccess;
}
inline cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
  if (!exec) return cudaErrorInvalidValue;
  for (const moe_emu::op_fn& f : exec->rec.ops) moe_emu::enqueue(s, f);
  return cudaSuccess;
}
inline cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete exec;
  return cudaSuccess;
}
inline cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  delete graph;
  return cudaSuccess;
}

// ---- events and device facts (the benchmarks' timing; the emulator's times mean nothing) ----------
struct CUevent_st {
  double ms = 0;   // host clock when the queue reached the record
  int device = 0;  // of the stream it was last recorded on
};
using cudaEvent_t = CUevent_st*;
inline cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = new CUevent_st;
  return cudaSuccess;
}
inline cudaError_t cudaEventDestroy(cudaEvent_t e) {
  if (!e) return cudaErrorInvalidValue;
  moe_emu::drain(e->device);
  delete e;
  return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr) {
  if (!e) return cudaErrorInvalidValue;
  e->device = moe_emu::device_of(s);
  moe_emu::enqueue(s, [e] {
    e->ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
  });
  return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  if (!e) return cudaErrorInvalidValue;
  if (!moe_emu::sync_allowed()) return cudaErrorStreamCaptureUnsupported;
  moe_emu::drain(e->device);
  return cudaSuccess;
}
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  if (!a || !b) return cudaErrorInvalidValue;
  *ms = float(b->ms - a->ms);
  return cudaSuccess;
}
struct cudaDeviceProp {
  char name[256] = "moe_emu (host emulator of a CUDA device)";
  int multiProcessorCount = 1;
  int major = 9, minor = 0;
};
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device) {
  if (!moe_emu::valid_device(device)) return cudaErrorInvalidDevice;
  *p = cudaDeviceProp{};
  p->multiProcessorCount = moe_emu::multiprocessors();
  return cudaSuccess;
}
inline cudaError_t cudaDriverGetVersion(int* v) {
  *v = 0;
  return cudaSuccess;
}
inline cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = 0;
  return cudaSuccess;
}
