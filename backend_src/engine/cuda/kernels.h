// Launchers of the CUDA back-end's kernels. Every launcher checks its
// arguments (throws std::invalid_argument naming the bad one), launches on the
// given stream and checks the launch (throws std::runtime_error). Nothing here
// synchronises. Pointers are device pointers unless named h_*.
//
// Layouts (row-major):
//   activations      [tokens, features] fp16
//   small vectors    (biases, layernorm gamma/beta) fp32
//   paged KV cache   one array per layer for K and one for V:
//                    [num_blocks, heads, block_size, head_dim] fp16;
//                    token slot s lives in block s / block_size at offset s % block_size.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "pdl.h"

namespace glm {
namespace cuda {

// ---- layernorm.cu -------------------------------------------------------
// out[i] = LN(x_i) with x_i = alpha * resid[r] + y[r] + y_bias, r = in_rows ? in_rows[i] : i.
// resid and y_bias may be null; y is required. Math in fp32; gamma/beta fp32.
// This one kernel is: embedding gather + LN (resid null, in_rows = token ids),
// the alpha-residual + bias + LN between sub-layers, and the final LN of
// selected rows (in_rows = rows whose logits are wanted).
void add_layernorm(const __half* resid, float alpha, const __half* y, const float* y_bias,
                   const int32_t* in_rows, const float* gamma, const float* beta, float eps,
                   __half* out, int rows, int hidden, cudaStream_t stream);

// x[i, j] = gelu_tanh(x[i, j] + bias[j]) in place, fp32 math. bias may be null.
void bias_gelu(__half* x, const float* bias, int rows, int cols, cudaStream_t stream);

// ---- gemv.cu ------------------------------------------------------------
// y[M, N] = x[M, K] @ w[N, K]^T (+ bias, then GeLU when gelu), fp32 accumulation,
// fp16 or fp32 (f32_out) output. For decode steps of 1..kGemvMaxTokens tokens.
constexpr int kGemvMaxTokens = 8;
bool gemv_supported(const void* x, const void* w, int M, int K);
void gemv(const __half* x, const __half* w, void* y, bool f32_out, const float* bias, bool gelu, int M, int K,
          int N, cudaStream_t stream);
// The same on tensor cores (mma.sync, fp32 accumulation) for 1..kGemvMmaMaxTokens
// tokens; K must be a multiple of 64 (tuning gemv_mma_max_tokens chooses it).
constexpr int kGemvMmaMaxTokens = 16;
bool gemv_mma_supported(const void* x, const void* w, int M, int K);
void gemv_mma(const __half* x, const __half* w, void* y, bool f32_out, const float* bias, bool gelu, int M, int K,
              int N, cudaStream_t stream);

// ---- rotary.cu ----------------------------------------------------------
struct RotaryParams {
  int heads = 0;
  int head_dim = 0;          // 4..128, a power of two >= 4
  int block_size = 0;        // KV block size in tokens
  const float* inv_freq = nullptr;  // [head_dim / 4] (already rounded as the model wants)
  bool fp16_angles = false;  // THUDM fp16 quirk: angle and cos/sin rounded to fp16
  // k/v written as rows [T, heads, head_dim] (k_cache / v_cache are those rows; slot[t] < 0
  // still skips), for kv_fp8_write to quantize into an FP8 cache.
  bool stage_rows = false;
};
// qkv [T, heads * 3 * head_dim] (per head: q | k | v) + bias (fp32, may be null):
// 2D rotary on q and k (first half of head_dim with pos, second half with
// block_pos), q written to q_out [T, heads, head_dim], k and v written into the
// paged cache at slot[t] (slot < 0: not written).
void qkv_rotary_kv_write(const __half* qkv, const float* bias, const int32_t* pos,
                         const int32_t* block_pos, const int32_t* slot, const RotaryParams& p,
                         __half* q_out, __half* k_cache, __half* v_cache, int tokens,
                         cudaStream_t stream);

// ---- attention.cu -------------------------------------------------------
// Paged attention, one query token per (head, token) block: token t of the
// batch belongs to sequence tok_seq[t] and sees keys 0 .. n_keys[t]-1 of that
// sequence (the engine's mask rule reduces to a prefix: s < max(c, t+1)).
// n_keys[t] == 0: the output row is written as zeros (padding).
// block_tables [num_seqs, max_blocks_per_seq]. Softmax in fp32, scores scaled
// by `scale`; out [T, heads * head_dim].
struct AttentionParams {
  int heads = 0;
  int head_dim = 0;          // 4, 8, 16, 32, 64 or 128
  int block_size = 0;
  int max_blocks_per_seq = 0;
  int max_keys = 0;          // upper bound of n_keys (sizes shared memory)
  float scale = 0.f;
  bool warp_per_pair = false;  // one warp per (token, head) pair when there are many (EngineOptions::cuda.attention_warp)
  // The block kernel in one pass: K and V of a key loaded together, an online softmax per
  // lane group, the groups combined at the end; the value is the keys per lane group per
  // round, 2, 4 or 8 (0 = the two-phase kernel; EngineOptions::cuda.attention_one_pass).
  // Takes precedence over warp_per_pair; fp16 and fp8 caches, with or without split-KV.
  int one_pass = 0;
  // Split-KV (few (token, head) pairs, long contexts): `splits` > 1 blocks per (token,
  // head), each over a chunk of max(ceil(n / splits), kAttnSplitMinChunk) keys, write
  // partial softmax results into split_scratch ([tokens, heads, splits, head_dim + 2]
  // floats: max, sum, unnormalized output), which a second kernel combines. The block
  // kernel only (fp16 and fp8 caches); 1 = one block per (token, head).
  int splits = 1;
  float* split_scratch = nullptr;
  size_t split_scratch_floats = 0;
};
constexpr int kAttnMaxSplits = 16;
constexpr int kAttnSplitMinChunk = 64;
void paged_attention(const __half* q, const __half* k_cache, const __half* v_cache,
                     const int32_t* tok_seq, const int32_t* n_keys, const int32_t* block_tables,
                     const AttentionParams& p, __half* out, int tokens, cudaStream_t stream);
// The same over an FP8 cache (kv_fp8.cu's layout): E4M3 codes [blocks, heads,
// block_size, head_dim] and float scales [blocks, heads, block_size], dequantized as
// read (the block kernel; warp_per_pair is ignored).
void paged_attention_fp8(const __half* q, const uint8_t* k_cache, const uint8_t* v_cache, const float* k_scale,
                         const float* v_scale, const int32_t* tok_seq, const int32_t* n_keys,
                         const int32_t* block_tables, const AttentionParams& p, __half* out, int tokens,
                         cudaStream_t stream);

// ---- kv_fp8.cu ----------------------------------------------------------
// K and V rows [T, heads, head_dim] (fp16) quantized per (token, head) into the FP8
// cache at slot[t] (slot < 0: skipped): scale = max|row| / 448 (1 for a zero row),
// code = E4M3(x / scale), nearest, ties to even (glm::quantize_e4m3_row).
void kv_fp8_write(const __half* k_rows, const __half* v_rows, const int32_t* slot, int heads, int head_dim,
                  int block_size, uint8_t* k_codes, float* k_scale, uint8_t* v_codes, float* v_scale, int tokens,
                  cudaStream_t stream);

// ---- sampling.cu --------------------------------------------------------
// Repetition penalty (HF) on rows of fp32 logits [rows, vocab]: for row r =
// rows_idx[i], every distinct id in hist[hist_off[i] .. hist_off[i+1]) gets
// logit < 0 ? logit * penalty[i] : logit / penalty[i].
void repetition_penalty(float* logits, int vocab, const int32_t* rows_idx, const float* penalty,
                        const int32_t* hist, const int32_t* hist_off, int n, cudaStream_t stream);

// OpenAI's presence and frequency penalties of rows rows_idx[0..n): for row i,
// logits[ids[j]] -= counts[j] * frequency[i] + presence[i] for j in
// [off[i], off[i+1]) (distinct ids: the generated ids and how often each came).
void presence_frequency_penalty(float* logits, int vocab, const int32_t* rows_idx, const float* presence,
                                const float* frequency, const int32_t* ids, const int32_t* counts,
                                const int32_t* off, int n, cudaStream_t stream);

// ---- logprobs.cu: log-probabilities (the CPU's compute_logprobs semantics) ----
constexpr int kMaxLogprobs = 20;
// dst[i] = logits row rows[i] (vocab floats each), i < n.
void copy_rows(const float* logits, int vocab, const int32_t* rows, int n, float* dst, cudaStream_t stream);
// For the n rows of rows_data ([n, vocab], copies of batch rows rows[i]):
// out_lp[i] = log-softmax of the id chosen[rows[i]]; out_ids / out_top [n, top_n]:
// the top_n most likely ids and their log-probabilities (top_n <= kMaxLogprobs).
void logprob_rows(const float* rows_data, int vocab, const int32_t* rows, int n, const int32_t* chosen,
                  int top_n, float* out_lp, int32_t* out_ids, float* out_top, cudaStream_t stream);

// Overlapped stepping: tokens[rows[i]] = prev_ids[prev[i]] for each i < n with
// prev[i] >= 0 (a decode's id, sampled by the step before, fed without the host).
void feed_prev_tokens(int32_t* tokens, const int32_t* rows, const int32_t* prev, int n, const int32_t* prev_ids,
                      cudaStream_t stream);

// out[r] = argmax of logits row r (lowest id on ties; NaN never wins).
// scratch: [rows] 64-bit words of device memory.
void argmax_rows(const float* logits, int vocab, int rows, int32_t* out, unsigned long long* scratch,
                 cudaStream_t stream);

// Temperature / top-k / top-p sampling of rows rows_idx[0..n) (see sampling.cu
// for the exact semantics, the CPU sampler's). Needs a workspace from
// sample_workspace_bytes(n, vocab). Writes out[rows_idx[i]].
struct SampleRowParams {
  float temperature;   // > 0
  int top_k;           // 0 = off
  float top_p;         // (0, 1]
  uint64_t seed;
  uint64_t rng_offset;
};
size_t sample_workspace_bytes(int n, int vocab);
void sample_rows(const float* logits, int vocab, const int32_t* rows_idx,
                 const SampleRowParams* params, int n, void* workspace, size_t workspace_bytes,
                 int32_t* out, cudaStream_t stream);

// ---- pdl.h / init.cu: programmatic dependent launch for the decode kernels
// (layernorm, bias_gelu, gemv, rotary, attention, int8) on sm_90; process-wide
// switch: set_pdl(), pdl_enabled(), pdl_supported(device), declared in pdl.h.

// ---- init.cu ------------------------------------------------------------
// x[i] = amp * (2 * uniform01(tseed, i) - 1) (rng.h), rounded to fp16 / kept in
// fp32: exactly what the engine's random_weights() writes for one tensor.
void fill_uniform_half(__half* x, int64_t n, uint64_t tseed, float amp, cudaStream_t stream);
void fill_uniform_float(float* x, int64_t n, uint64_t tseed, float amp, cudaStream_t stream);
void fill_const_float(float* x, int64_t n, float value, cudaStream_t stream);
void float_to_half(const float* in, __half* out, int64_t n, cudaStream_t stream);
void half_to_float(const __half* in, float* out, int64_t n, cudaStream_t stream);

}  // namespace cuda
}  // namespace glm
