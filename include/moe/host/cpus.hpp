// moe/host/cpus.hpp — how many CPUs this process may actually use.
//
// std::thread::hardware_concurrency() counts the machine's CPUs. A process is often allowed fewer:
// an affinity mask (taskset, numactl, a cpuset cgroup) or a CPU bandwidth quota (cgroup v2
// `cpu.max`, v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`: Docker's `--cpus`, Kubernetes CPU limits).
// A pool sized to the machine in a 2-CPU container on a 64-core host runs 64 threads on two CPUs'
// worth of time, and threads that poll while waiting (thread_pool.hpp) then take the time of the
// threads with work. The host space sizes its shared pool with available_cpus() and polls only
// when its pool fits in it.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>

#if defined(__linux__)
#include <sched.h>
#endif

namespace moe::detail {

// A quota of `quota` µs of CPU time per `period` µs as a whole number of CPUs, rounded up (1.5 CPUs
// of quota keep two threads busy part of the time); 0 when there is no limit.
inline int cpus_from_quota(long long quota, long long period) {
  if (quota <= 0 || period <= 0) return 0;
  return int(std::min<long long>((quota + period - 1) / period, 1 << 20));
}

// Parses a whole decimal number (surrounding whitespace allowed); false for anything else.
inline bool parse_whole_number(std::string_view text, long long& value) {
  std::istringstream in{std::string(text)};
  std::string rest;
  return bool(in >> value) && !(in >> rest);
}

// cgroup v2 `cpu.max`: "max <period>" (no limit) or "<quota> <period>"; 0 for no limit or text
// that is not one of these (the limit is then left to the other sources, never guessed).
inline int cpus_from_cpu_max(std::string_view text) {
  std::istringstream in{std::string(text)};
  std::string quota, rest;
  long long period = 0;
  if (!(in >> quota >> period) || (in >> rest) || quota == "max") return 0;
  long long q = 0;
  return parse_whole_number(quota, q) ? cpus_from_quota(q, period) : 0;
}

inline bool read_text_file(const std::string& path, std::string& text) {
  std::ifstream in(path);
  if (!in) return false;
  std::ostringstream all;
  all << in.rdbuf();
  text = all.str();
  return true;
}

// The smallest CPU cap of the process's cgroup and its ancestors, 0 if none has one.
// `proc_self_cgroup` is the text of /proc/self/cgroup ("id:controllers:path" per line: "0::path"
// for cgroup v2, a list containing "cpu" for v1's CPU controller); `root` is where the cgroup
// file systems are mounted (/sys/fs/cgroup; v1's CPU controller under cpu/ or cpu,cpuacct/).
// Walking up to the mount's root also finds the limit of a container that sees its own cgroup
// mounted at the root while /proc/self/cgroup still names the host's path.
inline int cgroup_cpu_cap(const std::string& root, std::string_view proc_self_cgroup) {
  int cap = 0;
  const auto take = [&cap](int c) {
    if (c > 0) cap = cap == 0 ? c : std::min(cap, c);
  };
  const auto walk_up = [](std::string path, const auto& visit) {
    for (;;) {
      visit(path);
      if (path.empty() || path == "/") return;
      const auto slash = path.find_last_of('/');
      path = slash == std::string::npos || slash == 0 ? "/" : path.substr(0, slash);
    }
  };
  std::istringstream lines{std::string(proc_self_cgroup)};
  for (std::string line; std::getline(lines, line);) {
    const auto first = line.find(':'), second = first == std::string::npos ? first : line.find(':', first + 1);
    if (second == std::string::npos) continue;
    const std::string id = line.substr(0, first), controllers = line.substr(first + 1, second - first - 1);
    const std::string path = line.substr(second + 1);
    if (id == "0" && controllers.empty()) {
      walk_up(path, [&](const std::string& p) {
        std::string text;
        if (read_text_file(root + p + "/cpu.max", text)) take(cpus_from_cpu_max(text));
      });
      continue;
    }
    bool has_cpu = false;
    std::istringstream names(controllers);
    for (std::string name; std::getline(names, name, ',');) has_cpu = has_cpu || name == "cpu";
    if (!has_cpu) continue;
    for (const char* mount : {"/cpu", "/cpu,cpuacct", "/cpuacct,cpu"}) {
      walk_up(path, [&](const std::string& p) {
        std::string quota, period;
        long long q = 0, t = 0;
        const std::string dir = root + mount + p;
        if (read_text_file(dir + "/cpu.cfs_quota_us", quota) && read_text_file(dir + "/cpu.cfs_period_us", period) &&
            parse_whole_number(quota, q) && parse_whole_number(period, t))
          take(cpus_from_quota(q, t));
      });
    }
  }
  return cap;
}

// The CPUs this process may use: the affinity mask's count, capped by the cgroup CPU quota;
// at least 1. Read when called (a pool reads it once, when it is made).
inline int available_cpus() {
  int cpus = std::max(1, int(std::thread::hardware_concurrency()));
#if defined(__linux__)
  cpu_set_t set;
  CPU_ZERO(&set);
  // Fails on machines with more CPUs than a cpu_set_t holds (1024): the machine's count stands.
  if (sched_getaffinity(0, sizeof set, &set) == 0) cpus = std::max(1, CPU_COUNT(&set));
  std::string cgroups;
  if (read_text_file("/proc/self/cgroup", cgroups)) {
    const int cap = cgroup_cpu_cap("/sys/fs/cgroup", cgroups);
    if (cap > 0) cpus = std::min(cpus, cap);
  }
#endif
  return cpus;
}

}  // namespace moe::detail
