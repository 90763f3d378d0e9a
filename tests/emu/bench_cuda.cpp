// benchmarks/cuda_main.cu compiled by the host C++ compiler against the kernel emulator
// (MOE_CUDA_EMULATION): every CUDA benchmark family's setup and timed calls run without a GPU
// (bench.cuda_emu_smoke; the times it prints mean nothing).
#include "cuda_main.cu"
