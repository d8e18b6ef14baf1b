#include "sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "rng.h"

namespace glm {

void apply_repetition_penalty(float* logits, int vocab, float penalty, const int32_t* history,
                              int history_len) {
  if (penalty == 1.0f || history_len <= 0) return;
  // Each distinct id once: mark ids as we go so a repeated id is not penalized twice.
  std::vector<int32_t> seen(history, history + history_len);
  std::sort(seen.begin(), seen.end());
  seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
  for (int32_t id : seen) {
    if (id < 0 || id >= vocab) continue;
    float& l = logits[id];
    l = l < 0.0f ? l * penalty : l / penalty;
  }
}

void apply_presence_frequency(float* logits, int vocab, float presence, float frequency,
                              const int32_t* generated, int num_generated) {
  if ((presence == 0.0f && frequency == 0.0f) || num_generated <= 0) return;
  std::vector<int32_t> ids(generated, generated + num_generated);
  std::sort(ids.begin(), ids.end());
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j < ids.size() && ids[j] == ids[i]) ++j;
    const int32_t id = ids[i];
    if (id >= 0 && id < vocab) logits[id] -= static_cast<float>(j - i) * frequency + presence;
    i = j;
  }
}

void compute_logprobs(const float* logits, int vocab, int top_n, int32_t chosen, TokenLogprob* out) {
  double mx = -INFINITY;
  for (int i = 0; i < vocab; ++i) mx = std::max(mx, static_cast<double>(logits[i]));
  double sum = 0.0;
  for (int i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - mx);
  const double lse = mx + std::log(sum);
  out->logprob = static_cast<float>(static_cast<double>(logits[chosen]) - lse);
  const int k = std::max(0, std::min(top_n, vocab));
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  out->top_ids.assign(order.begin(), order.begin() + k);
  out->top_logprobs.resize(static_cast<size_t>(k));
  for (int i = 0; i < k; ++i)
    out->top_logprobs[static_cast<size_t>(i)] = static_cast<float>(static_cast<double>(logits[order[static_cast<size_t>(i)]]) - lse);
}

int32_t argmax(const float* logits, int vocab) {
  int32_t best = 0;
  for (int32_t i = 1; i < vocab; ++i)
    if (logits[i] > logits[best]) best = i;
  return best;
}

int32_t sample_token(const float* logits, int vocab, const SamplingParams& p, uint64_t rng_offset,
                     const int32_t* history, int history_len, std::vector<float>* scratch) {
  return sample_token(logits, vocab, p, rng_offset, history, history_len, history_len, scratch);
}

int32_t sample_token(const float* logits, int vocab, const SamplingParams& p, uint64_t rng_offset,
                     const int32_t* history, int history_len, int prompt_len, std::vector<float>* scratch) {
  std::vector<float> local;
  std::vector<float>& l = scratch ? *scratch : local;
  l.assign(logits, logits + vocab);
  apply_repetition_penalty(l.data(), vocab, p.repetition_penalty, history, history_len);
  const int gen_from = std::max(0, std::min(prompt_len, history_len));
  apply_presence_frequency(l.data(), vocab, p.presence_penalty, p.frequency_penalty, history + gen_from,
                           history_len - gen_from);
  if (p.temperature == 0.0f) return argmax(l.data(), vocab);

  const float inv_t = 1.0f / p.temperature;
  for (float& x : l) x *= inv_t;

  // Descending order, lower id first on ties.
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  auto before = [&](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); };
  size_t kept = static_cast<size_t>(vocab);
  if (p.top_k > 0 && p.top_k < vocab) {
    kept = static_cast<size_t>(p.top_k);
    std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(kept), order.end(), before);
  } else {
    std::sort(order.begin(), order.end(), before);
  }

  // Softmax over the kept tokens.
  const float mx = l[order[0]];
  std::vector<double> prob(kept);
  double total = 0.0;
  for (size_t i = 0; i < kept; ++i) {
    prob[i] = std::exp(static_cast<double>(l[order[i]] - mx));
    total += prob[i];
  }
  // Top-p over the normalized probabilities.
  if (p.top_p < 1.0f) {
    const double target = static_cast<double>(p.top_p) * total;
    double cum = 0.0;
    size_t n = 0;
    while (n < kept) {
      cum += prob[n++];
      if (cum >= target) break;
    }
    kept = std::max<size_t>(n, 1);
    total = cum;
  }
  // Inverse CDF.
  const double u = static_cast<double>(uniform01(p.seed, rng_offset));
  const double target = u * total;
  double cum = 0.0;
  for (size_t i = 0; i < kept; ++i) {
    cum += prob[i];
    if (cum > target) return order[i];
  }
  return order[kept - 1];
}

}  // namespace glm
