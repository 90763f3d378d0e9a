// moe_emu/runtime.hpp — the part of the CUDA runtime API the CUDA space and its tests use, on the host.
//
// One emulated device (compute capability 9.0, MOE_EMU_SMS multiprocessors, default 1, so that the
// grid-stride and persistent loops run more than one pass on small tests). Device memory is host
// memory from the allocator (so AddressSanitizer bounds-checks it); allocations are tracked, and a
// copy or memset whose device side leaves its allocation is an error.
//
// Streams are asynchronous: kernels, copies, memsets, cuBLAS and CUB calls are queued and run in
// issue order when the host synchronises (cudaStreamSynchronize, cudaDeviceSynchronize, cudaMemcpy,
// cudaFree). Code that reads device results without synchronising sees stale data, as on a GPU.
// Host-to-device async copies stage their source at the call (pageable memory semantics). A stream
// being captured records its work into a graph instead; cudaGraphLaunch queues the recording.
// Synchronising calls during a capture invalidate it, as CUDA's global capture mode does.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
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

struct device_state {
  std::map<std::uintptr_t, std::size_t> allocations;  // base → bytes
  std::deque<op_fn> queue;                             // work in issue order, not yet run
  cudaError_t last_error = cudaSuccess;                // cudaGetLastError
  int capturing = 0;                                   // streams being captured
  std::vector<CUstream_st*> capture_streams;
  bool draining = false;
};
inline device_state& dev() {
  static device_state d;
  return d;
}

inline int multiprocessors() {
  const char* e = std::getenv("MOE_EMU_SMS");
  const int n = e ? std::atoi(e) : 1;
  return n > 0 ? n : 1;
}

// Runs everything queued, in order.
inline void drain() {
  device_state& d = dev();
  if (d.draining) return;
  d.draining = true;
  while (!d.queue.empty()) {
    op_fn f = std::move(d.queue.front());
    d.queue.pop_front();
    f();
  }
  d.draining = false;
}

// Whether a synchronising call is allowed now; invalidates active captures otherwise.
inline bool sync_allowed() {
  device_state& d = dev();
  if (d.capturing == 0) return true;
  for (CUstream_st* s : d.capture_streams) s->capture_invalidated = true;
  return false;
}

inline void enqueue(cudaStream_t s, op_fn f) {
  if (s && s->capture) {
    s->capture->ops.push_back(std::move(f));
    return;
  }
  dev().queue.push_back(std::move(f));
}

// The allocation holding p, or {0, 0}.
inline std::pair<std::uintptr_t, std::size_t> allocation_of(const void* p) {
  const auto& a = dev().allocations;
  const auto u = reinterpret_cast<std::uintptr_t>(p);
  auto it = a.upper_bound(u);
  if (it == a.begin()) return {0, 0};
  --it;
  if (u >= it->first && u < it->first + (it->second ? it->second : 1)) return *it;
  return {0, 0};
}
inline bool is_device(const void* p) { return allocation_of(p).first != 0; }
// A device range [p, p + bytes) inside one allocation.
inline bool device_range(const void* p, std::size_t bytes) {
  const auto [base, size] = allocation_of(p);
  if (!base) return false;
  return reinterpret_cast<std::uintptr_t>(p) + bytes <= base + size;
}

inline void* allocate(std::size_t bytes) {
  // 256-byte aligned like cudaMalloc, but exactly `bytes` long: AddressSanitizer reports an access
  // one element past the end even where a GPU's allocation granularity would hide it.
  void* p = nullptr;
  if (posix_memalign(&p, 256, bytes ? bytes : 1) != 0) return nullptr;
  dev().allocations[reinterpret_cast<std::uintptr_t>(p)] = bytes;
  return p;
}
inline cudaError_t release(void* p) {
  if (!p) return cudaSuccess;
  auto& a = dev().allocations;
  auto it = a.find(reinterpret_cast<std::uintptr_t>(p));
  if (it == a.end()) return cudaErrorInvalidDevicePointer;
  a.erase(it);
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
      dev().last_error = cudaErrorInvalidConfiguration;
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
  const cudaError_t e = moe_emu::dev().last_error;
  moe_emu::dev().last_error = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return moe_emu::dev().last_error; }

// ---- device ------------------------------------------------------------------------------------------
inline cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
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
  moe_emu::drain();  // cudaFree waits for the device
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
  *s = new CUstream_st{flags, nullptr, false};
  return cudaSuccess;
}
inline cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }
inline cudaError_t cudaStreamDestroy(cudaStream_t s) {
  if (!s) return cudaErrorInvalidValue;
  moe_emu::drain();
  delete s;
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) {
  if (!moe_emu::sync_allowed()) return cudaErrorStreamCaptureUnsupported;
  moe_emu::drain();
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
  s->capture = new moe_emu::graph_rec;
  s->capture_invalidated = false;
  ++moe_emu::dev().capturing;
  moe_emu::dev().capture_streams.push_back(s);
  return cudaSuccess;
}
inline cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph) {
  if (!s || !s->capture) return cudaErrorInvalidValue;
  auto& d = moe_emu::dev();
  --d.capturing;
  std::erase(d.capture_streams, s);
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
  double ms = 0;  // host clock when the queue reached the record
};
using cudaEvent_t = CUevent_st*;
inline cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = new CUevent_st;
  return cudaSuccess;
}
inline cudaError_t cudaEventDestroy(cudaEvent_t e) {
  moe_emu::drain();
  delete e;
  return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr) {
  if (!e) return cudaErrorInvalidValue;
  moe_emu::enqueue(s, [e] {
    e->ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
  });
  return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  if (!e) return cudaErrorInvalidValue;
  if (!moe_emu::sync_allowed()) return cudaErrorStreamCaptureUnsupported;
  moe_emu::drain();
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
  if (device != 0) return cudaErrorInvalidDevice;
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
