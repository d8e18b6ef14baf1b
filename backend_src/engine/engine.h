// The public API of the ChatGLM inference engine. No Triton, no CUDA, no
// pybind11 in here: the Triton backend, the Python module, tests and the
// benchmark all use exactly this.
//
// Threading: submit() and cancel() are thread-safe and never block on compute.
// The step loop runs on one thread (start() launches it, or a caller drives
// step() itself). Callbacks run on the step-loop thread; they must be quick
// (copy the tokens, hand them to another thread) and must not call back into
// the engine except cancel().
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace glm {

// What kind of failure an EngineError is. Callers branch on this, never on the text.
enum class ErrorCode {
  kInvalidArgument,  // a bad request, option, config or weight file: the caller must fix it
  kUnavailable,      // the engine cannot take it now (queue full, unhealthy): retry later
  kInternal,         // a failure of the engine itself
};
const char* to_string(ErrorCode c);  // "invalid_argument", "unavailable", "internal"

// Raised for bad configuration, bad weight files, bad requests. The message
// names the offending field or file. For a request, what() is "request <id>: "
// + detail(), and field() names the request field at fault (or is empty).
class EngineError : public std::runtime_error {
 public:
  explicit EngineError(const std::string& message, ErrorCode code = ErrorCode::kInvalidArgument,
                       std::string field = "", std::string detail = "")
      : std::runtime_error(message),
        code_(code),
        field_(std::move(field)),
        detail_(detail.empty() ? message : std::move(detail)) {}
  ErrorCode code() const { return code_; }
  const std::string& field() const { return field_; }
  const std::string& detail() const { return detail_; }  // the message without the request id

 private:
  ErrorCode code_;
  std::string field_;
  std::string detail_;
};

// Tuning of the CUDA back-end (device "cuda"; the cpu back-end ignores it). The
// defaults are the measured fastest (docs/cuda_notes.md, docs/int8.md); the other
// values are there for A/B measurements and debugging. Each field is also settable
// by name (cuda_tuning.h): the Triton parameter and Python keyword "cuda_<field>",
// the CLIs' flag --cuda-<field> (docs/cuda_notes.md lists them).
struct CudaTuning {
  // Rotary angle and cos/sin rounded to fp16, as THUDM's code does in an fp16 run
  // (angles above 1024 become whole radians); false: fp32 angles (docs/cuda_notes.md).
  bool rotary_fp16 = false;
  // Programmatic dependent launch on sm_90 and newer. Process-wide: the engine
  // created last decides for every engine of the process.
  bool pdl = true;
  // Warp-per-(token, head) paged attention when there are >= 2048 such pairs
  // (head_dim 64 or 128); off: one block per pair (v5 found the warp kernel no faster,
  // docs/cuda_notes.md).
  bool attention_warp = false;
  // Paged attention in one pass over the keys: each key's K and V loaded in the same round,
  // an online softmax in registers, no scores array (docs/cuda_notes.md "One-pass
  // attention"); the value is the keys each lane group loads per round: 2, 4 or 8 (0 = off,
  // the two-phase kernel). Off until measured on a GPU (issue 18). Takes precedence over
  // attention_warp.
  int attention_one_pass = 0;
  // fp16 linears: the weight-streaming GEMV up to this many tokens, cuBLAS above
  // (0 = cuBLAS only; at most 8).
  int gemv_max_tokens = 4;
  // fp16 linears: the tensor-core GEMV (gemv_mma) above gemv_max_tokens up to this many
  // tokens, cuBLAS above (0 = never; at most 16). 16: batch 8 +2%, 16 +0.5% on an H100
  // (docs/cuda_notes.md, "Tensor-core GEMV for 5-16 tokens").
  int gemv_mma_max_tokens = 16;
  // fp16 linears that cuBLAS runs (above the GEMVs): the h_to_4h bias and GeLU in
  // cuBLASLt's GELU_BIAS epilogue, on the fp32 sums with the bias as fp16, instead of a
  // bias_gelu pass over the fp16 product. On: batch 64 +1.2%, 256 +2.3% on an H100
  // (docs/cuda_notes.md, "Bias + GeLU in the GEMM epilogue").
  bool gemm_gelu_epilogue = true;
  // int8 mode: lm_head quantized too, as a checkpoint with quantization.lm_head has it.
  // fp8 mode: lm_head int8 weight-only per channel (the int8 kernels) instead of fp16.
  bool int8_lm_head = false;
  // int8 mode on Hopper (a build with sm_90a code): the block linears rewritten into
  // the packed layout of their fastest kernels at load; false keeps the row-major ones.
  bool int8_packed = true;
  // int8 linears: the GEMV up to this many tokens (-1 = automatic: row-major 1 with
  // PDL and 2 without, packed 8; 0 = never; at most 8).
  int int8_gemv_max_tokens = -1;
  // int8 linears: the tensor-core kernel up to this many tokens, dequantization +
  // cuBLAS above (0 = never).
  int int8_mma_max_tokens = 256;
  // int8 linears: W8A8 (activations quantized per token, int8 tensor cores) from this
  // many tokens on (0 = never). Needs the row-major layout: on, the block linears are
  // not packed (docs/int8.md "W8A8 at large batch").
  int int8_w8a8_min_tokens = 0;
  // fp8 linears: the weight-only GEMV (E4M3 weights, fp16 activations not quantized) up
  // to this many tokens, cuBLASLt's FP8 GEMM above (0 = never; at most 8). 2: measured
  // fastest on an H100 (docs/int8.md "FP8 GEMV for small batches").
  int fp8_gemv_max_tokens = 2;
  // Decode attention: split each (token, head)'s keys over several blocks (split-KV, then
  // a combining kernel) in decode steps whose longest context has at least this many keys
  // and that have fewer than 4 (token, head) pairs per SM (0 = never). 64 measured fastest
  // on an H100 (docs/cuda_notes.md "Split-KV decode attention"): faster at every context
  // measured, up to 2.2x per step at batch 1 with 1,500-token prompts.
  int attention_split_min_keys = 64;
  // CUDA graphs (EngineOptions::use_cuda_graphs): capture the decode graph of every
  // padded batch-size bucket when the KV cache is allocated, so that no request pays a
  // capture; false: each bucket's graph on its first decode step.
  bool graphs_at_start = true;
  // Debugging: NaN written at allocation into the KV cache (1), the activations (2) or both (3).
  int poison = 0;
  // Host-side time per step (preparation, enqueue, wait), printed to stderr when the runner goes.
  bool timing = false;
};

// Throws EngineError for a CudaTuning integer field out of its range (Engine::create
// calls it). Setting the fields by name: cuda_tuning.h.
void validate_cuda_tuning(const CudaTuning& tuning);

// Everything chosen once, at engine creation. Parsed and validated once.
struct EngineOptions {
  std::string checkpoint_dir;      // converted checkpoint: config.json + model.safetensors
  std::string device = "cpu";      // "cpu" or "cuda"
  int device_id = 0;               // GPU ordinal for "cuda"
  std::string dtype = "fp32";      // "fp32" (cpu) or "fp16" (cuda)
  bool int8 = false;               // INT8 weight-only linear layers
  bool fp8 = false;                // FP8 E4M3 block linears, weights and activations (device cuda, sm_89+)
  // "auto": the compute dtype (fp32 on cpu, fp16 on cuda); "fp8": E4M3 with one scale per
  // (token, head), quantized at write, dequantized inside attention (about 2x the blocks).
  std::string kv_cache_dtype = "auto";
  bool random_weights = false;     // real shapes from config.json, weights from `weights_seed`
  uint64_t weights_seed = 0;
  int block_size = 16;             // tokens per KV block
  int num_kv_blocks = 0;           // > 0: exactly this many blocks
  double kv_cache_fraction = 0.9;  // used when num_kv_blocks == 0 (cuda: of free memory after weights)
  int64_t kv_cache_bytes = 0;      // cpu: bytes for the KV cache when num_kv_blocks == 0 (0 = 1 GiB, at least one full-length sequence)
  int max_running_seqs = 256;      // upper bound on sequences in one step's batch
  int max_batched_tokens = 4096;   // prefill tokens admitted in one step (at least one prompt always)
  int max_queue = 0;               // waiting requests beyond this are refused (0 = unbounded)
  int num_threads = 0;             // cpu compute threads (0 = hardware concurrency)
  bool use_cuda_graphs = true;     // cuda decode steps
  // The host prepares step n+1 while the back-end runs step n: sampled ids stay on
  // the device and feed the next step there; the engine learns them one step later
  // (a choice that ended is dropped at the next step, its extra token discarded).
  // Steps of requests with penalties (which need every previous id) run synchronously.
  bool overlap_steps = true;
  CudaTuning cuda;                 // cuda back-end kernels and debugging aids (above)
  std::string adapters_dir;        // prefix adapters (adapters.h); "" = <checkpoint_dir>/adapters
};

// Per-request decoding parameters. One semantics on every back-end:
// repetition penalty (HF: over prompt + generated ids) -> temperature -> top-k -> top-p.
// The allowed values come from the request contract (glmserve/contract.py, generated
// into request_fields.gen.h): each member is bound to its field there.
struct SamplingParams {
  int max_tokens = 128;            // new tokens, >= 1
  float temperature = 0.0f;        // 0 = greedy (argmax after the penalties)
  int top_k = 0;                   // 0 = off
  float top_p = 1.0f;              // (0, 1]
  float repetition_penalty = 1.0f; // > 0; 1 = off (HF: over prompt + generated ids)
  float presence_penalty = 0.0f;   // OpenAI: logit -= presence, for ids generated at least once
  float frequency_penalty = 0.0f;  // OpenAI: logit -= frequency * times generated
  uint64_t seed = 0;               // same seed -> same tokens, whatever else is batched
  bool ignore_eos = false;         // keep going past <eop>
  int n = 1;                       // choices of one prompt (one prefill); choice i draws from seed + i
  int logprobs = -1;               // -1 = off; else each token's log-probability + this many alternatives
  std::vector<std::string> stop;   // stop strings (UTF-8): generation ends when the text contains one
  std::vector<int32_t> stop_token_ids;  // generation ends at any of these ids
  bool include_stop_str_in_output = false;  // keep the stop string (or stop id's text) in the text
  std::string adapter;             // a loaded prefix adapter's name; "" = the base model

  // Whether a draw reads the previous ids (repetition / presence / frequency penalties).
  bool has_penalties() const {
    return repetition_penalty != 1.0f || presence_penalty != 0.0f || frequency_penalty != 0.0f;
  }
};

// Why a choice ended. kStop: a stop string or stop id (kEos: <eop>).
enum class FinishReason { kNone = 0, kEos, kLength, kContextLimit, kCancelled, kError, kStop };
const char* to_string(FinishReason r);

// One generated token's log-probabilities: log-softmax of the model's raw fp32
// logits (before penalties and temperature), the generated id and the `logprobs`
// most likely ids (most likely first; equal values: lower id first).
struct TokenLogprob {
  float logprob = 0.0f;
  std::vector<int32_t> top_ids;
  std::vector<float> top_logprobs;
};

// What a step reports for one choice of a request. `new_tokens` holds the ids
// released since the last event (normally one; none while ids that may begin a
// stop string are held back; several when they are released). `choice_finished`
// is true on a choice's last event; `finished` is true exactly once per request,
// on its very last event (all choices done); after it no more events come for
// that id. A request cancelled before its prefill ends with one event for choice 0.
struct TokenEvent {
  uint64_t request_id = 0;
  int choice = 0;                  // 0 .. n-1
  std::vector<int32_t> new_tokens;
  std::vector<TokenLogprob> logprobs;  // one per new token when params.logprobs >= 0
  bool choice_finished = false;
  bool finished = false;
  FinishReason reason = FinishReason::kNone;  // set on the choice's last event
  std::string error;               // set when reason == kError
  int trim_bytes = 0;              // last event of a stop: bytes to cut from the end of the choice's text
  int prompt_tokens = 0;           // the prompt's length (every event)
  int completion_tokens = 0;       // ids this choice generated so far (held ones included)
};
using TokenCallback = std::function<void(const TokenEvent&)>;

struct EngineStats {
  int running = 0;                 // sequences in the running batch
  int waiting = 0;                 // queued, not yet admitted
  int kv_blocks_used = 0;
  int kv_blocks_total = 0;
  int64_t tokens_generated = 0;    // since start
  int64_t requests_finished = 0;
  int64_t steps = 0;
  int max_batch_seen = 0;          // largest number of sequences in one step so far
  bool healthy = true;             // false after an unrecoverable back-end fault
  int64_t preemptions = 0;         // running sequences sent back to the queue (KV cache full)
  int kv_blocks_reserved = 0;      // held from the start by the adapters' prefixes (in kv_blocks_used)
};

class Engine {
 public:
  // Loads and validates config + weights, builds the compute back-end, sizes
  // the KV cache. Throws EngineError with a clear message.
  static std::unique_ptr<Engine> create(const EngineOptions& options);
  virtual ~Engine() = default;

  struct ModelInfo { int vocab_size, hidden_size, num_layers, max_sequence_length,
                     eos_token_id, bos_token_id, gmask_token_id, mask_token_id; };
  virtual ModelInfo model_info() const = 0;
  // One line for logs from the compute back-end (ModelRunner::describe), "" if none.
  virtual std::string backend_description() const = 0;

  // Validates and enqueues. Throws EngineError (message names the field) for
  // a bad request (kInvalidArgument): empty or out-of-vocabulary ids, prompt +
  // max_tokens over the context, a request that can never fit in the KV cache,
  // bad params, a duplicate id; kUnavailable for a full queue or an unhealthy engine.
  virtual void submit(uint64_t request_id, std::vector<int32_t> input_ids,
                      const SamplingParams& params, TokenCallback on_tokens) = 0;
  // Stops the sequence at the next step; its final event has kCancelled.
  // Unknown or finished ids are ignored.
  virtual void cancel(uint64_t request_id) = 0;

  // One scheduler iteration: admit waiting requests that fit, run one forward
  // pass for the batch (prefills and decodes together), sample, report.
  // Returns false when there was nothing to do.
  virtual bool step() = 0;
  // Background step loop: sleeps on a condition variable while idle.
  virtual void start() = 0;
  virtual void stop() = 0;   // finishes nothing: pending requests get kCancelled

  virtual EngineStats stats() const = 0;

  // Test hook: full-sequence logits through the KV-cache path. Each chunk is
  // run as one forward of a single sequence that keeps its KV cache between
  // chunks (chunk 0 = prefill). Returns [sum of chunk lengths, vocab] row-major.
  // Only valid while no requests are running.
  // With `adapter`, the sequence attends to that adapter's prefix.
  virtual std::vector<float> debug_forward(const std::vector<std::vector<int32_t>>& chunks,
                                           const std::string& adapter = "") = 0;
  // The loaded adapters' names (sorted).
  virtual std::vector<std::string> adapters() const = 0;

  // Test hook for the fault path: the next step fails inside the back-end.
  virtual void inject_fault() = 0;
};

}  // namespace glm
