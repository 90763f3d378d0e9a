// Emulation shim (tests/emu): NCCL between emulated GPUs, for moe::nccl_communicator (see
// moe_emu/nccl.hpp).
#pragma once
#include "moe_emu/nccl.hpp"
