// moe/host/huge_pages.hpp — whether the host space advises transparent huge pages for its large
// buffers, and why.
//
// Buffers of 2 MiB and more are advised to use huge pages (madvise(MADV_HUGEPAGE)): a 2 MiB fault
// instead of 512 4 KiB ones, which made constructing a 134 M-parameter layer 1.25x faster on one VM
// (docs/benchmarks.md). On a Linux guest that reports its free memory to the hypervisor
// (virtio-balloon free page reporting) the advice costs instead: the guest reports free 2 MiB blocks,
// the host takes them back, and a huge-page fault takes exactly such a block, so it waits for the
// host to supply 2 MiB anew (the same construction, fresh processes: 11.8 s advised vs 7.5 s not, on
// a Firecracker guest whose balloon reports). There the advice is off unless asked for.
//   $MOE_HUGE_PAGES=1   advise            $MOE_HUGE_PAGES=0   do not
//   unset               advise, unless this guest reports free pages to its host
#pragma once

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "moe/core/error.hpp"

#if defined(__linux__)
#include <dirent.h>
#endif

namespace moe {

struct huge_page_choice {
  bool advised = false;
  const char* reason = "";  // one line: what decided it
};

namespace detail {

// A virtio-balloon device's features as Linux prints them (/sys/bus/virtio/devices/virtioN/features:
// one '0' or '1' per feature bit, bit 0 first). Bit 5 is VIRTIO_BALLOON_F_REPORTING.
inline bool balloon_reports_free_pages(std::string_view features) {
  constexpr std::size_t reporting_bit = 5;
  return features.size() > reporting_bit && features[reporting_bit] == '1';
}

// The choice from $MOE_HUGE_PAGES (null when unset) and whether the guest reports free pages.
inline huge_page_choice choose_huge_pages(const char* env, bool free_page_reporting) {
  if (env != nullptr) {
    require(std::strcmp(env, "0") == 0 || std::strcmp(env, "1") == 0, "MOE_HUGE_PAGES", "'", env,
            "' is neither 0 nor 1");
    return env[0] == '1' ? huge_page_choice{true, "advised ($MOE_HUGE_PAGES=1)"}
                         : huge_page_choice{false, "not advised ($MOE_HUGE_PAGES=0)"};
  }
  if (free_page_reporting)
    return {false,
            "not advised: this guest reports free memory to its host (virtio-balloon free page reporting), "
            "so a huge-page fault waits for the host; $MOE_HUGE_PAGES=1 advises anyway"};
  return {true, "advised"};
}

// Whether a virtio-balloon device of this Linux guest has free page reporting on. Read once.
inline bool free_page_reporting_active() {
#if defined(__linux__)
  static const bool active = [] {
    constexpr const char* driver = "/sys/bus/virtio/drivers/virtio_balloon";
    DIR* dir = ::opendir(driver);
    if (dir == nullptr) return false;  // no balloon driver: not a guest that reports
    bool found = false;
    while (const dirent* entry = ::readdir(dir)) {
      if (std::strncmp(entry->d_name, "virtio", 6) != 0) continue;  // the bound devices: virtio<N>
      const std::string path = std::string(driver) + "/" + entry->d_name + "/features";
      if (std::FILE* f = std::fopen(path.c_str(), "r")) {
        char bits[512] = {};
        const bool read = std::fgets(bits, sizeof bits, f) != nullptr;
        std::fclose(f);
        found = found || (read && balloon_reports_free_pages(bits));
      }
    }
    ::closedir(dir);
    return found;
  }();
  return active;
#else
  return false;
#endif
}

}  // namespace detail

// The host space's choice for its next large buffer ($MOE_HUGE_PAGES is read at every call, so a
// program may change it between allocations; a value other than 0 or 1 is an error naming it).
inline huge_page_choice host_huge_pages() {
  return detail::choose_huge_pages(std::getenv("MOE_HUGE_PAGES"), detail::free_page_reporting_active());
}

}  // namespace moe
