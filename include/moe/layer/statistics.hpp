// moe/layer/statistics.hpp — what one forward call of a layer reports about its routing.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace moe {

struct routing_statistics {
  int tokens = 0;
  int experts = 0;
  int groups = 0;
  int capacity = 0;  // slots per expert per group (the group size for dropless)
  bool training = false;

  // Proposals per expert before capacity (active (token, expert) pairs), and those kept.
  std::vector<std::int64_t> routed_per_expert;
  std::vector<std::int64_t> kept_per_expert;
  std::int64_t routed_pairs = 0;
  std::int64_t dropped_pairs = 0;
  std::int64_t tokens_without_expert = 0;  // tokens whose every proposal was dropped
  // Token-choice routers: dropped_pairs / routed_pairs. Expert choice: tokens_without_expert / tokens
  // (every token proposes itself to every expert, so dropped proposals are the normal case there).
  double dropped_fraction = 0;

  // Auxiliary losses: Σ weight · value, and each value (unweighted) by name.
  double aux_loss = 0;
  std::vector<std::pair<std::string, double>> losses;

  double router_entropy = 0;         // mean over tokens of −Σ_e p log p (nats)
  double mean_top1_probability = 0;  // mean over tokens of max_e p
  double router_logit_max = 0;       // max |logit| over tokens and experts
  double router_logit_rms = 0;       // sqrt(mean logit²)
  double router_z = 0;               // mean over tokens of logsumexp(logits)²: the z-loss value,
                                     // reported whether or not the layer optimises it

  // The unweighted value of the loss called `name` (0 when the layer has no such loss).
  double loss(const std::string& name) const {
    for (const auto& [n, v] : losses)
      if (n == name) return v;
    return 0;
  }
  // Fraction of the kept pairs that expert e received.
  double load(int e) const {
    std::int64_t total = 0;
    for (auto k : kept_per_expert) total += k;
    return total ? double(kept_per_expert[std::size_t(e)]) / double(total) : 0.0;
  }
};

// The per-pair routing decisions of one forward call, copied to the host. Pair p = t·K + j is the
// j-th proposal of token t (K = k for top-k; K = E for expert choice, with j = the expert).
struct routing_decisions {
  int tokens = 0;
  int pairs_per_token = 0;
  std::vector<int> expert;            // [T·K]
  std::vector<double> gate;           // [T·K] combine weight (after renormalisation)
  std::vector<std::uint8_t> active;   // [T·K] 0: not proposed (second-expert policy)
  std::vector<int> slot;              // [T·K] slot in its expert's buffer, -1 if dropped or inactive

  int index(int t, int j) const { return t * pairs_per_token + j; }
  bool kept(int t, int j) const { return slot[std::size_t(index(t, j))] >= 0; }
};

}  // namespace moe
