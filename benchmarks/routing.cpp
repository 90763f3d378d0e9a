// benchmarks/routing.cpp — the routing stages on their own, called through the layer's internal
// stage functions (moe::detail) on a plan carved from one workspace, as moe::layer does:
//
//   router/<top1|top2|expert_choice>/E:<E>/T:<T>
//       router_forward (x̃, logits GEMM, softmax, selection) + routing_summary (loss sums) +
//       assign_slots (sort by segment and priority, capacity). No jitter.
//   dispatch/<stage>/<sorted|padded|one_hot|dropless>/cf:<CF>/E:<E>/T:<T>/skew:<s>
//       top-2 routing (renormalised), then one dispatcher step:
//         assign       assign_slots + the dispatcher's row bookkeeping (one_hot: its [T, E·C] tensors)
//         permute      x → expert rows            combine      expert rows → y (gate-weighted)
//         permute_bwd  ∂rows → ∂x                 combine_bwd  ∂y → ∂rows and ∂gates
//       GBps counts the bytes a copy-based implementation must move (rows read and written, see
//       docs/benchmarks.md); one_hot moves them with GEMMs, and is charged the same bytes.
#include <functional>
#include <string>

#include "common.hpp"

namespace moe_bench {

namespace {

using R = float;
const R* const no_noise = nullptr;  // no learned-noise weights

// A routing plan (and optionally a dispatcher's state) carved from one owned buffer.
template <class Dispatch>
struct planned {
  moe::routing_shape shape;
  moe::routing_plan<R> plan;
  typename Dispatch::state dispatch;
  moe::buffer<moe::host> ws;

  planned(const moe::routing_shape& s, int num_losses) : shape(s) {
    moe::workspace_carver measure;
    carve(measure, num_losses);
    ws = moe::buffer<moe::host>(space(), measure.bytes());
    moe::workspace_carver w(ws.data(), ws.bytes());
    carve(w, num_losses);
  }
  void carve(moe::workspace_carver& w, int num_losses) {
    moe::routing_plan<R>::carve<moe::host>(w, shape, {.num_losses = num_losses}, plan);
    Dispatch::template carve<float, R>(w, shape, dispatch);
  }
};

// ---- routers --------------------------------------------------------------------------------------

template <class Router, class LossSet>
void bm_router(benchmark::State& st, typename Router::config rcfg, int k_inputs, double cf, int E, int T) {
  const routed_inputs in = make_routed_inputs(T, sizes().d_model, E, k_inputs, skew::uniform, 77);
  const int K = Router::pairs_per_token(rcfg, E);
  planned<no_dispatch> p(one_group_shape(T, E, K, capacity_for(cf, T, E), sizes().d_model), LossSet::count);
  const typename LossSet::config lcfg{};
  const moe::router_streams rng = moe::router_streams::make(1, 0, 0);
  auto route = [&] {
    moe::detail::router_forward<Router>(space(), rcfg, p.plan, in.x.data(), in.w_router.data(), no_noise, true, rng);
    moe::detail::routing_summary<Router, LossSet>(space(), lcfg, p.plan);
    moe::detail::assign_slots<Router>(space(), p.plan, moe::drop_order::position);
  };
  route();
  for (auto _ : st) route();
  st.counters["tokens_per_s"] = rate(T);
  // The input read once: the least traffic any router has (memory-bound at small E).
  st.counters["GBps"] = rate(double(T) * sizes().d_model * sizeof(float) * 1e-9);
}

std::string router_name(const char* router, int E, int T) {
  return std::string("router/") + router + "/E:" + std::to_string(E) + "/T:" + std::to_string(T);
}

// ---- dispatch -------------------------------------------------------------------------------------

struct dispatch_case {
  dispatch_stage what = dispatch_stage::permute;
  double cf = 1.25;  // 0: dropless
  int experts = 8, tokens = 4096;
  skew routing = skew::uniform;
};

template <class Dispatch, bool Padded>
void bm_dispatch(benchmark::State& st, dispatch_case c) {
  using router = moe::top_k;
  const int T = c.tokens, E = c.experts, d = sizes().d_model;
  router::config rcfg;
  rcfg.k = 2;
  rcfg.renormalize = true;
  const routed_inputs in = make_routed_inputs(T, d, E, 2, c.routing, 4321);
  // Dropless: every expert may take all S tokens (moe::dropless::capacity).
  const int C = c.cf > 0 ? capacity_for(c.cf, T, E) : T;
  planned<Dispatch> p(one_group_shape(T, E, 2, C, d), 0);
  const moe::router_streams rng = moe::router_streams::make(1, 0, 0);
  const moe::host& sp = space();
  moe::detail::router_forward<router>(sp, rcfg, p.plan, in.x.data(), in.w_router.data(), no_noise, true, rng);
  auto assign = [&] {
    moe::detail::assign_slots<router>(sp, p.plan, moe::drop_order::position);
    Dispatch::template assign<float>(sp, p.plan, p.dispatch);
  };
  assign();

  // Rows: kept pairs, and rows the permute writes (padded layouts write every slot).
  const int* seg = p.plan.segment_count;
  double kept = 0, routed = 0;
  std::vector<std::int64_t> per_expert(static_cast<std::size_t>(E));
  for (int e = 0; e < E; ++e) {
    kept += std::min(seg[e], C);
    routed += seg[e];
    per_expert[std::size_t(e)] = seg[e];
  }
  const double written = Padded ? double(E) * C : kept;
  const index_t rows_bound = p.dispatch.rows.rows.rows_bound;
  const std::size_t row_values = std::size_t(rows_bound) * std::size_t(d), token_values = std::size_t(T) * d;
  std::vector<float> xp(row_values), out = random_values(row_values, 8), dout(row_values),
      dxp = random_values(row_values, 9);
  std::vector<float> y(token_values), dy = random_values(token_values, 10);

  double bytes = 0;  // per call, bytes a copy-based implementation moves
  std::function<void()> run;
  switch (c.what) {
    case dispatch_stage::assign: run = assign; break;
    case dispatch_stage::permute:
      run = [&] { Dispatch::dispatch(sp, p.plan, p.dispatch, in.x.data(), xp.data()); };
      bytes = (kept + written) * d * sizeof(float);
      break;
    case dispatch_stage::combine:
      run = [&] { Dispatch::combine(sp, p.plan, p.dispatch, out.data(), y.data()); };
      bytes = (kept + T) * d * sizeof(float);
      break;
    case dispatch_stage::permute_bwd:
      run = [&] { Dispatch::dispatch_backward(sp, p.plan, p.dispatch, dxp.data(), p.plan.dx_acc); };
      bytes = (kept + T) * d * sizeof(float);
      break;
    case dispatch_stage::combine_bwd:
      run = [&] {
        Dispatch::combine_backward(sp, p.plan, p.dispatch, out.data(), dy.data(), p.plan.dgate, dout.data());
      };
      bytes = (T + kept + written) * d * sizeof(float);
      break;
  }
  run();
  const double t_copy = bytes > 0 ? copy_seconds(std::size_t(bytes / 2)) : 0.0;
  for (auto _ : st) run();

  st.counters["tokens_per_s"] = rate(T);
  if (bytes > 0) {
    st.counters["GBps"] = rate(bytes * 1e-9);
    st.counters["vs_copy"] = ratio_to(t_copy);
  }
  set_load_counters(st, per_expert, routed > 0 ? (routed - kept) / routed : 0.0);
}

std::string dispatch_name(const char* dispatcher, const dispatch_case& c) {
  std::string cf = c.cf > 0 ? std::to_string(c.cf).substr(0, 4) : "none";
  return std::string("dispatch/") + to_string(c.what) + "/" + dispatcher + "/cf:" + cf +
         "/E:" + std::to_string(c.experts) + "/T:" + std::to_string(c.tokens) + "/skew:" + to_string(c.routing);
}

template <class Dispatch, bool Padded>
void register_dispatch(const char* name, const dispatch_case& c) {
  configure(benchmark::RegisterBenchmark(dispatch_name(name, c).c_str(),
                                         [c](benchmark::State& st) { bm_dispatch<Dispatch, Padded>(st, c); }));
}

}  // namespace

void register_routing_benchmarks() {
  using lb_z = moe::losses<moe::load_balancing, moe::router_z_loss>;
  using z = moe::losses<moe::router_z_loss>;
  for (int T : sizes().router_tokens)
    for (int E : sizes().router_experts) {
      moe::top_k::config top1;
      top1.k = 1;
      moe::top_k::config top2;
      top2.k = 2;
      top2.renormalize = true;
      configure(benchmark::RegisterBenchmark(router_name("top1", E, T).c_str(), [=](benchmark::State& st) {
        bm_router<moe::top_k, lb_z>(st, top1, 1, 1.25, E, T);
      }));
      configure(benchmark::RegisterBenchmark(router_name("top2", E, T).c_str(), [=](benchmark::State& st) {
        bm_router<moe::top_k, lb_z>(st, top2, 2, 1.25, E, T);
      }));
      // Zhou et al. 2022: capacity factor 2 (each expert takes 2·T/E tokens).
      configure(benchmark::RegisterBenchmark(router_name("expert_choice", E, T).c_str(), [=](benchmark::State& st) {
        bm_router<moe::expert_choice, z>(st, moe::expert_choice::config{}, 1, 2.0, E, T);
      }));
    }
}

void register_dispatch_benchmarks() {
  // one_hot's [T, E·C] tensors grow as T²: it is measured at 4k tokens only.
  for (dispatch_stage s : {dispatch_stage::permute, dispatch_stage::combine, dispatch_stage::permute_bwd, dispatch_stage::combine_bwd, dispatch_stage::assign})
    for (int T : sizes().dispatch_tokens)
      for (int E : sizes().dispatch_experts)
        for (skew k : {skew::uniform, skew::zipf}) {
          dispatch_case c{s, 0.0, E, T, k};
          for (double cf : {1.0, 1.25, 2.0}) {
            c.cf = cf;
            register_dispatch<moe::sorted_dispatch, false>("sorted", c);
            register_dispatch<moe::padded_dispatch, true>("padded", c);
            if (T <= sizes().one_hot_max_tokens) register_dispatch<moe::one_hot_dispatch, true>("one_hot", c);
          }
          c.cf = 0.0;
          register_dispatch<moe::sorted_dispatch, false>("dropless", c);
        }
}

}  // namespace moe_bench
