// examples/moe_train_cuda_ranks.cu (moe-train --device cuda --ranks R: one GPU per rank, NCCL between
// them) compiled by the host C++ compiler against the kernel emulator and its NCCL.
#include "moe_train_cuda_ranks.cu"
