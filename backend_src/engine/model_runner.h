// The interface between the engine (scheduler, KV block tables, sampling
// semantics) and a compute back-end (cpu/ float32 reference, cuda/ fp16 fused
// decoder). The engine decides *what* runs; a ModelRunner decides *how*.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "config.h"    // glm::ModelConfig (vocab, hidden, heads, layers, inner, eps, special ids)
#include "engine.h"    // glm::EngineOptions, glm::SamplingParams

namespace glm {

// One sequence's slice of a step. Positions are computed by the engine
// (ChatGLM's 2D positions live in one place: positions.h).
struct SeqBatchEntry {
  const int32_t* tokens = nullptr;           // the new tokens of this step
  int num_tokens = 0;                        // prefill: prompt length; decode: 1
  int num_cached = 0;                        // tokens already in this sequence's KV cache
  const int32_t* position_ids = nullptr;     // [num_tokens]
  const int32_t* block_position_ids = nullptr;  // [num_tokens]
  int context_length = 0;                    // c: keys < c are seen by every query; others causal
  const int32_t* block_table = nullptr;      // KV block ids covering num_cached + num_tokens tokens
  int num_blocks = 0;
  // Sampling inputs for the token that follows this step's last token.
  const SamplingParams* params = nullptr;
  uint64_t rng_offset = 0;                   // number of tokens this sequence has sampled so far
  const int32_t* history = nullptr;          // prompt + generated ids (for the penalties)
  int history_len = 0;
  int prompt_len = 0;                        // history[prompt_len:] are the generated ids
  // KV slots [0, prefix_len) hold an adapter's prefix: every query attends to
  // them; token t lives in slot prefix_len + t (block_table covers both).
  int prefix_len = 0;
  // When params->logprobs >= 0: where the runner writes the sampled token's
  // log-probabilities (raw logits, before penalties and temperature).
  TokenLogprob* logprob_out = nullptr;
  // Overlapped stepping (launch): >= 0 when this decode entry's one token is the
  // id sampled at this row of the step launched just before, which the host has
  // not seen yet; the runner takes it from there (tokens[0] is not read).
  int prev_row = -1;
};

struct StepBatch {
  std::vector<SeqBatchEntry> seqs;
  bool want_all_logits = false;              // debug_forward: logits of every token, no sampling
};

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;
  // Bytes one KV block takes (all layers, K and V).
  virtual int64_t kv_block_bytes(int block_size) const = 0;
  // How many blocks the back-end can hold under the engine options.
  virtual int plan_kv_blocks(const EngineOptions& opts) const = 0;
  virtual void allocate_kv_cache(int num_blocks, int block_size) = 0;
  // Copies KV block src into block dst in every layer (K and V), ordered before
  // the next forward (the choices of one request: copy-on-write of the prompt's
  // last partial block).
  virtual void copy_kv_block(int src, int dst) = 0;
  // Writes an adapter's prefix into the KV slots [0, prefix_len) of the blocks
  // `blocks` (in order): key / value are [num_layers, prefix_len, hidden] fp32.
  virtual void write_prefix(const std::vector<int32_t>& blocks, int prefix_len, const float* key,
                            const float* value) = 0;

  // Runs the batch and samples one next token per sequence into next_tokens
  // [seqs.size()]. With want_all_logits, writes logits of every token
  // [sum num_tokens, vocab] into all_logits instead and samples nothing.
  // Throws EngineError on a back-end fault.
  virtual void forward(const StepBatch& batch, int32_t* next_tokens,
                       std::vector<float>* all_logits) = 0;
  // Overlapped stepping (EngineOptions::overlap_steps). launch() starts a step
  // that samples (never want_all_logits) and returns without waiting for it:
  // everything it reads from `batch` is copied before it returns, except the
  // entries' logprob_out, which must stay valid until the step is collected.
  // collect() waits for the oldest launched step not collected yet and writes
  // its ids into next_tokens [its seqs.size()] and the log-probabilities its
  // entries asked for. At most two steps are launched and not collected; a
  // launch right after another may feed ids of that one (prev_row). forward()
  // must not run while a launched step is not collected. Both throw
  // EngineError on a back-end fault.
  virtual void launch(const StepBatch& batch) = 0;
  virtual void collect(int32_t* next_tokens) = 0;
  // One line for logs: what the back-end runs (e.g. which int8 kernels), "" if nothing to add.
  virtual std::string describe() const { return ""; }
};

std::unique_ptr<ModelRunner> make_cpu_runner(const ModelConfig& cfg, const EngineOptions& opts);
// Defined only when built with CUDA (GLM_WITH_CUDA); the engine reports a
// clear error for device "cuda" otherwise.
std::unique_ptr<ModelRunner> make_cuda_runner(const ModelConfig& cfg, const EngineOptions& opts);

}  // namespace glm
