// The nvcc half of the nvcc/g++ comparison (see host_checksum.hpp): the same host-space code, compiled
// as CUDA so that every MOE_HOST_DEVICE function and MOE_LAMBDA is __host__ __device__. No GPU is
// needed: the layers run on moe::host.
#include "host_checksum.hpp"

#if !defined(__CUDACC__)
#error "nvcc_host_test.cu must be compiled as CUDA (by nvcc)"
#endif

int main() { return moe_packaging::run_all() == 0 ? 0 : 1; }
