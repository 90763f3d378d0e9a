// moe_emu/nccl.hpp — the part of NCCL moe::nccl_communicator uses, between emulated GPUs.
//
// Ranks are emulated devices (MOE_EMU_DEVICES) driven by host threads of one process, one thread per
// GPU, as moe::nccl_communicator::init_all's users do; ncclCommInitRank joins ranks of one process
// through a unique id. Operations are queued on their stream like kernels and run when the host
// synchronises with that stream's device (moe_emu/runtime.hpp), so they take part in the stream
// order the library relies on. Semantics follow NCCL's:
//   - the k-th ncclSend from rank a to rank b matches the k-th ncclRecv at b from a, and both must
//     move the same number of bytes;
//   - collectives (ncclAllReduce, ncclAllGather) match by their order on the communicator, and every
//     rank must pass the same count, type and operation;
//   - operations between ncclGroupStart and ncclGroupEnd are issued together (all sends posted
//     before any receive waits), so a group that exchanges with every peer cannot deadlock.
// Results are deterministic: ncclAllReduce adds the ranks' contributions in rank order (ncclSum, the
// one reduction the library uses, is the one emulated).
//
// What NCCL would do with an inconsistent program (sizes that differ between matched operations,
// collectives of different kinds, a rank that never takes part) is a hang or corrupted memory; here
// it is "moe_emu: ..." naming the ranks and sizes, then an abort. A rank waits at most
// MOE_EMU_NCCL_TIMEOUT seconds (default 60) for its peers. Invalid arguments (a peer outside the
// communicator, a buffer that is not device memory, a stream of another device) return NCCL's error
// codes and print why on stderr, as NCCL_DEBUG=WARN would.
//
// Not emulated: one thread driving several communicators in one group (NCCL allows it; the
// emulator's queues run only when their own device is synchronised), other collectives
// (broadcast, reduce-scatter), reductions other than ncclSum, and the speed of any link.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "moe_emu/runtime.hpp"

enum ncclResult_t {
  ncclSuccess = 0,
  ncclUnhandledCudaError = 1,
  ncclSystemError = 2,
  ncclInternalError = 3,
  ncclInvalidArgument = 4,
  ncclInvalidUsage = 5,
  ncclRemoteError = 6,
  ncclInProgress = 7
};
enum ncclDataType_t {
  ncclInt8 = 0,
  ncclChar = 0,
  ncclUint8 = 1,
  ncclInt32 = 2,
  ncclInt = 2,
  ncclUint32 = 3,
  ncclInt64 = 4,
  ncclUint64 = 5,
  ncclFloat32 = 7,
  ncclFloat = 7,
  ncclFloat64 = 8,
  ncclDouble = 8
};
enum ncclRedOp_t { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3 };

#define NCCL_UNIQUE_ID_BYTES 128
struct ncclUniqueId {
  char internal[NCCL_UNIQUE_ID_BYTES];
};

struct ncclComm;
using ncclComm_t = ncclComm*;

namespace moe_emu::nccl {

inline std::chrono::seconds timeout() {
  static const int s = env_count("MOE_EMU_NCCL_TIMEOUT", 60, 86400);
  return std::chrono::seconds(s);
}

inline std::size_t type_bytes(ncclDataType_t t) {
  switch (t) {
    case ncclInt8: case ncclUint8: return 1;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
  }
  return 0;
}
inline const char* type_name(ncclDataType_t t) {
  switch (t) {
    case ncclInt8: return "ncclInt8";
    case ncclUint8: return "ncclUint8";
    case ncclInt32: return "ncclInt32";
    case ncclUint32: return "ncclUint32";
    case ncclInt64: return "ncclInt64";
    case ncclUint64: return "ncclUint64";
    case ncclFloat32: return "ncclFloat32";
    case ncclFloat64: return "ncclFloat64";
  }
  return "?";
}

enum class op_kind { send, recv, all_reduce, all_gather };
inline const char* op_name(op_kind k) {
  switch (k) {
    case op_kind::send: return "ncclSend";
    case op_kind::recv: return "ncclRecv";
    case op_kind::all_reduce: return "ncclAllReduce";
    case op_kind::all_gather: return "ncclAllGather";
  }
  return "?";
}

// One collective in flight: every rank's contribution, then every rank's read of the result.
struct collective {
  op_kind kind = op_kind::all_reduce;
  std::size_t count = 0;
  ncclDataType_t type = ncclFloat32;
  int first_rank = 0;  // the rank whose arguments the others must match
  std::vector<std::vector<unsigned char>> parts;
  int posted = 0, taken = 0;
};

// The ranks of one communicator, and what is in flight between them.
struct clique {
  explicit clique(int n) : size(n), joined(std::size_t(n), false), next_collective(std::size_t(n), 0) {}
  const int size;
  std::mutex m;
  std::condition_variable changed;
  std::vector<bool> joined;  // ncclCommInitRank: which ranks have arrived
  int arrived = 0;
  std::map<std::pair<int, int>, std::deque<std::vector<unsigned char>>> mail;  // (from, to) → messages
  std::vector<std::uint64_t> next_collective;                                   // per rank
  std::map<std::uint64_t, collective> collectives;                              // by sequence number

  // Waits for `ready` (holding `lock`), at most timeout(); then reports what rank `rank` waited for.
  template <class Ready>
  void wait(std::unique_lock<std::mutex>& lock, Ready ready, int rank, const std::string& what) {
    if (!changed.wait_for(lock, timeout(), ready))
      die("NCCL rank " + std::to_string(rank) + " of " + std::to_string(size) + " waited " +
          std::to_string(timeout().count()) + " s " + what +
          ". On GPUs this hangs; here it may also be a peer that never synchronised with its device, "
          "which is when the emulator runs its NCCL operations.");
  }
};

// One operation of a group, as issued.
struct operation {
  op_kind kind;
  const void* src = nullptr;
  void* dst = nullptr;
  std::size_t count = 0;  // elements (per rank for ncclAllGather)
  ncclDataType_t type = ncclChar;
  int peer = -1;
};

template <class T>
void sum_into(void* dst, const std::vector<std::vector<unsigned char>>& parts, std::size_t count) {
  std::vector<T> acc(count), v(count);
  std::memcpy(acc.data(), parts[0].data(), count * sizeof(T));
  for (std::size_t r = 1; r < parts.size(); ++r) {
    std::memcpy(v.data(), parts[r].data(), count * sizeof(T));
    for (std::size_t i = 0; i < count; ++i) acc[i] = acc[i] + v[i];
  }
  std::memcpy(dst, acc.data(), count * sizeof(T));
}
inline void sum_into(void* dst, const collective& k) {
  switch (k.type) {
    case ncclInt8: return sum_into<std::int8_t>(dst, k.parts, k.count);
    case ncclUint8: return sum_into<std::uint8_t>(dst, k.parts, k.count);
    case ncclInt32: return sum_into<std::int32_t>(dst, k.parts, k.count);
    case ncclUint32: return sum_into<std::uint32_t>(dst, k.parts, k.count);
    case ncclInt64: return sum_into<std::int64_t>(dst, k.parts, k.count);
    case ncclUint64: return sum_into<std::uint64_t>(dst, k.parts, k.count);
    case ncclFloat32: return sum_into<float>(dst, k.parts, k.count);
    case ncclFloat64: return sum_into<double>(dst, k.parts, k.count);
  }
}

// Runs one rank's group on its device's queue: posts its sends and contributions, then completes
// its receives and collectives as the peers' arrive.
inline void run_group(clique& c, int rank, const std::vector<operation>& ops) {
  std::unique_lock<std::mutex> lock(c.m);
  std::vector<std::uint64_t> seq(ops.size(), 0);
  for (std::size_t i = 0; i < ops.size(); ++i) {
    const operation& o = ops[i];
    const std::size_t bytes = o.count * type_bytes(o.type);
    const auto* src = static_cast<const unsigned char*>(o.src);
    if (o.kind == op_kind::send) {
      c.mail[{rank, o.peer}].emplace_back(src, src + bytes);
    } else if (o.kind != op_kind::recv) {
      seq[i] = c.next_collective[std::size_t(rank)]++;
      collective& k = c.collectives[seq[i]];
      if (k.posted == 0) {
        k.kind = o.kind, k.count = o.count, k.type = o.type, k.first_rank = rank;
        k.parts.resize(std::size_t(c.size));
      } else if (k.kind != o.kind || k.count != o.count || k.type != o.type) {
        die("NCCL collective #" + std::to_string(seq[i]) + ": rank " + std::to_string(rank) + " called " +
            op_name(o.kind) + " with " + std::to_string(o.count) + " x " + type_name(o.type) + " but rank " +
            std::to_string(k.first_rank) + " called " + op_name(k.kind) + " with " + std::to_string(k.count) + " x " +
            type_name(k.type) + "; on GPUs this hangs or corrupts memory");
      }
      k.parts[std::size_t(rank)].assign(src, src + bytes);
      ++k.posted;
    }
  }
  c.changed.notify_all();
  for (std::size_t i = 0; i < ops.size(); ++i) {
    const operation& o = ops[i];
    const std::size_t bytes = o.count * type_bytes(o.type);
    if (o.kind == op_kind::send) continue;
    if (o.kind == op_kind::recv) {
      auto& box = c.mail[{o.peer, rank}];
      c.wait(lock, [&] { return !box.empty(); }, rank,
             "in ncclRecv for " + std::to_string(bytes) + " bytes from rank " + std::to_string(o.peer) +
                 ", which sent nothing");
      const std::vector<unsigned char> message = std::move(box.front());
      box.pop_front();
      if (message.size() != bytes)
        die("NCCL rank " + std::to_string(rank) + " called ncclRecv for " + std::to_string(bytes) +
            " bytes from rank " + std::to_string(o.peer) + ", whose matching ncclSend sends " +
            std::to_string(message.size()) + "; on GPUs this hangs or corrupts memory");
      if (bytes) std::memcpy(o.dst, message.data(), bytes);
      continue;
    }
    collective& k = c.collectives[seq[i]];
    c.wait(lock, [&] { return k.posted == c.size; }, rank,
           std::string("in ") + op_name(o.kind) + " #" + std::to_string(seq[i]) + " for " +
               std::to_string(c.size - k.posted) + " rank(s) that did not call it");
    if (o.kind == op_kind::all_reduce) {
      sum_into(o.dst, k);
    } else {
      auto* out = static_cast<unsigned char*>(o.dst);
      for (const auto& part : k.parts) out = std::copy(part.begin(), part.end(), out);
    }
    if (++k.taken == c.size) c.collectives.erase(seq[i]);
  }
}

// The calling thread's open group (ncclGroupStart nests, as in NCCL).
struct pending {
  ::ncclComm* comm;
  cudaStream_t stream;
  operation op;
};
struct group_state {
  int depth = 0;
  std::vector<pending> ops;
};
inline group_state& group() {
  static thread_local group_state g;
  return g;
}

inline std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
// ncclCommInitRank's cliques by unique id.
inline std::map<std::uint64_t, std::shared_ptr<clique>>& registry() {
  static std::map<std::uint64_t, std::shared_ptr<clique>> r;
  return r;
}

inline ncclResult_t warn(ncclResult_t r, const std::string& why) {
  std::fprintf(stderr, "moe_emu: NCCL WARN %s\n", why.c_str());
  return r;
}

}  // namespace moe_emu::nccl

struct ncclComm {
  std::shared_ptr<moe_emu::nccl::clique> clique;
  int rank = 0;
  int device = 0;
};

inline const char* ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
    case ncclSystemError: return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
    case ncclInternalError: return "internal error - please report this issue to the NCCL developers";
    case ncclInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case ncclInvalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
  }
  return "unknown result code";
}

inline ncclResult_t ncclCommInitAll(ncclComm_t* comms, int ndev, const int* devlist) {
  using moe_emu::nccl::warn;
  if (!comms || ndev < 1) return warn(ncclInvalidArgument, "ncclCommInitAll: ndev=" + std::to_string(ndev));
  std::vector<int> devices(std::size_t(ndev), 0);
  for (int r = 0; r < ndev; ++r) {
    devices[std::size_t(r)] = devlist ? devlist[r] : r;
    if (!moe_emu::valid_device(devices[std::size_t(r)]))
      return warn(ncclInvalidArgument, "ncclCommInitAll: device " + std::to_string(devices[std::size_t(r)]) +
                                           " of rank " + std::to_string(r) + " does not exist (" +
                                           std::to_string(moe_emu::device_count()) + " emulated devices)");
    for (int q = 0; q < r; ++q)
      if (devices[std::size_t(q)] == devices[std::size_t(r)])
        return warn(ncclInvalidUsage, "ncclCommInitAll: duplicate GPU " + std::to_string(devices[std::size_t(r)]) +
                                          " (ranks " + std::to_string(q) + " and " + std::to_string(r) + ")");
  }
  auto c = std::make_shared<moe_emu::nccl::clique>(ndev);
  for (int r = 0; r < ndev; ++r) comms[r] = new ncclComm{c, r, devices[std::size_t(r)]};
  return ncclSuccess;
}

inline ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  if (!id) return ncclInvalidArgument;
  static std::uint64_t next = 1;
  const std::lock_guard<std::mutex> lock(moe_emu::nccl::registry_mutex());
  std::memset(id->internal, 0, sizeof id->internal);
  const std::uint64_t n = next++;
  std::memcpy(id->internal, &n, sizeof n);
  return ncclSuccess;
}

// Blocks until all `nranks` ranks have joined, as NCCL does (bounded: MOE_EMU_NCCL_TIMEOUT).
inline ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  using moe_emu::nccl::warn;
  if (!comm || nranks < 1 || rank < 0 || rank >= nranks)
    return warn(ncclInvalidArgument, "ncclCommInitRank: rank " + std::to_string(rank) + " of " +
                                         std::to_string(nranks) + " ranks");
  std::uint64_t key = 0;
  std::memcpy(&key, id.internal, sizeof key);
  std::shared_ptr<moe_emu::nccl::clique> c;
  {
    const std::lock_guard<std::mutex> lock(moe_emu::nccl::registry_mutex());
    auto& slot = moe_emu::nccl::registry()[key];
    if (!slot) slot = std::make_shared<moe_emu::nccl::clique>(nranks);
    c = slot;
  }
  std::unique_lock<std::mutex> lock(c->m);
  if (c->size != nranks)
    return warn(ncclInvalidUsage, "ncclCommInitRank: rank " + std::to_string(rank) + " joins a world of " +
                                      std::to_string(nranks) + " ranks, its peers one of " + std::to_string(c->size));
  if (c->joined[std::size_t(rank)])
    return warn(ncclInvalidUsage, "ncclCommInitRank: rank " + std::to_string(rank) + " joined twice");
  c->joined[std::size_t(rank)] = true;
  ++c->arrived;
  c->changed.notify_all();
  c->wait(lock, [&] { return c->arrived == c->size; }, rank,
          "in ncclCommInitRank for " + std::to_string(c->size - c->arrived) + " rank(s) that did not join");
  *comm = new ncclComm{c, rank, moe_emu::current_device()};
  return ncclSuccess;
}

inline ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (!comm) return ncclInvalidArgument;
  delete comm;  // the clique lives on while queued operations use it
  return ncclSuccess;
}
inline ncclResult_t ncclCommCount(const ncclComm_t comm, int* count) {
  if (!comm || !count) return ncclInvalidArgument;
  *count = comm->clique->size;
  return ncclSuccess;
}
inline ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank) {
  if (!comm || !rank) return ncclInvalidArgument;
  *rank = comm->rank;
  return ncclSuccess;
}
inline ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int* device) {
  if (!comm || !device) return ncclInvalidArgument;
  *device = comm->device;
  return ncclSuccess;
}

inline ncclResult_t ncclGroupStart() {
  ++moe_emu::nccl::group().depth;
  return ncclSuccess;
}

inline ncclResult_t ncclGroupEnd() {
  namespace en = moe_emu::nccl;
  en::group_state& g = en::group();
  if (g.depth == 0) return en::warn(ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
  if (--g.depth > 0) return ncclSuccess;
  std::vector<en::pending> ops = std::move(g.ops);
  g.ops.clear();
  if (ops.empty()) return ncclSuccess;
  ncclComm* const comm = ops.front().comm;
  const cudaStream_t stream = ops.front().stream;
  std::vector<en::operation> mine;
  for (const en::pending& p : ops) {
    if (p.comm->clique != comm->clique || p.comm->rank != comm->rank)
      moe_emu::die("ncclGroupEnd: a group with operations of several ranks (one thread driving several GPUs) is not "
                    "emulated; drive each GPU from a thread of its own");
    if (p.stream != stream)
      moe_emu::die("ncclGroupEnd: a group with operations on several streams is not emulated");
    mine.push_back(p.op);
  }
  std::shared_ptr<en::clique> c = comm->clique;
  const int rank = comm->rank;
  moe_emu::enqueue(stream, [c, rank, mine] { en::run_group(*c, rank, mine); });
  return ncclSuccess;
}

namespace moe_emu::nccl {

// Validates an operation and adds it to the open group (or runs it as a group of its own).
inline ncclResult_t issue(ncclComm_t comm, cudaStream_t stream, const operation& o) {
  const char* what = op_name(o.kind);
  if (!comm) return warn(ncclInvalidArgument, std::string(what) + ": null communicator");
  const std::string who = std::string(what) + ": rank " + std::to_string(comm->rank) + ": ";
  if (type_bytes(o.type) == 0) return warn(ncclInvalidArgument, who + "unknown data type " + std::to_string(int(o.type)));
  if ((o.kind == op_kind::send || o.kind == op_kind::recv) && (o.peer < 0 || o.peer >= comm->clique->size))
    return warn(ncclInvalidArgument, who + "peer " + std::to_string(o.peer) + " outside a communicator of " +
                                         std::to_string(comm->clique->size) + " ranks");
  if (device_of(stream) != comm->device)
    return warn(ncclInvalidUsage, who + "a stream of device " + std::to_string(device_of(stream)) +
                                      " for the communicator of device " + std::to_string(comm->device));
  const std::size_t bytes = o.count * type_bytes(o.type);
  const std::size_t out_bytes = o.kind == op_kind::all_gather ? bytes * std::size_t(comm->clique->size) : bytes;
  if (o.kind != op_kind::recv && bytes && !device_range(o.src, bytes))
    return warn(ncclInvalidArgument, who + "the send buffer (" + std::to_string(bytes) +
                                         " bytes) is not in one device allocation");
  if (o.kind != op_kind::send && out_bytes && !device_range(o.dst, out_bytes))
    return warn(ncclInvalidArgument, who + "the receive buffer (" + std::to_string(out_bytes) +
                                         " bytes) is not in one device allocation");
  ncclGroupStart();
  group().ops.push_back({comm, stream, o});
  return ncclGroupEnd();
}

}  // namespace moe_emu::nccl

inline ncclResult_t ncclSend(const void* buf, std::size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                             cudaStream_t stream) {
  moe_emu::nccl::operation o{moe_emu::nccl::op_kind::send};
  o.src = buf, o.count = count, o.type = type, o.peer = peer;
  return moe_emu::nccl::issue(comm, stream, o);
}
inline ncclResult_t ncclRecv(void* buf, std::size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                             cudaStream_t stream) {
  moe_emu::nccl::operation o{moe_emu::nccl::op_kind::recv};
  o.dst = buf, o.count = count, o.type = type, o.peer = peer;
  return moe_emu::nccl::issue(comm, stream, o);
}
inline ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, std::size_t count, ncclDataType_t type,
                                  ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  if (op != ncclSum)
    return moe_emu::nccl::warn(ncclInvalidArgument, "ncclAllReduce: only ncclSum is emulated (op " +
                                                        std::to_string(int(op)) + ")");
  moe_emu::nccl::operation o{moe_emu::nccl::op_kind::all_reduce};
  o.src = sendbuff, o.dst = recvbuff, o.count = count, o.type = type;
  return moe_emu::nccl::issue(comm, stream, o);
}
inline ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, std::size_t sendcount, ncclDataType_t type,
                                  ncclComm_t comm, cudaStream_t stream) {
  moe_emu::nccl::operation o{moe_emu::nccl::op_kind::all_gather};
  o.src = sendbuff, o.dst = recvbuff, o.count = sendcount, o.type = type;
  return moe_emu::nccl::issue(comm, stream, o);
}
