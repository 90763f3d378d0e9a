// The kernel emulator itself (tests/emu/include): that its built-ins compute what CUDA's do, that
// the runtime is asynchronous and captures graphs as CUDA does, that NCCL between its devices moves
// what NCCL moves (through moe::nccl_communicator too), and that each check it promises fires (the
// misuses run in a child process, which must abort with the emulator's message). The test's
// environment has MOE_EMU_DEVICES=4.
#include <doctest/doctest.h>

#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <mma.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <csignal>
#include <cstdint>
#include <string>
#include <vector>

#include <cub/device/device_radix_sort.cuh>
#include <nccl.h>

#include <functional>
#include <numeric>
#include <thread>
#include <utility>

#include <moe/cuda/async_copy.cuh>
#include <moe/parallel/nccl.cuh>

namespace {

// What a misuse scenario did in its own process: this binary again, running only the test case
// "emulator child" with MOE_EMU_CHILD=<scenario> (a fresh process rather than a fork: ThreadSanitizer's
// state does not survive a fork well).
struct child_result {
  bool aborted = false;  // killed by SIGABRT (the emulator's reports)
  int exit_code = -1;
  std::string output;    // stdout and stderr
};
child_result run_child(const std::string& scenario) {
  char self[4096] = {};
  REQUIRE(readlink("/proc/self/exe", self, sizeof self - 1) > 0);
  // A short NCCL wait: the scenarios of a missing peer end after a second.
  const std::string command =
      "MOE_EMU_CHILD=" + scenario + " MOE_EMU_NCCL_TIMEOUT=1 '" + self + "' -tc='emulator child' 2>&1";
  std::fflush(stdout);
  FILE* p = popen(command.c_str(), "r");
  REQUIRE(p);
  child_result r;
  char buf[512];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) r.output.append(buf, n);
  const int status = pclose(p);
  // The shell either runs the binary itself (a signal) or reports its death as 128 + signal.
  r.aborted = (WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT) ||
              (WIFEXITED(status) && WEXITSTATUS(status) == 128 + SIGABRT);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

void check_aborts_with(const std::string& scenario, const std::string& message) {
  const child_result r = run_child(scenario);
  INFO("scenario ", scenario, ", child output: ", r.output);
  CHECK(r.aborted);
  CHECK(r.output.find("moe_emu: ") != std::string::npos);
  CHECK(r.output.find(message) != std::string::npos);
}

template <class T>
T* device_alloc(std::size_t n) {
  T* p = nullptr;
  REQUIRE(cudaMalloc(&p, n * sizeof(T)) == cudaSuccess);
  return p;
}
template <class T>
std::vector<T> to_host(const T* p, std::size_t n) {
  std::vector<T> h(n);
  REQUIRE(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
  return h;
}

// ---- kernels ----------------------------------------------------------------------------------------
void shuffle_kernel(int* sums, int* partners) {
  const int lane = int(threadIdx.x) % 32;
  int v = lane + 100 * int(threadIdx.x / 32);
  partners[threadIdx.x] = __shfl_xor_sync(0xffffffffu, v, 5);
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  sums[threadIdx.x] = v;
}

void rotate_kernel(const int* in, int* out) {
  __shared__ int s[128];
  s[threadIdx.x] = in[blockIdx.x * blockDim.x + threadIdx.x];
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

// A 16×16×16 WMMA product of bf16 tiles (A row-major, B column-major) into float, stored row-major.
void wmma_kernel(const __nv_bfloat16* a, const __nv_bfloat16* b, float* c) {
  namespace wmma = nvcuda::wmma;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> af;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> bf;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 1.0f);
  wmma::load_matrix_sync(af, a, 16);
  wmma::load_matrix_sync(bf, b, 16);
  wmma::mma_sync(acc, af, bf, acc);
  wmma::store_matrix_sync(c, acc, 16, wmma::mem_row_major);
}

// cp.async (moe/cuda/async_copy.cuh): each of 64 threads copies 16 bytes (four ints) into one
// shared array and zero-fills 16 in another, in two groups, and records what its shared memory held
// before any wait (the markers), after waiting for the first group, and after the second and a barrier
// (a neighbour's pieces).
void async_copy_kernel(const int* in, int* out) {
  namespace cd = moe::cuda_detail;
  __shared__ __align__(16) int s[2][64 * 4];
  const int t = int(threadIdx.x), next = (t + 1) % 64;
  s[0][4 * t] = s[0][4 * t + 3] = s[1][4 * t] = -1;
  cd::async_copy_16(&s[0][4 * t], in + 4 * t, 16);
  cd::async_copy_commit();
  cd::async_copy_16(&s[1][4 * t], in, 0);
  cd::async_copy_commit();
  out[4 * t] = s[0][4 * t];  // no wait yet: the marker
  cd::async_copy_wait<1>();
  out[4 * t + 1] = s[0][4 * t + 3];  // the first group has landed
  out[4 * t + 2] = s[1][4 * t];      // the second has not: the marker
  cd::async_copy_wait<0>();
  __syncthreads();
  out[4 * t + 3] = s[1][4 * next + 2] + s[0][4 * next + 1];  // zeros + the neighbour's copy
}
void async_unwaited_kernel(const int* in) {
  __shared__ __align__(16) int s[4];
  if (threadIdx.x == 0) {
    moe::cuda_detail::async_copy_16(s, in, 16);
    moe::cuda_detail::async_copy_commit();
  }
}
void async_misaligned_kernel(const int* in) {
  __shared__ __align__(16) int s[4];
  moe::cuda_detail::async_copy_16(s, in + 1, 16);
  moe::cuda_detail::async_copy_commit();
  moe::cuda_detail::async_copy_wait<0>();
}

void two_barriers_kernel() {
  if (threadIdx.x < 32)
    __syncthreads();
  else
    __syncthreads();
}
void early_exit_kernel() {
  if (threadIdx.x >= 32) return;
  __syncthreads();
}
void lane_exit_kernel(int* out) {
  if (threadIdx.x % 32 == 7) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, int(threadIdx.x), 1);
}
void partial_mask_kernel(int* out) { out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, int(threadIdx.x), 1); }
void misaligned_wmma_kernel(const __nv_bfloat16* a) {
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __nv_bfloat16, nvcuda::wmma::row_major> af;
  nvcuda::wmma::load_matrix_sync(af, a + 8, 16);  // 16 bytes past a 256-byte aligned base
}
void bad_ldm_wmma_kernel(const __nv_bfloat16* a) {
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __nv_bfloat16, nvcuda::wmma::row_major> af;
  nvcuda::wmma::load_matrix_sync(af, a, 20);  // 40 bytes
}
void divergent_wmma_kernel(const __nv_bfloat16* a) {
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __nv_bfloat16, nvcuda::wmma::row_major> af;
  nvcuda::wmma::load_matrix_sync(af, a + (threadIdx.x % 2) * 256, 16);  // lanes disagree on the tile
}
// Races: a shared-memory exchange without its __syncthreads, and one between lanes of a warp
// without its __syncwarp.
void racy_block_kernel(int* out) {
  __shared__ int s[64];
  s[threadIdx.x] = int(threadIdx.x);
  out[threadIdx.x] = s[(threadIdx.x + 1) % 64];
}
void racy_warp_kernel(int* out) {
  __shared__ int s[32];
  s[threadIdx.x] = int(threadIdx.x) * 2;
  if (threadIdx.x == 0) {
    int sum = 0;
    for (int i = 0; i < 32; ++i) sum += s[i];
    out[0] = sum;
  }
}
// A shuffle converges the warp but is no memory barrier: lane 0 still races with the other lanes.
void racy_shuffle_kernel(int* out) {
  __shared__ int s[32];
  s[threadIdx.x] = int(threadIdx.x) * 3;
  const int v = __shfl_xor_sync(0xffffffffu, int(threadIdx.x), 1);
  if (threadIdx.x == 0) {
    int sum = v;
    for (int i = 0; i < 32; ++i) sum += s[i];
    out[0] = sum;
  }
}
void fill_kernel(int* out, int n) {
  for (int i = int(blockIdx.x * blockDim.x + threadIdx.x); i < n; i += int(blockDim.x * gridDim.x)) out[i] = 3 * i;
}
template <class T>
void iota_kernel(T* out, int n, T base) {
  for (int i = int(blockIdx.x * blockDim.x + threadIdx.x); i < n; i += int(blockDim.x * gridDim.x))
    out[i] = base + T(i);
}

// Runs body(rank, comm, stream) on `ranks` host threads, rank r on emulated GPU r with a stream of
// its own, and waits for every stream: what moe-train --device cuda --ranks does. A body that hands
// the communicator to an owner (moe::nccl_communicator) sets `comm` to null.
void on_ranks(int ranks, const std::function<void(int, ncclComm_t&, cudaStream_t)>& body) {
  int devices = 0;
  REQUIRE(cudaGetDeviceCount(&devices) == cudaSuccess);
  REQUIRE_MESSAGE(devices >= ranks, "the test's environment sets MOE_EMU_DEVICES=4");
  std::vector<ncclComm_t> comms(static_cast<std::size_t>(ranks), nullptr);
  std::vector<int> ids(static_cast<std::size_t>(ranks));
  std::iota(ids.begin(), ids.end(), 0);
  REQUIRE(ncclCommInitAll(comms.data(), ranks, ids.data()) == ncclSuccess);
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r)
    threads.emplace_back([&, r] {
      cudaSetDevice(r);
      cudaStream_t s = nullptr;
      cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
      body(r, comms[std::size_t(r)], s);
      cudaStreamSynchronize(s);
      cudaStreamDestroy(s);
      if (comms[std::size_t(r)]) ncclCommDestroy(comms[std::size_t(r)]);
    });
  for (auto& t : threads) t.join();
  cudaSetDevice(0);
}

// A device buffer's contents, after its device's work (from any thread).
template <class T>
std::vector<T> device_contents(const T* p, std::size_t n, int device) {
  cudaSetDevice(device);
  std::vector<T> h(n);
  cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost);
  return h;
}

std::vector<__nv_bfloat16> bf16_tile(std::uint32_t seed) {
  std::vector<__nv_bfloat16> t(256);
  for (int i = 0; i < 256; ++i) {
    seed = seed * 1664525u + 1013904223u;
    const float v = float(int(seed >> 24) - 128) / 64.0f;  // exactly representable in bf16
    std::uint32_t u;
    std::memcpy(&u, &v, sizeof u);
    t[std::size_t(i)] = __ushort_as_bfloat16(static_cast<unsigned short>(u >> 16));
  }
  return t;
}

}  // namespace

TEST_CASE("built-ins: warp shuffles, block barriers, grid-stride indices") {
  int* sums = device_alloc<int>(64);
  int* partners = device_alloc<int>(64);
  moe_emu::launch("shuffle_kernel", 1, 64, nullptr, shuffle_kernel)(sums, partners);
  const auto s = to_host(sums, 64), p = to_host(partners, 64);
  for (int t = 0; t < 64; ++t) {
    const int w = t / 32, lane = t % 32;
    CHECK(s[std::size_t(t)] == 496 + 3200 * w);
    CHECK(p[std::size_t(t)] == (lane ^ 5) + 100 * w);
  }
  std::vector<int> in(256);
  for (int i = 0; i < 256; ++i) in[std::size_t(i)] = 7 * i + 1;
  int* din = device_alloc<int>(256);
  int* dout = device_alloc<int>(256);
  REQUIRE(cudaMemcpy(din, in.data(), 256 * sizeof(int), cudaMemcpyHostToDevice) == cudaSuccess);
  moe_emu::launch("rotate_kernel", 2, 128, nullptr, rotate_kernel)(din, dout);
  const auto r = to_host(dout, 256);
  for (int b = 0; b < 2; ++b)
    for (int t = 0; t < 128; ++t) CHECK(r[std::size_t(b * 128 + t)] == in[std::size_t(b * 128 + (t + 1) % 128)]);
  moe_emu::launch("fill_kernel", dim3(3), dim3(32), nullptr, fill_kernel)(dout, 250);
  const auto f = to_host(dout, 256);
  for (int i = 0; i < 250; ++i) CHECK(f[std::size_t(i)] == 3 * i);
  for (int* q : {sums, partners, din, dout}) cudaFree(q);
}

TEST_CASE("WMMA: a 16x16x16 bf16 product with float accumulation, row- and column-major tiles") {
  const auto a = bf16_tile(1), b = bf16_tile(2);
  auto* da = device_alloc<__nv_bfloat16>(256);
  auto* db = device_alloc<__nv_bfloat16>(256);
  float* dc = device_alloc<float>(256);
  cudaMemcpy(da, a.data(), 512, cudaMemcpyHostToDevice);
  cudaMemcpy(db, b.data(), 512, cudaMemcpyHostToDevice);
  moe_emu::launch("wmma_kernel", 1, 32, nullptr, wmma_kernel)(da, db, dc);
  const auto c = to_host(dc, 256);
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      double ref = 1.0;
      for (int p = 0; p < 16; ++p)
        ref += double(float(a[std::size_t(i * 16 + p)])) * double(float(b[std::size_t(j * 16 + p)]));
      CHECK(c[std::size_t(i * 16 + j)] == doctest::Approx(ref).epsilon(1e-6));
    }
  cudaFree(da);
  cudaFree(db);
  cudaFree(dc);
}

TEST_CASE("cp.async: a copy lands when its thread waits for its group, zero-filled where nothing is read") {
  std::vector<int> in(256);
  for (int i = 0; i < 256; ++i) in[std::size_t(i)] = 3 * i + 7;
  int* din = device_alloc<int>(256);
  int* dout = device_alloc<int>(256);
  REQUIRE(cudaMemcpy(din, in.data(), sizeof(int) * 256, cudaMemcpyHostToDevice) == cudaSuccess);
  moe_emu::launch("async_copy_kernel", 1, 64, nullptr, async_copy_kernel)(din, dout);
  const auto out = to_host(dout, 256);
  for (int t = 0; t < 64; ++t) {
    const std::size_t o = std::size_t(4 * t);
    CHECK(out[o] == -1);
    CHECK(out[o + 1] == in[o + 3]);
    CHECK(out[o + 2] == -1);
    CHECK(out[o + 3] == in[std::size_t(4 * ((t + 1) % 64) + 1)]);
  }
  cudaFree(din);
  cudaFree(dout);
}

TEST_CASE("the runtime: work is asynchronous until the host synchronises") {
  cudaStream_t s = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
  int* d = device_alloc<int>(4);
  std::vector<int> h(4, -1);
  REQUIRE(cudaMemsetAsync(d, 0, 4 * sizeof(int), s) == cudaSuccess);
  REQUIRE(cudaMemcpyAsync(h.data(), d, 4 * sizeof(int), cudaMemcpyDeviceToHost, s) == cudaSuccess);
  CHECK(h[0] == -1);  // not run yet
  REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
  CHECK(h == std::vector<int>(4, 0));
  // A host-to-device copy stages its source at the call.
  std::vector<int> src{1, 2, 3, 4};
  REQUIRE(cudaMemcpyAsync(d, src.data(), 4 * sizeof(int), cudaMemcpyHostToDevice, s) == cudaSuccess);
  src.assign(4, 9);
  CHECK(to_host(d, 4) == std::vector<int>{1, 2, 3, 4});
  // Copies whose device side leaves its allocation, and bad launch shapes, are errors.
  const std::vector<int> five(5, 1);
  CHECK(cudaMemcpy(d, five.data(), 5 * sizeof(int), cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
  CHECK(cudaMemsetAsync(d + 1, 0, 4 * sizeof(int), s) == cudaErrorInvalidValue);
  moe_emu::launch("fill_kernel", 1, 2048, s, fill_kernel)(d, 4);
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  CHECK(cudaGetLastError() == cudaSuccess);
  cudaFree(d);
  cudaStreamDestroy(s);
}

TEST_CASE("the runtime: graph capture records and replays; synchronising during a capture invalidates it") {
  cudaStream_t s = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
  int* d = device_alloc<int>(8);
  REQUIRE(cudaMemset(d, 0, 8 * sizeof(int)) == cudaSuccess);
  REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal) == cudaSuccess);
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  REQUIRE(cudaStreamIsCapturing(s, &status) == cudaSuccess);
  CHECK(status == cudaStreamCaptureStatusActive);
  moe_emu::launch("fill_kernel", 1, 32, s, fill_kernel)(d, 8);
  cudaGraph_t graph = nullptr;
  REQUIRE(cudaStreamEndCapture(s, &graph) == cudaSuccess);
  CHECK(to_host(d, 8) == std::vector<int>(8, 0));  // captured, not run
  cudaGraphExec_t exec = nullptr;
  REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
  REQUIRE(cudaGraphLaunch(exec, s) == cudaSuccess);
  CHECK(to_host(d, 8) == std::vector<int>{0, 3, 6, 9, 12, 15, 18, 21});
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);

  REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal) == cudaSuccess);
  CHECK(cudaStreamSynchronize(s) == cudaErrorStreamCaptureUnsupported);
  CHECK(cudaStreamEndCapture(s, &graph) == cudaErrorStreamCaptureInvalidated);
  cudaFree(d);
  cudaStreamDestroy(s);
}

TEST_CASE("cuBLAS and CUB stand-ins: results, argument checks, scratch size") {
  cublasHandle_t h = nullptr;
  REQUIRE(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS);
  // Column-major C[2×2] = Aᵀ · B with A [3×2] (lda 3), B [3×2] (ldb 3).
  const std::vector<float> a{1, 2, 3, 4, 5, 6}, b{1, 0, 1, 2, 1, 0};
  float* da = device_alloc<float>(6);
  float* db = device_alloc<float>(6);
  float* dc = device_alloc<float>(4);
  cudaMemcpy(da, a.data(), 24, cudaMemcpyHostToDevice);
  cudaMemcpy(db, b.data(), 24, cudaMemcpyHostToDevice);
  const float one = 1, zero = 0;
  CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, 2, 2, 3, &one, da, CUDA_R_32F, 3, db, CUDA_R_32F, 3, &zero, dc,
                     CUDA_R_32F, 2, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS);
  CHECK(to_host(dc, 4) == std::vector<float>{4, 10, 4, 13});
  CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 2, 3, &one, da, CUDA_R_32F, 3, db, CUDA_R_32F, 3, &zero, dc,
                     CUDA_R_32F, 4, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_INVALID_VALUE);  // lda < m
  cublasDestroy(h);

  const std::vector<std::uint64_t> keys{5, 1, 5, 0, 1};
  const std::vector<int> values{0, 1, 2, 3, 4};
  auto* dk = device_alloc<std::uint64_t>(5);
  auto* dk2 = device_alloc<std::uint64_t>(5);
  int* dv = device_alloc<int>(5);
  int* dv2 = device_alloc<int>(5);
  cudaMemcpy(dk, keys.data(), sizeof(std::uint64_t) * 5, cudaMemcpyHostToDevice);
  cudaMemcpy(dv, values.data(), sizeof(int) * 5, cudaMemcpyHostToDevice);
  std::size_t bytes = 0;
  REQUIRE(cub::DeviceRadixSort::SortPairs(nullptr, bytes, dk, dk2, dv, dv2, 5, 0, 3) == cudaSuccess);
  void* tmp = nullptr;
  REQUIRE(cudaMalloc(&tmp, bytes) == cudaSuccess);
  std::size_t short_bytes = bytes - 1;
  CHECK(cub::DeviceRadixSort::SortPairs(tmp, short_bytes, dk, dk2, dv, dv2, 5, 0, 3) == cudaErrorInvalidValue);
  REQUIRE(cub::DeviceRadixSort::SortPairs(tmp, bytes, dk, dk2, dv, dv2, 5, 0, 3) == cudaSuccess);
  CHECK(to_host(dv2, 5) == std::vector<int>{3, 1, 4, 0, 2});  // stable
  for (void* q : {static_cast<void*>(da), static_cast<void*>(db), static_cast<void*>(dc), static_cast<void*>(dk),
                  static_cast<void*>(dk2), static_cast<void*>(dv), static_cast<void*>(dv2), tmp})
    cudaFree(q);
}

TEST_CASE("NCCL between emulated GPUs: moe::nccl_communicator's exchanges, one host thread per GPU") {
  const int R = 3;
  // Rank r sends (r + 1)(q + 1) ints to rank q, none to itself when r = q = 1 (a zero-size block,
  // which the communicator skips on both sides); each block is filled by a kernel on the sender's
  // stream just before the exchange, so stream order matters.
  const auto count = [](int from, int to) { return from == 1 && to == 1 ? 0 : (from + 1) * (to + 1); };
  std::vector<std::vector<int>> received(R);
  std::vector<std::vector<double>> reduced(R);
  std::vector<std::vector<float>> reduced_f(R), fixed(R), gathered(R);
  std::vector<int> device(R, -1);
  std::vector<std::string> errors(R);
  on_ranks(R, [&](int r, ncclComm_t& raw, cudaStream_t s) {
    try {
      int dev = -1;
      ncclCommCuDevice(raw, &dev);
      device[std::size_t(r)] = dev;
      moe::nccl_communicator comm(std::exchange(raw, nullptr), s);
      std::vector<std::size_t> send(R), recv(R);
      std::size_t out = 0, in = 0;
      for (int q = 0; q < R; ++q) {
        send[std::size_t(q)] = sizeof(int) * std::size_t(count(r, q));
        recv[std::size_t(q)] = sizeof(int) * std::size_t(count(q, r));
        out += send[std::size_t(q)];
        in += recv[std::size_t(q)];
      }
      int *src = nullptr, *dst = nullptr;
      cudaMalloc(&src, out);
      cudaMalloc(&dst, in);
      for (int q = 0, off = 0; q < R; off += count(r, q), ++q)  // block for q: 1000 r + 100 q + i
        if (count(r, q))
          moe_emu::launch("iota_kernel", 1, 64, s, iota_kernel<int>)(src + off, count(r, q), 1000 * r + 100 * q);
      comm.all_to_all_v(src, send.data(), dst, recv.data());

      // In-place sums: rank r contributes r + i/2 (double) and r·i (float).
      double* d = nullptr;
      float* f = nullptr;
      cudaMalloc(&d, 5 * sizeof(double));
      cudaMalloc(&f, 5 * sizeof(float));
      moe_emu::launch("iota_kernel", 1, 32, s, iota_kernel<double>)(d, 5, double(r));
      moe_emu::launch("iota_kernel", 1, 32, s, iota_kernel<float>)(f, 5, float(10 * r));
      comm.all_reduce_sum(d, 5);
      comm.all_reduce_sum(f, 5);
      // Fixed-size blocks: rank r sends 2 floats to each rank; every rank's 2 floats gathered.
      float *a = nullptr, *b = nullptr, *g = nullptr;
      cudaMalloc(&a, 2 * R * sizeof(float));
      cudaMalloc(&b, 2 * R * sizeof(float));
      cudaMalloc(&g, 2 * R * sizeof(float));
      moe_emu::launch("iota_kernel", 1, 32, s, iota_kernel<float>)(a, 2 * R, float(100 * r));
      comm.all_to_all(a, b, 2 * sizeof(float));
      comm.all_gather(a, 2 * sizeof(float), g);
      comm.barrier();  // synchronises the stream: every result is in place
      received[std::size_t(r)] = device_contents(dst, in / sizeof(int), r);
      reduced[std::size_t(r)] = device_contents(d, 5, r);
      reduced_f[std::size_t(r)] = device_contents(f, 5, r);
      fixed[std::size_t(r)] = device_contents(b, 2 * R, r);
      gathered[std::size_t(r)] = device_contents(g, 2 * R, r);
      for (void* p : {static_cast<void*>(src), static_cast<void*>(dst), static_cast<void*>(d), static_cast<void*>(f),
                      static_cast<void*>(a), static_cast<void*>(b), static_cast<void*>(g)})
        cudaFree(p);
    } catch (const std::exception& e) {
      errors[std::size_t(r)] = e.what();
    }
  });
  for (int r = 0; r < R; ++r) {
    CAPTURE(r);
    CHECK(errors[std::size_t(r)] == "");
    CHECK(device[std::size_t(r)] == r);
    std::vector<int> want;  // from each q in rank order: q's block for r
    for (int q = 0; q < R; ++q)
      for (int i = 0; i < count(q, r); ++i) want.push_back(1000 * q + 100 * r + i);
    CHECK(received[std::size_t(r)] == want);
    CHECK(reduced[std::size_t(r)] == std::vector<double>{3, 6, 9, 12, 15});      // Σ_q (q + i)
    CHECK(reduced_f[std::size_t(r)] == std::vector<float>{30, 33, 36, 39, 42});  // Σ_q (10 q + i)
    std::vector<float> want_fixed, want_gathered;
    for (int q = 0; q < R; ++q)
      for (int i = 0; i < 2; ++i) {
        want_fixed.push_back(float(100 * q + 2 * r + i));  // block r of rank q's a
        want_gathered.push_back(float(100 * q + i));       // block 0 of rank q's a
      }
    CHECK(fixed[std::size_t(r)] == want_fixed);
    CHECK(gathered[std::size_t(r)] == want_gathered);
  }
}

TEST_CASE("NCCL between emulated GPUs: ncclCommInitRank joins threads by unique id; bad arguments are errors") {
  // Two threads join one world through a unique id, then sum over it.
  ncclUniqueId id = moe::nccl_communicator::unique_id();
  std::vector<float> sums(2, 0.0f);
  std::vector<std::string> errors(2);
  {
    std::vector<std::thread> threads;
    for (int r = 0; r < 2; ++r)
      threads.emplace_back([&, r] {
        try {
          cudaSetDevice(r);
          cudaStream_t s = nullptr;
          cudaStreamCreate(&s);
          {
            moe::nccl_communicator comm = moe::nccl_communicator::init_rank(id, 2, r, s);
            float* x = nullptr;
            cudaMalloc(&x, sizeof(float));
            const float mine = float(r + 1) * 1.5f;
            cudaMemcpy(x, &mine, sizeof mine, cudaMemcpyHostToDevice);
            comm.all_reduce_sum(x, 1);
            cudaStreamSynchronize(s);
            cudaMemcpy(&sums[std::size_t(r)], x, sizeof(float), cudaMemcpyDeviceToHost);
            cudaFree(x);
          }
          cudaStreamDestroy(s);
        } catch (const std::exception& e) {
          errors[std::size_t(r)] = e.what();
        }
      });
    for (auto& t : threads) t.join();
  }
  cudaSetDevice(0);
  CHECK(errors == std::vector<std::string>(2));
  CHECK(sums == std::vector<float>{4.5f, 4.5f});
  // A third rank claiming a world of 3 for the same id: invalid usage, at once.
  ncclComm_t extra = nullptr;
  CHECK(ncclCommInitRank(&extra, 3, id, 2) == ncclInvalidUsage);
  CHECK(ncclCommInitRank(&extra, 2, id, 5) == ncclInvalidArgument);

  std::vector<ncclComm_t> comms(2, nullptr);
  const int same[2] = {0, 0}, missing[2] = {0, 9};
  CHECK(ncclCommInitAll(comms.data(), 2, same) == ncclInvalidUsage);
  CHECK(ncclCommInitAll(comms.data(), 2, missing) == ncclInvalidArgument);
  cudaStream_t s0 = nullptr, s1 = nullptr;
  cudaStreamCreate(&s0);
  CHECK_THROWS_WITH_AS(moe::nccl_communicator::init_all({0, 0}, {s0, s0}),
                       doctest::Contains("nccl_communicator: ncclCommInitAll failed: invalid usage"), moe::error);
  const int both[2] = {0, 1};
  REQUIRE(ncclCommInitAll(comms.data(), 2, both) == ncclSuccess);
  int* buf = device_alloc<int>(4);
  std::vector<int> host_buf(4);
  CHECK(ncclSend(buf, 4, ncclInt32, 2, comms[0], s0) == ncclInvalidArgument);              // no rank 2
  CHECK(ncclSend(host_buf.data(), 4, ncclInt32, 1, comms[0], s0) == ncclInvalidArgument);  // host memory
  CHECK(ncclSend(buf, 5, ncclInt32, 1, comms[0], s0) == ncclInvalidArgument);              // past the end
  cudaSetDevice(1);
  cudaStreamCreate(&s1);
  cudaSetDevice(0);
  CHECK(ncclSend(buf, 4, ncclInt32, 1, comms[0], s1) == ncclInvalidUsage);  // a stream of GPU 1 for rank 0 (GPU 0)
  CHECK(ncclGroupEnd() == ncclInvalidUsage);                                 // no group open
  CHECK(ncclAllReduce(buf, buf, 4, ncclInt32, ncclMax, comms[0], s0) == ncclInvalidArgument);  // only ncclSum
  for (ncclComm_t c : comms) ncclCommDestroy(c);
  cudaFree(buf);
  cudaStreamDestroy(s0);
  cudaStreamDestroy(s1);
}

// The misuse scenarios, each run by run_child in a process of its own.
TEST_CASE("emulator child") {
  const char* which = std::getenv("MOE_EMU_CHILD");
  if (!which) return;  // only in a child started by run_child
  std::signal(SIGABRT, SIG_DFL);  // the emulator's abort ends the child; no doctest crash report
  const std::string s = which;
  int* d = device_alloc<int>(64);
  auto* h = device_alloc<__nv_bfloat16>(1024);
  if (s == "two_barriers") moe_emu::launch("two_barriers_kernel", 1, 64, nullptr, two_barriers_kernel)();
  if (s == "early_exit") moe_emu::launch("early_exit_kernel", 1, 64, nullptr, early_exit_kernel)();
  if (s == "lane_exit") moe_emu::launch("lane_exit_kernel", 1, 64, nullptr, lane_exit_kernel)(d);
  if (s == "partial_mask") moe_emu::launch("partial_mask_kernel", 1, 64, nullptr, partial_mask_kernel)(d);
  if (s == "misaligned") moe_emu::launch("misaligned_wmma_kernel", 1, 32, nullptr, misaligned_wmma_kernel)(h);
  if (s == "bad_ldm") moe_emu::launch("bad_ldm_wmma_kernel", 1, 32, nullptr, bad_ldm_wmma_kernel)(h);
  if (s == "divergent") moe_emu::launch("divergent_wmma_kernel", 1, 32, nullptr, divergent_wmma_kernel)(h);
  if (s == "async_unwaited") moe_emu::launch("async_unwaited_kernel", 1, 32, nullptr, async_unwaited_kernel)(d);
  if (s == "async_misaligned")
    moe_emu::launch("async_misaligned_kernel", 1, 32, nullptr, async_misaligned_kernel)(d);
  if (s == "racy_block") moe_emu::launch("racy_block_kernel", 1, 64, nullptr, racy_block_kernel)(d);
  if (s == "racy_warp") moe_emu::launch("racy_warp_kernel", 1, 32, nullptr, racy_warp_kernel)(d);
  if (s == "racy_shuffle") moe_emu::launch("racy_shuffle_kernel", 1, 32, nullptr, racy_shuffle_kernel)(d);
  // NCCL programs that hang or corrupt memory on GPUs.
  if (s == "nccl_size_mismatch")  // rank 1 expects 12 bytes where rank 0 sends 8
    on_ranks(2, [](int r, ncclComm_t& c, cudaStream_t st) {
      int* b = device_alloc<int>(3);
      if (r == 0) ncclSend(b, 2, ncclInt32, 1, c, st);
      if (r == 1) ncclRecv(b, 3, ncclInt32, 0, c, st);
      cudaStreamSynchronize(st);
    });
  if (s == "nccl_collective_mismatch")  // all-reduces of different lengths
    on_ranks(2, [](int r, ncclComm_t& c, cudaStream_t st) {
      float* b = device_alloc<float>(8);
      ncclAllReduce(b, b, std::size_t(4 + r), ncclFloat32, ncclSum, c, st);
      cudaStreamSynchronize(st);
    });
  if (s == "nccl_one_thread_group") {  // one thread puts both GPUs' operations in one group
    ncclComm_t comms[2] = {nullptr, nullptr};
    const int both[2] = {0, 1};
    ncclCommInitAll(comms, 2, both);
    ncclGroupStart();
    ncclSend(d, 4, ncclInt32, 1, comms[0], nullptr);  // the legacy stream of GPU 0
    cudaSetDevice(1);
    ncclRecv(d + 4, 4, ncclInt32, 0, comms[1], nullptr);  // ... and of GPU 1
    ncclGroupEnd();
  }
  if (s == "nccl_missing_peer")  // rank 1 never joins the all-reduce
    on_ranks(2, [](int r, ncclComm_t& c, cudaStream_t st) {
      float* b = device_alloc<float>(8);
      if (r == 0) ncclAllReduce(b, b, 8, ncclFloat32, ncclSum, c, st);
      cudaStreamSynchronize(st);
    });
  cudaDeviceSynchronize();
}

TEST_CASE("misuse is reported: barriers") {
  check_aborts_with("two_barriers", "reached __syncthreads at");
  check_aborts_with("early_exit", "deadlocked");
}

TEST_CASE("misuse is reported: cp.async never waited for, or misaligned") {
  check_aborts_with("async_unwaited", "exited with 1 cp.async copies it never waited for");
  check_aborts_with("async_misaligned", "not 16-byte aligned");
}

TEST_CASE("misuse is reported: warp collectives") {
  check_aborts_with("lane_exit", "exited while");
  check_aborts_with("partial_mask", "partial mask");
}

TEST_CASE("misuse is reported: NCCL programs that would hang or corrupt memory") {
  check_aborts_with("nccl_size_mismatch", "NCCL rank 1 called ncclRecv for 12 bytes from rank 0, whose matching ncclSend sends 8");
  check_aborts_with("nccl_collective_mismatch", "called ncclAllReduce with 4 x ncclFloat32");
  check_aborts_with("nccl_one_thread_group", "a group with operations of several ranks (one thread driving");
  check_aborts_with("nccl_missing_peer", "NCCL rank 0 of 2 waited 1 s in ncclAllReduce #0 for 1 rank(s) that did not call it");
}

TEST_CASE("misuse is reported: WMMA alignment and uniformity") {
  check_aborts_with("misaligned", "pointer not 256-bit aligned");
  check_aborts_with("bad_ldm", "ldm 20 is not a multiple of 16 bytes");
  check_aborts_with("divergent", "differ across the warp");
}

#if defined(__SANITIZE_THREAD__)
// Only in the ThreadSanitizer build (preset tsan): each CUDA thread is a TSan fiber, synchronised only
// by barriers and warp collectives, so a missing barrier is a reported data race in the kernel.
TEST_CASE("ThreadSanitizer reports a missing __syncthreads and a missing __syncwarp (a shuffle is none)") {
  for (const std::string which : {"block", "warp", "shuffle"}) {
    const child_result r = run_child("racy_" + which);
    INFO("child output: ", r.output);
    CHECK(r.exit_code != 0);
    CHECK(r.output.find("WARNING: ThreadSanitizer: data race") != std::string::npos);
    CHECK(r.output.find("#0 racy_" + which + "_kernel") != std::string::npos);
  }
}
#endif
