// examples/moe_train_cuda_ranks_lowp.cu (moe-train --device cuda --ranks R --precision bf16|fp16)
// compiled by the host C++ compiler against the kernel emulator and its NCCL.
#include "moe_train_cuda_ranks_lowp.cu"
