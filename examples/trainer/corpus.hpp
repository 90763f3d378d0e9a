// examples/trainer/corpus.hpp — training data: the embedded synthetic multi-domain corpus, and any
// text file read byte by byte.
//
// Synthetic corpus (the default). Four "domains", each a Markov chain over its own 64-token slice
// of a 256-token vocabulary (neighbouring slices overlap by 16 tokens, so a token does not always
// reveal its domain). Each domain has different statistics:
//   domain 0: order 1, 2 successors per token      (nearly deterministic)
//   domain 1: order 1, 6 successors per token
//   domain 2: order 1, 16 successors per token     (high entropy)
//   domain 3: order 2, 3 successors per token pair (needs two tokens of context)
// Successor probabilities are Zipf-like (∝ 1/rank). A sequence comes from one domain chosen
// uniformly; its first tokens are uniform over the domain's slice. Everything is generated from the
// seed by counter-based random numbers, so batch b of step s is the same on every machine, and the
// "data position" of a run is its step.
//
// The entropy floor: the expected loss of the Bayes-optimal predictor, which knows the four chains
// and infers the domain from the tokens seen so far (a posterior over domains, updated per token).
// It is computed exactly on the validation set; no model can beat it in expectation.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include <moe/moe.hpp>

namespace trainer {

using moe::index_t;

// A batch of B sequences: inputs are tokens 0..S-1 of each sequence, targets tokens 1..S.
struct batch {
  int B = 0, S = 0;
  std::vector<int> inputs, targets;
  std::vector<int> domain;  // per sequence (0 for text data)
  // Positions grouped by input token id (for the embedding gradient): CSR over the vocabulary.
  std::vector<int> by_token, token_offsets;

  void index_tokens(int vocab) {
    token_offsets.assign(std::size_t(vocab) + 1, 0);
    for (int t : inputs) ++token_offsets[std::size_t(t) + 1];
    for (int v = 0; v < vocab; ++v) token_offsets[std::size_t(v) + 1] += token_offsets[std::size_t(v)];
    by_token.resize(inputs.size());
    std::vector<int> fill(token_offsets.begin(), token_offsets.end() - 1);
    for (std::size_t i = 0; i < inputs.size(); ++i) by_token[std::size_t(fill[std::size_t(inputs[i])]++)] = int(i);
  }
};

// Random streams of the data (purposes above the library's own).
inline constexpr auto train_stream = moe::rng_purpose(std::uint32_t(moe::rng_purpose::user) + 1);
inline constexpr auto valid_stream = moe::rng_purpose(std::uint32_t(moe::rng_purpose::user) + 2);
inline constexpr auto corpus_stream = moe::rng_purpose(std::uint32_t(moe::rng_purpose::user) + 3);

class corpus {
 public:
  virtual ~corpus() = default;
  virtual int vocab() const = 0;
  virtual int domains() const = 0;
  virtual std::string describe() const = 0;
  // Training batch of step `step` (deterministic in seed and step).
  virtual void train_batch(std::uint32_t step, int B, int S, batch& out) const = 0;
  // Validation batch i (fixed).
  virtual void valid_batch(int i, int B, int S, batch& out) const = 0;
  // Bayes-optimal loss (nats per token) on the given validation batches; NaN when unknown.
  virtual double entropy_floor(int batches, int B, int S) const = 0;
};

class synthetic_corpus final : public corpus {
 public:
  static constexpr int vocab_size = 256, num_domains = 4, slice = 64, stride = 48;

  explicit synthetic_corpus(std::uint64_t seed) : seed_(seed) {
    const int successors[num_domains] = {2, 6, 16, 3};
    const int order[num_domains] = {1, 1, 1, 2};
    for (int d = 0; d < num_domains; ++d) {
      chain& c = chains_[std::size_t(d)];
      c.order = order[d];
      c.k = successors[d];
      c.base = d * stride;
      const int states = c.order == 1 ? slice : slice * slice;
      c.next.resize(std::size_t(states) * std::size_t(c.k));
      c.prob.resize(std::size_t(c.k));
      double z = 0;
      for (int r = 0; r < c.k; ++r) z += 1.0 / (r + 1);
      for (int r = 0; r < c.k; ++r) c.prob[std::size_t(r)] = 1.0 / (r + 1) / z;
      // Distinct successors per state, drawn from the slice.
      const moe::rng_stream s{seed, corpus_stream, std::uint32_t(d), 0};
      std::uint64_t draw = 0;
      for (int st = 0; st < states; ++st) {
        int* nx = &c.next[std::size_t(st) * std::size_t(c.k)];
        for (int r = 0; r < c.k; ++r) {
          for (;;) {
            const int cand = int(s.bits(draw++).v[0] % slice);
            if (std::find(nx, nx + r, cand) == nx + r) {
              nx[r] = cand;
              break;
            }
          }
        }
      }
    }
  }

  int vocab() const override { return vocab_size; }
  int domains() const override { return num_domains; }
  std::string describe() const override {
    return "synthetic: 4 Markov domains over 64-token slices of a 256 vocabulary (orders 1,1,1,2; 2/6/16/3 "
           "successors)";
  }

  void train_batch(std::uint32_t step, int B, int S, batch& out) const override {
    generate({seed_, train_stream, 0, step}, B, S, out);
  }
  void valid_batch(int i, int B, int S, batch& out) const override {
    generate({seed_, valid_stream, 0, std::uint32_t(i)}, B, S, out);
  }

  double entropy_floor(int batches, int B, int S) const override {
    double total = 0;
    index_t count = 0;
    batch b;
    for (int i = 0; i < batches; ++i) {
      valid_batch(i, B, S, b);
      for (int q = 0; q < B; ++q) {
        std::vector<int> seq(std::size_t(S) + 1);
        for (int t = 0; t < S; ++t) seq[std::size_t(t)] = b.inputs[std::size_t(q * S + t)];
        seq[std::size_t(S)] = b.targets[std::size_t(q * S + S - 1)];
        // log posterior weights over domains, updated with each token's likelihood
        std::array<double, num_domains> logw{};
        for (int t = 0; t <= S; ++t) {
          std::array<double, num_domains> lp{};
          for (int d = 0; d < num_domains; ++d) lp[std::size_t(d)] = log_prob(d, seq, t);
          if (t >= 1) {  // predicted tokens are 1..S
            double m = -INFINITY;
            for (int d = 0; d < num_domains; ++d) m = std::max(m, logw[std::size_t(d)]);
            double num = 0, den = 0;
            for (int d = 0; d < num_domains; ++d) {
              const double w = std::exp(logw[std::size_t(d)] - m);
              den += w;
              num += w * std::exp(lp[std::size_t(d)]);
            }
            total += -std::log(num / den);
            ++count;
          }
          for (int d = 0; d < num_domains; ++d) logw[std::size_t(d)] += lp[std::size_t(d)];
        }
      }
    }
    return total / double(count);
  }

 private:
  struct chain {
    int order = 1, k = 1, base = 0;
    std::vector<int> next;      // [states, k] successor (slice-relative)
    std::vector<double> prob;   // [k] probability of the r-th successor
  };

  // log P_d(seq[t] | seq[<t]); −inf when the token is outside the domain's slice or not a successor.
  double log_prob(int d, const std::vector<int>& seq, int t) const {
    const chain& c = chains_[std::size_t(d)];
    auto rel = [&](int tok) { return tok - c.base; };
    const int x = rel(seq[std::size_t(t)]);
    if (x < 0 || x >= slice) return -INFINITY;
    if (t < c.order) return -std::log(double(slice));
    int state = rel(seq[std::size_t(t - 1)]);
    if (state < 0 || state >= slice) return -INFINITY;
    if (c.order == 2) {
      const int prev = rel(seq[std::size_t(t - 2)]);
      if (prev < 0 || prev >= slice) return -INFINITY;
      state = prev * slice + state;
    }
    const int* nx = &c.next[std::size_t(state) * std::size_t(c.k)];
    for (int r = 0; r < c.k; ++r)
      if (nx[r] == x) return std::log(c.prob[std::size_t(r)]);
    return -INFINITY;
  }

  void generate(const moe::rng_stream& s, int B, int S, batch& out) const {
    out.B = B;
    out.S = S;
    out.inputs.resize(std::size_t(B) * std::size_t(S));
    out.targets.resize(out.inputs.size());
    out.domain.resize(std::size_t(B));
    std::vector<int> seq(std::size_t(S) + 1);
    for (int q = 0; q < B; ++q) {
      const std::uint64_t base = std::uint64_t(q) * std::uint64_t(S + 2);
      const int d = int(s.bits(base).v[0] % num_domains);
      const chain& c = chains_[std::size_t(d)];
      out.domain[std::size_t(q)] = d;
      for (int t = 0; t <= S; ++t) {
        const moe::philox4x32 w = s.bits(base + 1 + std::uint64_t(t));
        int x;
        if (t < c.order) {
          x = int(w.v[0] % slice);
        } else {
          int state = seq[std::size_t(t - 1)] - c.base;
          if (c.order == 2) state = (seq[std::size_t(t - 2)] - c.base) * slice + state;
          const double u = moe::uniform01(w.v[1]);
          double cum = 0;
          int r = c.k - 1;
          for (int i = 0; i < c.k; ++i) {
            cum += c.prob[std::size_t(i)];
            if (u < cum) {
              r = i;
              break;
            }
          }
          x = c.next[std::size_t(state) * std::size_t(c.k) + std::size_t(r)];
        }
        seq[std::size_t(t)] = x + c.base;
      }
      for (int t = 0; t < S; ++t) {
        out.inputs[std::size_t(q * S + t)] = seq[std::size_t(t)];
        out.targets[std::size_t(q * S + t)] = seq[std::size_t(t + 1)];
      }
    }
    out.index_tokens(vocab_size);
  }

  std::uint64_t seed_;
  std::array<chain, num_domains> chains_;
};

// Any file, byte-level: the first 90% trains, the last 10% validates. Training windows start at
// offsets drawn per (step, sequence); validation windows are evenly spaced over the held-out part.
class text_corpus final : public corpus {
 public:
  text_corpus(const std::string& path, std::uint64_t seed, int S) : seed_(seed), path_(path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) moe::fail("--data", "cannot open '", path, "'");
    bytes_.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    if (bytes_.empty()) moe::fail("--data", "'", path, "' is empty");
    split_ = std::size_t(double(bytes_.size()) * 0.9);
    const std::size_t need = std::size_t(S) + 1;
    if (split_ < need || bytes_.size() - split_ < need)
      moe::fail("--data", "'", path, "' has ", bytes_.size(), " bytes; at least ", 10 * need,
                " are needed for training and validation windows of --seq ", S);
  }

  int vocab() const override { return 256; }
  int domains() const override { return 1; }
  std::string describe() const override {
    return "text file '" + path_ + "': " + std::to_string(bytes_.size()) + " bytes (" + std::to_string(split_) +
           " train, " + std::to_string(bytes_.size() - split_) + " validation)";
  }
  void train_batch(std::uint32_t step, int B, int S, batch& out) const override {
    const moe::rng_stream s{seed_, train_stream, 0, step};
    fill(B, S, out, [&](int q) {
      return std::size_t(s.bits(std::uint64_t(q)).v[0] % std::uint32_t(split_ - std::size_t(S)));
    });
  }
  void valid_batch(int i, int B, int S, batch& out) const override {
    const std::size_t span = bytes_.size() - split_ - std::size_t(S) - 1;
    fill(B, S, out, [&](int q) {
      const std::size_t slot = std::size_t(i) * std::size_t(B) + std::size_t(q);
      return split_ + (span ? (slot * 7919) % (span + 1) : 0);
    });
  }
  double entropy_floor(int, int, int) const override { return NAN; }

 private:
  template <class Start>
  void fill(int B, int S, batch& out, Start start) const {
    out.B = B;
    out.S = S;
    out.inputs.resize(std::size_t(B) * std::size_t(S));
    out.targets.resize(out.inputs.size());
    out.domain.assign(std::size_t(B), 0);
    for (int q = 0; q < B; ++q) {
      const std::size_t o = start(q);
      for (int t = 0; t < S; ++t) {
        out.inputs[std::size_t(q * S + t)] = bytes_[o + std::size_t(t)];
        out.targets[std::size_t(q * S + t)] = bytes_[o + std::size_t(t) + 1];
      }
    }
    out.index_tokens(256);
  }

  std::uint64_t seed_;
  std::string path_;
  std::vector<unsigned char> bytes_;
  std::size_t split_ = 0;
};

// A finite training set (--train-sequences N), as in fine-tuning on a small task: the first N
// sequences of the underlying corpus's training stream (sequence i is sequence i mod B of its batch
// for step i / B), of which every step draws B uniformly at random, keyed by (seed, step). The
// validation set is the underlying one: held out, never trained on, so overfitting shows.
class finite_corpus final : public corpus {
 public:
  finite_corpus(std::unique_ptr<corpus> base, int sequences, int B, int S, std::uint64_t seed)
      : base_(std::move(base)), sequences_(sequences), S_(S), seed_(seed) {
    batch b;
    for (int i = 0; i < sequences; i += B) {
      base_->train_batch(std::uint32_t(i / B), B, S, b);
      for (int q = 0; q < B && i + q < sequences; ++q) {
        inputs_.insert(inputs_.end(), b.inputs.begin() + q * S, b.inputs.begin() + (q + 1) * S);
        targets_.insert(targets_.end(), b.targets.begin() + q * S, b.targets.begin() + (q + 1) * S);
        domain_.push_back(b.domain[std::size_t(q)]);
      }
    }
  }

  int vocab() const override { return base_->vocab(); }
  int domains() const override { return base_->domains(); }
  std::string describe() const override {
    return base_->describe() + "; training on a fixed set of " + std::to_string(sequences_) + " sequences";
  }
  void train_batch(std::uint32_t step, int B, int S, batch& out) const override {
    moe::require(S == S_, "--train-sequences", "batches of ", S, " tokens from a set of ", S_, "-token sequences");
    const moe::rng_stream s{seed_, train_stream, 1, step};
    out.B = B;
    out.S = S;
    out.inputs.resize(std::size_t(B) * std::size_t(S));
    out.targets.resize(out.inputs.size());
    out.domain.resize(std::size_t(B));
    for (int q = 0; q < B; ++q) {
      const std::size_t i = s.bits(std::uint64_t(q)).v[0] % std::uint32_t(sequences_);
      std::copy_n(inputs_.begin() + std::ptrdiff_t(i) * S, S, out.inputs.begin() + q * S);
      std::copy_n(targets_.begin() + std::ptrdiff_t(i) * S, S, out.targets.begin() + q * S);
      out.domain[std::size_t(q)] = domain_[i];
    }
    out.index_tokens(vocab());
  }
  void valid_batch(int i, int B, int S, batch& out) const override { base_->valid_batch(i, B, S, out); }
  double entropy_floor(int batches, int B, int S) const override { return base_->entropy_floor(batches, B, S); }

 private:
  std::unique_ptr<corpus> base_;
  int sequences_, S_;
  std::uint64_t seed_;
  std::vector<int> inputs_, targets_, domain_;
};

}  // namespace trainer
