// The CPU sampler: the one sampling semantics every back-end implements
// (docs/architecture.md "Sampling semantics"):
//   1. repetition penalty over the distinct ids of prompt + generated
//      (HF: logit < 0 ? logit * p : logit / p), then OpenAI's presence and
//      frequency penalties over the generated ids: for an id generated c > 0
//      times, logit -= c * frequency + presence
//   2. temperature == 0: argmax (lowest id on ties), done
//   3. logits / temperature
//   4. top-k (0 = off): keep the k largest (ties: lower id first)
//   5. softmax over the kept tokens; top-p: keep the smallest prefix of the
//      descending-probability order whose mass reaches top_p (at least one)
//   6. u = uniform01(seed, rng_offset) (rng.h); inverse CDF over the kept
//      tokens in descending-probability order, lower id first on ties:
//      the first token whose cumulative (renormalized) mass exceeds u.
#pragma once

#include <cstdint>
#include <vector>

#include "engine.h"

namespace glm {

// Applies the repetition penalty in place (no-op when penalty == 1).
void apply_repetition_penalty(float* logits, int vocab, float penalty, const int32_t* history,
                              int history_len);

// Applies OpenAI's presence and frequency penalties in place over the
// generated ids (no-op when both are 0).
void apply_presence_frequency(float* logits, int vocab, float presence, float frequency,
                              const int32_t* generated, int num_generated);

// Index of the largest value, lowest index on ties.
int32_t argmax(const float* logits, int vocab);

// Samples one id. `logits` is not modified. `history` = prompt + generated ids,
// the first `prompt_len` of them the prompt. `scratch` may be reused between calls.
int32_t sample_token(const float* logits, int vocab, const SamplingParams& params, uint64_t rng_offset,
                     const int32_t* history, int history_len, int prompt_len, std::vector<float>* scratch);
// The same with no generated ids in the history (prompt_len = history_len).
int32_t sample_token(const float* logits, int vocab, const SamplingParams& params, uint64_t rng_offset,
                     const int32_t* history, int history_len, std::vector<float>* scratch = nullptr);

// Log-softmax of the raw `logits` (computed in double, stored as float): the
// log-probability of `chosen` and the `top_n` most likely ids (lower id first on ties).
void compute_logprobs(const float* logits, int vocab, int top_n, int32_t chosen, TokenLogprob* out);

}  // namespace glm
