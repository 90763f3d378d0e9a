// examples/trainer/layout.hpp — which FFNs of the model are MoE layers, how wide every FFN is, and
// what the model costs (parameters, FLOPs per token) for each preset.
//
// Every model shares d_model, depth, heads, attention and the tied embedding. What differs is the
// FFN of each block. All presets spend the same FFN FLOPs per token per block as the dense baseline
// (a ReLU FFN of width 4·d: 2·2·d·4d = 16·d² FLOPs), so the comparison is at equal FLOPs per token:
//   dense   every block: ReLU FFN, width 4d
//   switch  every other block (1, 3, …) a top-1 MoE of ReLU experts of width 4d (Switch: one expert
//           per token, the same FLOPs as the dense FFN it replaces); the others dense ReLU 4d
//   glam    every other block a top-2 MoE of GEGLU experts of width 4d/3 (2 experts · 3 matrices);
//           the others dense GEGLU of width 8d/3 (GLaM uses gated GELU throughout)
//   st-moe  every 4th block (3, 7, …; every other block when depth < 4) is a sparse block: a top-2
//           MoE of GEGLU experts of width 2d/3 followed by a dense GEGLU FFN of width 4d/3
//           (ST-MoE's "dense FFN in each sparse block"); the others dense GEGLU 8d/3
// Widths are rounded to integers, so FLOPs match to within rounding; the exact counts are printed.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include <moe/routing/router_logits.hpp>

namespace trainer {

enum class preset { dense, switch_transformer, glam, st_moe };

inline const char* preset_name(preset p) {
  switch (p) {
    case preset::dense: return "dense";
    case preset::switch_transformer: return "switch";
    case preset::glam: return "glam";
    case preset::st_moe: return "st-moe";
  }
  return "?";
}

// Changes to a preset's recipe, for ablations and fine-tuning (--init-scale, --balance-loss,
// --z-loss, --jitter, --capacity-factor, --expert-dropout, --dropout, --router-precision). Unset: the
// preset's own value.
struct recipe_overrides {
  // s of every weight matrix's truncated normal, std sqrt(s / fan_in): embeddings, attention, dense
  // FFNs, routers and experts alike (Switch §2.4 reduced it from 1.0 to 0.1 for the whole model).
  std::optional<float> init_scale;
  std::optional<double> balance_loss;     // load-balancing loss weight α (c_B)
  std::optional<double> z_loss;           // router z-loss weight c_z (presets whose layers have it: st-moe)
  std::optional<float> jitter;            // router input jitter ε
  std::optional<double> capacity_factor;  // training capacity factor (evaluation keeps the preset's)
  // Dropout on the experts' hidden units in training (Switch fine-tuning: 0.4, ST-MoE: 0.3 is good).
  std::optional<float> expert_dropout;
  // Dropout everywhere else in training, at T5's places (model.hpp); no preset has it (0), Switch
  // fine-tunes with 0.1, ST-MoE with 0.1 too.
  std::optional<float> dropout;
  // The routers' precision: float32 in every preset (Switch's selective precision); bfloat16 to
  // ablate it (router_logits.hpp).
  std::optional<moe::router_precision> router_precision;

  bool any() const {
    return init_scale || balance_loss || z_loss || jitter || capacity_factor || expert_dropout || dropout ||
           router_precision;
  }
  // "preset" when nothing is changed, else the changed values: the checkpoint header records it.
  std::string describe() const {
    if (!any()) return "preset";
    std::string out;
    auto add = [&](const char* name, const auto& v) {
      if (!v) return;
      char buf[64];
      std::snprintf(buf, sizeof buf, "%s%s=%.9g", out.empty() ? "" : ",", name, double(*v));
      out += buf;
    };
    add("init_scale", init_scale);
    add("balance_loss", balance_loss);
    add("z_loss", z_loss);
    add("jitter", jitter);
    add("capacity_factor", capacity_factor);
    add("expert_dropout", expert_dropout);
    add("dropout", dropout);
    if (router_precision) {
      if (!out.empty()) out += ',';
      out += "router_precision=";
      out += to_string(*router_precision);
    }
    return out;
  }
};

// Parameter groups --freeze holds fixed while the rest trains (fine-tuning a subset, as in ST-MoE's
// study: all, only the non-MoE or only the MoE parameters). Every parameter is in exactly one.
enum param_group : unsigned {
  group_embedding = 1u << 0,  // tok_emb (tied with the output layer), pos_emb
  group_attention = 1u << 1,  // w_qkv, w_o
  group_dense_ffn = 1u << 2,  // the dense FFNs' weights
  group_norms = 1u << 3,      // every RMSNorm gain
  group_router = 1u << 4,     // the MoE layers' routers
  group_experts = 1u << 5,    // the MoE layers' experts
  group_moe = group_router | group_experts,
  group_all = (1u << 6) - 1,
  group_non_moe = group_all & ~group_moe,
};

// The group of a parameter, by the name the model gives it (model.hpp).
inline param_group group_of(const std::string& name) {
  if (name.rfind("moe", 0) == 0) return name.find(".router.") != std::string::npos ? group_router : group_experts;
  if (name == "tok_emb" || name == "pos_emb") return group_embedding;
  if (name.size() >= 4 && name.compare(name.size() - 4, 4, "norm") == 0) return group_norms;
  if (name.find(".ffn") != std::string::npos) return group_dense_ffn;
  return group_attention;
}

// The names --freeze takes, and the groups they stand for.
struct group_name {
  const char* name;
  unsigned groups;
};
inline constexpr group_name group_names[] = {
    {"embedding", group_embedding}, {"attention", group_attention}, {"dense-ffn", group_dense_ffn},
    {"norms", group_norms},         {"router", group_router},       {"experts", group_experts},
    {"moe", group_moe},             {"non-moe", group_non_moe},
};

// "none", or the frozen groups' names ("router,experts"): the checkpoint header records it.
inline std::string describe_groups(unsigned groups) {
  if (!groups) return "none";
  std::string out;
  for (const group_name& g : group_names) {
    if (!std::has_single_bit(g.groups) || !(groups & g.groups)) continue;
    if (!out.empty()) out += ',';
    out += g.name;
  }
  return out;
}

// The initialisation scale s of the model's weights: Switch's 0.1 for the Switch preset, 1.0 for
// the others, unless overridden.
inline float init_scale_of(preset p, const recipe_overrides& r) {
  return r.init_scale.value_or(p == preset::switch_transformer ? 0.1f : 1.0f);
}

struct model_config {
  preset kind = preset::switch_transformer;
  int vocab = 256;
  int d_model = 128;
  int heads = 4;
  int layers = 4;
  int seq = 128;
  int experts = 8;
  int group_size = 0;  // MoE routing group (0 = the whole batch)
  std::uint64_t seed = 1;
  recipe_overrides recipe;
};

struct ffn_spec {
  bool moe = false;
  int d_ff = 0;  // width of the dense FFN, or of each expert
};

struct block_spec {
  std::vector<ffn_spec> ffns;  // one FFN sublayer, or two in an ST-MoE sparse block
};

inline int round_width(double w) { return w < 1 ? 1 : int(std::lround(w)); }

inline std::vector<block_spec> make_layout(const model_config& c) {
  const double d = c.d_model;
  std::vector<block_spec> blocks(std::size_t(c.layers));
  for (int l = 0; l < c.layers; ++l) {
    auto& f = blocks[std::size_t(l)].ffns;
    switch (c.kind) {
      case preset::dense: f = {{false, round_width(4 * d)}}; break;
      case preset::switch_transformer:
        f = {{l % 2 == 1, round_width(4 * d)}};
        break;
      case preset::glam:
        f = l % 2 == 1 ? std::vector<ffn_spec>{{true, round_width(4 * d / 3)}}
                       : std::vector<ffn_spec>{{false, round_width(8 * d / 3)}};
        break;
      case preset::st_moe: {
        const bool sparse = c.layers >= 4 ? l % 4 == 3 : l % 2 == 1;
        f = sparse ? std::vector<ffn_spec>{{true, round_width(2 * d / 3)}, {false, round_width(4 * d / 3)}}
                   : std::vector<ffn_spec>{{false, round_width(8 * d / 3)}};
        break;
      }
    }
  }
  return blocks;
}

inline bool gated(preset p) { return p == preset::glam || p == preset::st_moe; }
inline int experts_per_token(preset p) { return p == preset::switch_transformer ? 1 : 2; }

// Parameters and forward FLOPs per token (a multiply-add is 2 FLOPs). Training costs ≈ 3× forward.
struct model_cost {
  double total_params = 0;   // every weight
  double active_params = 0;  // weights one token touches (k experts per MoE layer)
  double flops_per_token = 0;
};

inline model_cost cost(const model_config& c) {
  const double d = c.d_model, V = c.vocab, S = c.seq, E = c.experts;
  const double k = experts_per_token(c.kind), mats = gated(c.kind) ? 3 : 2;
  model_cost m;
  const double embed = V * d + S * d;
  m.total_params = m.active_params = embed + d;  // + final norm
  m.flops_per_token = 2 * d * V;                 // tied output projection
  for (const block_spec& b : make_layout(c)) {
    const double attn = 4 * d * d + d;  // qkv, output projection, norm gain
    m.total_params += attn;
    m.active_params += attn;
    // projections + causal scores and weighted values (a query attends to (S+1)/2 keys on average)
    m.flops_per_token += 2 * 4 * d * d + 2 * 2 * d * (S + 1) / 2;
    for (const ffn_spec& f : b.ffns) {
      const double one = mats * d * f.d_ff;
      m.total_params += d;  // norm gain
      m.active_params += d;
      if (f.moe) {
        m.total_params += E * one + d * E;
        m.active_params += k * one + d * E;
        m.flops_per_token += 2 * (k * one + d * E);
      } else {
        m.total_params += one;
        m.active_params += one;
        m.flops_per_token += 2 * one;
      }
    }
  }
  return m;
}

}  // namespace trainer
