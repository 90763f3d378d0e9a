// examples/trainer/cli.hpp — moe-train's flags: parsing and validation. Every problem ends in a
// one-line error before any work is done.
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "layout.hpp"
#include "optim.hpp"

namespace trainer {

struct options {
  preset kind = preset::switch_transformer;
  std::string device = "host";
  // --device cuda: how the MoE layers' expert GEMMs run ("device": the library's kernels, offsets on
  // the device; "cublas": cuBLAS per expert, offsets read on the host each call; moe::cuda_grouped_gemm).
  std::string grouped_gemm = "device";
  // Storage type of the MoE layers (activations and expert weights): "fp32", "bf16" or "fp16". With
  // 16 bits the optimiser keeps float32 master weights and rounds them into the layers after every
  // update (fp16 also scales the loss dynamically); attention, embeddings, norms and dense FFNs stay
  // float32.
  std::string precision = "fp32";
  double loss_scale = 65536.0;  // fp16: the initial dynamic loss scale (a power of two)
  int steps = 3000;
  int batch = 16;
  int seq = 64;
  int d_model = 96;
  int layers = 4;
  int heads = 4;
  int experts = 8;
  int group_size = 0;
  optim_config optim{};
  std::uint64_t seed = 1;
  // The corpus (synthetic: its generation; text: its order) and the batches drawn from it; defaults
  // to `seed`. Separate, so that runs can vary the model's randomness on the same data.
  std::optional<std::uint64_t> data_seed;
  std::uint64_t corpus_seed() const { return data_seed.value_or(seed); }
  std::string data;
  std::string log;
  std::string checkpoint;
  int checkpoint_every = 100;
  bool resume = false;
  int eval_every = 250;
  int eval_batches = 4;
  int threads = 0;  // 0: the shared pool (MOE_NUM_THREADS or every CPU the process may use)
  int ranks = 1;    // in-process ranks: experts split over them, the rest data-parallel
  recipe_overrides recipe;  // ablations of the preset's recipe
  // Fine-tuning: start from the parameters of this checkpoint (not its optimiser state or step), and
  // hold these parameter groups (param_group bits) fixed.
  std::string init_from;
  unsigned frozen = 0;
  int train_sequences = 0;  // > 0: train on a fixed set of this many sequences (the data's first ones)
  bool progress = true;
  // Testing only: kill the process at the start of this step / in the middle of the checkpoint
  // written at this step.
  int crash_at_step = -1;
  int crash_in_checkpoint_at_step = -1;
  // Testing only: at this step, rank `inject_inf_rank` writes +inf into its first expert gradient
  // (one it alone holds when the experts are split), as a float16 overflow on that rank alone would.
  int inject_inf_at_step = -1;
  int inject_inf_rank = 0;
};

class usage_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

inline const char* usage_text =
    "usage: moe-train [flags]\n"
    "  --preset dense|switch|glam|st-moe   model (default switch)\n"
    "  --device host|cuda                  execution space (default host; cuda: in builds with CUDA;\n"
    "                                      exit code 4 when no GPU is usable)\n"
    "  --grouped-gemm device|cublas        cuda: the experts' GEMMs by the library's kernels, offsets on the\n"
    "                                      device (default), or by cuBLAS per expert, offsets read on the\n"
    "                                      host at every call (a stream synchronisation each)\n"
    "  --precision fp32|bf16|fp16          storage of the MoE layers (16-bit: float32 master weights in the\n"
    "                                      optimiser; fp16 adds dynamic loss scaling; the rest of the\n"
    "                                      model stays float32)\n"
    "  --loss-scale S                      fp16: initial dynamic loss scale, a power of two (65536)\n"
    "  --steps N --batch N --seq N         training length and batch shape (3000, 16, 64)\n"
    "  --d-model N --layers N --heads N    transformer size (96, 4, 4)\n"
    "  --experts N --group-size N          experts per MoE layer (8); routing group (0 = batch)\n"
    "  --optimizer adamw|adafactor         (adamw)\n"
    "  --lr X --schedule inverse-sqrt|cosine --warmup N --clip X --weight-decay X\n"
    "  --seed N                            initialisation, data and routing randomness (1)\n"
    "  --data-seed N                       the data's seed alone (default --seed): other seeds, same data\n"
    "  --init-scale S --balance-loss A     ablations of the preset's recipe: weight init scale s (std\n"
    "  --z-loss C --jitter E               sqrt(s/fan_in), every matrix), load-balancing weight, router\n"
    "  --capacity-factor CF                z-loss weight (st-moe), router input jitter, train capacity factor\n"
    "  --init-from DIR                     fine-tune: start from the parameters of the checkpoint in DIR (same\n"
    "                                      model shape; fresh optimiser, step 0)\n"
    "  --freeze GROUPS                     hold fixed, comma-separated: embedding, attention, dense-ffn, norms,\n"
    "                                      router, experts, moe (router+experts), non-moe (the other four)\n"
    "  --expert-dropout X                  dropout on the experts' hidden units in training (Switch: 0.4)\n"
    "  --dropout X                         dropout elsewhere in training, where T5 puts it: embeddings, attention\n"
    "                                      probabilities, sublayer outputs, dense FFN hidden units (Switch: 0.1)\n"
    "  --router-precision fp32|bf16        the routers: float32 in every preset (Switch's selective precision); bf16\n"
    "                                      rounds their inputs, weights, logits and probabilities (its ablation)\n"
    "  --data FILE                         train on a text file, byte-level (default: the synthetic corpus)\n"
    "  --train-sequences N                 train on a fixed set of N sequences (a small task), validate as usual\n"
    "  --log FILE                          JSONL log, one object per step\n"
    "  --checkpoint DIR --checkpoint-every N --resume\n"
    "  --eval-every N --eval-batches N     validation (250, 4)\n"
    "  --threads N                         host threads (per rank)\n"
    "  --ranks R                           ranks: MoE experts split over R, the rest data-parallel (host:\n"
    "                                      threads; cuda: one GPU per rank, NCCL)\n"
    "  --no-progress                       no live progress line\n";

namespace detail {

template <class I>
I parse_int(std::string_view flag, const std::string& v, I lo, I hi) {
  I out{};
  const auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (ec != std::errc() || p != v.data() + v.size() || out < lo || out > hi)
    throw usage_error(std::string(flag) + ": '" + v + "' is not an integer in [" + std::to_string(lo) + ", " +
                      std::to_string(hi) + "]");
  return out;
}

inline double parse_double(std::string_view flag, const std::string& v, double lo, double hi) {
  char* end = nullptr;
  const double out = std::strtod(v.c_str(), &end);
  if (v.empty() || end != v.c_str() + v.size() || !(out >= lo && out <= hi))
    throw usage_error(std::string(flag) + ": '" + v + "' is not a number in [" + std::to_string(lo) + ", " +
                      std::to_string(hi) + "]");
  return out;
}

}  // namespace detail

// Parses argv; throws usage_error with a one-line message on any problem.
inline options parse_options(int argc, char** argv) {
  options o;
  bool lr_given = false, warmup_given = false, loss_scale_given = false, grouped_gemm_given = false;
  std::vector<std::string> args(argv + 1, argv + argc);
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string flag = args[i], value;
    bool has_inline = false;
    if (const auto eq = flag.find('='); flag.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
      has_inline = true;
    }
    auto take = [&]() -> const std::string& {
      if (has_inline) return value;
      if (i + 1 >= args.size()) throw usage_error(flag + ": missing value");
      value = args[++i];
      return value;
    };
    auto flag_only = [&] {
      if (has_inline) throw usage_error(flag + ": takes no value");
    };
    using detail::parse_double;
    using detail::parse_int;
    constexpr int imax = std::numeric_limits<int>::max();
    if (flag == "--help" || flag == "-h") {
      throw usage_error("help");
    } else if (flag == "--preset") {
      const std::string& v = take();
      if (v == "dense") o.kind = preset::dense;
      else if (v == "switch") o.kind = preset::switch_transformer;
      else if (v == "glam") o.kind = preset::glam;
      else if (v == "st-moe") o.kind = preset::st_moe;
      else throw usage_error("--preset: '" + v + "' is not one of dense, switch, glam, st-moe");
    } else if (flag == "--precision") {
      o.precision = take();
      if (o.precision != "fp32" && o.precision != "bf16" && o.precision != "fp16")
        throw usage_error("--precision: '" + o.precision + "' is not one of fp32, bf16, fp16");
    } else if (flag == "--loss-scale") {
      const std::string& v = take();
      o.loss_scale = parse_double(flag, v, 1.0, 1e38);
      int exponent = 0;
      if (std::frexp(o.loss_scale, &exponent) != 0.5)
        throw usage_error("--loss-scale: '" + v + "' is not a power of two");
      loss_scale_given = true;
    } else if (flag == "--device") {
      o.device = take();
      if (o.device != "host" && o.device != "cuda")
        throw usage_error("--device: '" + o.device + "' is not one of host, cuda");
    } else if (flag == "--grouped-gemm") {
      o.grouped_gemm = take();
      if (o.grouped_gemm != "device" && o.grouped_gemm != "cublas")
        throw usage_error("--grouped-gemm: '" + o.grouped_gemm + "' is not one of device, cublas");
      grouped_gemm_given = true;
    } else if (flag == "--steps") {
      o.steps = parse_int(flag, take(), 1, 100000000);
    } else if (flag == "--batch") {
      o.batch = parse_int(flag, take(), 1, 1 << 16);
    } else if (flag == "--seq") {
      o.seq = parse_int(flag, take(), 2, 1 << 14);
    } else if (flag == "--d-model") {
      o.d_model = parse_int(flag, take(), 1, 1 << 16);
    } else if (flag == "--layers") {
      o.layers = parse_int(flag, take(), 1, 1024);
    } else if (flag == "--heads") {
      o.heads = parse_int(flag, take(), 1, 1024);
    } else if (flag == "--experts") {
      o.experts = parse_int(flag, take(), 1, 4096);
    } else if (flag == "--group-size") {
      o.group_size = parse_int(flag, take(), 0, imax);
    } else if (flag == "--optimizer") {
      const std::string& v = take();
      if (v == "adamw") o.optim.kind = optimizer_kind::adamw;
      else if (v == "adafactor") o.optim.kind = optimizer_kind::adafactor;
      else throw usage_error("--optimizer: '" + v + "' is not one of adamw, adafactor");
    } else if (flag == "--lr") {
      o.optim.lr = parse_double(flag, take(), 1e-9, 10.0);
      lr_given = true;
    } else if (flag == "--schedule") {
      const std::string& v = take();
      if (v == "inverse-sqrt") o.optim.schedule = schedule_kind::inverse_sqrt;
      else if (v == "cosine") o.optim.schedule = schedule_kind::cosine;
      else throw usage_error("--schedule: '" + v + "' is not one of inverse-sqrt, cosine");
    } else if (flag == "--warmup") {
      o.optim.warmup = parse_int(flag, take(), 0, imax);
      warmup_given = true;
    } else if (flag == "--clip") {
      o.optim.clip = parse_double(flag, take(), 0.0, 1e9);
    } else if (flag == "--weight-decay") {
      o.optim.weight_decay = parse_double(flag, take(), 0.0, 1.0);
    } else if (flag == "--seed") {
      o.seed = parse_int<std::uint64_t>(flag, take(), 0, std::numeric_limits<std::uint64_t>::max());
    } else if (flag == "--init-scale") {
      o.recipe.init_scale = float(parse_double(flag, take(), 1e-6, 100.0));
    } else if (flag == "--balance-loss") {
      o.recipe.balance_loss = parse_double(flag, take(), 0.0, 100.0);
    } else if (flag == "--z-loss") {
      o.recipe.z_loss = parse_double(flag, take(), 0.0, 100.0);
    } else if (flag == "--jitter") {
      o.recipe.jitter = float(parse_double(flag, take(), 0.0, 0.999));
    } else if (flag == "--capacity-factor") {
      o.recipe.capacity_factor = parse_double(flag, take(), 1e-3, 1024.0);
    } else if (flag == "--expert-dropout") {
      o.recipe.expert_dropout = float(parse_double(flag, take(), 0.0, 0.95));
    } else if (flag == "--dropout") {
      o.recipe.dropout = float(parse_double(flag, take(), 0.0, 0.95));
    } else if (flag == "--router-precision") {
      const std::string& v = take();
      if (v == "fp32") o.recipe.router_precision = moe::router_precision::float32;
      else if (v == "bf16") o.recipe.router_precision = moe::router_precision::bfloat16;
      else throw usage_error("--router-precision: '" + v + "' is not one of fp32, bf16");
    } else if (flag == "--init-from") {
      o.init_from = take();
      if (o.init_from.empty()) throw usage_error("--init-from: empty directory name");
    } else if (flag == "--freeze") {
      const std::string& v = take();
      o.frozen = 0;
      std::size_t start = 0;
      for (;;) {
        const std::size_t comma = v.find(',', start);
        const std::string name = v.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        const auto it = std::find_if(std::begin(group_names), std::end(group_names),
                                     [&](const group_name& g) { return name == g.name; });
        if (it == std::end(group_names))
          throw usage_error("--freeze: '" + name + "' is not one of embedding, attention, dense-ffn, norms, router, " +
                            "experts, moe, non-moe");
        o.frozen |= it->groups;
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
    } else if (flag == "--train-sequences") {
      o.train_sequences = parse_int(flag, take(), 1, 1 << 24);
    } else if (flag == "--data-seed") {
      o.data_seed = parse_int<std::uint64_t>(flag, take(), 0, std::numeric_limits<std::uint64_t>::max());
    } else if (flag == "--data") {
      o.data = take();
    } else if (flag == "--log") {
      o.log = take();
    } else if (flag == "--checkpoint") {
      o.checkpoint = take();
    } else if (flag == "--checkpoint-every") {
      o.checkpoint_every = parse_int(flag, take(), 1, imax);
    } else if (flag == "--resume") {
      flag_only();
      o.resume = true;
    } else if (flag == "--eval-every") {
      o.eval_every = parse_int(flag, take(), 1, imax);
    } else if (flag == "--eval-batches") {
      o.eval_batches = parse_int(flag, take(), 1, 1 << 16);
    } else if (flag == "--threads") {
      o.threads = parse_int(flag, take(), 1, 4096);
    } else if (flag == "--ranks") {
      o.ranks = parse_int(flag, take(), 1, 1024);
    } else if (flag == "--no-progress") {
      flag_only();
      o.progress = false;
    } else if (flag == "--crash-at-step") {
      o.crash_at_step = parse_int(flag, take(), 1, imax);
    } else if (flag == "--crash-in-checkpoint-at-step") {
      o.crash_in_checkpoint_at_step = parse_int(flag, take(), 1, imax);
    } else if (flag == "--inject-inf-at-step") {
      o.inject_inf_at_step = parse_int(flag, take(), 1, imax);
    } else if (flag == "--inject-inf-rank") {
      o.inject_inf_rank = parse_int(flag, take(), 0, 1023);
    } else {
      throw usage_error(flag + ": unknown flag (see --help)");
    }
  }
  // Adafactor wants a larger explicit learning rate than AdamW (T5 used 1e-2 with inverse sqrt).
  if (!lr_given && o.optim.kind == optimizer_kind::adafactor) o.optim.lr = 1e-2;
  if (!warmup_given) o.optim.warmup = std::min(100, std::max(1, o.steps / 10));
  o.optim.total_steps = o.steps;

  // Shapes that cannot work.
  if (o.d_model % o.heads != 0)
    throw usage_error("--heads: " + std::to_string(o.heads) + " does not divide --d-model " +
                      std::to_string(o.d_model));
  const int k = experts_per_token(o.kind);
  if (o.kind != preset::dense && o.experts < k)
    throw usage_error("--experts: " + std::to_string(o.experts) + " is fewer than the " + std::to_string(k) +
                      " experts per token of --preset " + preset_name(o.kind));
  if (o.batch % o.ranks != 0)
    throw usage_error("--ranks: " + std::to_string(o.ranks) + " does not divide --batch " + std::to_string(o.batch) +
                      " (each rank takes an equal share of the sequences)");
  if (o.kind != preset::dense && o.experts % o.ranks != 0)
    throw usage_error("--ranks: " + std::to_string(o.ranks) + " does not divide --experts " +
                      std::to_string(o.experts) + " (each rank holds an equal share of the experts)");
  if (grouped_gemm_given && o.device != "cuda")
    throw usage_error("--grouped-gemm: it chooses how --device cuda runs the expert GEMMs (this run has --device " +
                      o.device + ")");
  if (grouped_gemm_given && o.kind == preset::dense)
    throw usage_error("--grouped-gemm: it applies to the MoE layers, and the dense preset has none");
  if (loss_scale_given && o.precision != "fp16")
    throw usage_error("--loss-scale: only fp16 scales the loss (this run has --precision " + o.precision + ")");
  if (o.precision != "fp32" && o.kind == preset::dense)
    throw usage_error("--precision " + o.precision + ": it applies to the MoE layers, and the dense preset has none");
  if (o.kind == preset::dense) {
    const char* moe_only = o.recipe.balance_loss       ? "--balance-loss"
                           : o.recipe.z_loss           ? "--z-loss"
                           : o.recipe.jitter           ? "--jitter"
                           : o.recipe.capacity_factor  ? "--capacity-factor"
                           : o.recipe.expert_dropout   ? "--expert-dropout"
                           : o.recipe.router_precision ? "--router-precision"
                           : (o.frozen & group_moe)    ? "--freeze router/experts"
                                                       : nullptr;
    if (moe_only)
      throw usage_error(std::string(moe_only) + ": it applies to the MoE layers, and the dense preset has none");
  }
  if (o.recipe.z_loss && o.kind != preset::st_moe)
    throw usage_error(std::string("--z-loss: the ") + preset_name(o.kind) +
                      " preset's MoE layers have no router z-loss (st-moe's do)");
  const int rank_tokens = o.batch / o.ranks * o.seq;
  if (o.group_size > 0 && rank_tokens % o.group_size != 0)
    throw usage_error("--group-size: " + std::to_string(o.group_size) + " does not divide the " +
                      std::to_string(rank_tokens) + " tokens of a batch" +
                      (o.ranks > 1 ? " share (per rank)" : std::string()));
  if (o.resume && o.checkpoint.empty()) throw usage_error("--resume: needs --checkpoint DIR");
  if ((o.frozen & group_all) == group_all)
    throw usage_error("--freeze: every parameter group is frozen, nothing trains");
  if (o.inject_inf_rank >= o.ranks)
    throw usage_error("--inject-inf-rank: " + std::to_string(o.inject_inf_rank) + " is not a rank of --ranks " +
                      std::to_string(o.ranks));
  if (o.inject_inf_at_step > 0 && o.kind == preset::dense)
    throw usage_error("--inject-inf-at-step: it writes into an expert gradient, and the dense preset has none");
  if (o.crash_in_checkpoint_at_step > 0 && o.checkpoint.empty())
    throw usage_error("--crash-in-checkpoint-at-step: needs --checkpoint DIR");
  return o;
}

}  // namespace trainer
