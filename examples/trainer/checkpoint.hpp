// examples/trainer/checkpoint.hpp — checkpoints that survive a crash.
//
// File layout (little-endian):
//   "MOECKPT1"                         8-byte magic
//   u64 header length, header text     "key=value" lines: the run's configuration and position
//   u64 tensor count, then per tensor  u32 name length, name, u64 element count, u32 element size, data
//   u64 FNV-1a-64 checksum             of every byte before it
// Writing: a temporary file in the same directory, fsync, rename over `checkpoint.bin`, fsync of the
// directory. A crash at any point leaves either the previous checkpoint or the new one, never a
// mixture. Reading verifies magic, size and checksum before trusting anything, so a corrupt or
// truncated file is refused with a message that says so.
#pragma once

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <unistd.h>
#include <vector>

#include <moe/moe.hpp>

namespace trainer {

inline constexpr char checkpoint_magic[9] = "MOECKPT1";

inline std::uint64_t fnv1a64(const unsigned char* p, std::size_t n, std::uint64_t h = 0xcbf29ce484222325ull) {
  for (std::size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

struct checkpoint_tensor {
  std::string name;
  std::uint32_t element_size = 0;
  std::vector<unsigned char> bytes;
};

struct checkpoint_data {
  std::map<std::string, std::string> header;
  std::vector<checkpoint_tensor> tensors;
};

class checkpoint_error : public moe::error {
 public:
  using moe::error::error;
};

inline std::string checkpoint_path(const std::string& dir) { return dir + "/checkpoint.bin"; }

namespace detail {

inline void put_u64(std::vector<unsigned char>& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<unsigned char>(v >> (8 * i)));
}
inline void put_u32(std::vector<unsigned char>& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<unsigned char>(v >> (8 * i)));
}

struct reader {
  const std::vector<unsigned char>& b;
  std::size_t pos = 0;
  const std::string& path;
  void need(std::size_t n) const {
    if (b.size() - 8 < pos + n)
      throw checkpoint_error("checkpoint '" + path + "' is malformed: a record runs past the end");
  }
  std::uint64_t u64() {
    need(8);
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= std::uint64_t(b[pos + std::size_t(i)]) << (8 * i);
    pos += 8;
    return v;
  }
  std::uint32_t u32() {
    need(4);
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= std::uint32_t(b[pos + std::size_t(i)]) << (8 * i);
    pos += 4;
    return v;
  }
  std::string str(std::size_t n) {
    need(n);
    std::string s(reinterpret_cast<const char*>(&b[pos]), n);
    pos += n;
    return s;
  }
};

}  // namespace detail

// Serialises and writes atomically into dir/checkpoint.bin. `crash_after_bytes` (testing only):
// when non-negative, the process kills itself after writing that many bytes of the temporary file.
inline void write_checkpoint(const std::string& dir, const checkpoint_data& data, long crash_after_bytes = -1) {
  std::vector<unsigned char> out(checkpoint_magic, checkpoint_magic + 8);
  std::string header;
  for (const auto& [k, v] : data.header) header += k + "=" + v + "\n";
  detail::put_u64(out, header.size());
  out.insert(out.end(), header.begin(), header.end());
  detail::put_u64(out, data.tensors.size());
  for (const auto& t : data.tensors) {
    detail::put_u32(out, std::uint32_t(t.name.size()));
    out.insert(out.end(), t.name.begin(), t.name.end());
    detail::put_u64(out, t.bytes.size() / t.element_size);
    detail::put_u32(out, t.element_size);
    out.insert(out.end(), t.bytes.begin(), t.bytes.end());
  }
  detail::put_u64(out, fnv1a64(out.data(), out.size()));

  const std::string final_path = checkpoint_path(dir);
  const std::string tmp = dir + "/checkpoint.tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw checkpoint_error("cannot create '" + tmp + "': " + std::strerror(errno));
  std::size_t done = 0;
  while (done < out.size()) {
    std::size_t chunk = out.size() - done;
    if (crash_after_bytes >= 0 && done + chunk > std::size_t(crash_after_bytes))
      chunk = std::size_t(crash_after_bytes) - done;
    const ssize_t n = chunk ? ::write(fd, out.data() + done, chunk) : 0;
    if (n < 0) {
      ::close(fd);
      throw checkpoint_error("writing '" + tmp + "': " + std::strerror(errno));
    }
    done += std::size_t(n);
    if (crash_after_bytes >= 0 && done >= std::size_t(crash_after_bytes)) {
      ::fsync(fd);
      std::raise(SIGKILL);  // simulated crash in the middle of writing
    }
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) throw checkpoint_error("flushing '" + tmp + "': " + std::strerror(errno));
  if (std::rename(tmp.c_str(), final_path.c_str()) != 0)
    throw checkpoint_error("renaming '" + tmp + "' to '" + final_path + "': " + std::strerror(errno));
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    ::fsync(dfd);  // make the rename itself durable
    ::close(dfd);
  }
}

// Reads and verifies dir/checkpoint.bin.
inline checkpoint_data read_checkpoint(const std::string& dir) {
  const std::string path = checkpoint_path(dir);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw checkpoint_error("no checkpoint at '" + path + "'");
  const std::vector<unsigned char> b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (b.size() < 8 + 8 + 8 + 8 || std::memcmp(b.data(), checkpoint_magic, 8) != 0)
    throw checkpoint_error("'" + path + "' is not a moe-train checkpoint (bad magic or truncated to " +
                           std::to_string(b.size()) + " bytes)");
  std::uint64_t stored = 0;
  for (int i = 0; i < 8; ++i) stored |= std::uint64_t(b[b.size() - 8 + std::size_t(i)]) << (8 * i);
  if (fnv1a64(b.data(), b.size() - 8) != stored)
    throw checkpoint_error("checkpoint '" + path + "' is corrupt or truncated (checksum mismatch over " +
                           std::to_string(b.size()) + " bytes); refusing to use it");
  detail::reader r{b, 8, path};
  checkpoint_data data;
  const std::string header = r.str(std::size_t(r.u64()));
  std::size_t start = 0;
  while (start < header.size()) {
    const std::size_t end = header.find('\n', start);
    const std::string line = header.substr(start, end - start);
    const std::size_t eq = line.find('=');
    if (eq != std::string::npos) data.header[line.substr(0, eq)] = line.substr(eq + 1);
    start = end == std::string::npos ? header.size() : end + 1;
  }
  const std::uint64_t count = r.u64();
  for (std::uint64_t i = 0; i < count; ++i) {
    checkpoint_tensor t;
    t.name = r.str(r.u32());
    const std::uint64_t elements = r.u64();
    t.element_size = r.u32();
    const std::string raw = r.str(std::size_t(elements * t.element_size));
    t.bytes.assign(raw.begin(), raw.end());
    data.tensors.push_back(std::move(t));
  }
  if (r.pos != b.size() - 8) throw checkpoint_error("checkpoint '" + path + "' has trailing bytes");
  return data;
}

}  // namespace trainer
