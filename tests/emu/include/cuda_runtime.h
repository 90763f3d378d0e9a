// Emulation shim (tests/emu): the CUDA runtime on the host; see moe_emu/runtime.hpp.
#pragma once
#include "moe_emu/runtime.hpp"
