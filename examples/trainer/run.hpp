// examples/trainer/run.hpp — one training run: data, model, optimiser, evaluation, logging and
// checkpoints, for one preset's model type.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <sys/stat.h>
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

template <class MoePreset, class DenseFFN, class Space>
int train(const options& opt, const Space& space) {
  using T = float;
  using model_t = model<T, Space, MoePreset, DenseFFN>;

  // ---- data ------------------------------------------------------------------------------------
  std::unique_ptr<corpus> data;
  if (opt.data.empty()) data = std::make_unique<synthetic_corpus>(opt.seed);
  else data = std::make_unique<text_corpus>(opt.data, opt.seed, opt.seq);

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
  if (!opt.checkpoint.empty()) {
    ::mkdir(opt.checkpoint.c_str(), 0755);
    struct stat st {};
    if (::stat(opt.checkpoint.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
      moe::fail("--checkpoint", "'", opt.checkpoint, "' is not a directory and cannot be created");
  }

  model_t net(mc, space);
  const model_cost cost_info = cost(mc);
  optimizer<T, Space> opt_state(opt.optim, net.parameters(), space);

  // The header of every checkpoint: what must match to resume.
  std::map<std::string, std::string> header = {
      {"preset", preset_name(opt.kind)},      {"d_model", std::to_string(opt.d_model)},
      {"layers", std::to_string(opt.layers)}, {"heads", std::to_string(opt.heads)},
      {"seq", std::to_string(opt.seq)},       {"batch", std::to_string(opt.batch)},
      {"experts", std::to_string(opt.experts)}, {"group_size", std::to_string(opt.group_size)},
      {"seed", std::to_string(opt.seed)},     {"data", opt.data.empty() ? "synthetic" : opt.data},
      {"optimizer", opt.optim.kind == optimizer_kind::adamw ? "adamw" : "adafactor"},
      {"vocab", std::to_string(mc.vocab)}};

  int start_step = 0;
  if (opt.resume) {
    const checkpoint_data ck = read_checkpoint(opt.checkpoint);
    for (const auto& [k, v] : header) {
      const auto it = ck.header.find(k);
      if (it == ck.header.end() || it->second != v)
        throw checkpoint_error("--resume: the checkpoint was written with " + k + "=" +
                               (it == ck.header.end() ? std::string("<missing>") : it->second) +
                               ", this run has " + k + "=" + v);
    }
    std::map<std::string, const checkpoint_tensor*> by_name;
    for (const auto& t : ck.tensors) by_name[t.name] = &t;
    auto restore = [&](const std::string& name, T* dst, index_t count) {
      const auto it = by_name.find(name);
      if (it == by_name.end()) throw checkpoint_error("--resume: checkpoint has no tensor '" + name + "'");
      if (it->second->element_size != sizeof(T) || it->second->bytes.size() != sizeof(T) * std::size_t(count))
        throw checkpoint_error("--resume: tensor '" + name + "' has the wrong size in the checkpoint");
      space.copy_from_host(dst, it->second->bytes.data(), it->second->bytes.size());
    };
    for (const auto& p : net.parameters()) restore(p.name, p.value, p.size());
    for (const auto& s : opt_state.state()) restore(s.name, s.data, s.size);
    start_step = std::stoi(ck.header.at("step"));
    opt_state.set_steps_taken(std::stoi(ck.header.at("optimizer_steps")));
  }

  // ---- header ----------------------------------------------------------------------------------
  const double floor = data->entropy_floor(opt.eval_batches, opt.batch, opt.seq);
  std::printf("moe-train: preset %s, %s space%s\n", preset_name(opt.kind), Space::name,
              start_step ? (", resuming after step " + std::to_string(start_step)).c_str() : "");
  std::printf("  model    d_model %d, %d layers, %d heads, seq %d, vocab %d", opt.d_model, opt.layers, opt.heads,
              opt.seq, mc.vocab);
  if (opt.kind != preset::dense) std::printf(", %d experts in %zu MoE layers", opt.experts, net.moe_layers().size());
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
  if (std::isfinite(floor)) std::printf("  floor    %.4f nats/token (Bayes-optimal loss on the validation set)\n", floor);
  std::printf("  train    %d steps x %d sequences x %d tokens, %s lr %.3g, warm-up %d, clip %.3g\n", opt.steps,
              opt.batch, opt.seq, opt.optim.kind == optimizer_kind::adamw ? "AdamW" : "Adafactor", opt.optim.lr,
              opt.optim.warmup, opt.optim.clip);
  std::fflush(stdout);

  // ---- logging ---------------------------------------------------------------------------------
  std::FILE* log = nullptr;
  if (!opt.log.empty()) {
    if (opt.resume) truncate_log(opt.log, start_step);
    log = std::fopen(opt.log.c_str(), opt.resume ? "a" : "w");
    if (!log) moe::fail("--log", "cannot open '", opt.log, "' for writing");
  }

  // Batch buffers in the space's memory.
  const index_t N = index_t(opt.batch) * opt.seq;
  moe::buffer<Space> tokens_buf(space, sizeof(int) * std::size_t(4 * N + mc.vocab + 1));
  int* d_inputs = tokens_buf.template as<int>();
  int* d_targets = d_inputs + N;
  int* d_by_token = d_targets + N;
  int* d_offsets = d_by_token + N;
  auto upload = [&](const batch& b) {
    space.copy_from_host(d_inputs, b.inputs.data(), sizeof(int) * std::size_t(N));
    space.copy_from_host(d_targets, b.targets.data(), sizeof(int) * std::size_t(N));
    space.copy_from_host(d_by_token, b.by_token.data(), sizeof(int) * std::size_t(N));
    space.copy_from_host(d_offsets, b.token_offsets.data(), sizeof(int) * b.token_offsets.size());
  };

  const int D = data->domains(), E = opt.experts;
  const std::size_t L = net.moe_layers().size();
  // expert × domain counts of first choices over the latest evaluation, per MoE layer
  std::vector<std::vector<double>> expert_domain(L, std::vector<double>(std::size_t(E * D), 0.0));

  auto evaluate = [&]() {
    double total = 0;
    for (auto& m : expert_domain) std::fill(m.begin(), m.end(), 0.0);
    batch b;
    for (int i = 0; i < opt.eval_batches; ++i) {
      data->valid_batch(i, opt.batch, opt.seq, b);
      upload(b);
      total += net.forward(d_inputs, d_targets, opt.batch, /*training=*/false, 0);
      for (std::size_t l = 0; l < L; ++l) {
        const moe::routing_decisions r = net.moe_layers()[l]->routing();
        for (int t = 0; t < r.tokens; ++t) {
          const int e = r.expert[std::size_t(r.index(t, 0))];
          expert_domain[l][std::size_t(e * D + b.domain[std::size_t(t / opt.seq)])] += 1;
        }
      }
    }
    return total / opt.eval_batches;
  };

  // ---- training --------------------------------------------------------------------------------
  const bool tty = opt.progress && ::isatty(STDOUT_FILENO);
  const auto t_begin = std::chrono::steady_clock::now();
  double last_val = NAN, tokens_seen = 0, train_seconds = 0;
  batch b;
  for (int step = start_step + 1; step <= opt.steps; ++step) {
    if (step == opt.crash_at_step) std::raise(SIGKILL);  // testing: a crash between checkpoints
    const auto t0 = std::chrono::steady_clock::now();
    data->train_batch(std::uint32_t(step), opt.batch, opt.seq, b);
    upload(b);
    net.zero_grad();
    const double loss = net.forward(d_inputs, d_targets, opt.batch, /*training=*/true, std::uint32_t(step));
    if (!std::isfinite(loss)) throw moe::numeric_error("training loss is " + fmt("%g", loss) + " at step " + std::to_string(step));
    net.backward(d_by_token, d_offsets, opt.batch);
    const double lr = learning_rate(opt.optim, step);
    const double gnorm = opt_state.step(lr);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    train_seconds += seconds;
    tokens_seen += double(N);

    // Routing statistics of this step.
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
                         ",\"grad_norm\":" + exact(gnorm) + ",\"tokens_per_s\":" + fmt("%.1f", N / seconds);
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
    const double eta = double(opt.steps - step) * double(N) / rate;
    if (tty || (opt.progress && (eval_now || step == start_step + 1))) {
      std::printf("%sstep %*d/%d | loss %.4f | aux %.4f | val %s | %.0f tok/s | ETA %s%s", tty ? "\r" : "",
                  int(std::to_string(opt.steps).size()), step, opt.steps, loss, aux,
                  std::isfinite(last_val) ? fmt("%.4f", last_val).c_str() : "  -   ", rate,
                  duration(eta).c_str(), tty ? "   " : "\n");
      std::fflush(stdout);
    }

    if (!opt.checkpoint.empty() && (step % opt.checkpoint_every == 0 || step == opt.steps)) {
      checkpoint_data ck;
      ck.header = header;
      ck.header["step"] = std::to_string(step);
      ck.header["optimizer_steps"] = std::to_string(opt_state.steps_taken());
      auto save = [&](const std::string& name, const T* src, index_t count) {
        checkpoint_tensor t;
        t.name = name;
        t.element_size = sizeof(T);
        t.bytes.resize(sizeof(T) * std::size_t(count));
        space.copy_to_host(t.bytes.data(), src, t.bytes.size());
        ck.tensors.push_back(std::move(t));
      };
      for (const auto& p : net.parameters()) save(p.name, p.value, p.size());
      for (const auto& s : opt_state.state()) save(s.name, s.data, s.size);
      write_checkpoint(opt.checkpoint, ck, step == opt.crash_in_checkpoint_at_step ? 4096 : -1);
    }
  }
  if (tty) std::printf("\n");
  if (log) std::fclose(log);

  // ---- summary ---------------------------------------------------------------------------------
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_begin).count();
  std::printf("\nsummary: preset %s after %d steps\n", preset_name(opt.kind), opt.steps);
  std::printf("  val loss        %.4f nats/token", last_val);
  if (std::isfinite(floor)) std::printf("   (floor %.4f, gap %.4f)", floor, last_val - floor);
  std::printf("\n  throughput      %.0f tokens/s training (%s wall)\n", train_seconds > 0 ? tokens_seen / train_seconds : 0.0,
              duration(wall).c_str());
  std::printf("  params          %.3fM total, %.3fM active;  FLOPs/token %.2fM forward\n", cost_info.total_params / 1e6,
              cost_info.active_params / 1e6, cost_info.flops_per_token / 1e6);
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

}  // namespace trainer
