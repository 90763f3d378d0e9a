// benchmarks/cuda_expert_parallel.cu compiled by the host C++ compiler against the kernel emulator
// and its NCCL (MOE_CUDA_EMULATION): the ep/ family's ranks, exchanges and event timing run on
// emulated GPUs (bench.cuda_emu_smoke; the times it prints mean nothing).
#include "cuda_expert_parallel.cu"
