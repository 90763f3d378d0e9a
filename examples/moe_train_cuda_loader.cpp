// moe-train's --device cuda in CUDA builds: loads the CUDA half, libmoe-train-cuda.so beside the
// executable (MOE_TRAIN_CUDA_MODULE names the file), when a run asks for it, and calls its entry.
// Why a module and not a link: a process linked with cuBLAS pays cuBLAS's start-up on every run
// (about 0.45 s on a 2-core VM, more than a whole bad-flag run otherwise takes) and does not start
// at all where the CUDA libraries are missing; a host run needs neither. moe-train-emu (tests/emu)
// links moe_train_cuda.cu's train_cuda directly instead of this file.
#include <dlfcn.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "trainer/train_cuda.hpp"

#if !defined(MOE_TRAIN_CUDA_MODULE)
#error "MOE_TRAIN_CUDA_MODULE: the CUDA module's file name (examples/CMakeLists.txt)"
#endif

namespace trainer {

namespace {

// The directory of the running executable, with a trailing slash ("" when /proc is unreadable:
// then dlopen searches its usual paths for the file name).
std::string executable_directory() {
  std::string path(4096, '\0');
  const ssize_t n = ::readlink("/proc/self/exe", path.data(), path.size());
  if (n <= 0 || std::size_t(n) >= path.size()) return {};
  path.resize(std::size_t(n));
  return path.substr(0, path.rfind('/') + 1);
}

}  // namespace

int train_cuda(const options& o) {
  const std::string module = executable_directory() + MOE_TRAIN_CUDA_MODULE;
  // Never closed: the CUDA runtime and NCCL inside it keep state until the process exits.
  void* handle = ::dlopen(module.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    std::fprintf(stderr, "moe-train: --device cuda: cannot load the CUDA trainer: %s\n", ::dlerror());
    return 1;
  }
  const auto entry = reinterpret_cast<cuda_module_entry>(::dlsym(handle, cuda_module_entry_name));
  if (!entry) {
    std::fprintf(stderr, "moe-train: --device cuda: %s has no %s: %s\n", module.c_str(), cuda_module_entry_name,
                 ::dlerror());
    return 1;
  }
  return entry(&o, sizeof(options));
}

}  // namespace trainer
