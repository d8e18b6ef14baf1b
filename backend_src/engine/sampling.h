// The CPU sampler: the one sampling semantics every back-end implements
// (docs/architecture.md "Sampling semantics"):
//   1. repetition penalty over the distinct ids of prompt + generated
//      (HF: logit < 0 ? logit * p : logit / p)
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

// Index of the largest value, lowest index on ties.
int32_t argmax(const float* logits, int vocab);

// Samples one id. `logits` is not modified. `scratch` may be reused between calls.
int32_t sample_token(const float* logits, int vocab, const SamplingParams& params, uint64_t rng_offset,
                     const int32_t* history, int history_len, std::vector<float>* scratch = nullptr);

}  // namespace glm
