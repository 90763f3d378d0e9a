// The doctest main of the GPU tests: exits 77 (ctest SKIP_RETURN_CODE) before any test runs when
// the CUDA runtime finds no usable device. The return code of cudaGetDeviceCount is checked, not
// only the count: without a driver or a GPU it fails (e.g. error 35, insufficient driver).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cuda_runtime_api.h>

#include <cstdio>

int main(int argc, char** argv) {
  int devices = 0;
  const cudaError_t status = cudaGetDeviceCount(&devices);
  if (status != cudaSuccess || devices < 1) {
    std::printf("no usable CUDA device (cudaGetDeviceCount: %s, %d devices): skipped\n",
                status == cudaSuccess ? "ok" : cudaGetErrorName(status), devices);
    return 77;
  }
  doctest::Context context(argc, argv);
  return context.run();
}
