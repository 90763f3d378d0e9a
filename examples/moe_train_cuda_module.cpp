// The exported entry of libmoe-train-cuda.so, moe-train's CUDA half (moe_train_cuda.cu and the
// other .cu files of examples/CMakeLists.txt's moe-train-cuda module), which moe-train loads when
// a run asks for --device cuda (moe_train_cuda_loader.cpp). The module is built with hidden
// visibility: this function is all it exports.
#include <cstddef>
#include <cstdio>
#include <type_traits>

#include "trainer/exit_status.hpp"
#include "trainer/train_cuda.hpp"

extern "C" __attribute__((visibility("default"))) int moe_train_cuda_module_entry(const trainer::options* o,
                                                                                  std::size_t options_size) {
  if (options_size != sizeof(trainer::options)) {
    std::fprintf(stderr,
                 "moe-train: --device cuda: the CUDA module was built from other sources than this moe-train "
                 "(options are %zu bytes here, %zu in moe-train); rebuild both\n",
                 sizeof(trainer::options), options_size);
    return 1;
  }
  return trainer::exit_status_of([&] { return trainer::train_cuda(*o); });
}

// The loader calls it through this pointer type, looked up by trainer::cuda_module_entry_name.
static_assert(std::is_same_v<decltype(&moe_train_cuda_module_entry), trainer::cuda_module_entry>);
