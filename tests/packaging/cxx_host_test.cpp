// The C++-compiler half of the nvcc/g++ comparison (see host_checksum.hpp).
#include "host_checksum.hpp"

int main() { return moe_packaging::run_all() == 0 ? 0 : 1; }
