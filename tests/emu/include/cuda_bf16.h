// Emulation shim (tests/emu): see moe_emu/device.hpp.
#pragma once
#include "moe_emu/half_types.hpp"
