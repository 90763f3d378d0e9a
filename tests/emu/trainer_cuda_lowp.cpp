// examples/moe_train_cuda_lowp.cu compiled by the host C++ compiler against the kernel emulator
// (MOE_CUDA_EMULATION): moe-train-emu runs --device cuda without a GPU (tests/emu/CMakeLists.txt).
#include "moe_train_cuda_lowp.cu"
