// Emulation shim (tests/emu): CUB's device algorithms on the host; see moe_emu/cub.hpp.
#pragma once
#include "moe_emu/cub.hpp"
