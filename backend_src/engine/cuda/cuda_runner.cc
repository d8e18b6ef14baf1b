// The CUDA ModelRunner: fp16 weights and activations, fp32 accumulation,
// layernorm/softmax in fp32, cuBLAS GEMMs, fused kernels (kernels.h), GPU
// sampling, CUDA graphs for decode steps (one per padded batch-size bucket).
//
// Step data flow (T tokens, R = rows whose logits are wanted):
//   a = LN_in0(emb[ids])                                   add_layernorm (gather)
//   per layer: qkv = a Wqkv^T                              cuBLAS
//              q, K/V cache <- rotary(qkv + b)             qkv_rotary_kv_write
//              att = paged attention(q)                    paged_attention
//              d = att Wd^T;  m = LN_post(a*alpha + d + bd)  cuBLAS + add_layernorm
//              f = gelu(m W1^T + b1)                       cuBLAS + bias_gelu
//              d = f W2^T;  a = LN_next(m*alpha + d + b2)  cuBLAS + add_layernorm
//   (the last layer's LN is the final LN, over the R selected rows only)
//   logits[R, vocab] (fp32) = h lm_head^T                  cuBLAS
// then repetition penalty, argmax / sampling on the GPU.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "config.h"
#include "e4m3.h"
#include "engine.h"
#include "model_runner.h"
#include "rng.h"
#include "weights.h"
#include "cuda/cuda_check.h"
#include "cuda/gemm.h"
#include "cuda/fp8_gemm.h"
#include "cuda/int8_gemm.h"
#include "cuda/kernels.h"

namespace glm {
namespace {

using cuda::Gemm;

template <typename T>
T* dev_alloc(size_t count) {
  void* p = nullptr;
  GLM_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T)));
  return static_cast<T*>(p);
}

struct Layer {
  __half *wqkv = nullptr, *wdense = nullptr, *w1 = nullptr, *w2 = nullptr;
  float *bqkv = nullptr, *bdense = nullptr, *b1 = nullptr, *b2 = nullptr;
  __half* b1h = nullptr;  // b1 as fp16 for cuBLASLt's GELU_BIAS epilogue (tuning gemm_gelu_epilogue; else null)
  float *ln_in_w = nullptr, *ln_in_b = nullptr, *ln_post_w = nullptr, *ln_post_b = nullptr;
  // INT8 weight-only mode (docs/int8.md): the four linears as int8 + fp16 scales (the __half pointers stay null)
  cuda::Int8Weight qkv8, dense8, w18, w28;
  // FP8 mode (docs/int8.md "FP8"): E4M3 codes + fp32 scales per output channel (the __half pointers stay null)
  cuda::Fp8Weight qkvf, densef, w1f, w2f;
};

// Padded batch sizes that get their own decode graph.
std::vector<int> make_buckets(int max_seqs) {
  std::vector<int> b = {1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256};
  for (int x = 320; x < max_seqs + 64; x += 64) b.push_back(x);
  std::vector<int> out;
  for (int x : b) {
    if (x >= max_seqs) {
      out.push_back(max_seqs);
      break;
    }
    out.push_back(x);
  }
  return out;
}

class CudaRunner final : public ModelRunner {
 public:
  CudaRunner(const ModelConfig& cfg, const EngineOptions& opts);
  ~CudaRunner() override;

  int64_t kv_block_bytes(int block_size) const override {
    // fp16: 2 bytes a value; fp8: 1 byte a value + a float scale per (token, head)
    const int64_t per_token = kv_fp8_ ? cfg_.hidden_size + 4ll * cfg_.num_attention_heads
                                      : cfg_.hidden_size * static_cast<int64_t>(sizeof(__half));
    return 2ll * cfg_.num_layers * block_size * per_token;
  }
  int plan_kv_blocks(const EngineOptions& opts) const override;
  void allocate_kv_cache(int num_blocks, int block_size) override;
  void copy_kv_block(int src, int dst) override;
  void write_prefix(const std::vector<int32_t>& blocks, int prefix_len, const float* key,
                    const float* value) override;
  void forward(const StepBatch& batch, int32_t* next_tokens, std::vector<float>* all_logits) override;
  void launch(const StepBatch& batch) override;
  void collect(int32_t* next_tokens) override;
  std::string describe() const override {
    std::string out;
    const std::string kv = kv_fp8_ ? "KV cache fp8 (E4M3, a scale per token and head)" : "";
    const int split = opts_.cuda.attention_split_min_keys;
    const std::string sk = split > 0 ? "split-KV decode attention from " + std::to_string(split) + " keys" : "";
    const int op = opts_.cuda.attention_one_pass;
    const std::string att = op > 0 ? "one-pass paged attention (online softmax, " + std::to_string(op) +
                                         " keys per lane group per round)"
                                   : "";
    for (const std::string& part : {linears_description(), kv, att, sk, graphs_description()})
      if (!part.empty()) out += (out.empty() ? "" : "; ") + part;
    return out;
  }
  std::string graphs_description() const {
    if (!opts_.use_cuda_graphs || !opts_.cuda.graphs_at_start || graphs_at_start_ == 0) return "";
    if (graphs_at_start_ == 1) return "decode graph for batch size 1 captured at start";
    return "decode graphs for " + std::to_string(graphs_at_start_) + " batch sizes (1-" +
           std::to_string(buckets_.back()) + ") captured at start";
  }
  // The int8 linears from int8_w8a8_min_tokens on (Int8Gemm::run): W8A8; "" when off. In fp8
  // mode only the int8 lm_head is an int8 linear.
  std::string w8a8_description() const {
    const int w8a8 = opts_.cuda.int8_w8a8_min_tokens;
    return w8a8 > 0 ? "W8A8 int8 tensor cores from " + std::to_string(w8a8) + " tokens" : "";
  }
  std::string linears_description() const {
    const std::string w8a8 = w8a8_description();
    if (fp8_) {
      const int gemv = opts_.cuda.fp8_gemv_max_tokens;
      return std::string("fp8 block linears (E4M3 weights per channel, activations per token, cuBLASLt") +
             (gemv > 0 ? "; weight-only GEMV up to " + std::to_string(gemv) + " tokens" : std::string()) +
             "), lm_head " +
             (!lm_head8_.q ? "fp16" : w8a8.empty() ? "int8" : "int8 (" + w8a8 + ")");
    }
    if (!int8_) {
      const int mma = opts_.cuda.gemv_mma_max_tokens, gemv = opts_.cuda.gemv_max_tokens;
      std::string d = mma > gemv ? "tensor-core GEMV for " + std::to_string(gemv + 1) + "-" + std::to_string(mma) +
                                       " tokens"
                                 : "";
      if (gemm_->gelu_epilogue()) d += (d.empty() ? "" : ", ") + std::string("bias+GeLU in the cuBLASLt epilogue");
      return d.empty() ? d : "fp16 linears: " + d;
    }
    return std::string("int8 block linears ") +
           (int8_packed_ ? "packed (GEMV + warp-specialized wgmma, sm_90a)" : "row-major (GEMV + mma.sync)") +
           (w8a8.empty() ? "" : ", " + w8a8) +
           ", lm_head " + (lm_head8_.q ? "int8" : "fp16");
  }

 private:
  // Device metadata of a step, packed for (T, S) = (tokens, seqs) with fixed
  // offsets given the padded sizes, so that a graph captured for a bucket
  // reads the same addresses every step.
  struct Meta {
    int32_t *tokens, *pos, *bpos, *slot, *tok_seq, *n_keys, *sel_rows, *prev, *tables;
  };
  Meta meta_at(int32_t* base, int T, int /*S*/) const {
    Meta m;
    m.tokens = base;
    m.pos = base + T;
    m.bpos = base + 2 * T;
    m.slot = base + 3 * T;
    m.tok_seq = base + 4 * T;
    m.n_keys = base + 5 * T;
    m.sel_rows = base + 6 * T;  // [R <= T]
    m.prev = base + 7 * T;      // [S <= T]: SeqBatchEntry::prev_row
    m.tables = base + 8 * T;    // [S, mbps_]
    return m;
  }
  size_t meta_ints(int T, int S) const { return 8 * (size_t)T + (size_t)S * mbps_; }

  void load_weights_from(const ModelWeights& w);
  void init_random_weights(uint64_t seed);
  void alloc_activations(int max_tokens);
  void free_activations();
  // splits: split-KV chunks of the attention (1: none; attention_splits()).
  void run_model(const Meta& m, int T, int R, float* logits, int splits = 1);
  // Split-KV chunks for a decode step of T (padded) tokens whose longest context has
  // max_keys keys (tuning attention_split_min_keys): 1 unless the contexts are that long
  // and there are fewer than 4 (token, head) pairs per SM; then enough chunks to reach
  // that many blocks (at most kAttnMaxSplits).
  int attention_splits(int T, int max_keys) const {
    const int min_keys = opts_.cuda.attention_split_min_keys;
    const int pairs = T * heads_, budget = 4 * num_sms_;
    if (min_keys <= 0 || max_keys < min_keys || pairs >= budget) return 1;
    return std::min(cuda::kAttnMaxSplits, (budget + pairs - 1) / pairs);
  }
  static int graph_key(int Sp, int splits) { return Sp * 32 + splits; }
  void upload_half(__half* dst, const TensorView& t, const char* name);
  void upload_float(float* dst, const TensorView& t, const char* name);
  // INT8: I8 + scale copied; a float tensor quantized on the GPU (the converter's scheme).
  void upload_linear8(cuda::Int8Weight& dst, const LinearWeights& src, int64_t rows, int64_t cols, const char* name);
  void upload_quantized(void* q, void* scale, const LinearWeights& s, int64_t rows, int64_t cols, DType scale_dtype,
                        const char* name);
  template <typename Quantize>
  void quantize_float_tensor(const TensorView& t, const char* name, const char* mode, Quantize quantize);
  template <typename Quantize>
  void upload_quantized_linear(void* q, void* scale, const LinearWeights& s, int64_t rows, int64_t cols, DType qtype,
                               DType stype, const char* mode, const char* name, Quantize quantize);
  // Hopper (sm_90a build): the block linears rewritten in place into the packed
  // layout of their fastest kernels (int8_gemm.h); tuning int8_packed=false keeps row-major.
  void pack_int8_layers();
  // FP8: F8_E4M3 + F32 scale copied; a float tensor quantized on the GPU (glmserve.fp8's rule).
  void upload_linear_fp8(cuda::Fp8Weight& dst, const LinearWeights& src, int64_t rows, int64_t cols, const char* name);
  void lin(const __half* x, const __half* w, const cuda::Int8Weight& w8, const cuda::Fp8Weight& wf, __half* y, int T,
           int in, int out, const float* bias = nullptr, bool gelu = false, const __half* bias_h = nullptr) {
    if (wf.q)
      fp8_gemm_->linear(x, wf, y, T, in, out, bias, gelu);
    else if (w8.q)
      int8_gemm_->linear(x, w8, y, T, in, out, bias, gelu);
    else
      gemm_->linear(x, w, y, T, in, out, bias, gelu, bias_h);
  }
  void clear_graphs();
  void release();
  void ensure_host(int buf, size_t ints);
  // Validates the batch, uploads its metadata (staging buffer `buf`) and runs the
  // model on stream_: a decode graph where it can. Logits in logits_ (sampling
  // rows) or dbg_logits_ (want_all_logits). Returns whether any entry has prev_row.
  void enqueue_model(const StepBatch& batch, int buf);
  // Captures the decode graph of padded batch size Sp (after an eager step of that size has
  // loaded the kernels and cuBLAS's state): at start (capture_all_graphs) or on the
  // bucket's first decode step.
  std::map<int, cudaGraphExec_t>::iterator capture_graph(int Sp, int splits);
  // Captures every bucket's decode graph (tuning graphs_at_start), each after one eager
  // run of the same padded step, so that cuBLAS/cuBLASLt choose and load their kernels
  // outside the capture. Padding rows only: no KV write, no keys.
  void capture_all_graphs();
  // Copies the results of the launched, uncollected steps out of their pinned
  // buffers (after a stream synchronization) so that those may be reallocated.
  void settle_pending();

  ModelConfig cfg_;
  EngineOptions opts_;
  int H_ = 0, I_ = 0, V_ = 0, L_ = 0, heads_ = 0, hd_ = 0;
  float alpha_ = 0.f;
  // Tuning timing (opts_.cuda): host-side time per step, printed when the runner is destroyed.
  bool timing_ = false;
  int64_t t_steps_ = 0;
  double t_prep_ = 0, t_enqueue_ = 0, t_wait_ = 0, t_outside_ = 0;
  std::chrono::steady_clock::time_point t_last_end_{};
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<Gemm> gemm_;
  bool int8_ = false;  // layer linears int8 (EngineOptions.int8 or an int8 checkpoint)
  bool fp8_ = false;   // layer linears FP8 (EngineOptions.fp8)
  std::unique_ptr<cuda::Fp8Gemm> fp8_gemm_;
  bool int8_packed_ = false;  // ... rewritten into the packed layout at load (pack_int8_layers)
  std::unique_ptr<cuda::Int8Gemm> int8_gemm_;
  cuda::Int8Weight lm_head8_;  // int8 lm_head (checkpoint quantization.lm_head, or tuning int8_lm_head)

  // weights
  __half* emb_ = nullptr;
  __half* lm_head_ = nullptr;
  float *lnf_w_ = nullptr, *lnf_b_ = nullptr, *inv_freq_ = nullptr;
  std::vector<Layer> layers_;
  std::vector<void*> allocations_;

  // KV cache: fp16 [2 * L_][num_blocks, heads, block_size, head_dim] in kv_, or
  // (kv_cache_dtype=fp8) E4M3 codes of that layout then float scales
  // [2 * L_][num_blocks, heads, block_size] in kv8_ (kv_fp8.cu)
  bool kv_fp8_ = false;
  __half* kv_ = nullptr;
  uint8_t* kv8_ = nullptr;
  int num_blocks_ = 0, block_size_ = 0, mbps_ = 0;
  std::vector<__half*> k_layer_, v_layer_;
  std::vector<uint8_t*> k8_layer_, v8_layer_;
  std::vector<float*> ks_layer_, vs_layer_;

  // activations
  int max_tokens_ = 0, max_seqs_ = 0;
  __half *a_ = nullptr, *m_ = nullptr, *qkv_ = nullptr, *q_ = nullptr, *att_ = nullptr, *d_ = nullptr,
         *f_ = nullptr, *hfinal_ = nullptr;
  float* logits_ = nullptr;       // [max_seqs, V]
  float* dbg_logits_ = nullptr;   // [dbg_rows, V], debug_forward only
  int dbg_rows_ = 0;
  // Pinned host staging comes in pairs: a launched step uses one while the host
  // prepares the next step in the other (overlapped stepping).
  int32_t* meta_dev_ = nullptr;   // meta_ints(max_tokens_, max_seqs_)
  int32_t* meta_host_[2] = {nullptr, nullptr};  // pinned
  size_t meta_host_ints_[2] = {0, 0};
  int32_t* out_dev_ = nullptr;    // [max_seqs]: the last sampling step's ids (prev_row feeds from here)
  unsigned long long* argmax_scratch_ = nullptr;  // [max_seqs]
  int32_t* out_host_[2] = {nullptr, nullptr};  // pinned [max_seqs]
  // sampling staging
  void* samp_ws_ = nullptr;
  size_t samp_ws_bytes_ = 0;
  char* samp_dev_ = nullptr;
  char* samp_host_[2] = {nullptr, nullptr};
  // Launched steps not collected yet, oldest first (at most two).
  struct Pending {
    int buf = 0, S = 0, lp_top = 0, lp_cap = 0;
    std::vector<std::pair<TokenLogprob*, int>> lp_outs;  // per log-probability row: where, how many alternatives
    bool settled = false;  // results already copied out of the pinned buffers (into ids, lp_words)
    std::vector<int32_t> ids;
    std::vector<float> lp_words;
  };
  std::deque<Pending> pending_;
  cudaEvent_t done_[2] = {nullptr, nullptr};  // recorded after a step's copies to the host
  int next_buf_ = 0;
  // Log-probabilities (allocated on first use, grown to the rows a step needs):
  // copies of the raw logits rows [lp_cap_rows_, V_]; results lp [cap] + top ids
  // [cap, kMaxLogprobs] + top values [cap, kMaxLogprobs], on the device and pinned.
  float* lp_rows_dev_ = nullptr;
  float* lp_out_dev_ = nullptr;
  float* lp_out_host_[2] = {nullptr, nullptr};
  int lp_cap_rows_ = 0;
  void ensure_logprob_buffers(int rows, int top);
  void free_logprob_buffers();
  size_t samp_cap_ = 0;

  std::vector<int> buckets_;
  std::map<int, cudaGraphExec_t> graphs_;  // by graph_key(padded batch, split-KV chunks)
  std::set<int> split_eager_;              // split-KV graph keys run eagerly once (not captured at start)
  int graphs_at_start_ = 0;  // batch sizes capture_all_graphs() captured (for describe())
  int num_sms_ = 1;
  float* split_scratch_ = nullptr;  // split-KV partial results (attention_split_min_keys > 0)
  size_t split_scratch_floats_ = 0;
};

CudaRunner::CudaRunner(const ModelConfig& cfg, const EngineOptions& opts) : cfg_(cfg), opts_(opts) {
  if (opts.dtype != "fp16" && opts.dtype != "float16")
    throw EngineError("dtype \"" + opts.dtype + "\" is not supported on device cuda (use fp16)");
  int8_ = opts.int8 || cfg.int8;
  fp8_ = opts.fp8 || cfg.fp8;
  kv_fp8_ = opts.kv_cache_dtype == "fp8";
  if (fp8_ && cfg.int8) throw EngineError("engine option fp8 needs a float checkpoint (this one is int8)");
  H_ = cfg.hidden_size;
  I_ = cfg.inner_hidden_size;
  V_ = cfg.vocab_size;
  L_ = cfg.num_layers;
  heads_ = cfg.num_attention_heads;
  hd_ = cfg.head_dim;
  alpha_ = cfg.residual_alpha();
  timing_ = opts.cuda.timing;
  if (hd_ != 4 && hd_ != 8 && hd_ != 16 && hd_ != 32 && hd_ != 64 && hd_ != 128)
    throw EngineError("device cuda: head_dim " + std::to_string(hd_) + " is not supported (4..128, power of two)");
  if (H_ % 2 || I_ % 2) throw EngineError("device cuda: hidden and inner sizes must be even");

  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0)
    throw EngineError("device cuda: no CUDA device is visible");
  if (opts.device_id >= ndev)
    throw EngineError("device_id " + std::to_string(opts.device_id) + " but only " + std::to_string(ndev) +
                      " CUDA device(s)");
  try {
    GLM_CUDA_CHECK(cudaSetDevice(opts.device_id));
    cuda::set_pdl(opts.cuda.pdl && cuda::pdl_supported(opts.device_id));
    GLM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    gemm_ = std::make_unique<Gemm>();
    gemm_->set_stream(stream_);
    gemm_->set_gemv_max_tokens(opts.cuda.gemv_max_tokens);
    gemm_->set_gemv_mma_max_tokens(opts.cuda.gemv_mma_max_tokens);
    gemm_->set_gelu_epilogue(opts.cuda.gemm_gelu_epilogue && !int8_ && !fp8_);
    // int8 lm_head: in int8 mode as the checkpoint or the tuning says; in fp8 mode on the
    // tuning int8_lm_head (per-channel int8 weight-only, the int8 kernels; E4M3 lm_head
    // weights fail the tiny-model gate, docs/int8.md "FP8").
    const bool int8_lm_head = int8_ ? cfg.int8_lm_head || opts.cuda.int8_lm_head : fp8_ && opts.cuda.int8_lm_head;
    if (int8_ || int8_lm_head) {
      int8_gemm_ = std::make_unique<cuda::Int8Gemm>();
      int8_gemm_->set_stream(stream_);
      int8_gemm_->set_gemv_max_tokens(opts.cuda.int8_gemv_max_tokens);
      int8_gemm_->set_mma_max_tokens(opts.cuda.int8_mma_max_tokens);
      int8_gemm_->set_w8a8_min_tokens(opts.cuda.int8_w8a8_min_tokens);
    }
    if (fp8_) {
      if (H_ % 16 || I_ % 16)  // cuBLASLt's FP8 kernels: every GEMM dimension of the block linears
        throw EngineError("engine option fp8 needs hidden_size and inner_hidden_size multiples of 16 (this model: " +
                          std::to_string(H_) + ", " + std::to_string(I_) + ")");
      if (!cuda::fp8_supported_device())
        throw EngineError("engine option fp8: this GPU has no FP8 tensor cores (compute capability 8.9 or newer, "
                          "e.g. H100 / H200)");
      fp8_gemm_ = std::make_unique<cuda::Fp8Gemm>();
      fp8_gemm_->set_stream(stream_);
      fp8_gemm_->set_gemv_max_tokens(opts.cuda.fp8_gemv_max_tokens);
    }

    // weights
    const size_t HH = (size_t)H_ * H_;
    auto alloc_h = [&](size_t n) {
      __half* p = dev_alloc<__half>(n);
      allocations_.push_back(p);
      return p;
    };
    auto alloc_f = [&](size_t n) {
      float* p = dev_alloc<float>(n);
      allocations_.push_back(p);
      return p;
    };
    auto alloc_8 = [&](cuda::Int8Weight& w8, size_t out, size_t in) {
      w8.q = dev_alloc<int8_t>(out * in);
      allocations_.push_back(w8.q);
      w8.scale = alloc_h(out);
    };
    auto alloc_f8 = [&](cuda::Fp8Weight& wf, size_t out, size_t in) {
      wf.q = dev_alloc<uint8_t>(out * in);
      allocations_.push_back(wf.q);
      wf.scale = alloc_f(out);
    };
    emb_ = alloc_h((size_t)V_ * H_);
    if (int8_lm_head)
      alloc_8(lm_head8_, V_, H_);
    else
      lm_head_ = alloc_h((size_t)V_ * H_);
    lnf_w_ = alloc_f(H_);
    lnf_b_ = alloc_f(H_);
    layers_.resize(L_);
    for (Layer& l : layers_) {
      if (fp8_) {
        alloc_f8(l.qkvf, 3 * (size_t)H_, H_);
        alloc_f8(l.densef, H_, H_);
        alloc_f8(l.w1f, I_, H_);
        alloc_f8(l.w2f, H_, I_);
      } else if (int8_) {
        alloc_8(l.qkv8, 3 * (size_t)H_, H_);
        alloc_8(l.dense8, H_, H_);
        alloc_8(l.w18, I_, H_);
        alloc_8(l.w28, H_, I_);
      } else {
        l.wqkv = alloc_h(3 * HH);
        l.wdense = alloc_h(HH);
        l.w1 = alloc_h((size_t)I_ * H_);
        l.w2 = alloc_h((size_t)H_ * I_);
      }
      l.bqkv = alloc_f(3 * (size_t)H_);
      l.bdense = alloc_f(H_);
      l.b1 = alloc_f(I_);
      l.b2 = alloc_f(H_);
      l.ln_in_w = alloc_f(H_);
      l.ln_in_b = alloc_f(H_);
      l.ln_post_w = alloc_f(H_);
      l.ln_post_b = alloc_f(H_);
    }
    if (opts.random_weights) {
      init_random_weights(opts.weights_seed);
    } else {
      ModelWeights w = load_weights(opts.checkpoint_dir, cfg);
      load_weights_from(w);
    }
    if (int8_) pack_int8_layers();
    if (gemm_->gelu_epilogue()) {  // b1 as fp16: cuBLASLt's bias type for fp16 output
      for (Layer& l : layers_) {
        l.b1h = alloc_h(I_);
        cuda::float_to_half(l.b1, l.b1h, I_, stream_);
      }
      GLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
    }
    // rotary table: as the CPU runner (fp16-rounded inv_freq)
    const int half = hd_ / 2;
    std::vector<float> invf;
    for (int j = 0; j < half / 2; ++j)
      invf.push_back(round_to_f16(static_cast<float>(1.0 / std::pow(10000.0, (2.0 * j) / half))));
    inv_freq_ = alloc_f(invf.size());
    GLM_CUDA_CHECK(cudaMemcpyAsync(inv_freq_, invf.data(), invf.size() * sizeof(float), cudaMemcpyHostToDevice,
                                   stream_));
    GLM_CUDA_CHECK(cudaStreamSynchronize(stream_));

    max_seqs_ = std::max(1, opts.max_running_seqs);
    mbps_ = (cfg.max_prefix_len + cfg.max_sequence_length + opts.block_size - 1) / std::max(1, opts.block_size);
    alloc_activations(std::max(opts.max_batched_tokens, cfg.max_sequence_length) + max_seqs_);
    logits_ = alloc_f((size_t)max_seqs_ * V_);
    GLM_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, opts.device_id));
    if (opts.cuda.attention_split_min_keys > 0) {
      // tokens x heads x splits < 8 x SMs whenever attention_splits() splits (pairs < 4 x SMs)
      split_scratch_floats_ = (size_t)8 * num_sms_ * (hd_ + 2);
      split_scratch_ = alloc_f(split_scratch_floats_);
    }
    out_dev_ = dev_alloc<int32_t>(max_seqs_);
    allocations_.push_back(out_dev_);
    argmax_scratch_ = dev_alloc<unsigned long long>(max_seqs_);
    allocations_.push_back(argmax_scratch_);
    for (int b = 0; b < 2; ++b) {
      GLM_CUDA_CHECK(cudaMallocHost(&out_host_[b], sizeof(int32_t) * max_seqs_));
      GLM_CUDA_CHECK(cudaEventCreateWithFlags(&done_[b], cudaEventDisableTiming));
    }
    samp_ws_bytes_ = cuda::sample_workspace_bytes(max_seqs_, V_);
    GLM_CUDA_CHECK(cudaMalloc(&samp_ws_, samp_ws_bytes_));
    buckets_ = make_buckets(max_seqs_);
    GLM_CUDA_CHECK(cudaDeviceSynchronize());
  } catch (const EngineError&) {
    release();
    throw;
  } catch (const std::exception& e) {
    release();
    throw EngineError(std::string("device cuda: ") + e.what());
  }
}

CudaRunner::~CudaRunner() {
  if (timing_ && t_steps_ > 0)
    std::fprintf(stderr,
                 "cuda runner timing: %lld steps; per step (us): host prep + model enqueue %.1f, sampling enqueue %.1f, "
                 "wait for GPU %.1f, "
                 "outside forward (engine) %.1f\n",
                 (long long)t_steps_, t_prep_ / t_steps_ * 1e6, t_enqueue_ / t_steps_ * 1e6, t_wait_ / t_steps_ * 1e6,
                 t_outside_ / std::max<int64_t>(1, t_steps_ - 1) * 1e6);
  release();
}

// Everything the runner owns on the device and in pinned host memory. Called by
// the destructor and when the constructor throws (no destructor runs then).
// Pinned buffers count in the process RSS: meta_host_ (~2.2 MiB for ChatGLM-6B
// with max_running_seqs 256) used to be missed here, leaking once per load.
void CudaRunner::release() {
  if (stream_) cudaStreamSynchronize(stream_);
  clear_graphs();
  free_activations();
  for (void* p : allocations_) cudaFree(p);
  allocations_.clear();
  if (kv_) cudaFree(kv_);
  kv_ = nullptr;
  if (kv8_) cudaFree(kv8_);
  kv8_ = nullptr;
  if (dbg_logits_) cudaFree(dbg_logits_);
  dbg_logits_ = nullptr;
  pending_.clear();
  for (int b = 0; b < 2; ++b) {
    if (meta_host_[b]) cudaFreeHost(meta_host_[b]);
    meta_host_[b] = nullptr;
    meta_host_ints_[b] = 0;
    if (out_host_[b]) cudaFreeHost(out_host_[b]);
    out_host_[b] = nullptr;
    if (samp_host_[b]) cudaFreeHost(samp_host_[b]);
    samp_host_[b] = nullptr;
    if (done_[b]) cudaEventDestroy(done_[b]);
    done_[b] = nullptr;
  }
  if (samp_ws_) cudaFree(samp_ws_);
  samp_ws_ = nullptr;
  if (samp_dev_) cudaFree(samp_dev_);
  samp_dev_ = nullptr;
  free_logprob_buffers();
  samp_cap_ = 0;
  gemm_.reset();
  int8_gemm_.reset();
  fp8_gemm_.reset();
  if (stream_) cudaStreamDestroy(stream_);
  stream_ = nullptr;
}

void CudaRunner::alloc_activations(int max_tokens) {
  free_activations();
  max_tokens_ = max_tokens;
  const size_t T = max_tokens;
  a_ = dev_alloc<__half>(T * H_);
  m_ = dev_alloc<__half>(T * H_);
  qkv_ = dev_alloc<__half>(T * 3 * H_);
  q_ = dev_alloc<__half>(T * H_);
  att_ = dev_alloc<__half>(T * H_);
  d_ = dev_alloc<__half>(T * H_);
  f_ = dev_alloc<__half>(T * I_);
  hfinal_ = dev_alloc<__half>(T * H_);
  meta_dev_ = dev_alloc<int32_t>(meta_ints(max_tokens_, std::max(max_seqs_, max_tokens_)));
  for (int b = 0; b < 2; ++b) ensure_host(b, meta_ints(max_tokens_, std::max(max_seqs_, max_tokens_)));
  if (opts_.cuda.poison & 2) {  // debugging aid: NaN everywhere a kernel must write before anything reads
    for (auto pr : {std::make_pair((void*)a_, T * H_), std::make_pair((void*)m_, T * H_),
                    std::make_pair((void*)qkv_, T * 3 * H_), std::make_pair((void*)q_, T * H_),
                    std::make_pair((void*)att_, T * H_), std::make_pair((void*)d_, T * H_),
                    std::make_pair((void*)f_, T * I_), std::make_pair((void*)hfinal_, T * H_)})
      GLM_CUDA_CHECK(cudaMemset(pr.first, 0xFF, pr.second * sizeof(__half)));
    GLM_CUDA_CHECK(cudaDeviceSynchronize());
  }
}

void CudaRunner::free_activations() {
  for (void* p : {(void*)a_, (void*)m_, (void*)qkv_, (void*)q_, (void*)att_, (void*)d_, (void*)f_,
                  (void*)hfinal_, (void*)meta_dev_})
    if (p) cudaFree(p);
  a_ = m_ = qkv_ = q_ = att_ = d_ = f_ = hfinal_ = nullptr;
  meta_dev_ = nullptr;
}

void CudaRunner::ensure_host(int buf, size_t ints) {
  if (ints <= meta_host_ints_[buf]) return;
  settle_pending();
  if (meta_host_[buf]) cudaFreeHost(meta_host_[buf]);
  meta_host_[buf] = nullptr;
  GLM_CUDA_CHECK(cudaMallocHost(&meta_host_[buf], ints * sizeof(int32_t)));
  meta_host_ints_[buf] = ints;
}

void CudaRunner::settle_pending() {
  if (!stream_) return;
  GLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
  for (Pending& p : pending_) {
    if (p.settled) continue;
    p.ids.assign(out_host_[p.buf], out_host_[p.buf] + p.S);
    if (!p.lp_outs.empty()) {  // rows with log-probabilities, even with no alternatives (logprobs=0)
      const size_t words = (size_t)p.lp_cap * (1 + 2 * cuda::kMaxLogprobs);
      p.lp_words.assign(lp_out_host_[p.buf], lp_out_host_[p.buf] + words);
    }
    p.settled = true;
  }
}

void CudaRunner::clear_graphs() {
  for (auto& kv : graphs_) cudaGraphExecDestroy(kv.second);
  graphs_.clear();
}

// Uploads are ordered on stream_ (a non-blocking stream: a plain cudaMemcpy from
// pageable memory may return before its DMA lands, and nothing would order it
// before our kernels), and synchronised before a staging buffer is reused.
void CudaRunner::upload_half(__half* dst, const TensorView& t, const char* name) {
  const int64_t n = t.numel();
  if (t.dtype == DType::kF16) {
    GLM_CUDA_CHECK(cudaMemcpyAsync(dst, t.data, (size_t)n * 2, cudaMemcpyHostToDevice, stream_));
    GLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
  } else if (t.dtype == DType::kF32) {
    // in slices, through a device fp32 buffer
    const int64_t chunk = 64ll << 20;
    float* tmp = dev_alloc<float>((size_t)std::min(n, chunk));
    for (int64_t i = 0; i < n; i += chunk) {
      const int64_t c = std::min(chunk, n - i);
      GLM_CUDA_CHECK(cudaMemcpyAsync(tmp, static_cast<const char*>(t.data) + i * 4, (size_t)c * 4,
                                     cudaMemcpyHostToDevice, stream_));
      cuda::float_to_half(tmp, dst + i, c, stream_);
      GLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
    }
    cudaFree(tmp);
  } else {
    throw EngineError(std::string("device cuda: tensor ") + name + " has dtype " + dtype_name(t.dtype));
  }
}

void CudaRunner::upload_float(float* dst, const TensorView& t, const char* name) {
  std::vector<float> h(static_cast<size_t>(t.numel()));
  if (t.dtype != DType::kF16 && t.dtype != DType::kF32)
    throw EngineError(std::string("device cuda: tensor ") + name + " has dtype " + dtype_name(t.dtype));
  to_float(t, h.data());
  GLM_CUDA_CHECK(cudaMemcpyAsync(dst, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice, stream_));
  GLM_CUDA_CHECK(cudaStreamSynchronize(stream_));  // h dies here
}

// A float checkpoint's matrix (F16 or F32) staged on the GPU and handed to `quantize`
// (called with a const __half* or a const float*); the staging freed after.
template <typename Quantize>
void CudaRunner::quantize_float_tensor(const TensorView& t, const char* name, const char* mode, Quantize quantize) {
  const size_t n = static_cast<size_t>(t.numel());
  auto staged = [&](auto* tmp, size_t elem) {
    try {
      GLM_CUDA_CHECK(cudaMemcpyAsync(tmp, t.data, n * elem, cudaMemcpyHostToDevice, stream_));
      quantize(static_cast<const std::remove_pointer_t<decltype(tmp)>*>(tmp));
      GLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
    } catch (...) {
      cudaFree(tmp);
      throw;
    }
    cudaFree(tmp);
  };
  if (t.dtype == DType::kF16)
    staged(dev_alloc<__half>(n), 2);
  else if (t.dtype == DType::kF32)
    staged(dev_alloc<float>(n), 4);
  else
    throw EngineError(std::string("device cuda: ") + mode + " mode needs a float tensor " + name + ", got " +
                      dtype_name(t.dtype));
}

// Quantized weights and their scales copied as they are (an int8 or fp8 checkpoint).
void CudaRunner::upload_quantized(void* q, void* scale, const LinearWeights& s, int64_t rows, int64_t cols,
                                  DType scale_dtype, const char* name) {
  if (s.scale.dtype != scale_dtype || s.scale.numel() != rows)
    throw EngineError(std::string("device cuda: tensor ") + name + "_scale must be " + dtype_name(scale_dtype) + " [" +
                      std::to_string(rows) + "]");
  GLM_CUDA_CHECK(cudaMemcpyAsync(q, s.weight.data, (size_t)(rows * cols), cudaMemcpyHostToDevice, stream_));
  GLM_CUDA_CHECK(cudaMemcpyAsync(scale, s.scale.data, (size_t)rows * dtype_size(scale_dtype), cudaMemcpyHostToDevice,
                                 stream_));
  GLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

// One quantized linear: a checkpoint already in the mode's format (qtype + stype
// scales) is copied as it is; a float one is quantized on the GPU by `quantize`.
template <typename Quantize>
void CudaRunner::upload_quantized_linear(void* q, void* scale, const LinearWeights& s, int64_t rows, int64_t cols,
                                         DType qtype, DType stype, const char* mode, const char* name,
                                         Quantize quantize) {
  if (s.weight.numel() != rows * cols)
    throw EngineError(std::string("device cuda: tensor ") + name + " has the wrong size");
  if (s.weight.dtype == qtype) return upload_quantized(q, scale, s, rows, cols, stype, name);
  quantize_float_tensor(s.weight, name, mode, quantize);
}

void CudaRunner::upload_linear8(cuda::Int8Weight& d, const LinearWeights& s, int64_t rows, int64_t cols,
                                const char* name) {
  upload_quantized_linear(d.q, d.scale, s, rows, cols, DType::kI8, DType::kF16, "int8", name, [&](const auto* w) {
    cuda::int8_quantize_rows(w, rows, cols, d.q, d.scale, stream_);
  });
}

void CudaRunner::upload_linear_fp8(cuda::Fp8Weight& d, const LinearWeights& s, int64_t rows, int64_t cols,
                                   const char* name) {
  upload_quantized_linear(d.q, d.scale, s, rows, cols, DType::kF8E4M3, DType::kF32, "fp8", name,
                          [&](const auto* w) { cuda::fp8_quantize_rows(w, rows, cols, d.q, d.scale, stream_); });
}

void CudaRunner::pack_int8_layers() {
  // W8A8 runs cuBLAS on the row-major layout.
  if (!opts_.cuda.int8_packed || opts_.cuda.int8_w8a8_min_tokens > 0 || !cuda::int8_packed_available()) return;
  struct Linear {
    cuda::Int8Weight* w;
    int out, in;
  };
  std::vector<Linear> todo;
  size_t most = 0;  // the largest matrix: one scratch buffer for all
  for (Layer& l : layers_)
    for (Linear a : {Linear{&l.qkv8, 3 * H_, H_}, Linear{&l.dense8, H_, H_}, Linear{&l.w18, I_, H_},
                     Linear{&l.w28, H_, I_}})
      if (cuda::int8_packed_shape_ok(a.out, a.in)) {
        todo.push_back(a);
        most = std::max(most, (size_t)a.out * a.in);
      }
  if (todo.empty()) return;
  uint8_t* tmp = dev_alloc<uint8_t>(most);
  try {
    for (const Linear& a : todo) {
      cuda::int8_pack(a.w->q, tmp, a.out, a.in, stream_);
      GLM_CUDA_CHECK(cudaMemcpyAsync(a.w->q, tmp, (size_t)a.out * a.in, cudaMemcpyDeviceToDevice, stream_));
      a.w->packed = true;
    }
    GLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
  } catch (...) {
    cudaFree(tmp);
    throw;
  }
  cudaFree(tmp);
  int8_packed_ = true;
}

void CudaRunner::load_weights_from(const ModelWeights& w) {
  upload_half(emb_, w.word_embeddings, "word_embeddings");
  if (lm_head8_.q)
    upload_linear8(lm_head8_, w.lm_head, V_, H_, "lm_head.weight");
  else
    upload_half(lm_head_, w.lm_head.weight, "lm_head");
  upload_float(lnf_w_, w.final_layernorm_weight, "final_layernorm.weight");
  upload_float(lnf_b_, w.final_layernorm_bias, "final_layernorm.bias");
  for (int i = 0; i < L_; ++i) {
    const LayerWeights& s = w.layers[i];
    Layer& d = layers_[i];
    if (fp8_) {
      upload_linear_fp8(d.qkvf, s.query_key_value, 3ll * H_, H_, "query_key_value.weight");
      upload_linear_fp8(d.densef, s.dense, H_, H_, "dense.weight");
      upload_linear_fp8(d.w1f, s.dense_h_to_4h, I_, H_, "dense_h_to_4h.weight");
      upload_linear_fp8(d.w2f, s.dense_4h_to_h, H_, I_, "dense_4h_to_h.weight");
    } else if (int8_) {
      upload_linear8(d.qkv8, s.query_key_value, 3ll * H_, H_, "query_key_value.weight");
      upload_linear8(d.dense8, s.dense, H_, H_, "dense.weight");
      upload_linear8(d.w18, s.dense_h_to_4h, I_, H_, "dense_h_to_4h.weight");
      upload_linear8(d.w28, s.dense_4h_to_h, H_, I_, "dense_4h_to_h.weight");
    } else {
      upload_half(d.wqkv, s.query_key_value.weight, "query_key_value.weight");
      upload_half(d.wdense, s.dense.weight, "dense.weight");
      upload_half(d.w1, s.dense_h_to_4h.weight, "dense_h_to_4h.weight");
      upload_half(d.w2, s.dense_4h_to_h.weight, "dense_4h_to_h.weight");
    }
    upload_float(d.bqkv, s.query_key_value.bias, "query_key_value.bias");
    upload_float(d.bdense, s.dense.bias, "dense.bias");
    upload_float(d.b1, s.dense_h_to_4h.bias, "dense_h_to_4h.bias");
    upload_float(d.b2, s.dense_4h_to_h.bias, "dense_4h_to_h.bias");
    upload_float(d.ln_in_w, s.input_layernorm_weight, "input_layernorm.weight");
    upload_float(d.ln_in_b, s.input_layernorm_bias, "input_layernorm.bias");
    upload_float(d.ln_post_w, s.post_attention_layernorm_weight, "post_attention_layernorm.weight");
    upload_float(d.ln_post_b, s.post_attention_layernorm_bias, "post_attention_layernorm.bias");
  }
}

// The values of weights.cc random_weights(), generated on the GPU: tensor k
// (1-based, in checkpoint slot order) uses tseed = splitmix64(seed ^ k*golden),
// element i = amp * (2 u(tseed, i) - 1); layernorm weights are 1; amp is 0.02
// for biases, 1 for the embedding, 1/sqrt(fan_in) for matrices. Matrices are
// rounded to fp16, vectors kept in fp32.
void CudaRunner::init_random_weights(uint64_t seed) {
  uint64_t k = 0;
  auto tseed = [&]() { return splitmix64(seed ^ ((++k) * 0x9E3779B97F4A7C15ull)); };
  // INT8 mode: the same fp16 values, quantized on the GPU through a staging buffer.
  __half* stage = nullptr;
  if (int8_ || fp8_)
    stage = dev_alloc<__half>((size_t)std::max<int64_t>({3ll * H_ * H_, (int64_t)I_ * H_, lm_head8_.q ? (int64_t)V_ * H_ : (int64_t)0}));
  auto mat = [&](__half* p, int64_t out, int64_t in, float amp, cuda::Int8Weight* w8 = nullptr,
                 cuda::Fp8Weight* wf = nullptr) {
    if (wf && wf->q) {  // FP8 mode: the same fp16 values, quantized on the GPU
      cuda::fill_uniform_half(stage, out * in, tseed(), amp, stream_);
      cuda::fp8_quantize_rows(stage, out, in, wf->q, wf->scale, stream_);
      return;
    }
    if (w8 && w8->q) {
      cuda::fill_uniform_half(stage, out * in, tseed(), amp, stream_);
      cuda::int8_quantize_rows(stage, out, in, w8->q, w8->scale, stream_);
      return;
    }
    cuda::fill_uniform_half(p, out * in, tseed(), amp, stream_);
  };
  auto bias = [&](float* p, int64_t n) { cuda::fill_uniform_float(p, n, tseed(), 0.02f, stream_); };
  auto norm_w = [&](float* p, int64_t n) {
    ++k;
    cuda::fill_const_float(p, n, 1.0f, stream_);
  };
  auto inv_sqrt = [](int64_t fan_in) { return 1.0f / std::sqrt(static_cast<float>(fan_in)); };
  mat(emb_, V_, H_, 1.0f);
  for (Layer& l : layers_) {
    norm_w(l.ln_in_w, H_);
    bias(l.ln_in_b, H_);
    mat(l.wqkv, 3ll * H_, H_, inv_sqrt(H_), &l.qkv8, &l.qkvf);
    bias(l.bqkv, 3ll * H_);
    mat(l.wdense, H_, H_, inv_sqrt(H_), &l.dense8, &l.densef);
    bias(l.bdense, H_);
    norm_w(l.ln_post_w, H_);
    bias(l.ln_post_b, H_);
    mat(l.w1, I_, H_, inv_sqrt(H_), &l.w18, &l.w1f);
    bias(l.b1, I_);
    mat(l.w2, H_, I_, inv_sqrt(I_), &l.w28, &l.w2f);
    bias(l.b2, H_);
  }
  norm_w(lnf_w_, H_);
  bias(lnf_b_, H_);
  mat(lm_head_, V_, H_, inv_sqrt(H_), &lm_head8_);
  GLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
  if (stage) cudaFree(stage);
}

void CudaRunner::free_logprob_buffers() {
  if (lp_rows_dev_) cudaFree(lp_rows_dev_);
  if (lp_out_dev_) cudaFree(lp_out_dev_);
  for (float*& h : lp_out_host_) {
    if (h) cudaFreeHost(h);
    h = nullptr;
  }
  lp_rows_dev_ = lp_out_dev_ = nullptr;
  lp_cap_rows_ = 0;
}

void CudaRunner::ensure_logprob_buffers(int rows, int top) {
  if (top > cuda::kMaxLogprobs) throw EngineError("cuda runner: logprobs above " + std::to_string(cuda::kMaxLogprobs));
  if (rows <= lp_cap_rows_) return;
  settle_pending();
  free_logprob_buffers();
  const int cap = std::min(max_seqs_, std::max(rows, 2 * lp_cap_rows_));
  const size_t words = (size_t)cap * (1 + 2 * cuda::kMaxLogprobs);
  GLM_CUDA_CHECK(cudaMalloc(&lp_rows_dev_, (size_t)cap * V_ * sizeof(float)));
  GLM_CUDA_CHECK(cudaMalloc(&lp_out_dev_, words * sizeof(float)));
  for (float*& h : lp_out_host_) GLM_CUDA_CHECK(cudaMallocHost(&h, words * sizeof(float)));
  lp_cap_rows_ = cap;
}

void CudaRunner::write_prefix(const std::vector<int32_t>& blocks, int prefix_len, const float* key,
                              const float* value) {
  // The cache's layout per layer: [num_blocks, heads, block_size, head_dim] fp16;
  // the prefix's: [num_layers, prefix_len, heads * head_dim] fp32. One host block
  // image per (layer, K or V, block), then one copy.
  const int heads = cfg_.num_attention_heads, hd = cfg_.head_dim;
  const size_t block = (size_t)block_size_ * H_;
  if (kv_fp8_) {  // codes and scales quantized here by the rule of kv_fp8_write
    std::vector<uint8_t> codes(block);
    std::vector<float> scales((size_t)heads * block_size_), row(hd);
    for (int l = 0; l < L_; ++l)
      for (int kv = 0; kv < 2; ++kv) {
        const float* src = (kv == 0 ? key : value) + (size_t)l * prefix_len * H_;
        for (size_t b = 0; b * block_size_ < (size_t)prefix_len; ++b) {
          std::fill(codes.begin(), codes.end(), uint8_t(0));
          std::fill(scales.begin(), scales.end(), 1.0f);
          for (int o = 0; o < block_size_ && (int)(b * block_size_) + o < prefix_len; ++o)
            for (int h = 0; h < heads; ++h) {
              for (int d = 0; d < hd; ++d)  // the fp16 cache's values, as the GPU path quantizes them
                row[d] = round_to_f16(src[(b * block_size_ + o) * H_ + h * hd + d]);
              scales[(size_t)h * block_size_ + o] =
                  quantize_e4m3_row(row.data(), hd, &codes[((size_t)h * block_size_ + o) * hd]);
            }
          const size_t blk = (size_t)blocks.at(b);
          GLM_CUDA_CHECK(cudaMemcpyAsync((kv == 0 ? k8_layer_[l] : v8_layer_[l]) + blk * block, codes.data(), block,
                                         cudaMemcpyHostToDevice, stream_));
          GLM_CUDA_CHECK(cudaMemcpyAsync((kv == 0 ? ks_layer_[l] : vs_layer_[l]) + blk * heads * block_size_,
                                         scales.data(), scales.size() * sizeof(float), cudaMemcpyHostToDevice,
                                         stream_));
          GLM_CUDA_CHECK(cudaStreamSynchronize(stream_));  // codes and scales are reused
        }
      }
    return;
  }
  std::vector<__half> img(block);
  for (int l = 0; l < L_; ++l)
    for (int kv = 0; kv < 2; ++kv) {
      const float* src = (kv == 0 ? key : value) + (size_t)l * prefix_len * H_;
      __half* layer = kv == 0 ? k_layer_[l] : v_layer_[l];
      for (size_t b = 0; b * block_size_ < (size_t)prefix_len; ++b) {
        std::fill(img.begin(), img.end(), __float2half(0.0f));
        for (int o = 0; o < block_size_ && (int)(b * block_size_) + o < prefix_len; ++o)
          for (int h = 0; h < heads; ++h)
            for (int d = 0; d < hd; ++d)
              img[((size_t)h * block_size_ + o) * hd + d] = __float2half(src[(b * block_size_ + o) * H_ + h * hd + d]);
        GLM_CUDA_CHECK(cudaMemcpyAsync(layer + (size_t)blocks.at(b) * block, img.data(), block * sizeof(__half),
                                       cudaMemcpyHostToDevice, stream_));
        GLM_CUDA_CHECK(cudaStreamSynchronize(stream_));  // img is reused
      }
    }
}

void CudaRunner::copy_kv_block(int src, int dst) {
  // K and V of every layer are 2 * L_ equally spaced arrays of num_blocks_ blocks:
  // one strided 2D copy moves block src of each into block dst.
  const size_t per = (size_t)num_blocks_ * block_size_ * H_;
  const size_t block = (size_t)block_size_ * H_;
  if (kv_fp8_) {  // the codes, then the scales: the same strided copy over each
    GLM_CUDA_CHECK(cudaMemcpy2DAsync(kv8_ + (size_t)dst * block, per, kv8_ + (size_t)src * block, per, block,
                                     (size_t)2 * L_, cudaMemcpyDeviceToDevice, stream_));
    const size_t per_s = (size_t)num_blocks_ * block_size_ * heads_, block_s = (size_t)block_size_ * heads_;
    float* scales = reinterpret_cast<float*>(kv8_ + per * 2 * L_);
    GLM_CUDA_CHECK(cudaMemcpy2DAsync(scales + dst * block_s, per_s * sizeof(float), scales + src * block_s,
                                     per_s * sizeof(float), block_s * sizeof(float), (size_t)2 * L_,
                                     cudaMemcpyDeviceToDevice, stream_));
    return;
  }
  GLM_CUDA_CHECK(cudaMemcpy2DAsync(kv_ + (size_t)dst * block, per * sizeof(__half), kv_ + (size_t)src * block,
                                   per * sizeof(__half), block * sizeof(__half), (size_t)2 * L_,
                                   cudaMemcpyDeviceToDevice, stream_));
}

int CudaRunner::plan_kv_blocks(const EngineOptions& opts) const {
  if (opts.num_kv_blocks > 0) return opts.num_kv_blocks;
  size_t free_b = 0, total_b = 0;
  GLM_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  const double fraction = opts.kv_cache_fraction > 0 && opts.kv_cache_fraction <= 1 ? opts.kv_cache_fraction : 0.9;
  // Keep room for cuBLAS, graphs and the debug logits buffer.
  const int64_t reserve = 1ll << 30;
  const int64_t usable = static_cast<int64_t>(static_cast<double>(free_b) * fraction) - reserve;
  const int64_t by_bytes = usable / kv_block_bytes(opts.block_size);
  const int64_t per_seq = (cfg_.max_sequence_length + opts.block_size - 1) / opts.block_size;
  const int64_t cap = per_seq * std::max(1, opts.max_running_seqs);
  const int64_t n = std::min(by_bytes, cap);
  if (n < 1)
    throw EngineError("device cuda: no GPU memory left for the KV cache (" + std::to_string(free_b >> 20) +
                      " MiB free after the weights)");
  return static_cast<int>(std::min<int64_t>(n, 1 << 30));
}

void CudaRunner::allocate_kv_cache(int num_blocks, int block_size) {
  if (block_size != opts_.block_size)
    throw EngineError("device cuda: allocate_kv_cache block_size differs from the engine option");
  if (kv_) cudaFree(kv_);
  kv_ = nullptr;
  if (kv8_) cudaFree(kv8_);
  kv8_ = nullptr;
  clear_graphs();
  num_blocks_ = num_blocks;
  block_size_ = block_size;
  const size_t per = (size_t)num_blocks * block_size * H_;  // one layer's K (or V)
  if (kv_fp8_) {
    const size_t per_s = (size_t)num_blocks * block_size * heads_;  // one layer's K (or V) scales
    const size_t bytes = 2 * L_ * (per + per_s * sizeof(float));
    const cudaError_t e8 = cudaMalloc(&kv8_, bytes);
    if (e8 != cudaSuccess) {
      cudaGetLastError();
      throw EngineError("device cuda: cannot allocate the fp8 KV cache (" + std::to_string(num_blocks) + " blocks, " +
                        std::to_string(bytes >> 20) + " MiB): " + cudaGetErrorString(e8));
    }
    if (opts_.cuda.poison & 1) {  // codes 0x7F are NaN, scales 0xFFFFFFFF too
      GLM_CUDA_CHECK(cudaMemset(kv8_, 0xFF, bytes));
      GLM_CUDA_CHECK(cudaDeviceSynchronize());
    }
    float* scales = reinterpret_cast<float*>(kv8_ + per * 2 * L_);
    k8_layer_.resize(L_);
    v8_layer_.resize(L_);
    ks_layer_.resize(L_);
    vs_layer_.resize(L_);
    for (int l = 0; l < L_; ++l) {
      k8_layer_[l] = kv8_ + (size_t)(2 * l) * per;
      v8_layer_[l] = kv8_ + (size_t)(2 * l + 1) * per;
      ks_layer_[l] = scales + (size_t)(2 * l) * per_s;
      vs_layer_[l] = scales + (size_t)(2 * l + 1) * per_s;
    }
    capture_all_graphs();
    return;
  }
  cudaError_t e = cudaMalloc(&kv_, per * 2 * L_ * sizeof(__half));
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw EngineError("device cuda: cannot allocate the KV cache (" + std::to_string(num_blocks) + " blocks, " +
                      std::to_string((per * 2 * L_ * 2) >> 20) + " MiB): " + cudaGetErrorString(e));
  }
  if (opts_.cuda.poison & 1) {
    GLM_CUDA_CHECK(cudaMemset(kv_, 0xFF, per * 2 * L_ * sizeof(__half)));
    GLM_CUDA_CHECK(cudaDeviceSynchronize());
  }
  k_layer_.resize(L_);
  v_layer_.resize(L_);
  for (int l = 0; l < L_; ++l) {
    k_layer_[l] = kv_ + (size_t)(2 * l) * per;
    v_layer_[l] = kv_ + (size_t)(2 * l + 1) * per;
  }
  capture_all_graphs();
}

void CudaRunner::capture_all_graphs() {
  graphs_at_start_ = 0;
  if (!opts_.use_cuda_graphs || !opts_.cuda.graphs_at_start) return;
  for (int Sp : buckets_) {
    const size_t nints = meta_ints(Sp, Sp);
    ensure_host(0, nints);
    int32_t* host = meta_host_[0];
    std::fill(host, host + nints, 0);
    const Meta h = meta_at(host, Sp, Sp);
    for (int r = 0; r < Sp; ++r) {
      h.slot[r] = -1;  // as the padding rows of enqueue_model
      h.sel_rows[r] = r;
    }
    GLM_CUDA_CHECK(cudaMemcpyAsync(meta_dev_, host, nints * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    // the bucket's graph, and its split-KV variant where long contexts would split
    for (const int splits : {1, attention_splits(Sp, 1 << 30)}) {
      if (graphs_.count(graph_key(Sp, splits))) continue;
      run_model(meta_at(meta_dev_, Sp, Sp), Sp, Sp, logits_, splits);
      GLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
      capture_graph(Sp, splits);
    }
    ++graphs_at_start_;
  }
}

void CudaRunner::run_model(const Meta& m, int T, int R, float* logits, int splits) {
  cudaStream_t s = stream_;
  const float eps = cfg_.layernorm_epsilon;
  cuda::RotaryParams rp;
  rp.heads = heads_;
  rp.head_dim = hd_;
  rp.block_size = block_size_;
  rp.inv_freq = inv_freq_;
  rp.fp16_angles = opts_.cuda.rotary_fp16;
  rp.stage_rows = kv_fp8_;
  cuda::AttentionParams ap;
  ap.heads = heads_;
  ap.head_dim = hd_;
  ap.block_size = block_size_;
  ap.max_blocks_per_seq = mbps_;
  ap.max_keys = cfg_.max_prefix_len + cfg_.max_sequence_length;
  ap.scale = 1.0f / std::sqrt(static_cast<float>(hd_));
  ap.warp_per_pair = opts_.cuda.attention_warp;
  ap.one_pass = opts_.cuda.attention_one_pass;
  ap.splits = splits;
  ap.split_scratch = split_scratch_;
  ap.split_scratch_floats = split_scratch_floats_;

  cuda::add_layernorm(nullptr, 0.f, emb_, nullptr, m.tokens, layers_[0].ln_in_w, layers_[0].ln_in_b, eps, a_, T,
                      H_, s);
  for (int l = 0; l < L_; ++l) {
    const Layer& w = layers_[l];
    lin(a_, w.wqkv, w.qkv8, w.qkvf, qkv_, T, H_, 3 * H_);
    if (kv_fp8_) {
      // K and V rows staged in d_ and f_ (both free until the dense layer), then quantized into the cache.
      cuda::qkv_rotary_kv_write(qkv_, w.bqkv, m.pos, m.bpos, m.slot, rp, q_, d_, f_, T, s);
      cuda::kv_fp8_write(d_, f_, m.slot, heads_, hd_, block_size_, k8_layer_[l], ks_layer_[l], v8_layer_[l],
                         vs_layer_[l], T, s);
      cuda::paged_attention_fp8(q_, k8_layer_[l], v8_layer_[l], ks_layer_[l], vs_layer_[l], m.tok_seq, m.n_keys,
                                m.tables, ap, att_, T, s);
    } else {
      cuda::qkv_rotary_kv_write(qkv_, w.bqkv, m.pos, m.bpos, m.slot, rp, q_, k_layer_[l], v_layer_[l], T, s);
      cuda::paged_attention(q_, k_layer_[l], v_layer_[l], m.tok_seq, m.n_keys, m.tables, ap, att_, T, s);
    }
    lin(att_, w.wdense, w.dense8, w.densef, d_, T, H_, H_);
    cuda::add_layernorm(a_, alpha_, d_, w.bdense, nullptr, w.ln_post_w, w.ln_post_b, eps, m_, T, H_, s);
    lin(m_, w.w1, w.w18, w.w1f, f_, T, H_, I_, w.b1, /*gelu=*/true, w.b1h);
    lin(f_, w.w2, w.w28, w.w2f, d_, T, I_, H_);
    if (l + 1 < L_) {
      const Layer& nx = layers_[l + 1];
      cuda::add_layernorm(m_, alpha_, d_, w.b2, nullptr, nx.ln_in_w, nx.ln_in_b, eps, a_, T, H_, s);
    } else {
      cuda::add_layernorm(m_, alpha_, d_, w.b2, m.sel_rows, lnf_w_, lnf_b_, eps, hfinal_, R, H_, s);
    }
  }
  if (lm_head8_.q)
    int8_gemm_->linear_f32out(hfinal_, lm_head8_, logits, R, H_, V_);
  else
    gemm_->linear_f32out(hfinal_, lm_head_, logits, R, H_, V_);
}

void CudaRunner::forward(const StepBatch& batch, int32_t* next_tokens, std::vector<float>* all_logits) {
  if (!batch.want_all_logits) {
    if (!pending_.empty()) throw EngineError("cuda runner: forward while a launched step is not collected");
    launch(batch);
    collect(next_tokens);
    return;
  }
  if (!pending_.empty()) throw EngineError("cuda runner: forward while a launched step is not collected");
  try {
    enqueue_model(batch, 0);
    int R = 0;
    for (const SeqBatchEntry& e : batch.seqs) R += e.num_tokens;
    all_logits->resize((size_t)R * V_);
    GLM_CUDA_CHECK(cudaMemcpyAsync(all_logits->data(), dbg_logits_, (size_t)R * V_ * sizeof(float),
                                   cudaMemcpyDeviceToHost, stream_));
    GLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
  } catch (const EngineError&) {
    throw;
  } catch (const std::exception& e) {
    throw EngineError(std::string("cuda runner: ") + e.what());
  }
}

void CudaRunner::enqueue_model(const StepBatch& batch, int buf) {
  if (!kv_ && !kv8_) throw EngineError("cuda runner: forward before allocate_kv_cache");
  const int S = static_cast<int>(batch.seqs.size());
  if (S == 0) throw EngineError("cuda runner: a step with no sequences");
  if (S > max_seqs_) throw EngineError("cuda runner: more sequences in a step than max_running_seqs");
  int T = 0;
  bool decode_only = !batch.want_all_logits, feeds = false;
  for (const SeqBatchEntry& e : batch.seqs) {
    if (e.num_tokens < 1) throw EngineError("cuda runner: a sequence with no tokens in the batch");
    const int total = e.num_cached + e.num_tokens;
    if (total > cfg_.max_sequence_length) throw EngineError("cuda runner: sequence longer than max_sequence_length");
    if (e.num_blocks > mbps_ || static_cast<int64_t>(e.num_blocks) * block_size_ < e.prefix_len + total)
      throw EngineError("cuda runner: block table too short for the sequence");
    for (int b = 0; b < e.num_blocks; ++b)
      if (e.block_table[b] < 0 || e.block_table[b] >= num_blocks_) throw EngineError("cuda runner: bad KV block id");
    if (e.prev_row >= 0) {
      if (batch.want_all_logits || e.num_tokens != 1 || pending_.empty() || e.prev_row >= pending_.back().S)
        throw EngineError("cuda runner: prev_row " + std::to_string(e.prev_row) +
                          " does not name a row of the step launched before");
      feeds = true;
    } else {
      for (int j = 0; j < e.num_tokens; ++j)
        if (e.tokens[j] < 0 || e.tokens[j] >= V_) throw EngineError("cuda runner: token id out of range");
    }
    T += e.num_tokens;
    if (e.num_tokens != 1) decode_only = false;
  }
  if (T > max_tokens_) {
    settle_pending();
    clear_graphs();
    alloc_activations(T + max_seqs_);
  }
  const int R = batch.want_all_logits ? T : S;
  // Padding to a graph bucket (decode steps only).
  int Tp = T, Sp = S;
  const bool use_graph = decode_only && opts_.use_cuda_graphs;
  if (use_graph) {
    Sp = *std::lower_bound(buckets_.begin(), buckets_.end(), S);
    Tp = Sp;
  }
  const size_t nints = meta_ints(Tp, Sp);
  ensure_host(buf, nints);
  int32_t* host = meta_host_[buf];
  Meta h = meta_at(host, Tp, Sp);
  std::fill(host, host + nints, 0);
  int row = 0;
  for (int i = 0; i < S; ++i) {
    const SeqBatchEntry& e = batch.seqs[i];
    const int total = e.num_cached + e.num_tokens, P = e.prefix_len;
    std::memcpy(h.tables + (size_t)i * mbps_, e.block_table, sizeof(int32_t) * e.num_blocks);
    for (int j = 0; j < e.num_tokens; ++j, ++row) {
      const int t = e.num_cached + j, kv = P + t;  // an adapter's prefix takes KV slots [0, P)
      h.tokens[row] = e.prev_row >= 0 ? 0 : e.tokens[j];
      h.pos[row] = e.position_ids[j];
      h.bpos[row] = e.block_position_ids[j];
      h.slot[row] = e.block_table[kv / block_size_] * block_size_ + kv % block_size_;
      h.tok_seq[row] = i;
      h.n_keys[row] = P + std::min(total, std::max(e.context_length, t + 1));
      if (batch.want_all_logits) h.sel_rows[row] = row;
    }
    if (!batch.want_all_logits) h.sel_rows[i] = row - 1;
    h.prev[i] = e.prev_row;
  }
  for (int r = T; r < Tp; ++r) {
    h.slot[r] = -1;  // padding: no KV write, no attention (n_keys 0)
    h.sel_rows[r] = r;
  }
  // Split-KV for decode steps of few sequences with long contexts (tuning attention_split_min_keys).
  int splits = 1;
  if (decode_only && opts_.cuda.attention_split_min_keys > 0)  // off: no scan of the step's rows
    splits = attention_splits(Tp, *std::max_element(h.n_keys, h.n_keys + T));
  GLM_CUDA_CHECK(cudaMemcpyAsync(meta_dev_, host, nints * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
  const Meta dm = meta_at(meta_dev_, Tp, Sp);
  // Decode ids the host has not seen: from the previous step's sampled ids, on the device.
  if (feeds) cuda::feed_prev_tokens(dm.tokens, dm.sel_rows, dm.prev, S, out_dev_, stream_);

  if (batch.want_all_logits && R > dbg_rows_) {
    if (dbg_logits_) cudaFree(dbg_logits_);
    dbg_logits_ = nullptr;
    dbg_logits_ = dev_alloc<float>((size_t)R * V_);
    dbg_rows_ = R;
  }
  const int key = graph_key(Sp, splits);
  auto it = use_graph ? graphs_.find(key) : graphs_.end();
  if (use_graph && it == graphs_.end() && (splits == 1 || split_eager_.count(key))) it = capture_graph(Sp, splits);
  if (it != graphs_.end()) {
    GLM_CUDA_CHECK(cudaGraphLaunch(it->second, stream_));
  } else if (use_graph) {
    // A split-KV variant not captured at start runs eagerly once first: its kernels are
    // then loaded, and the next such step captures it.
    run_model(dm, Tp, R, logits_, splits);
    split_eager_.insert(key);
  } else {
    run_model(dm, Tp, R, batch.want_all_logits ? dbg_logits_ : logits_, splits);
  }
}

std::map<int, cudaGraphExec_t>::iterator CudaRunner::capture_graph(int Sp, int splits) {
  settle_pending();  // capture on an idle stream
  const Meta dm = meta_at(meta_dev_, Sp, Sp);
  cudaGraph_t g = nullptr;
  GLM_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  try {
    run_model(dm, Sp, Sp, logits_, splits);
  } catch (...) {
    cudaStreamEndCapture(stream_, &g);
    if (g) cudaGraphDestroy(g);
    throw;
  }
  GLM_CUDA_CHECK(cudaStreamEndCapture(stream_, &g));
  cudaGraphExec_t ge = nullptr;
  const cudaError_t e = cudaGraphInstantiate(&ge, g, 0);
  cudaGraphDestroy(g);
  GLM_CUDA_CHECK(e);
  return graphs_.emplace(graph_key(Sp, splits), ge).first;
}

void CudaRunner::launch(const StepBatch& batch) {
  using clk = std::chrono::steady_clock;
  const auto t_enter = clk::now();
  auto secs = [](clk::time_point a, clk::time_point b) { return std::chrono::duration<double>(b - a).count(); };
  if (timing_ && t_steps_ > 0) t_outside_ += secs(t_last_end_, t_enter);
  if (batch.want_all_logits) throw EngineError("cuda runner: launch of a step that does not sample");
  if (pending_.size() >= 2) throw EngineError("cuda runner: a third step launched before one was collected");
  const int S = static_cast<int>(batch.seqs.size());
  const int buf = next_buf_;
  try {
    enqueue_model(batch, buf);
    const auto t_model = clk::now();

    // Sampling inputs: repetition-penalty rows (+ history), presence/frequency rows
    // (+ the generated ids with their counts), sampled rows (+ params), rows that
    // want log-probabilities.
    std::vector<int32_t> pen_rows, hist_off(1, 0), hist, samp_rows, pf_rows, pf_off(1, 0), pf_ids, pf_counts,
        lp_rows;
    std::vector<float> pen, pf_presence, pf_frequency;
    std::vector<cuda::SampleRowParams> sp;
    Pending p;
    p.buf = buf;
    p.S = S;
    for (int i = 0; i < S; ++i) {
      const SeqBatchEntry& e = batch.seqs[i];
      const SamplingParams& sprm = *e.params;
      if (sprm.has_penalties() && e.prev_row >= 0)
        throw EngineError("cuda runner: penalties need every previous id on the host (prev_row given)");
      if (sprm.repetition_penalty != 1.0f && e.history_len > 0) {
        pen_rows.push_back(i);
        pen.push_back(sprm.repetition_penalty);
        hist.insert(hist.end(), e.history, e.history + e.history_len);
        hist_off.push_back(static_cast<int32_t>(hist.size()));
      }
      const int from = std::max(0, std::min(e.prompt_len, e.history_len));
      if ((sprm.presence_penalty != 0.0f || sprm.frequency_penalty != 0.0f) && e.history_len > from) {
        std::vector<int32_t> gen(e.history + from, e.history + e.history_len);
        std::sort(gen.begin(), gen.end());
        for (size_t a = 0; a < gen.size();) {
          size_t b = a;
          while (b < gen.size() && gen[b] == gen[a]) ++b;
          pf_ids.push_back(gen[a]);
          pf_counts.push_back(static_cast<int32_t>(b - a));
          a = b;
        }
        pf_rows.push_back(i);
        pf_presence.push_back(sprm.presence_penalty);
        pf_frequency.push_back(sprm.frequency_penalty);
        pf_off.push_back(static_cast<int32_t>(pf_ids.size()));
      }
      if (sprm.temperature != 0.0f) {
        samp_rows.push_back(i);
        sp.push_back(cuda::SampleRowParams{sprm.temperature, sprm.top_k, sprm.top_p, sprm.seed, e.rng_offset});
      }
      if (sprm.logprobs >= 0 && e.logprob_out) {
        lp_rows.push_back(i);
        const int n_top = std::min(sprm.logprobs, cuda::kMaxLogprobs);
        p.lp_outs.emplace_back(e.logprob_out, n_top);
        p.lp_top = std::max(p.lp_top, n_top);
      }
    }
    const int L = static_cast<int>(lp_rows.size());
    if (L > 0) ensure_logprob_buffers(L, p.lp_top);  // may settle: before this step's sampling is enqueued
    p.lp_cap = lp_cap_rows_;
    if (!pen_rows.empty() || !samp_rows.empty() || !pf_rows.empty() || L > 0) {
      auto al = [](size_t x) { return (x + 255) & ~size_t(255); };
      size_t total = 0;
      auto place = [&](size_t bytes) {
        const size_t at = total;
        total = al(total + bytes);
        return at;
      };
      const size_t o_pr = place(pen_rows.size() * 4), o_pen = place(pen.size() * 4),
                   o_hoff = place(hist_off.size() * 4), o_hist = place(hist.size() * 4),
                   o_sr = place(samp_rows.size() * 4), o_sp = place(sp.size() * sizeof(cuda::SampleRowParams)),
                   o_fr = place(pf_rows.size() * 4), o_fp = place(pf_presence.size() * 4),
                   o_ff = place(pf_frequency.size() * 4), o_fo = place(pf_off.size() * 4),
                   o_fi = place(pf_ids.size() * 4), o_fc = place(pf_counts.size() * 4), o_lr = place(lp_rows.size() * 4);
      if (total > samp_cap_) {
        settle_pending();
        if (samp_dev_) cudaFree(samp_dev_);
        samp_dev_ = nullptr;
        for (char*& hbuf : samp_host_) {
          if (hbuf) cudaFreeHost(hbuf);
          hbuf = nullptr;
        }
        samp_cap_ = total * 2;
        GLM_CUDA_CHECK(cudaMalloc(&samp_dev_, samp_cap_));
        for (char*& hbuf : samp_host_) GLM_CUDA_CHECK(cudaMallocHost(&hbuf, samp_cap_));
      }
      char* stage = samp_host_[buf];
      auto put = [&](size_t off, const auto& v) {
        if (!v.empty()) std::memcpy(stage + off, v.data(), v.size() * sizeof(v[0]));
      };
      put(o_pr, pen_rows);
      put(o_pen, pen);
      put(o_hoff, hist_off);
      put(o_hist, hist);
      put(o_sr, samp_rows);
      put(o_sp, sp);
      put(o_fr, pf_rows);
      put(o_fp, pf_presence);
      put(o_ff, pf_frequency);
      put(o_fo, pf_off);
      put(o_fi, pf_ids);
      put(o_fc, pf_counts);
      put(o_lr, lp_rows);
      GLM_CUDA_CHECK(cudaMemcpyAsync(samp_dev_, stage, total, cudaMemcpyHostToDevice, stream_));
      auto dev_i = [&](size_t off) { return reinterpret_cast<int32_t*>(samp_dev_ + off); };
      auto dev_f = [&](size_t off) { return reinterpret_cast<float*>(samp_dev_ + off); };
      // Log-probabilities are of the raw logits: keep those rows before the penalties.
      if (L > 0) cuda::copy_rows(logits_, V_, dev_i(o_lr), L, lp_rows_dev_, stream_);
      if (!pen_rows.empty())
        cuda::repetition_penalty(logits_, V_, dev_i(o_pr), dev_f(o_pen), dev_i(o_hist), dev_i(o_hoff),
                                 (int)pen_rows.size(), stream_);
      if (!pf_rows.empty())
        cuda::presence_frequency_penalty(logits_, V_, dev_i(o_fr), dev_f(o_fp), dev_f(o_ff), dev_i(o_fi),
                                         dev_i(o_fc), dev_i(o_fo), (int)pf_rows.size(), stream_);
      cuda::argmax_rows(logits_, V_, S, out_dev_, argmax_scratch_, stream_);
      if (!samp_rows.empty())
        cuda::sample_rows(logits_, V_, dev_i(o_sr), reinterpret_cast<cuda::SampleRowParams*>(samp_dev_ + o_sp),
                          (int)samp_rows.size(), samp_ws_, samp_ws_bytes_, out_dev_, stream_);
      if (L > 0) {
        cuda::logprob_rows(lp_rows_dev_, V_, dev_i(o_lr), L, out_dev_, p.lp_top, lp_out_dev_,
                           reinterpret_cast<int32_t*>(lp_out_dev_ + lp_cap_rows_),
                           lp_out_dev_ + (size_t)lp_cap_rows_ * (1 + cuda::kMaxLogprobs), stream_);
        const size_t words = (size_t)lp_cap_rows_ * (1 + 2 * cuda::kMaxLogprobs);
        GLM_CUDA_CHECK(
            cudaMemcpyAsync(lp_out_host_[buf], lp_out_dev_, words * 4, cudaMemcpyDeviceToHost, stream_));
      }
    } else {
      cuda::argmax_rows(logits_, V_, S, out_dev_, argmax_scratch_, stream_);
    }
    GLM_CUDA_CHECK(cudaMemcpyAsync(out_host_[buf], out_dev_, sizeof(int32_t) * S, cudaMemcpyDeviceToHost, stream_));
    GLM_CUDA_CHECK(cudaEventRecord(done_[buf], stream_));
    pending_.push_back(std::move(p));
    next_buf_ = 1 - buf;
    if (timing_) {
      const auto t_end = clk::now();
      t_prep_ += secs(t_enter, t_model);
      t_enqueue_ += secs(t_model, t_end);
    }
  } catch (const EngineError&) {
    throw;
  } catch (const std::exception& e) {
    throw EngineError(std::string("cuda runner: ") + e.what());
  }
}

void CudaRunner::collect(int32_t* next_tokens) {
  using clk = std::chrono::steady_clock;
  if (pending_.empty()) throw EngineError("cuda runner: collect with no launched step");
  const auto t0 = clk::now();
  try {
    Pending& p = pending_.front();
    const int32_t* ids = p.settled ? p.ids.data() : out_host_[p.buf];
    const float* lp_words = p.settled ? p.lp_words.data() : lp_out_host_[p.buf];
    if (!p.settled) GLM_CUDA_CHECK(cudaEventSynchronize(done_[p.buf]));
    std::memcpy(next_tokens, ids, sizeof(int32_t) * p.S);
    for (size_t r = 0; r < p.lp_outs.size(); ++r) {
      TokenLogprob* out = p.lp_outs[r].first;
      const int n_top = p.lp_outs[r].second;
      const int32_t* top_ids = reinterpret_cast<const int32_t*>(lp_words + p.lp_cap) + r * p.lp_top;
      const float* top = lp_words + (size_t)p.lp_cap * (1 + cuda::kMaxLogprobs) + r * p.lp_top;
      out->logprob = lp_words[r];
      out->top_ids.assign(top_ids, top_ids + n_top);
      out->top_logprobs.assign(top, top + n_top);
    }
    pending_.pop_front();
  } catch (const EngineError&) {
    throw;
  } catch (const std::exception& e) {
    throw EngineError(std::string("cuda runner: ") + e.what());
  }
  if (timing_) {
    const auto t_end = clk::now();
    t_wait_ += std::chrono::duration<double>(t_end - t0).count();
    t_last_end_ = t_end;
    ++t_steps_;
  }
}

}  // namespace

std::unique_ptr<ModelRunner> make_cuda_runner(const ModelConfig& cfg, const EngineOptions& opts) {
  return std::make_unique<CudaRunner>(cfg, opts);
}

}  // namespace glm
