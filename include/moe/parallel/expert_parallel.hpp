// moe/parallel/expert_parallel.hpp — a MoE layer whose experts are spread over R ranks
// (GShard / Switch Transformer expert parallelism).
//
//   using moe_layer = moe::expert_parallel<float, moe::in_process_communicator, moe::top_k, moe::geglu_ffn>;
//   moe_layer layer(cfg, comm);          // rank r holds experts [r·E/R, (r+1)·E/R)
//   layer.forward(ctx, x, y);            // x: this rank's tokens; every rank calls forward together
//   layer.backward(dy, dx);
//
// Each rank routes its own tokens (its routing groups are its own: capacity and losses are per
// group as in moe::layer), exchanges per-expert counts, sends each expert's rows to the rank that
// owns it, runs its local experts on the rows it receives, sends the results back and combines.
// Backward runs the same exchanges with the gradients. The router is replicated: its gradient is
// the sum over all routing groups of all ranks, added in global group order.
//
// The contract: for the same global batch (rank r holding tokens [r·T, (r+1)·T)), seed and weights,
// R ranks give the same outputs and gradients as one moe::layer holding all experts with
// group_size = T (or a divisor of it) — bit for bit on the host space. Random draws are keyed by
// global token and expert ids, so jitter, noise and dropout agree too. The reported auxiliary loss
// is the same mean, summed in another order (equal to within rounding).
//
// Every rank must build the same layer (sizes, seeds and every policy's config are compared at
// construction) and call forward/backward together with the same token count, training flag and
// step. Sizes of the token exchange are host values (NCCL needs them), so a forward synchronises
// once with the host: after the per-expert counts are exchanged (every rank's token count,
// training flag and step travel with them and are checked there). A backward synchronises once
// too, before its first exchange, to agree that every rank's checks passed (and on
// aux_loss_scale and the trainable parameters): a rank that failed alone would otherwise leave
// its peers waiting in the exchange, over NCCL forever. statistics() synchronises, as
// moe::layer's does.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <concepts>
#include <cstring>
#include <exception>
#include <limits>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include "moe/layer/layer.hpp"
#include "moe/parallel/communicator.hpp"

namespace moe {

template <class T, class Comm, class... Policies>
class expert_parallel : public detail::layer_core<T, Policies...> {
  using core = detail::layer_core<T, Policies...>;

 public:
  using typename core::compute_type;
  using typename core::config;
  using typename core::dispatch_type;
  using typename core::element_type;
  using typename core::expert_type;
  using typename core::grad_type;
  using typename core::R;
  using typename core::space_type;
  using communicator_type = Comm;

  static_assert(communicator<Comm>, "moe::expert_parallel<T, Comm, ...>: Comm must satisfy moe::communicator "
                                    "(moe::in_process_communicator or moe::nccl_communicator)");
  static_assert(std::is_same_v<dispatch_type, sorted_dispatch>,
                "moe::expert_parallel exchanges packed expert rows: use sorted_dispatch (the default)");
  static_assert(Comm::host_memory == space_type::host_accessible,
                "moe::expert_parallel: in_process_communicator exchanges host buffers (use moe::host); "
                "nccl_communicator exchanges device buffers (use moe::cuda)");

  expert_parallel(const config& cfg, Comm comm, const space_type& space = space_type{})
      : core(checked(cfg, comm), space, comm.rank() * (cfg.num_experts / comm.size()), cfg.num_experts / comm.size()),
        comm_(std::move(comm)),
        gathered_stats_(this->space_, sizeof(double) * std::size_t(ranks() * this->stats_size())),
        count_blocks_(this->space_, sizeof(int) * std::size_t(2 * ranks() * (this->local_experts_ + 4))),
        status_blocks_(this->space_, sizeof(int) * std::size_t((1 + ranks()) * status_ints)) {
    this->space_.fill_zero(gathered_stats_.data(), gathered_stats_.bytes());
    check_same_configuration();
  }

  Comm& communicator() { return comm_; }
  int rank() const { return comm_.rank(); }
  int ranks() const { return comm_.size(); }

  // y = MoE(x) for this rank's tokens. Collective: every rank calls it with the same token count.
  void forward(const step_context& ctx, matrix_view<const T> x, matrix_view<T> y) {
    guarded([&] { forward_impl(ctx, x, y); });
  }
  // Collective as well.
  void backward(matrix_view<const T> dy, matrix_view<T> dx, double aux_loss_scale = 1.0) {
    guarded([&] { backward_impl(dy, dx, aux_loss_scale); });
  }

  // Routing statistics of the latest forward over all ranks (per-expert counts summed, means over
  // all tokens). Local, not collective: every rank's statistics were gathered during forward; this
  // synchronises the space to read them.
  routing_statistics statistics() const {
    require(last_.valid, "statistics", "no forward pass recorded (call forward first)");
    const int n = this->stats_size();
    std::vector<double> all(static_cast<std::size_t>(ranks() * n));
    this->space_.synchronize();
    this->space_.copy_to_host(all.data(), gathered_stats_.data(), sizeof(double) * all.size());
    return this->decode_statistics(combine_statistics(all, n).data(), last_.tokens * ranks(), last_.groups * ranks(),
                                   last_.capacity, last_.training);
  }

  // This rank's routing decisions of the latest forward (pairs of its own tokens; global expert ids).
  routing_decisions routing() const {
    require(last_.valid, "routing", "no forward pass recorded (call forward first)");
    call_state st;
    workspace_carver w(ws_.data(), ws_.bytes());
    carve(w, shape(last_.tokens, last_.training), last_.recv_bound, st);
    return this->decisions(st.plan);
  }

  // Bytes this rank sent to other ranks in the token exchanges of the latest forward (rows to the
  // experts' owners with their 4-byte token ids, and results back) and of the latest backward
  // (∂out rows to the owners, ∂x rows back): for scaling estimates. Not counted, being small and
  // independent of the routing: the count blocks (R·(E/R + 4) ints), the backward's status block
  // (5 ints), the statistics gather (a few dozen doubles plus 2E) and the router-gradient gather
  // (groups·d·E floats) to each peer.
  std::size_t forward_exchange_bytes() const { return last_.forward_bytes; }
  std::size_t backward_exchange_bytes() const { return last_.backward_bytes; }

 private:
  struct call_state {
    routing_plan<R> plan;
    typename dispatch_type::state dispatch;
    T* xp = nullptr;    // [rows, d] this rank's kept rows (packed, global expert order)
    T* out = nullptr;   // [rows, d] their expert outputs, returned by the owners
    T* dout = nullptr;  // [rows, d]
    T* dxp = nullptr;   // [rows, d]
    int* row_token = nullptr;  // [rows] global token id of each row (sent with the rows)
    // Owner side: rows received from every rank.
    T* recv = nullptr;        // [recv, d] in arrival order (source rank, then expert, then slot)
    T* owner_x = nullptr;     // [recv, d] expert-major (expert, then source rank, then slot)
    T* owner_grad = nullptr;  // [recv, d] ∂L/∂out, expert-major
    T* owner_dx = nullptr;    // [recv, d]
    ffn_activations<T> act;   // owner FFN activations, [recv, …]
    int* recv_token = nullptr;  // [recv] arrival order
    int* perm = nullptr;        // [recv] arrival row → owner row
    row_map owner_rows;         // rows_bound = recv
    int* owner_offsets = nullptr;  // [L + 1]
    R* partials = nullptr;         // [R·G, d, E] all ranks' per-group router gradients
    R* noise_partials = nullptr;
    double* local_stats = nullptr;  // [stats_size] this rank's statistics
  };

  static constexpr int status_ints = 5;  // see agree_on_backward

  struct last_call {
    bool valid = false;
    index_t tokens = 0;
    int groups = 0;
    int capacity = 0;
    bool training = false;
    std::uint32_t step = 0;
    index_t recv_bound = 0;
    std::vector<int> send_rows, recv_rows;  // per rank: rows sent / received in the forward exchange
    std::vector<int> recv_counts;           // [R, L] rows received from rank p for local expert e
    std::size_t forward_bytes = 0, backward_bytes = 0;
  };

  static const config& checked(const config& cfg, const Comm& comm) {
    require(comm.size() >= 1, "expert_parallel", "communicator of ", comm.size(), " ranks");
    require(cfg.num_experts >= 1 && cfg.num_experts % comm.size() == 0, "expert_parallel", "num_experts=",
            cfg.num_experts, " is not divisible by the ", comm.size(), " ranks of the communicator");
    return cfg;
  }

  // Every rank must build the same layer: compare the sizes and seeds of all ranks (collective).
  void check_same_configuration() {
    const config& c = this->cfg_;
    const std::int64_t mine[6] = {comm_.size(), c.num_experts, c.d_model, c.d_ff, std::int64_t(c.seed),
                                  std::int64_t(c.layer_id) << 32 | std::int64_t(c.group_size)};
    std::vector<std::int64_t> all(6 * std::size_t(ranks()));
    gather_host(mine, sizeof mine, all.data());
    static const char* names[6] = {"ranks", "num_experts", "d_model", "d_ff", "seed", "layer_id/group_size"};
    for (int p = 0; p < ranks(); ++p)
      for (int i = 0; i < 6; ++i)
        require(all[std::size_t(6 * p + i)] == all[std::size_t(i)], "expert_parallel", "rank ", p, " has ", names[i],
                "=", all[std::size_t(6 * p + i)], " but rank 0 has ", names[i], "=", all[std::size_t(i)],
                "; every rank must build the same layer");
    check_same_policy_config(c.router, "router", core::router_type::name);
    check_same_policy_config(c.capacity, "capacity", core::capacity_type::name);
    check_same_policy_config(c.losses, "losses", "losses");
    check_same_policy_config(c.expert, "expert", expert_type::name);
  }

  // One policy's config, compared with rank 0's on every rank (collective). Configs travel as bytes
  // (every rank runs the same binary, so layouts agree) and are compared with the policy's own ==,
  // so padding never counts. A user policy whose config lacks == or is not trivially copyable is
  // not compared (its ranks must agree on their own).
  template <class C>
  void check_same_policy_config(const C& mine, const char* part, const char* policy) {
    if constexpr (std::is_trivially_copyable_v<C> && std::equality_comparable<C>) {
      std::vector<unsigned char> all(sizeof(C) * std::size_t(ranks()));
      gather_host(&mine, sizeof(C), all.data());
      C first{}, theirs{};
      std::memcpy(&first, all.data(), sizeof(C));
      for (int p = 1; p < ranks(); ++p) {
        std::memcpy(&theirs, all.data() + sizeof(C) * std::size_t(p), sizeof(C));
        require(theirs == first, "expert_parallel", "rank ", p, " has another ", part, " config (", policy,
                "::config) than rank 0; every rank must build the same layer");
      }
    }
  }

  // Gathers `bytes` of host data from every rank (collective), staged through space memory: a
  // buffer allocated for the call, or `stage` (bytes·(1 + R) of it) on paths that run every step.
  void gather_host(const void* mine, std::size_t bytes, void* all) {
    buffer<space_type> stage(this->space_, bytes * std::size_t(1 + ranks()));
    gather_host(mine, bytes, all, stage.template as<char>());
  }
  void gather_host(const void* mine, std::size_t bytes, void* all, char* stage) {
    const auto& sp = this->space_;
    sp.copy_from_host(stage, mine, bytes);
    comm_.all_gather(stage, bytes, stage + bytes);
    sp.synchronize();
    sp.copy_to_host(all, stage + bytes, bytes * std::size_t(ranks()));
  }

  // Runs `body`; if it throws, the other ranks are released from any collective they wait in.
  template <class F>
  void guarded(F&& body) {
    try {
      body();
    } catch (const std::exception& e) {
      if constexpr (requires { comm_.world().abort(std::string()); })
        comm_.world().abort(detail::concat("expert_parallel: rank ", rank(), " failed: ", e.what()));
      throw;
    }
  }

  routing_shape shape(index_t tokens, bool training) const {
    return this->shape_for(tokens, training, rank(), ranks());
  }

  // Rows a rank can receive: each local expert gets at most every rank's slots for it (capacity)
  // or every token of every rank (dropless), and no more than all proposals of all ranks.
  index_t receive_bound(const routing_shape& s) const {
    const index_t L = this->local_experts_, R_ = ranks();
    const index_t per_expert = index_t(s.groups) * std::min<index_t>(s.capacity, s.group_tokens) * R_;
    return std::max<index_t>(1, std::min(L * per_expert, s.pairs() * R_));
  }

  void carve(workspace_carver& w, const routing_shape& s, index_t recv, call_state& st) const {
    const index_t d = s.d_model, L = this->local_experts_, R_ = ranks(), E = s.experts;
    this->carve_routing(w, s, st.plan);
    dispatch_type::template carve<T, R>(w, s, st.dispatch);
    const index_t rows = st.dispatch.rows.rows.rows_bound;
    st.xp = w.take<T>(rows * d);
    st.out = w.take<T>(rows * d);
    st.dout = w.take<T>(rows * d);
    st.dxp = w.take<T>(rows * d);
    st.row_token = w.take<int>(rows);
    st.recv = w.take<T>(recv * d);
    st.owner_x = w.take<T>(recv * d);
    st.owner_grad = w.take<T>(recv * d);
    st.owner_dx = w.take<T>(recv * d);
    expert_type::template carve<T>(w, this->local_expert_shape(), recv, st.act);
    st.recv_token = w.take<int>(recv);
    st.perm = w.take<int>(recv);
    st.owner_rows.rows_bound = recv;
    st.owner_rows.expert_offsets = w.take<int>(L + 1);
    st.owner_rows.row_pair = w.take<int>(recv);
    st.owner_rows.row_token = w.take<int>(recv);
    st.owner_rows.row_expert = w.take<int>(recv);
    st.partials = w.take<R>(R_ * s.groups * d * E);
    st.noise_partials = this->cfg_.router.learned_noise ? w.take<R>(R_ * s.groups * d * E) : nullptr;
    st.local_stats = w.take<double>(this->stats_size());
  }

 public:
  // The steps of forward and backward: not part of the API. They are public only because nvcc
  // rejects extended (__device__) lambdas inside private or protected member functions.
  void forward_impl(const step_context& ctx, matrix_view<const T> x, matrix_view<T> y) {
    const index_t tokens = x.extent[0];
    last_.valid = false;
    const auto& sp = this->space_;
    const int L = this->local_experts_, R_ = ranks();

    // This rank's part before the first exchange: checks, routing, packing. A failure here is not
    // thrown yet: the peers would wait for this rank in the count exchange (over NCCL, forever).
    // It is announced in that exchange instead, and then every rank fails.
    std::exception_ptr local_failure;
    routing_shape s{};
    index_t recv_bound = 0;
    call_state st;
    try {
      this->check_io(x, y);
      require(tokens <= index_t(std::numeric_limits<int>::max()), "expert_parallel", "tokens=", tokens,
              " per rank exceeds the int range of token ids");
      s = shape(tokens, ctx.training);
      recv_bound = receive_bound(s);
      {
        workspace_carver measure;
        carve(measure, s, recv_bound, st);
        ws_.reserve(measure.bytes());
        workspace_carver w(ws_.data(), ws_.bytes());
        carve(w, s, recv_bound, st);
      }
      this->route(ctx, x.data, st.plan);
      dispatch_type::template assign<T>(sp, st.plan, st.dispatch);
      detail::reduce_statistics<core::num_losses>(sp, st.plan, st.dispatch.rows, st.local_stats);
      dispatch_type::dispatch(sp, st.plan, st.dispatch, x.data, st.xp);

      // Global token ids of this rank's rows, sent along so owners key dropout by token.
      const int* row_token = st.dispatch.rows.rows.row_token;
      int* out = st.row_token;
      const int base = int(s.token_base);
      sp.parallel_for(st.dispatch.rows.rows.rows_bound,
                      [=] MOE_LAMBDA(index_t r) { out[r] = row_token[r] >= 0 ? base + row_token[r] : -1; });
    } catch (...) {
      local_failure = std::current_exception();
    }
    const index_t d = s.d_model;

    // Counts, exchanged in blocks of L + 4 ints: to rank q, the rows this rank sends to each of q's
    // L local experts (from the dispatcher's expert offsets, on the device), this rank's token count,
    // whether its part above succeeded, its training flag and its step. The one host synchronisation
    // of forward then reads what was sent and received.
    const int B = L + 4;
    int* blocks_d = count_blocks_.template as<int>();
    const int mine = int(std::min<index_t>(tokens, std::numeric_limits<int>::max()));
    const int training = ctx.training ? 1 : 0, step = std::bit_cast<int>(ctx.step);
    if (!local_failure) {
      const int* offsets = st.dispatch.rows.rows.expert_offsets;
      const int local = L, block = B;
      // A non-finite value the CUDA space recorded (raised on the host only at the next
      // synchronize) is a failure too: read in stream order, on the device.
      const unsigned long long* nonfinite = nullptr;
      if constexpr (requires { sp.nonfinite_index_device(); }) nonfinite = sp.nonfinite_index_device();
      sp.parallel_for(R_ * B, [=] MOE_LAMBDA(index_t i) {
        const index_t q = i / block, j = i - q * block, e = q * local + j;
        const int ok = nonfinite == nullptr || *nonfinite == ~0ull ? 1 : 0;
        blocks_d[i] = j == local       ? mine
                      : j == local + 1 ? ok
                      : j == local + 2 ? training
                      : j == local + 3 ? step
                                       : offsets[e + 1] - offsets[e];
      });
    } else {
      std::vector<int> failed(static_cast<std::size_t>(R_ * B), 0);
      for (int q = 0; q < R_; ++q) {
        failed[std::size_t(q * B + L)] = mine;
        failed[std::size_t(q * B + L + 2)] = training;
        failed[std::size_t(q * B + L + 3)] = step;
      }
      sp.copy_from_host(blocks_d, failed.data(), sizeof(int) * failed.size());
    }
    comm_.all_to_all(blocks_d, blocks_d + R_ * B, sizeof(int) * std::size_t(B));
    std::vector<int> blocks(static_cast<std::size_t>(2 * R_ * B));
    sp.synchronize();
    sp.copy_to_host(blocks.data(), blocks_d, sizeof(int) * blocks.size());
    const auto received_block = [&](int p) { return blocks.data() + std::size_t((R_ + p) * B); };
    // Every rank must bring the same number of tokens (global token ids are rank·T + t); every rank
    // sees every count, so each fails with the same message. Then this rank's own failure, then a
    // peer's.
    for (int p = 0; p < R_; ++p)
      require(received_block(p)[L] == tokens, "expert_parallel", "rank ", p, " has ", received_block(p)[L],
              " tokens but rank ", rank(), " has ", tokens, "; every rank must call forward with the same count");
    // The step context, compared with rank 0's (so every rank reports the same pair).
    const auto context = [&](int p) {
      return detail::concat("training=", received_block(p)[L + 2] != 0 ? "true" : "false",
                            ", step=", std::bit_cast<std::uint32_t>(received_block(p)[L + 3]));
    };
    const auto same_context = [&](int p) {
      const int *theirs = received_block(p), *first = received_block(0);
      return theirs[L + 2] == first[L + 2] && theirs[L + 3] == first[L + 3];
    };
    for (int p = 1; p < R_; ++p)
      require(same_context(p), "expert_parallel", "rank ", p, " calls forward with ", context(p), " but rank 0 with ",
              context(0), "; every rank must pass the same step_context");
    if (local_failure) std::rethrow_exception(local_failure);
    for (int p = 0; p < R_; ++p)
      if (received_block(p)[L + 1] != 1)
        throw error(detail::concat("expert_parallel: rank ", p, " failed before the token exchange (its own error "
                                   "says why); rank ", rank(), " stops with it"));
    std::vector<int> send_counts(static_cast<std::size_t>(R_ * L)), recv_counts(send_counts.size());
    for (int p = 0; p < R_; ++p)
      for (int e = 0; e < L; ++e) {
        send_counts[std::size_t(p * L + e)] = blocks[std::size_t(p * B + e)];
        recv_counts[std::size_t(p * L + e)] = received_block(p)[e];
      }

    last_.send_rows.assign(std::size_t(R_), 0);
    last_.recv_rows.assign(std::size_t(R_), 0);
    for (int p = 0; p < R_; ++p)
      for (int e = 0; e < L; ++e) {
        last_.send_rows[std::size_t(p)] += send_counts[std::size_t(p * L + e)];
        last_.recv_rows[std::size_t(p)] += recv_counts[std::size_t(p * L + e)];
      }
    const index_t received = std::accumulate(last_.recv_rows.begin(), last_.recv_rows.end(), index_t(0));
    require(received <= recv_bound, "expert_parallel", "rank ", rank(), " would receive ", received,
            " rows, more than the bound ", recv_bound, " (ranks disagree on the routing shapes)");
    last_.recv_counts = recv_counts;

    // The owner's expert-major layout: expert e's rows from rank 0, then rank 1, …
    const auto received_rows = static_cast<std::size_t>(received);
    std::vector<int> owner_offsets(static_cast<std::size_t>(L) + 1, 0), perm(received_rows), row_expert(received_rows);
    for (int e = 0; e < L; ++e) {
      int n = 0;
      for (int p = 0; p < R_; ++p) n += recv_counts[std::size_t(p * L + e)];
      owner_offsets[std::size_t(e + 1)] = owner_offsets[std::size_t(e)] + n;
    }
    {
      std::vector<int> fill(owner_offsets.begin(), owner_offsets.end() - 1);
      int arrival = 0;
      for (int p = 0; p < R_; ++p)
        for (int e = 0; e < L; ++e)
          for (int k = 0; k < recv_counts[std::size_t(p * L + e)]; ++k) {
            row_expert[std::size_t(fill[std::size_t(e)])] = e;
            perm[std::size_t(arrival++)] = fill[std::size_t(e)]++;
          }
    }
    sp.copy_from_host(st.owner_rows.expert_offsets, owner_offsets.data(), sizeof(int) * owner_offsets.size());
    sp.copy_from_host(st.perm, perm.data(), sizeof(int) * perm.size());
    sp.copy_from_host(st.owner_rows.row_expert, row_expert.data(), sizeof(int) * row_expert.size());
    mark_unused_rows(st.owner_rows, received);

    // Rows (and their token ids) to the owners.
    exchange_rows(st.xp, st.recv, last_.send_rows, last_.recv_rows, d);
    exchange_tokens(st.row_token, st.recv_token, last_.send_rows, last_.recv_rows);
    permute_rows(st.recv, st.owner_x, st.perm, received, d, /*to_owner=*/true);
    {
      const int* perm_p = st.perm;
      const int* tok = st.recv_token;
      int* owner_token = st.owner_rows.row_token;
      int* owner_pair = st.owner_rows.row_pair;
      sp.parallel_for(received, [=] MOE_LAMBDA(index_t i) {
        owner_token[perm_p[i]] = tok[i];
        owner_pair[perm_p[i]] = int(i);
      });
    }

    expert_type::forward(sp, this->cfg_.expert, this->local_expert_shape(), this->const_experts(), st.owner_rows,
                         st.owner_x, st.act, ctx.training, this->dropout_stream(ctx.step));

    // Results back to the rows' ranks, in the order they were sent.
    permute_rows(st.act.out, st.recv, st.perm, received, d, /*to_owner=*/false);
    exchange_rows(st.recv, st.out, last_.recv_rows, last_.send_rows, d);
    dispatch_type::combine(sp, st.plan, st.dispatch, st.out, y.data);

    // Statistics of all ranks, read by statistics() when asked for.
    comm_.all_gather(st.local_stats, sizeof(double) * std::size_t(this->stats_size()),
                     gathered_stats_.template as<double>());

    std::size_t bytes = 0;
    for (int p = 0; p < R_; ++p)
      if (p != rank())
        bytes += std::size_t(last_.send_rows[std::size_t(p)] + last_.recv_rows[std::size_t(p)]) * std::size_t(d) *
                     sizeof(T) +
                 std::size_t(last_.send_rows[std::size_t(p)]) * sizeof(int);  // token ids
    last_.forward_bytes = bytes;
    last_.tokens = tokens;
    last_.groups = s.groups;
    last_.capacity = s.capacity;
    last_.training = ctx.training;
    last_.step = ctx.step;
    last_.recv_bound = recv_bound;
    last_.valid = true;
  }

  void backward_impl(matrix_view<const T> dy, matrix_view<T> dx, double aux_loss_scale) {
    agree_on_backward(dy, dx, aux_loss_scale);
    const routing_shape s = shape(last_.tokens, last_.training);
    call_state st;
    workspace_carver w(ws_.data(), ws_.bytes());
    carve(w, s, last_.recv_bound, st);
    const auto& sp = this->space_;
    const index_t d = s.d_model;
    const index_t received = std::accumulate(last_.recv_rows.begin(), last_.recv_rows.end(), index_t(0));

    dispatch_type::combine_backward(sp, st.plan, st.dispatch, st.out, dy.data, st.plan.dgate, st.dout);
    exchange_rows(st.dout, st.recv, last_.send_rows, last_.recv_rows, d);
    permute_rows(st.recv, st.owner_grad, st.perm, received, d, /*to_owner=*/true);
    expert_type::backward(sp, this->cfg_.expert, this->local_expert_shape(), this->const_experts(),
                          this->expert_grads_to_compute(), st.owner_rows, st.owner_x, st.act, st.owner_grad,
                          st.owner_dx, last_.training, this->dropout_stream(last_.step));
    permute_rows(st.owner_dx, st.recv, st.perm, received, d, /*to_owner=*/false);
    exchange_rows(st.recv, st.dxp, last_.recv_rows, last_.send_rows, d);
    dispatch_type::dispatch_backward(sp, st.plan, st.dispatch, st.dxp, st.plan.dx_acc);
    this->route_backward(st.plan, dx.data, last_.training, last_.step, R(aux_loss_scale));

    // The replicated router: every rank adds all ranks' per-group gradients in global group order
    // (nothing to exchange when it is frozen: every rank freezes the same groups).
    if (this->trainable().router) {
      const index_t per_rank = index_t(s.groups) * d * s.experts;
      comm_.all_gather(st.plan.router_partials, sizeof(R) * std::size_t(per_rank), st.partials);
      if (this->cfg_.router.learned_noise)
        comm_.all_gather(st.plan.noise_partials, sizeof(R) * std::size_t(per_rank), st.noise_partials);
      this->accumulate_router_grads(st.partials, st.noise_partials, s.groups * ranks());
    }

    std::size_t bytes = 0;
    for (int p = 0; p < ranks(); ++p)
      if (p != rank())
        bytes += std::size_t(last_.send_rows[std::size_t(p)] + last_.recv_rows[std::size_t(p)]) * std::size_t(d) *
                 sizeof(T);
    last_.backward_bytes = bytes;
  }

  // Before the first exchange of backward: this rank's checks, then one small all_gather of every
  // rank's status (checks passed, trainable flags, aux_loss_scale's bits) read on the host. A rank
  // whose checks failed takes part in the gather and only then throws; every other rank then fails
  // naming it, instead of waiting for it in the token exchange.
  void agree_on_backward(matrix_view<const T> dy, matrix_view<T> dx, double aux_loss_scale) {
    std::exception_ptr local_failure;
    try {
      require(last_.valid, "backward", "no forward pass recorded (call forward first)");
      this->check_grad_io(last_.tokens, dy, dx, aux_loss_scale);
    } catch (...) {
      local_failure = std::current_exception();
    }
    const auto scale_bits = std::bit_cast<std::array<int, 2>>(aux_loss_scale);
    const int mine[status_ints] = {local_failure ? 0 : 1, this->trainable().router ? 1 : 0,
                                   this->trainable().experts ? 1 : 0, scale_bits[0], scale_bits[1]};
    std::vector<int> all(static_cast<std::size_t>(ranks() * status_ints));
    gather_host(mine, sizeof mine, all.data(), status_blocks_.template as<char>());
    if (local_failure) std::rethrow_exception(local_failure);
    const auto status = [&](int p) { return all.data() + std::size_t(p * status_ints); };
    for (int p = 0; p < ranks(); ++p)
      if (status(p)[0] != 1)
        throw error(detail::concat("expert_parallel: rank ", p, " failed before the backward exchange (its own "
                                   "error says why); rank ", rank(), " stops with it"));
    // Then what must agree, compared with rank 0's (so every rank reports the same pair).
    const auto trains = [&](int p) {
      return detail::concat("router=", status(p)[1] != 0 ? "true" : "false",
                            ", experts=", status(p)[2] != 0 ? "true" : "false");
    };
    const auto scale = [&](int p) { return std::bit_cast<double>(std::array<int, 2>{status(p)[3], status(p)[4]}); };
    for (int p = 1; p < ranks(); ++p) {
      require(status(p)[1] == status(0)[1] && status(p)[2] == status(0)[2], "expert_parallel", "rank ", p,
              " trains ", trains(p), " but rank 0 trains ", trains(0), "; every rank must call set_trainable alike");
      require(status(p)[3] == status(0)[3] && status(p)[4] == status(0)[4], "expert_parallel", "rank ", p,
              " calls backward with aux_loss_scale=", scale(p), " but rank 0 with ", scale(0),
              "; the replicated router's gradient needs the same scale on every rank");
    }
  }

  // Rows past the received ones belong to nobody (the FFN skips them).
  void mark_unused_rows(const row_map& rows, index_t used) {
    int* re = rows.row_expert;
    int* rt = rows.row_token;
    int* rp = rows.row_pair;
    this->space_.parallel_for(rows.rows_bound, [=] MOE_LAMBDA(index_t r) {
      if (r >= used) {
        re[r] = -1;
        rt[r] = -1;
        rp[r] = -1;
      }
    });
  }

  void exchange_rows(const T* src, T* dst, const std::vector<int>& send_rows, const std::vector<int>& recv_rows,
                     index_t d) {
    std::vector<std::size_t> sb(send_rows.size()), rb(recv_rows.size());
    for (std::size_t p = 0; p < sb.size(); ++p) {
      sb[p] = std::size_t(send_rows[p]) * std::size_t(d) * sizeof(T);
      rb[p] = std::size_t(recv_rows[p]) * std::size_t(d) * sizeof(T);
    }
    comm_.all_to_all_v(src, sb.data(), dst, rb.data());
  }
  void exchange_tokens(const int* src, int* dst, const std::vector<int>& send_rows, const std::vector<int>& recv_rows) {
    std::vector<std::size_t> sb(send_rows.size()), rb(recv_rows.size());
    for (std::size_t p = 0; p < sb.size(); ++p) {
      sb[p] = std::size_t(send_rows[p]) * sizeof(int);
      rb[p] = std::size_t(recv_rows[p]) * sizeof(int);
    }
    comm_.all_to_all_v(src, sb.data(), dst, rb.data());
  }

  // Arrival order ↔ owner (expert-major) order.
  void permute_rows(const T* src, T* dst, const int* perm, index_t n, index_t d, bool to_owner) {
    this->space_.parallel_for(n * d, [=] MOE_LAMBDA(index_t i) {
      const index_t r = i / d, j = i - r * d;
      if (to_owner)
        dst[index_t(perm[r]) * d + j] = src[i];
      else
        dst[i] = src[index_t(perm[r]) * d + j];
    });
  }

 private:
  // All ranks' statistics buffers → one: losses and per-expert counts summed, means weighted by
  // tokens (equal on every rank), the logit maximum maximised.
  std::vector<double> combine_statistics(const std::vector<double>& all, int n) const {
    const int nl = core::num_losses, E = this->cfg_.num_experts, R_ = ranks();
    std::vector<double> out(std::size_t(n), 0.0);
    for (int p = 0; p < R_; ++p) {
      const double* s = all.data() + std::size_t(p * n);
      for (int i = 0; i < 1 + nl; ++i) out[std::size_t(i)] += s[i];  // partial means over the global groups
      const double* q = s + 1 + nl;
      double* o = out.data() + 1 + nl;
      o[0] += q[0] / R_;
      o[1] += q[1] / R_;
      o[2] = std::max(o[2], q[2]);
      o[3] += q[3] * q[3] / R_;  // mean of squares; root taken below
      for (int i = 4; i < 7; ++i) o[i] += q[i];
      o[7] += q[7] / R_;
      for (int e = 0; e < 2 * E; ++e) o[core::stat_fixed + e] += q[core::stat_fixed + e];
    }
    out[std::size_t(1 + nl + 3)] = std::sqrt(out[std::size_t(1 + nl + 3)]);
    return out;
  }

  Comm comm_;
  buffer<space_type> ws_;
  buffer<space_type> gathered_stats_;  // [R, stats_size] every rank's statistics of the latest forward
  buffer<space_type> count_blocks_;    // [2, R, L + 4] the count exchange: sent blocks, received blocks
  buffer<space_type> status_blocks_;   // [1 + R, status_ints] backward's agreement (gather_host's stage)
  last_call last_;
};

}  // namespace moe
