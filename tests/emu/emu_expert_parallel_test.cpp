// The GPU test tests/cuda/cuda_expert_parallel_test.cu on the kernel emulator, NCCL included
// (tests/emu/include/nccl.h): one rank, and 2 and 4 ranks on as many emulated GPUs (MOE_EMU_DEVICES=4
// in the test's environment), one host thread each.
#include "../cuda/cuda_expert_parallel_test.cu"
