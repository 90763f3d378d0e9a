// The GPU test tests/cuda/cuda_primitives_test.cu, compiled by the host C++ compiler against the kernel
// emulator (MOE_CUDA_EMULATION, tests/emu/include): the same cases, run where there is no GPU.
#include "../cuda/cuda_primitives_test.cu"
