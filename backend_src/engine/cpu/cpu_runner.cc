// The float32 CPU back-end: the correctness reference (docs/model.md math exactly).
//
// Weights stay in the checkpoint's storage (the mmap): F32 rows are used in
// place, F16 rows are widened and I8 rows are dequantized (w = q * scale) into
// a per-thread row buffer right before their dot products, so the values are
// exactly those of a load-time conversion while the 6B model needs only its
// file size in memory. Every product and sum runs in float32.
//
// KV cache (kv_cache.h): per layer, K and V of [num_blocks][block_size][heads][head_dim],
// float or (kv_cache_dtype=fp8) E4M3 codes with a scale per (slot, head); token slot p
// of a sequence lives in block block_table[p / block_size] at offset p % block_size.
#include <algorithm>
#include <deque>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../model_runner.h"
#include "../positions.h"
#include "../sampling.h"
#include "../weights.h"
#include "kv_cache.h"
#include "thread_pool.h"

namespace glm {
namespace {

// f16 -> f32 through a table (exact; built once).
const float* f16_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t i = 0; i < 65536; ++i) t[i] = f16_to_f32(static_cast<uint16_t>(i));
    return t;
  }();
  return table.data();
}

// A linear layer's weight in its stored dtype, readable one row at a time.
struct Matrix {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t rows = 0, cols = 0;
  std::vector<float> scale;  // I8: per-row scale (from F16)
  std::vector<float> owned;  // F32 copy when the stored data is misaligned
  std::vector<int8_t> owned_q;  // weights quantized at load (int8 option on a float checkpoint)

  static Matrix from(const TensorView& w, const TensorView* scale) {
    Matrix m;
    m.dtype = w.dtype;
    m.rows = w.shape[0];
    m.cols = w.shape[1];
    m.data = w.data;
    if (w.dtype == DType::kI8) m.scale = to_float(*scale);
    if (w.dtype == DType::kF32 && reinterpret_cast<uintptr_t>(w.data) % alignof(float) != 0) {
      m.owned = to_float(w);
      m.data = m.owned.data();
    }
    return m;
  }
  // Quantizes a float weight like the converter does, then serves it as I8.
  static Matrix quantized(const TensorView& w) {
    QuantizedRows qr = quantize_int8_rows(to_float(w).data(), w.shape[0], w.shape[1]);
    Matrix m;
    m.dtype = DType::kI8;
    m.rows = w.shape[0];
    m.cols = w.shape[1];
    m.owned_q = std::move(qr.q);
    m.data = m.owned_q.data();
    for (uint16_t h : qr.scale) m.scale.push_back(f16_to_f32(h));
    return m;
  }
  // Row r as float32: a pointer into the weights (F32) or into buf (F16, I8).
  const float* row(int64_t r, float* buf) const {
    switch (dtype) {
      case DType::kF32: return static_cast<const float*>(data) + r * cols;
      case DType::kF16: {
        const float* t = f16_table();
        const unsigned char* p = static_cast<const unsigned char*>(data) + 2 * r * cols;
        for (int64_t c = 0; c < cols; ++c) {
          uint16_t h;
          std::memcpy(&h, p + 2 * c, 2);
          buf[c] = t[h];
        }
        return buf;
      }
      case DType::kI8: {
        const int8_t* p = static_cast<const int8_t*>(data) + r * cols;
        const float s = scale[static_cast<size_t>(r)];
        for (int64_t c = 0; c < cols; ++c) buf[c] = static_cast<float>(p[c]) * s;
        return buf;
      }
      case DType::kF8E4M3:  // fp8 checkpoints are refused at construction (CUDA only)
        break;
    }
    return nullptr;
  }
};

// Dot products with 8 independent partial sums, reduced in one fixed order.
// Every output of every kernel below uses exactly this order, whatever the
// batch and the tiling, so results never depend on batch composition (and are
// the same in the AVX2 and the baseline clone: no FMA contraction in either).
#define GLM_CLONES __attribute__((target_clones("avx2", "default")))

inline float reduce8(const float* s) { return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7])); }

// GCC vector extension: 8 floats (two SSE registers in the baseline clone, one
// AVX register in the AVX2 clone). Lane j holds partial sum j.
typedef float v8f __attribute__((vector_size(32)));

GLM_CLONES float dot(const float* a, const float* b, int64_t n) {
  v8f acc = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    v8f va, vb;
    std::memcpy(&va, a + i, sizeof va);
    std::memcpy(&vb, b + i, sizeof vb);
    acc += va * vb;
  }
  float s[8];
  std::memcpy(s, &acc, sizeof s);
  float tail = 0.0f;
  for (; i < n; ++i) tail += a[i] * b[i];
  return reduce8(s) + tail;
}

// Four rows of X against one weight row w: y[r] = X[r] . w (same order as dot()).
GLM_CLONES void dot4(const float* x0, const float* x1, const float* x2, const float* x3, const float* w, int64_t n,
                     float* y) {
  v8f a0 = {0, 0, 0, 0, 0, 0, 0, 0}, a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    v8f vw, v0, v1, v2, v3;
    std::memcpy(&vw, w + i, sizeof vw);
    std::memcpy(&v0, x0 + i, sizeof v0);
    std::memcpy(&v1, x1 + i, sizeof v1);
    std::memcpy(&v2, x2 + i, sizeof v2);
    std::memcpy(&v3, x3 + i, sizeof v3);
    a0 += v0 * vw;
    a1 += v1 * vw;
    a2 += v2 * vw;
    a3 += v3 * vw;
  }
  const float* xs[4] = {x0, x1, x2, x3};
  const v8f* accs[4] = {&a0, &a1, &a2, &a3};
  for (int r = 0; r < 4; ++r) {
    float s[8];
    std::memcpy(s, accs[r], sizeof s);
    float tail = 0.0f;
    for (int64_t k = i; k < n; ++k) tail += xs[r][k] * w[k];
    y[r] = reduce8(s) + tail;
  }
}

struct Layer {
  std::vector<float> ln1_w, ln1_b, ln2_w, ln2_b;
  Matrix qkv, dense, h_to_4h, four_h_to_h;
  std::vector<float> qkv_b, dense_b, h_to_4h_b, four_h_to_h_b;
};

class CpuRunner final : public ModelRunner {
 public:
  CpuRunner(const ModelConfig& cfg, const EngineOptions& opts)
      : cfg_(cfg),
        pool_(opts.num_threads > 0 ? opts.num_threads
                                   : std::max(1, static_cast<int>(std::thread::hardware_concurrency()))) {
    if (opts.dtype != "fp32" && opts.dtype != "float32")
      throw EngineError("dtype \"" + opts.dtype + "\" is not supported on device cpu (use fp32)");
    kv_fp8_ = opts.kv_cache_dtype == "fp8";
    if (cfg.fp8)
      throw EngineError("this checkpoint is fp8 (config.json quantization.fp8): it runs on device \"cuda\" on a GPU "
                        "with FP8 tensor cores (the CPU reference is glmserve.fp8_reference)");
    weights_ = opts.random_weights
                   // F16 storage halves the memory of a 6B-shaped random model; rows are widened on use.
                   ? random_weights(cfg, opts.weights_seed, DType::kF16, opts.int8 || cfg.int8, cfg.int8_lm_head)
                   : load_weights(opts.checkpoint_dir, cfg);
    const ModelWeights& w = weights_;
    // int8 option on a float checkpoint: quantize the layer linears at load
    // (lm_head stays float, as the converter's default).
    const bool quantize_now = opts.int8 && !w.int8;
    auto linear_matrix = [&](const LinearWeights& lw) {
      return quantize_now ? Matrix::quantized(lw.weight) : Matrix::from(lw.weight, &lw.scale);
    };
    embeddings_ = Matrix::from(w.word_embeddings, nullptr);
    for (const LayerWeights& lw : w.layers) {
      Layer L;
      L.ln1_w = to_float(lw.input_layernorm_weight);
      L.ln1_b = to_float(lw.input_layernorm_bias);
      L.ln2_w = to_float(lw.post_attention_layernorm_weight);
      L.ln2_b = to_float(lw.post_attention_layernorm_bias);
      L.qkv = linear_matrix(lw.query_key_value);
      L.dense = linear_matrix(lw.dense);
      L.h_to_4h = linear_matrix(lw.dense_h_to_4h);
      L.four_h_to_h = linear_matrix(lw.dense_4h_to_h);
      L.qkv_b = to_float(lw.query_key_value.bias);
      L.dense_b = to_float(lw.dense.bias);
      L.h_to_4h_b = to_float(lw.dense_h_to_4h.bias);
      L.four_h_to_h_b = to_float(lw.dense_4h_to_h.bias);
      layers_.push_back(std::move(L));
    }
    lnf_w_ = to_float(w.final_layernorm_weight);
    lnf_b_ = to_float(w.final_layernorm_bias);
    lm_head_ = Matrix::from(w.lm_head.weight, &w.lm_head.scale);
    // Rotary: each half of a head (head_dim / 2) rotates pairs (j, j + head_dim/4)
    // with inv_freq[j] = 1 / 10000^(2j / (head_dim/2)), rounded to fp16 as the
    // official code does when it creates the table.
    const int half = cfg.head_dim / 2;
    for (int j = 0; j < half / 2; ++j)
      inv_freq_.push_back(round_to_f16(static_cast<float>(1.0 / std::pow(10000.0, (2.0 * j) / half))));
  }

  CpuKvCache::Shape kv_shape(int block_size) const {
    CpuKvCache::Shape s;
    s.layers = cfg_.num_layers;
    s.heads = cfg_.num_attention_heads;
    s.head_dim = cfg_.head_dim;
    s.block_size = block_size;
    s.fp8 = kv_fp8_;
    return s;
  }
  int64_t kv_block_bytes(int block_size) const override { return CpuKvCache::block_bytes(kv_shape(block_size)); }
  std::string describe() const override {
    return kv_fp8_ ? "KV cache fp8 (E4M3, a scale per token and head)" : "";
  }

  int plan_kv_blocks(const EngineOptions& opts) const override {
    if (opts.num_kv_blocks > 0) return opts.num_kv_blocks;
    const int64_t bytes = opts.kv_cache_bytes > 0 ? opts.kv_cache_bytes : (int64_t(1) << 30);
    int64_t by_bytes = bytes / kv_block_bytes(opts.block_size);
    const int64_t per_seq = (cfg_.max_sequence_length + opts.block_size - 1) / opts.block_size;
    // The default (1 GiB) always holds at least one full-length sequence.
    if (opts.kv_cache_bytes == 0) by_bytes = std::max(by_bytes, per_seq);
    // Never more than every running sequence at full length needs.
    const int64_t cap = per_seq * std::max(1, opts.max_running_seqs);
    const int64_t n = std::min(by_bytes, cap);
    if (n < 1)
      throw EngineError("kv_cache_bytes " + std::to_string(bytes) + " is less than one KV block (" +
                        std::to_string(kv_block_bytes(opts.block_size)) + " bytes)");
    return static_cast<int>(std::min<int64_t>(n, 1 << 30));
  }

  void allocate_kv_cache(int num_blocks, int block_size) override {
    block_size_ = block_size;
    num_blocks_ = num_blocks;
    // Left uninitialized: a slot is always written before it is read, and
    // untouched pages cost no memory.
    kv_.allocate(kv_shape(block_size), num_blocks);
  }

  void copy_kv_block(int src, int dst) override {
    kv_.copy_block(src, dst);
  }

  void write_prefix(const std::vector<int32_t>& blocks, int prefix_len, const float* key,
                    const float* value) override {
    const int64_t H = cfg_.hidden_size;
    const int hd = cfg_.head_dim;
    for (int l = 0; l < cfg_.num_layers; ++l)
      for (int t = 0; t < prefix_len; ++t) {
        const int64_t slot =
            static_cast<int64_t>(blocks.at(static_cast<size_t>(t / block_size_))) * block_size_ + t % block_size_;
        const int64_t from = (static_cast<int64_t>(l) * prefix_len + t) * H;
        for (int h = 0; h < cfg_.num_attention_heads; ++h)
          kv_.write(l, slot, h, key + from + h * hd, value + from + h * hd);
      }
  }

  void forward(const StepBatch& batch, int32_t* next_tokens, std::vector<float>* all_logits) override;
  // Overlapped stepping, synchronously: launch() runs the step at once and keeps
  // its ids for collect() (and for the prev_row of the next launch).
  void launch(const StepBatch& batch) override;
  void collect(int32_t* next_tokens) override;

 private:
  // Y[t, n] = X[t, :] . W[n, :] + b[n]   (X [T, K] row-major, Y [T, N])
  void linear(const float* X, int64_t T, const Matrix& W, const float* bias, float* Y) {
    // Tiles: kRowBlock weight rows (widened once) against kTokBlock input rows,
    // so both stay in cache for long prompts. Each output is still one dot()
    // in the fixed order, so tiling never changes a result.
    constexpr int64_t kRowBlock = 16, kTokBlock = 64;
    const int64_t N = W.rows, K = W.cols;
    const int64_t nblocks = (N + kRowBlock - 1) / kRowBlock;
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, K * T * kRowBlock));
    pool_.parallel_for(nblocks, grain, [&](int64_t b0, int64_t b1) {
      thread_local std::vector<float> buf;
      if (static_cast<int64_t>(buf.size()) < kRowBlock * K) buf.resize(static_cast<size_t>(kRowBlock * K));
      const float* w[kRowBlock];
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t n0 = blk * kRowBlock, rows = std::min(kRowBlock, N - n0);
        for (int64_t r = 0; r < rows; ++r) w[r] = W.row(n0 + r, buf.data() + r * K);
        for (int64_t t0 = 0; t0 < T; t0 += kTokBlock) {
          const int64_t t1 = std::min(T, t0 + kTokBlock);
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t n = n0 + r;
            const float b = bias ? bias[n] : 0.0f;
            int64_t t = t0;
            for (; t + 4 <= t1; t += 4) {
              float y[4];
              dot4(X + t * K, X + (t + 1) * K, X + (t + 2) * K, X + (t + 3) * K, w[r], K, y);
              for (int i = 0; i < 4; ++i) Y[(t + i) * N + n] = y[i] + b;
            }
            for (; t < t1; ++t) Y[t * N + n] = dot(X + t * K, w[r], K) + b;
          }
        }
      }
    });
  }

  void layer_norm(const float* X, int64_t T, const std::vector<float>& w, const std::vector<float>& b, float* Y) const {
    const int64_t H = cfg_.hidden_size;
    for (int64_t t = 0; t < T; ++t) {
      const float* x = X + t * H;
      float* y = Y + t * H;
      double mean = 0.0;
      for (int64_t i = 0; i < H; ++i) mean += x[i];
      mean /= static_cast<double>(H);
      double var = 0.0;
      for (int64_t i = 0; i < H; ++i) {
        const double d = x[i] - mean;
        var += d * d;
      }
      var /= static_cast<double>(H);
      const float m = static_cast<float>(mean);
      const float rstd = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(cfg_.layernorm_epsilon)));
      for (int64_t i = 0; i < H; ++i) y[i] = (x[i] - m) * rstd * w[static_cast<size_t>(i)] + b[static_cast<size_t>(i)];
    }
  }

  // cos/sin of pos * inv_freq[j] for j < head_dim / 4 (angle formed in fp32).
  void rotary_table(int pos, float* cos_out, float* sin_out) const {
    for (size_t j = 0; j < inv_freq_.size(); ++j) {
      const float angle = static_cast<float>(pos) * inv_freq_[j];
      cos_out[j] = std::cos(angle);
      sin_out[j] = std::sin(angle);
    }
  }
  // Rotate-half rotary on one half-head (head_dim / 2 values): pairs (j, j + q).
  void rotary(float* x, const float* c, const float* s) const {
    const int q = static_cast<int>(inv_freq_.size());
    for (int j = 0; j < q; ++j) {
      const float a = x[j], b = x[j + q];
      x[j] = a * c[j] - b * s[j];
      x[j + q] = b * c[j] + a * s[j];
    }
  }

  ModelConfig cfg_;
  ThreadPool pool_;
  ModelWeights weights_;
  Matrix embeddings_, lm_head_;
  std::vector<Layer> layers_;
  std::vector<float> lnf_w_, lnf_b_, inv_freq_;
  int block_size_ = 0, num_blocks_ = 0;
  bool kv_fp8_ = false;  // EngineOptions.kv_cache_dtype "fp8"
  CpuKvCache kv_;
  std::deque<std::vector<int32_t>> launched_;  // ids of launched steps not collected, oldest first
  std::vector<int32_t> last_ids_;              // ids of the step launched last
};

void CpuRunner::launch(const StepBatch& batch) {
  if (batch.want_all_logits) throw EngineError("cpu runner: launch of a step that does not sample");
  if (launched_.size() >= 2) throw EngineError("cpu runner: a third step launched before one was collected");
  StepBatch b = batch;
  std::vector<int32_t> fed(b.seqs.size(), 0);
  for (size_t i = 0; i < b.seqs.size(); ++i) {
    SeqBatchEntry& e = b.seqs[i];
    if (e.prev_row < 0) continue;
    if (e.num_tokens != 1 || e.prev_row >= static_cast<int>(last_ids_.size()))
      throw EngineError("cpu runner: prev_row " + std::to_string(e.prev_row) + " of a " +
                        std::to_string(e.num_tokens) + "-token entry, the previous step had " +
                        std::to_string(last_ids_.size()) + " rows");
    fed[i] = last_ids_[static_cast<size_t>(e.prev_row)];
    e.tokens = &fed[i];
    e.prev_row = -1;
  }
  std::vector<int32_t> ids(b.seqs.size(), -1);
  forward(b, ids.data(), nullptr);
  last_ids_ = ids;
  launched_.push_back(std::move(ids));
}

void CpuRunner::collect(int32_t* next_tokens) {
  if (launched_.empty()) throw EngineError("cpu runner: collect with no launched step");
  std::copy(launched_.front().begin(), launched_.front().end(), next_tokens);
  launched_.pop_front();
}

void CpuRunner::forward(const StepBatch& batch, int32_t* next_tokens, std::vector<float>* all_logits) {
  if (kv_.empty()) throw EngineError("cpu runner: forward before allocate_kv_cache");
  const int64_t H = cfg_.hidden_size, I = cfg_.inner_hidden_size, V = cfg_.vocab_size;
  const int hd = cfg_.head_dim, heads = cfg_.num_attention_heads;
  const size_t S = batch.seqs.size();

  // Row layout: the tokens of seq 0, then seq 1, ...
  std::vector<int64_t> row0(S + 1, 0);
  for (size_t i = 0; i < S; ++i) {
    const SeqBatchEntry& e = batch.seqs[i];
    if (e.num_tokens < 1) throw EngineError("cpu runner: a sequence with no tokens in the batch");
    if (e.prev_row >= 0) throw EngineError("cpu runner: forward of an entry whose token is on the device (prev_row)");
    const int total = e.prefix_len + e.num_cached + e.num_tokens;
    if (static_cast<int64_t>(e.num_blocks) * block_size_ < total)
      throw EngineError("cpu runner: block table too short for the sequence");
    for (int b = 0; b < e.num_blocks; ++b)
      if (e.block_table[b] < 0 || e.block_table[b] >= num_blocks_) throw EngineError("cpu runner: bad KV block id");
    row0[i + 1] = row0[i] + e.num_tokens;
  }
  const int64_t T = row0[S];

  std::vector<float> x(static_cast<size_t>(T * H)), a(x.size()), att(x.size()), tmp(x.size());
  std::vector<float> qkv(static_cast<size_t>(T * 3 * H)), ff(static_cast<size_t>(T * I));
  {
    std::vector<float> buf(static_cast<size_t>(H));
    for (size_t i = 0; i < S; ++i)
      for (int j = 0; j < batch.seqs[i].num_tokens; ++j) {
        const int32_t id = batch.seqs[i].tokens[j];
        if (id < 0 || id >= V) throw EngineError("cpu runner: token id out of range");
        const float* r = embeddings_.row(id, buf.data());
        std::memcpy(&x[static_cast<size_t>((row0[i] + j) * H)], r, static_cast<size_t>(H) * sizeof(float));
      }
  }
  const float alpha = cfg_.residual_alpha();

  // Rotary tables per row: [cos(pos), sin(pos), cos(block pos), sin(block pos)], q values each.
  const int64_t rq = static_cast<int64_t>(inv_freq_.size());
  std::vector<float> rot(static_cast<size_t>(T * 4 * rq));
  for (size_t i = 0; i < S; ++i)
    for (int j = 0; j < batch.seqs[i].num_tokens; ++j) {
      float* r = &rot[static_cast<size_t>((row0[i] + j) * 4 * rq)];
      rotary_table(batch.seqs[i].position_ids[j], r, r + rq);
      rotary_table(batch.seqs[i].block_position_ids[j], r + 2 * rq, r + 3 * rq);
    }

  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& L = layers_[l];
    layer_norm(x.data(), T, L.ln1_w, L.ln1_b, a.data());
    linear(a.data(), T, L.qkv, L.qkv_b.data(), qkv.data());

    // Rotary on q and k, then K/V into the cache.
    const int li = static_cast<int>(l);
    auto slot_of = [&](const SeqBatchEntry& e, int s) {
      return static_cast<int64_t>(e.block_table[s / block_size_]) * block_size_ + s % block_size_;
    };
    for (size_t i = 0; i < S; ++i) {
      const SeqBatchEntry& e = batch.seqs[i];
      for (int j = 0; j < e.num_tokens; ++j) {
        float* row = &qkv[static_cast<size_t>((row0[i] + j) * 3 * H)];
        const int slot = e.prefix_len + e.num_cached + j;
        const float* r = &rot[static_cast<size_t>((row0[i] + j) * 4 * rq)];
        const int64_t at = slot_of(e, slot);
        for (int h = 0; h < heads; ++h) {
          float* q = row + h * 3 * hd;
          float* k = q + hd;
          const float* v = k + hd;
          rotary(q, r, r + rq);
          rotary(q + hd / 2, r + 2 * rq, r + 3 * rq);
          rotary(k, r, r + rq);
          rotary(k + hd / 2, r + 2 * rq, r + 3 * rq);
          kv_.write(li, at, h, k, v);
        }
      }
    }

    // Attention, one (sequence, head) pair per task.
    const float coeff = static_cast<float>(l + 1);
    const float q_div = static_cast<float>(std::sqrt(static_cast<double>(hd)) * static_cast<double>(l + 1));
    pool_.parallel_for(static_cast<int64_t>(S) * heads, 1, [&](int64_t p0, int64_t p1) {
      std::vector<float> scores, qs(static_cast<size_t>(hd)), kv_buf(static_cast<size_t>(hd));
      for (int64_t p = p0; p < p1; ++p) {
        const size_t i = static_cast<size_t>(p / heads);
        const int h = static_cast<int>(p % heads);
        const SeqBatchEntry& e = batch.seqs[i];
        const int P = e.prefix_len;
        const int total = P + e.num_cached + e.num_tokens;  // KV slots: the prefix, then the tokens
        scores.resize(static_cast<size_t>(total));
        for (int j = 0; j < e.num_tokens; ++j) {
          const int query = e.num_cached + j;
          const float* q = &qkv[static_cast<size_t>((row0[i] + j) * 3 * H + h * 3 * hd)];
          for (int d = 0; d < hd; ++d) qs[static_cast<size_t>(d)] = q[d] / q_div;
          float mx = -INFINITY;
          for (int s = 0; s < total; ++s) {
            if (s >= P && !can_attend(query, s - P, e.context_length)) {
              scores[static_cast<size_t>(s)] = -INFINITY;  // exp() = 0, as -10000 * coeff gives
              continue;
            }
            const float* k = kv_.key(li, slot_of(e, s), h, kv_buf.data());
            const float sc = dot(qs.data(), k, hd) * coeff;
            scores[static_cast<size_t>(s)] = sc;
            mx = std::max(mx, sc);
          }
          float sum = 0.0f;
          for (int s = 0; s < total; ++s) {
            float& sc = scores[static_cast<size_t>(s)];
            sc = sc == -INFINITY ? 0.0f : std::exp(sc - mx);
            sum += sc;
          }
          const float inv = 1.0f / sum;
          float* out = &att[static_cast<size_t>((row0[i] + j) * H + h * hd)];
          std::fill(out, out + hd, 0.0f);
          for (int s = 0; s < total; ++s) {
            const float pr = scores[static_cast<size_t>(s)] * inv;
            if (pr == 0.0f) continue;
            const float* v = kv_.value(li, slot_of(e, s), h, kv_buf.data());
            for (int d = 0; d < hd; ++d) out[d] += pr * v[d];
          }
        }
      }
    });

    // h = a * alpha + dense(att);  m = LN_post(h);  x = m * alpha + mlp(m)
    linear(att.data(), T, L.dense, L.dense_b.data(), tmp.data());
    for (size_t n = 0; n < x.size(); ++n) x[n] = a[n] * alpha + tmp[n];
    layer_norm(x.data(), T, L.ln2_w, L.ln2_b, a.data());
    linear(a.data(), T, L.h_to_4h, L.h_to_4h_b.data(), ff.data());
    pool_.parallel_for(static_cast<int64_t>(ff.size()), 65536, [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n) {
        const float v = ff[static_cast<size_t>(n)];
        ff[static_cast<size_t>(n)] = 0.5f * v * (1.0f + std::tanh(0.7978845608028654f * v * (1.0f + 0.044715f * v * v)));
      }
    });
    linear(ff.data(), T, L.four_h_to_h, L.four_h_to_h_b.data(), tmp.data());
    for (size_t n = 0; n < x.size(); ++n) x[n] = a[n] * alpha + tmp[n];
  }

  // Final layer norm and lm_head: every row (debug) or each sequence's last row.
  std::vector<int64_t> rows;
  if (batch.want_all_logits) {
    for (int64_t r = 0; r < T; ++r) rows.push_back(r);
  } else {
    for (size_t i = 0; i < S; ++i) rows.push_back(row0[i + 1] - 1);
  }
  const int64_t R = static_cast<int64_t>(rows.size());
  std::vector<float> last(static_cast<size_t>(R * H));
  for (int64_t r = 0; r < R; ++r)
    std::memcpy(&last[static_cast<size_t>(r * H)], &x[static_cast<size_t>(rows[static_cast<size_t>(r)] * H)],
                static_cast<size_t>(H) * sizeof(float));
  std::vector<float> normed(last.size());
  layer_norm(last.data(), R, lnf_w_, lnf_b_, normed.data());
  std::vector<float> logits(static_cast<size_t>(R * V));
  linear(normed.data(), R, lm_head_, nullptr, logits.data());

  if (batch.want_all_logits) {
    if (all_logits) *all_logits = std::move(logits);
    return;
  }
  pool_.parallel_for(static_cast<int64_t>(S), 1, [&](int64_t b, int64_t e) {
    std::vector<float> scratch;
    for (int64_t i = b; i < e; ++i) {
      const SeqBatchEntry& se = batch.seqs[static_cast<size_t>(i)];
      const float* row = &logits[static_cast<size_t>(i * V)];
      next_tokens[i] = sample_token(row, static_cast<int>(V), *se.params, se.rng_offset, se.history, se.history_len,
                                    se.prompt_len, &scratch);
      if (se.logprob_out && se.params->logprobs >= 0)
        compute_logprobs(row, static_cast<int>(V), se.params->logprobs, next_tokens[i], se.logprob_out);
    }
  });
}

}  // namespace

std::unique_ptr<ModelRunner> make_cpu_runner(const ModelConfig& cfg, const EngineOptions& opts) {
  return std::make_unique<CpuRunner>(cfg, opts);
}

}  // namespace glm
