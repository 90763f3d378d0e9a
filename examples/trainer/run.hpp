// examples/trainer/run.hpp — one training run: data, model, optimiser, evaluation, logging and
// checkpoints, for one preset's model type.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <sys/stat.h>
#include <thread>
#include <type_traits>
#include <vector>

#include <moe/moe.hpp>

#include "checkpoint.hpp"
#include "cli.hpp"
#include "corpus.hpp"
#include "layout.hpp"
#include "model.hpp"
#include "optim.hpp"

namespace trainer {

inline std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}
// Shortest text that reads back as the same double (so logs compare bit for bit).
inline std::string exact(double v) {
  if (!std::isfinite(v)) return "null";
  return fmt("%.17g", v);
}

inline std::string duration(double seconds) {
  const long s = long(seconds + 0.5);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, (s / 60) % 60);
  else if (s >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
  else std::snprintf(buf, sizeof buf, "%lds", s);
  return buf;
}

// Keeps the JSONL lines of steps ≤ `step` (a resumed run continues after the checkpoint's step;
// lines the crashed run wrote after it are replaced). Rewritten through a temporary file.
inline void truncate_log(const std::string& path, int step) {
  std::ifstream in(path);
  if (!in) return;
  std::string line, kept;
  while (std::getline(in, line)) {
    const auto p = line.find("\"step\":");
    if (p == std::string::npos) continue;
    if (std::atoi(line.c_str() + p + 7) <= step) kept += line + "\n";
  }
  in.close();
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << kept;
  }
  std::rename(tmp.c_str(), path.c_str());
}

// One rank of a run. With several ranks (threads of this process: an in-process communicator on the
// host, or NCCL with one GPU per rank): the dense weights are replicated and their gradients summed
// over ranks (data parallelism); the MoE layers are expert-parallel (moe::expert_parallel); each rank
// takes an equal share of every batch's sequences. Rank 0 prints, logs and writes checkpoints.
// A communicator on device memory (NCCL) gets the host values it reduces or gathers staged through
// the space's memory.
template <class Comm = moe::in_process_communicator, class Space = moe::host>
struct rank_context {
  int rank = 0, ranks = 1;
  Comm* comm = nullptr;          // null with one rank
  const Space* space = nullptr;  // for staging host values (device communicators)

  bool main() const { return rank == 0; }
  // Σ over ranks of a host value.
  double sum(double v) const {
    if (comm) reduce_host(&v, 1);
    return v;
  }
  // Σ over ranks, in place, of values in the space's memory (gradients).
  void sum(float* data, index_t n) const {
    if (comm) comm->all_reduce_sum(data, std::size_t(n));
  }
  // Σ over ranks, in place, of host values.
  void sum_host(double* data, index_t n) const {
    if (comm) reduce_host(data, n);
  }
  // Every rank's n host values, in rank order (host memory).
  template <class T>
  std::vector<T> gather(const T* local, index_t n) const {
    std::vector<T> all(std::size_t(n) * std::size_t(ranks));
    if (!comm) {
      std::copy(local, local + n, all.begin());
    } else if constexpr (Comm::host_memory) {
      comm->all_gather(local, sizeof(T) * std::size_t(n), all.data());
    } else {
      const std::size_t in_bytes = sizeof(T) * std::size_t(n);
      auto* in = static_cast<unsigned char*>(staging(in_bytes + sizeof(T) * all.size()));
      space->copy_from_host(in, local, in_bytes);
      comm->all_gather(in, in_bytes, in + in_bytes);
      space->copy_to_host(all.data(), in + in_bytes, sizeof(T) * all.size());
    }
    return all;
  }

 private:
  void reduce_host(double* data, index_t n) const {
    if constexpr (Comm::host_memory) {
      comm->all_reduce_sum(data, std::size_t(n));
    } else {
      const std::size_t bytes = sizeof(double) * std::size_t(n);
      auto* staged = static_cast<double*>(staging(bytes));
      space->copy_from_host(staged, data, bytes);
      comm->all_reduce_sum(staged, std::size_t(n));
      space->copy_to_host(data, staged, bytes);
    }
  }
  // Space memory for host values on their way through a device communicator, kept between calls
  // (a loss is reduced every step).
  void* staging(std::size_t bytes) const {
    if (staging_.bytes() < bytes) staging_ = moe::buffer<Space>(*space, bytes);
    return staging_.data();
  }

 public:
  mutable moe::buffer<Space> staging_{};  // public only to keep the struct an aggregate
};

// This rank's share (sequences [r·B/R, (r+1)·B/R)) of a global batch.
inline void take_share(const batch& global, int rank, int ranks, int vocab, batch& out) {
  const int B = global.B / ranks, S = global.S;
  out.B = B;
  out.S = S;
  const auto first = std::ptrdiff_t(rank) * B * S, count = std::ptrdiff_t(B) * S;
  out.inputs.assign(global.inputs.begin() + first, global.inputs.begin() + first + count);
  out.targets.assign(global.targets.begin() + first, global.targets.begin() + first + count);
  out.domain.assign(global.domain.begin() + rank * B, global.domain.begin() + (rank + 1) * B);
  out.index_tokens(vocab);
}

template <class Model, class Space, class RankContext = rank_context<>>
int run_rank(const options& opt, const Space& space, const RankContext& rc,
             typename Model::moe_factory make_moe = {}) {
  using T = float;

  // ---- data ------------------------------------------------------------------------------------
  std::unique_ptr<corpus> data;
  if (opt.data.empty()) data = std::make_unique<synthetic_corpus>(opt.corpus_seed());
  else data = std::make_unique<text_corpus>(opt.data, opt.corpus_seed(), opt.seq);
  if (opt.train_sequences > 0)
    data = std::make_unique<finite_corpus>(std::move(data), opt.train_sequences, opt.batch, opt.seq,
                                           opt.corpus_seed());

  model_config mc;
  mc.kind = opt.kind;
  mc.vocab = data->vocab();
  mc.d_model = opt.d_model;
  mc.heads = opt.heads;
  mc.layers = opt.layers;
  mc.seq = opt.seq;
  mc.experts = opt.experts;
  mc.group_size = opt.group_size;
  mc.seed = opt.seed;
  mc.recipe = opt.recipe;
  if (!opt.checkpoint.empty() && rc.main()) {
    ::mkdir(opt.checkpoint.c_str(), 0755);
    struct stat st {};
    if (::stat(opt.checkpoint.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
      moe::fail("--checkpoint", "'", opt.checkpoint, "' is not a directory and cannot be created");
  }

  Model net(mc, space, std::move(make_moe));
  if (Model::loss_scaled) net.set_loss_scale(opt.loss_scale, 0);
  net.set_first_sequence(rc.rank * (opt.batch / rc.ranks));  // take_share's cut: dropout keyed globally
  const model_cost cost_info = cost(mc);
  std::function<double(double)> sum_over_ranks;
  if (rc.comm) sum_over_ranks = [&rc](double v) { return rc.sum(v); };
  // --freeze: the optimiser sees only the parameters that train (no update, no weight decay, no
  // share of the clipping norm for the others).
  net.set_frozen(opt.frozen);
  std::vector<param_view<T>> trained;
  index_t trained_count = 0, total_count = 0;
  for (const auto& p : net.parameters()) {
    const index_t whole = p.sharded ? p.size() / p.shape[0] * p.global_leading : p.size();
    total_count += whole;
    if (opt.frozen & group_of(p.name)) continue;
    trained.push_back(p);
    trained_count += whole;
  }
  for (const group_name& g : group_names) {  // a frozen group this model lacks is a mistake in the flags
    if (!std::has_single_bit(g.groups) || !(opt.frozen & g.groups)) continue;
    bool present = false;
    for (const auto& p : net.parameters()) present = present || group_of(p.name) == g.groups;
    if (!present) moe::fail("--freeze", "this ", preset_name(opt.kind), " model has no ", g.name, " parameters");
  }
  if (trained.empty()) moe::fail("--freeze", describe_groups(opt.frozen), " leaves nothing to train");
  optimizer<T, Space> opt_state(opt.optim, trained, space, sum_over_ranks);

  // The header of every checkpoint: what must match to resume (not the number of ranks: a
  // checkpoint holds whole tensors and resumes with any).
  std::map<std::string, std::string> header = {
      {"preset", preset_name(opt.kind)},      {"d_model", std::to_string(opt.d_model)},
      {"layers", std::to_string(opt.layers)}, {"heads", std::to_string(opt.heads)},
      {"seq", std::to_string(opt.seq)},       {"batch", std::to_string(opt.batch)},
      {"experts", std::to_string(opt.experts)}, {"group_size", std::to_string(opt.group_size)},
      {"seed", std::to_string(opt.seed)},     {"data", opt.data.empty() ? "synthetic" : opt.data},
      {"optimizer", opt.optim.kind == optimizer_kind::adamw ? "adamw" : "adafactor"},
      {"precision", opt.precision},
      {"recipe", opt.recipe.describe()},
      {"data_seed", std::to_string(opt.corpus_seed())},
      {"freeze", describe_groups(opt.frozen)},
      {"train_sequences", opt.train_sequences > 0 ? std::to_string(opt.train_sequences) : "all"},
      {"init_from", opt.init_from.empty() ? "none" : opt.init_from},
      {"vocab", std::to_string(mc.vocab)}};

  // Copies this rank's part of every parameter (and, resuming, of the optimiser state) from a
  // checkpoint; `flag` names the source in errors.
  auto restore_from = [&](const checkpoint_data& ck, const std::string& flag, bool optimiser_state) {
    std::map<std::string, const checkpoint_tensor*> by_name;
    for (const auto& t : ck.tensors) by_name[t.name] = &t;
    // Copies this rank's part of a whole tensor: `components` blocks of `global` chunks each, of
    // which this rank holds chunks [first, first + local).
    auto restore = [&](const std::string& name, T* dst, index_t count, int components, index_t first, index_t local,
                       index_t global) {
      const auto it = by_name.find(name);
      if (it == by_name.end()) throw checkpoint_error(flag + ": checkpoint has no tensor '" + name + "'");
      const index_t chunk = count / (components * local);
      const std::size_t whole = sizeof(T) * std::size_t(components * global * chunk);
      if (it->second->element_size != sizeof(T) || it->second->bytes.size() != whole)
        throw checkpoint_error(flag + ": tensor '" + name + "' has the wrong size in the checkpoint");
      const T* src = reinterpret_cast<const T*>(it->second->bytes.data());
      for (int c = 0; c < components; ++c)
        space.copy_from_host(dst + c * local * chunk, src + (c * global + first) * chunk,
                             sizeof(T) * std::size_t(local * chunk));
    };
    for (const auto& p : net.parameters()) {
      if (p.sharded) restore(p.name, p.value, p.size(), 1, p.first, p.shape[0], p.global_leading);
      else restore(p.name, p.value, p.size(), 1, 0, 1, 1);
    }
    if (optimiser_state)
      for (const auto& s : opt_state.state()) {
        if (s.sharded) restore(s.name, s.data, s.size, s.components, s.first, s.leading, s.global_leading);
        else restore(s.name, s.data, s.size, 1, 0, 1, 1);
      }
    net.commit_parameters();
  };

  int start_step = 0;
  if (opt.resume) {
    const checkpoint_data ck = read_checkpoint(opt.checkpoint);
    for (const auto& [k, v] : header) {
      const auto it = ck.header.find(k);
      // Written before --precision / the recipe and fine-tuning flags: their defaults.
      if (it == ck.header.end() && ((k == "precision" && v == "fp32") || (k == "recipe" && v == "preset") ||
                                    (k == "data_seed" && v == std::to_string(opt.seed)) ||
                                    (k == "freeze" && v == "none") || (k == "init_from" && v == "none") ||
                                    (k == "train_sequences" && v == "all")))
        continue;
      if (it == ck.header.end() || it->second != v)
        throw checkpoint_error("--resume: the checkpoint was written with " + k + "=" +
                               (it == ck.header.end() ? std::string("<missing>") : it->second) +
                               ", this run has " + k + "=" + v);
    }
    restore_from(ck, "--resume", true);
    if (Model::loss_scaled) {
      const auto scale = ck.header.find("loss_scale"), good = ck.header.find("loss_scale_good_steps");
      if (scale == ck.header.end() || good == ck.header.end())
        throw checkpoint_error("--resume: the checkpoint has no loss scale (it was not written by a fp16 run)");
      net.set_loss_scale(std::stod(scale->second), std::stoi(good->second));
    }
    start_step = std::stoi(ck.header.at("step"));
    opt_state.set_steps_taken(std::stoi(ck.header.at("optimizer_steps")));
  } else if (!opt.init_from.empty()) {
    // Fine-tuning: the parameters only, from a model of the same shape (any data, recipe, precision,
    // optimiser or number of ranks); the optimiser, the schedule and the step start afresh.
    const checkpoint_data ck = read_checkpoint(opt.init_from);
    for (const char* k : {"preset", "d_model", "layers", "heads", "seq", "experts", "vocab"}) {
      const auto it = ck.header.find(k);
      if (it == ck.header.end() || it->second != header.at(k))
        throw checkpoint_error(std::string("--init-from: the checkpoint's model has ") + k + "=" +
                               (it == ck.header.end() ? std::string("<missing>") : it->second) + ", this run has " +
                               k + "=" + header.at(k));
    }
    restore_from(ck, "--init-from", false);
  }

  // ---- header ----------------------------------------------------------------------------------
  const double floor = data->entropy_floor(opt.eval_batches, opt.batch, opt.seq);
  if (rc.main()) {
    std::printf("moe-train: preset %s, %s space%s%s\n", preset_name(opt.kind), Space::name,
                rc.ranks > 1 ? (", " + std::to_string(rc.ranks) + " ranks (in-process; experts split, the rest "
                                "data-parallel)").c_str() : "",
                start_step ? (", resuming after step " + std::to_string(start_step)).c_str() : "");
    if constexpr (std::is_same_v<Space, moe::host>) {
      const moe::host_blas_report blas = moe::host_blas_info();
      std::printf("  gemm     %s\n", blas.library.c_str());  // OpenBLAS: its configuration names the kernels
      // In the header, not on stderr: stderr carries the one line of an error (tests/trainer counts it).
      if (!blas.advice.empty()) std::printf("  warning  %s\n", blas.advice.c_str());
    } else if (opt.kind != preset::dense) {
      std::printf("  gemm     experts: %s\n", opt.grouped_gemm == "cublas"
                                                    ? "cuBLAS per expert, offsets read on the host (--grouped-gemm cublas)"
                                                    : "the library's grouped kernels, offsets on the device");
    }
    std::printf("  model    d_model %d, %d layers, %d heads, seq %d, vocab %d", opt.d_model, opt.layers, opt.heads,
                opt.seq, mc.vocab);
    if (opt.kind != preset::dense)
      std::printf(", %d experts in %zu MoE layers", opt.experts, net.moe_layers().size());
    std::printf("\n  params   %.3fM total, %.3fM active per token;  FLOPs/token %.2fM forward (%.2fM training)\n",
                cost_info.total_params / 1e6, cost_info.active_params / 1e6, cost_info.flops_per_token / 1e6,
                3 * cost_info.flops_per_token / 1e6);
    std::printf("  ffn      ");
    for (std::size_t l = 0; l < net.layout().size(); ++l) {
      for (const ffn_spec& f : net.layout()[l].ffns)
        std::printf("%s%s%d", l || &f != &net.layout()[l].ffns[0] ? " " : "", f.moe ? "moe:" : "dense:", f.d_ff);
      if (l + 1 < net.layout().size()) std::printf(" |");
    }
    std::printf("\n  data     %s\n", data->describe().c_str());
    if (std::isfinite(floor))
      std::printf("  floor    %.4f nats/token (Bayes-optimal loss on the validation set)\n", floor);
    std::printf("  train    %d steps x %d sequences x %d tokens, %s lr %.3g, warm-up %d, clip %.3g\n", opt.steps,
                opt.batch, opt.seq, opt.optim.kind == optimizer_kind::adamw ? "AdamW" : "Adafactor", opt.optim.lr,
                opt.optim.warmup, opt.optim.clip);
    if (opt.recipe.any()) std::printf("  recipe   %s (the rest as the preset)\n", opt.recipe.describe().c_str());
    if (!opt.init_from.empty() && !start_step)
      std::printf("  init     the parameters of '%s'\n", opt.init_from.c_str());
    if (opt.frozen)
      std::printf("  frozen   %s: %.3fM of %.3fM parameters train\n", describe_groups(opt.frozen).c_str(),
                  double(trained_count) / 1e6, double(total_count) / 1e6);
    // The element type of the layers built (not the flag): tests/trainer checks it against --precision.
    if (Model::low_precision_moe)
      std::printf("  precision MoE layers %s (float32 master weights%s), the rest float32\n",
                  moe::type_name<typename Model::moe_element>(),
                  Model::loss_scaled ? ", dynamic loss scaling from 2^16" : "");
    std::fflush(stdout);
  }

  // ---- logging ---------------------------------------------------------------------------------
  std::FILE* log = nullptr;
  if (!opt.log.empty() && rc.main()) {
    if (opt.resume) truncate_log(opt.log, start_step);
    log = std::fopen(opt.log.c_str(), opt.resume ? "a" : "w");
    if (!log) moe::fail("--log", "cannot open '", opt.log, "' for writing");
  }

  // Batch buffers (this rank's share) in the space's memory.
  const int B = opt.batch / rc.ranks;
  const index_t N = index_t(B) * opt.seq, N_global = index_t(opt.batch) * opt.seq;
  moe::buffer<Space> tokens_buf(space, sizeof(int) * std::size_t(4 * N + mc.vocab + 1));
  int* d_inputs = tokens_buf.template as<int>();
  int* d_targets = d_inputs + N;
  int* d_by_token = d_targets + N;
  int* d_offsets = d_by_token + N;
  batch global, mine;
  auto upload = [&](const batch& b) {
    take_share(b, rc.rank, rc.ranks, mc.vocab, mine);
    space.copy_from_host(d_inputs, mine.inputs.data(), sizeof(int) * std::size_t(N));
    space.copy_from_host(d_targets, mine.targets.data(), sizeof(int) * std::size_t(N));
    space.copy_from_host(d_by_token, mine.by_token.data(), sizeof(int) * std::size_t(N));
    space.copy_from_host(d_offsets, mine.token_offsets.data(), sizeof(int) * mine.token_offsets.size());
  };
  // The dense gradients of all ranks add up (the router's are summed inside the MoE layers).
  std::vector<param_view<T>> replicated;
  for (const auto& p : trained)
    if (p.name.rfind("moe", 0) != 0) replicated.push_back(p);
  auto sum_dense_grads = [&]() {
    for (const auto& p : replicated) rc.sum(p.grad, p.size());
  };

  const int D = data->domains(), E = opt.experts;
  const std::size_t L = net.moe_layers().size();
  // expert × domain counts of first choices over the latest evaluation, per MoE layer
  std::vector<std::vector<double>> expert_domain(L, std::vector<double>(std::size_t(E * D), 0.0));

  auto evaluate = [&]() {
    double total = 0;
    for (auto& m : expert_domain) std::fill(m.begin(), m.end(), 0.0);
    for (int i = 0; i < opt.eval_batches; ++i) {
      data->valid_batch(i, opt.batch, opt.seq, global);
      upload(global);
      total += rc.sum(net.forward(d_inputs, d_targets, B, /*training=*/false, 0)) / rc.ranks;
      for (std::size_t l = 0; l < L; ++l) {
        const moe::routing_decisions r = net.moe_layers()[l]->routing();
        for (int t = 0; t < r.tokens; ++t) {
          const int e = r.expert[std::size_t(r.index(t, 0))];
          expert_domain[l][std::size_t(e * D + mine.domain[std::size_t(t / opt.seq)])] += 1;
        }
      }
    }
    for (auto& m : expert_domain) rc.sum_host(m.data(), index_t(m.size()));
    return total / opt.eval_batches;
  };

  // Testing: +inf in this rank's first expert gradient (sharded: held by this rank alone).
  auto inject_inf = [&] {
    const auto params = net.parameters();
    const auto it = std::find_if(params.begin(), params.end(),
                                 [](const param_view<T>& p) { return p.name.find(".experts.") != std::string::npos; });
    if (it == params.end()) moe::fail("--inject-inf-at-step", "this model has no expert gradient");
    const T inf = std::numeric_limits<T>::infinity();
    space.copy_from_host(it->grad, &inf, sizeof(T));
  };

  // ---- training --------------------------------------------------------------------------------
  const bool tty = opt.progress && rc.main() && ::isatty(STDOUT_FILENO);
  const auto t_begin = std::chrono::steady_clock::now();
  double last_val = NAN, tokens_seen = 0, train_seconds = 0;
  for (int step = start_step + 1; step <= opt.steps; ++step) {
    if (step == opt.crash_at_step) std::raise(SIGKILL);  // testing: a crash between checkpoints
    const auto t0 = std::chrono::steady_clock::now();
    data->train_batch(std::uint32_t(step), opt.batch, opt.seq, global);
    upload(global);
    net.zero_grad();
    const double local_loss =
        net.forward(d_inputs, d_targets, B, /*training=*/true, std::uint32_t(step), N_global);
    const double loss = rc.sum(local_loss) / rc.ranks;
    if (!std::isfinite(loss))
      throw moe::numeric_error("training loss is " + fmt("%g", loss) + " at step " + std::to_string(step));
    net.backward(d_by_token, d_offsets, B);
    sum_dense_grads();
    if (step == opt.inject_inf_at_step && rc.rank == opt.inject_inf_rank) inject_inf();
    const double lr = learning_rate(opt.optim, step);
    const double gnorm = opt_state.step(lr, Model::loss_scaled);
    const bool overflow = !std::isfinite(gnorm);  // float16 layers only: the update was skipped
    const double loss_scale_used = net.loss_scale();
    net.update_loss_scale(overflow);
    if (!overflow) net.commit_parameters();  // 16-bit MoE layers: the updated float masters, rounded
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    train_seconds += seconds;
    tokens_seen += double(N_global);

    // Routing statistics of this step (over all ranks).
    double aux = 0, z = 0, dropped = 0, logit_max = 0;
    std::string loads = "[";
    for (std::size_t l = 0; l < L; ++l) {
      const moe::routing_statistics s = net.moe_layers()[l]->statistics();
      aux += s.aux_loss;
      z += s.router_z / double(L);
      dropped += s.dropped_fraction / double(L);
      logit_max = std::max(logit_max, s.router_logit_max);
      loads += l ? ",[" : "[";
      for (int e = 0; e < E; ++e) {
        if (e) loads += ',';
        loads += fmt("%.4f", s.load(e));
      }
      loads += "]";
    }
    loads += "]";

    const bool eval_now = step % opt.eval_every == 0 || step == opt.steps;
    if (eval_now) last_val = evaluate();

    if (log) {
      std::string line = "{\"step\":" + std::to_string(step) + ",\"loss\":" + exact(loss) +
                         ",\"aux_loss\":" + exact(aux) + ",\"z_loss\":" + exact(z) +
                         ",\"dropped_fraction\":" + exact(dropped) + ",\"expert_load\":" + loads +
                         ",\"router_logit_max\":" + exact(logit_max) + ",\"lr\":" + exact(lr) +
                         ",\"grad_norm\":" + (overflow ? std::string("null") : exact(gnorm)) +
                         ",\"tokens_per_s\":" + fmt("%.1f", N_global / seconds);
      if (Model::loss_scaled)
        line += ",\"loss_scale\":" + exact(loss_scale_used) + (overflow ? ",\"skipped\":true" : "");
      if (eval_now) {
        line += ",\"val_loss\":" + exact(last_val) + ",\"expert_domain\":[";
        for (std::size_t l = 0; l < L; ++l) {
          line += l ? ",[" : "[";
          for (std::size_t i = 0; i < expert_domain[l].size(); ++i) {
            if (i) line += ',';
            line += fmt("%.0f", expert_domain[l][i]);
          }
          line += "]";
        }
        line += "]";
      }
      line += "}\n";
      std::fputs(line.c_str(), log);
      std::fflush(log);
    }

    const double rate = tokens_seen / train_seconds;
    const double eta = double(opt.steps - step) * double(N_global) / rate;
    if (rc.main() && (tty || (opt.progress && (eval_now || step == start_step + 1)))) {
      std::printf("%sstep %*d/%d | loss %.4f | aux %.4f | val %s | %.0f tok/s | ETA %s%s", tty ? "\r" : "",
                  int(std::to_string(opt.steps).size()), step, opt.steps, loss, aux,
                  std::isfinite(last_val) ? fmt("%.4f", last_val).c_str() : "  -   ", rate,
                  duration(eta).c_str(), tty ? "   " : "\n");
      std::fflush(stdout);
    }

    if (!opt.checkpoint.empty() && (step % opt.checkpoint_every == 0 || step == opt.steps)) {
      // Whole tensors: the expert slices of every rank are gathered (collective), rank 0 writes.
      checkpoint_data ck;
      ck.header = header;
      ck.header["step"] = std::to_string(step);
      ck.header["optimizer_steps"] = std::to_string(opt_state.steps_taken());
      if (Model::loss_scaled) {
        ck.header["loss_scale"] = exact(net.loss_scale());
        ck.header["loss_scale_good_steps"] = std::to_string(net.loss_scale_good_steps());
      }
      auto save = [&](const std::string& name, const T* src, index_t count, bool sharded, int components) {
        std::vector<T> local(static_cast<std::size_t>(count));
        space.copy_to_host(local.data(), src, sizeof(T) * local.size());
        checkpoint_tensor t;
        t.name = name;
        t.element_size = sizeof(T);
        std::vector<T> whole;
        if (!sharded) {
          whole = std::move(local);
        } else {
          const index_t block = count / components;  // one component of this rank's slice
          std::vector<std::vector<T>> parts;
          for (int c = 0; c < components; ++c) parts.push_back(rc.gather(local.data() + c * block, block));
          for (const auto& part : parts) whole.insert(whole.end(), part.begin(), part.end());
        }
        t.bytes.resize(sizeof(T) * whole.size());
        std::memcpy(t.bytes.data(), whole.data(), t.bytes.size());
        ck.tensors.push_back(std::move(t));
      };
      for (const auto& p : net.parameters()) save(p.name, p.value, p.size(), p.sharded, 1);
      for (const auto& s : opt_state.state()) save(s.name, s.data, s.size, s.sharded, s.components);
      if (rc.main()) write_checkpoint(opt.checkpoint, ck, step == opt.crash_in_checkpoint_at_step ? 4096 : -1);
      if (rc.comm) rc.comm->barrier();  // no rank runs ahead of a checkpoint being written
    }
  }
  if (tty) std::printf("\n");
  if (log) std::fclose(log);

  // ---- summary ---------------------------------------------------------------------------------
  if (!rc.main()) return 0;
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_begin).count();
  std::printf("\nsummary: preset %s after %d steps\n", preset_name(opt.kind), opt.steps);
  std::printf("  val loss        %.4f nats/token", last_val);
  if (std::isfinite(floor)) std::printf("   (floor %.4f, gap %.4f)", floor, last_val - floor);
  std::printf("\n  throughput      %.0f tokens/s training (%s wall)\n",
              train_seconds > 0 ? tokens_seen / train_seconds : 0.0, duration(wall).c_str());
  std::printf("  params          %.3fM total, %.3fM active;  FLOPs/token %.2fM forward\n",
              cost_info.total_params / 1e6, cost_info.active_params / 1e6, cost_info.flops_per_token / 1e6);
  if (L > 0 && D > 1) {
    // How specialised each expert is: the share of its (first-choice) tokens from its top domain.
    std::printf("  experts by domain (validation, first choices; share of each expert's tokens per domain)\n");
    for (std::size_t l = 0; l < L; ++l) {
      std::printf("    block %d:", net.moe_blocks()[l]);
      for (int e = 0; e < E; ++e) {
        double tot = 0, top = 0;
        int arg = 0;
        for (int dmn = 0; dmn < D; ++dmn) {
          const double c = expert_domain[l][std::size_t(e * D + dmn)];
          tot += c;
          if (c > top) top = c, arg = dmn;
        }
        std::printf(" e%d:d%d %3.0f%%", e, arg, tot > 0 ? 100 * top / tot : 0.0);
      }
      std::printf("\n");
    }
  }
  return 0;
}

// The preset type of `kind`, with MoE layers of element type E in Space, and its dense FFN: returns
// f.template operator()<Preset, DenseFFN>(). The dense preset builds no MoE layer: for it the Switch
// preset type only completes the template. One place for every translation unit's instantiations.
template <class E, class Space, class F>
int with_preset(preset kind, F&& f) {
  namespace mp = moe::presets;
  switch (kind) {
    case preset::dense:
    case preset::switch_transformer: return f.template operator()<mp::switch_transformer<E, Space>, moe::relu_ffn>();
    case preset::glam: return f.template operator()<mp::glam<E, Space>, moe::geglu_ffn>();
    case preset::st_moe: return f.template operator()<mp::st_moe<E, Space>, moe::geglu_ffn>();
  }
  return 2;
}

// with_preset for --precision bf16 or fp16 (the parser refuses them for the dense preset).
template <class Space, class F>
int with_low_precision_preset(const options& o, F&& f) {
  return o.precision == "bf16" ? with_preset<moe::bfloat16, Space>(o.kind, f)
                               : with_preset<moe::float16, Space>(o.kind, f);
}

// A run of one preset: one rank, or `--ranks` in-process ranks (threads).
template <class MoePreset, class DenseFFN>
int train(const options& opt) {
  using T = float;
  if (opt.ranks == 1) {
    const moe::host space = opt.threads > 0 ? moe::host(opt.threads) : moe::host();
    return run_rank<model<T, moe::host, MoePreset, DenseFFN>>(opt, space, rank_context<>{});
  }
  using parallel_layer = typename MoePreset::template parallel_layer<moe::in_process_communicator>;
  using model_t = model<T, moe::host, MoePreset, DenseFFN, parallel_layer>;
  auto world = std::make_shared<moe::in_process_world>(opt.ranks, std::chrono::minutes(10));
  const int threads = opt.threads > 0 ? opt.threads : std::max(1, moe::host::available_cpus() / opt.ranks);
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(opt.ranks));
  std::vector<std::thread> ranks;
  for (int r = 0; r < opt.ranks; ++r)
    ranks.emplace_back([&, r] {
      try {
        moe::in_process_communicator comm(world, r);
        const moe::host space(threads);
        rank_context<> rc{r, opt.ranks, &comm, &space};
        typename model_t::moe_factory make = [&comm, space](const typename parallel_layer::config& c) {
          return std::make_unique<parallel_layer>(c, comm, space);
        };
        run_rank<model_t>(opt, space, rc, make);
      } catch (const std::exception& e) {
        errors[std::size_t(r)] = std::current_exception();
        // The first abort message is the one every other rank reports: name the cause.
        world->abort("rank " + std::to_string(r) + " stopped: " + e.what());
      }
    });
  for (auto& t : ranks) t.join();
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);  // every rank's message names the first failure
  return 0;
}

}  // namespace trainer
