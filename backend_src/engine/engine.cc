// EngineImpl: glm::Engine on top of the Scheduler, the BlockManager and a
// ModelRunner (cpu/ or cuda/).
//
// Locking: mu_ guards the scheduler, the block manager and the counters.
// step() holds it while planning and while applying results, never during the
// forward pass or the callbacks, so submit() and cancel() never wait for compute.
// Sequences in the running batch are only removed by the step thread, so the
// pointers handed to the runner stay valid during the forward.
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "block_manager.h"
#include "config.h"
#include "engine.h"
#include "model_runner.h"
#include "adapters.h"
#include "positions.h"
#include "request_fields.gen.h"
#include "scheduler.h"
#include "token_texts.h"

namespace glm {

const char* to_string(ErrorCode c) {
  switch (c) {
    case ErrorCode::kInvalidArgument: return "invalid_argument";
    case ErrorCode::kUnavailable: return "unavailable";
    case ErrorCode::kInternal: return "internal";
  }
  return "unknown";
}

const char* to_string(FinishReason r) {
  switch (r) {
    case FinishReason::kNone: return "none";
    case FinishReason::kEos: return "eos";
    case FinishReason::kLength: return "length";
    case FinishReason::kContextLimit: return "context_limit";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kError: return "error";
    case FinishReason::kStop: return "stop";
  }
  return "unknown";
}

#ifndef GLM_WITH_CUDA
std::unique_ptr<ModelRunner> make_cuda_runner(const ModelConfig&, const EngineOptions&) {
  throw EngineError("device \"cuda\" is not available: this build has no CUDA back-end "
                    "(nvcc or cuBLAS headers were not found at build time; rebuild with -DGLM_WITH_CUDA=ON)");
}
#endif

// One submitted request: its callback and its choices (engine.h, TokenEvent).
struct RequestGroup {
  uint64_t request_id = 0;
  TokenCallback on_tokens;
  int live = 1;                 // choices that have not sent their last event
  int prompt_len = 0;
  bool cancel_requested = false;
};

namespace {

void validate_options(const EngineOptions& o) {
  auto bad = [](const std::string& field, const std::string& what) { throw EngineError("engine option " + field + " " + what); };
  if (o.device != "cpu" && o.device != "cuda") bad("device", "must be \"cpu\" or \"cuda\", got \"" + o.device + "\"");
  if (o.block_size < 1 || o.block_size > 1024) bad("block_size", "must be in [1, 1024], got " + std::to_string(o.block_size));
  if (o.num_kv_blocks < 0) bad("num_kv_blocks", "must be >= 0 (0 = size from memory), got " + std::to_string(o.num_kv_blocks));
  if (!(o.kv_cache_fraction > 0.0 && o.kv_cache_fraction <= 1.0))
    bad("kv_cache_fraction", "must be in (0, 1], got " + std::to_string(o.kv_cache_fraction));
  if (o.kv_cache_bytes < 0) bad("kv_cache_bytes", "must be >= 0, got " + std::to_string(o.kv_cache_bytes));
  if (o.max_running_seqs < 1) bad("max_running_seqs", "must be >= 1, got " + std::to_string(o.max_running_seqs));
  if (o.max_batched_tokens < 1) bad("max_batched_tokens", "must be >= 1, got " + std::to_string(o.max_batched_tokens));
  if (o.max_queue < 0) bad("max_queue", "must be >= 0 (0 = unbounded), got " + std::to_string(o.max_queue));
  if (o.num_threads < 0) bad("num_threads", "must be >= 0 (0 = all cores), got " + std::to_string(o.num_threads));
  if (o.device_id < 0) bad("device_id", "must be >= 0, got " + std::to_string(o.device_id));
  if (o.fp8 && o.int8) bad("fp8", "and int8 are two modes: choose one");
  if (o.kv_cache_dtype != "auto" && o.kv_cache_dtype != "fp8")
    bad("kv_cache_dtype", "must be \"auto\" or \"fp8\", got \"" + o.kv_cache_dtype + "\"");
  if (o.fp8 && o.device != "cuda")
    bad("fp8", "needs device \"cuda\" on a GPU with FP8 tensor cores (the CPU reference is glmserve.fp8_reference)");
  validate_cuda_tuning(o.cuda);
}

class EngineImpl final : public Engine {
 public:
  explicit EngineImpl(const EngineOptions& opts) : opts_(opts) {
    validate_options(opts_);
    if (opts_.checkpoint_dir.empty()) throw EngineError("engine option checkpoint_dir is empty");
    cfg_ = load_model_config(opts_.checkpoint_dir);
    adapters_ = load_adapters(opts_.adapters_dir.empty() ? opts_.checkpoint_dir + "/adapters" : opts_.adapters_dir, cfg_);
    for (const PrefixAdapter& a : adapters_) cfg_.max_prefix_len = std::max(cfg_.max_prefix_len, a.prefix_len);
    runner_ = opts_.device == "cuda" ? make_cuda_runner(cfg_, opts_) : make_cpu_runner(cfg_, opts_);
    const int blocks = runner_->plan_kv_blocks(opts_);
    if (blocks < 1) throw EngineError("the KV cache has room for no block");
    runner_->allocate_kv_cache(blocks, opts_.block_size);
    blocks_ = std::make_unique<BlockManager>(blocks, opts_.block_size);
    scheduler_ = std::make_unique<Scheduler>(blocks_.get(), Scheduler::Limits{opts_.max_running_seqs, opts_.max_batched_tokens});
    texts_ = TokenTexts::load(opts_.checkpoint_dir);
    load_prefixes();
  }

  ~EngineImpl() override { stop(); }

  std::string backend_description() const override { return runner_->describe(); }

  ModelInfo model_info() const override {
    return {cfg_.vocab_size,          cfg_.hidden_size,  cfg_.num_layers,     cfg_.max_sequence_length,
            cfg_.eos_token_id,        cfg_.bos_token_id, cfg_.gmask_token_id, cfg_.mask_token_id};
  }

  void submit(uint64_t request_id, std::vector<int32_t> ids, const SamplingParams& p, TokenCallback cb) override {
    const int n = static_cast<int>(ids.size());
    auto fail = [&](ErrorCode code, const std::string& field, const std::string& what) {
      throw EngineError("request " + std::to_string(request_id) + ": " + what, code, field, what);
    };
    auto bad = [&](const std::string& field, const std::string& what) { fail(ErrorCode::kInvalidArgument, field, what); };
    auto unhealthy = [&] {
      fail(ErrorCode::kUnavailable, "", "the engine is unhealthy after a back-end fault (" + fault_message_ + "); restart it");
    };
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (!healthy_) unhealthy();
    }
    if (ids.empty()) bad("input_ids", "input_ids is empty");
    for (int t = 0; t < n; ++t)
      if (ids[static_cast<size_t>(t)] < 0 || ids[static_cast<size_t>(t)] >= cfg_.vocab_size)
        bad("input_ids", "input_ids[" + std::to_string(t) + "] = " + std::to_string(ids[static_cast<size_t>(t)]) +
                             " is out of the vocabulary [0, " + std::to_string(cfg_.vocab_size) + ")");
    if (ids.back() != cfg_.bos_token_id)
      bad("input_ids", "input_ids must end with <sop> (id " + std::to_string(cfg_.bos_token_id) + "), got " +
                           std::to_string(ids.back()));
    const int c = context_length_of_prompt(n);
    const int g = find_mask_position(ids.data(), c, cfg_.gmask_token_id, cfg_.mask_token_id);
    if (g < 0)
      bad("input_ids", "input_ids must contain [gMASK] (id " + std::to_string(cfg_.gmask_token_id) + ") or [MASK] (id " +
                           std::to_string(cfg_.mask_token_id) + ") before the final <sop>");
    // Every sampling field against the request contract: ranges, list lengths, byte limits.
    const FieldLimits limits{cfg_.max_sequence_length, cfg_.vocab_size};
    for_each_sampling_field(p, [&](const RequestField& f, const auto& value) {
      const std::string e = field_error(f, value, limits);
      if (!e.empty()) bad(f.name, e);
    });
    if (p.n > 1 && p.temperature == 0.0f)
      bad("n", "n > 1 needs sampling (temperature > 0): greedy decoding would give " + std::to_string(p.n) +
                   " identical choices");
    if (p.n > opts_.max_running_seqs)
      bad("n", "n = " + std::to_string(p.n) + " is more than the engine runs at once (max_running_seqs " +
                   std::to_string(opts_.max_running_seqs) + ")");
    const Prefix* prefix = nullptr;
    if (!p.adapter.empty()) {
      auto it = prefixes_.find(p.adapter);
      if (it == prefixes_.end()) {
        std::string names;
        for (const PrefixAdapter& a : adapters_) names += (names.empty() ? "" : ", ") + a.name;
        bad("adapter", "unknown adapter \"" + p.adapter + "\" (" +
                           (names.empty() ? std::string("this server loaded none") : "available: " + names) + ")");
      }
      prefix = &it->second;
    }
    if (!p.stop.empty() && !texts_)
      bad("stop", "stop strings need the token texts of the checkpoint (" + std::string(TokenTexts::kFileName) +
                      ", written by glmserve.convert); this one has none: convert it again, or use stop_token_ids");
    if (static_cast<int64_t>(n) + p.max_tokens > cfg_.max_sequence_length)
      bad("max_tokens", "prompt length " + std::to_string(n) + " + max_tokens " + std::to_string(p.max_tokens) +
                            " exceeds the model's max_sequence_length " + std::to_string(cfg_.max_sequence_length));
    // The request's whole KV need: the prompt's full context blocks (shared by the
    // choices), then each choice's own blocks up to max_tokens.
    const int P = prefix ? prefix->length : 0;
    const int held = P / opts_.block_size;  // the prefix's full blocks, held already
    const int shared = p.n > 1 ? (P + c) / opts_.block_size - held : 0;
    const int need = shared + p.n * (blocks_->blocks_for(P + n + p.max_tokens) - held - shared);
    // The adapters' prefixes hold their blocks for good: the rest is what requests share.
    if (need > blocks_->num_total() - reserved_blocks_)
      bad("max_tokens", "prompt + max_tokens = " + std::to_string(n + p.max_tokens) + " tokens" +
                            (p.n > 1 ? " for " + std::to_string(p.n) + " choices" : std::string()) + " need " +
                            std::to_string(need) + " KV blocks, but the cache has only " +
                            std::to_string(blocks_->num_total() - reserved_blocks_) +
                            (reserved_blocks_ ? " besides the adapters' prefixes" : " in all") + " (block_size " +
                            std::to_string(opts_.block_size) + "); lower max_tokens or enlarge the KV cache");

    auto group = std::make_shared<RequestGroup>();
    group->request_id = request_id;
    group->on_tokens = std::move(cb);
    group->live = p.n;
    group->prompt_len = n;
    auto seq = std::make_unique<Sequence>();
    seq->tokens = std::move(ids);
    seq->tokens.reserve(static_cast<size_t>(n + p.max_tokens));
    seq->prompt_len = n;
    seq->context_length = c;
    seq->mask_position = g;
    seq->params = p;
    seq->group = group;
    seq->num_choices = p.n;
    seq->filter = make_filter(p);
    if (prefix) {
      seq->prefix_len = prefix->length;
      seq->prefix_owner = prefix->owner;
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (!healthy_) unhealthy();
      if (groups_.count(request_id)) bad("", "duplicate request id: a request with this id is still in flight");
      if (opts_.max_queue > 0 && scheduler_->num_waiting() >= opts_.max_queue)
        throw EngineError("queue full: " + std::to_string(scheduler_->num_waiting()) + " requests are waiting (max_queue " +
                              std::to_string(opts_.max_queue) + "); retry later",
                          ErrorCode::kUnavailable);
      seq->id = next_seq_id_++;
      groups_.emplace(request_id, group);
      scheduler_->add(std::move(seq));
    }
    cv_.notify_one();
  }

  void cancel(uint64_t request_id) override {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = groups_.find(request_id);
    if (it != groups_.end()) {
      it->second->cancel_requested = true;
      cancels_pending_ = true;
    }
    cv_.notify_one();
  }

  bool step() override {
    std::lock_guard<std::mutex> step_lk(step_mu_);
    return step_locked();
  }

  void start() override {
    std::lock_guard<std::mutex> lk(mu_);
    if (loop_.joinable()) return;
    stopping_ = false;
    loop_ = std::thread([this] { loop(); });
  }

  void stop() override {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (loop_.joinable()) loop_.join();
    // The launched step's ids are reported; then every pending request ends, cancelled.
    Events events;
    {
      std::lock_guard<std::mutex> step_lk(step_mu_);
      finish_inflight(&events);
      std::lock_guard<std::mutex> lk(mu_);
      end_all(FinishReason::kCancelled, "", &events);
    }
    deliver(events);
  }

  EngineStats stats() const override {
    std::lock_guard<std::mutex> lk(mu_);
    EngineStats s;
    s.running = scheduler_->num_running();
    s.waiting = scheduler_->num_waiting();
    s.kv_blocks_used = blocks_->num_used();
    s.kv_blocks_total = blocks_->num_total();
    s.tokens_generated = tokens_generated_;
    s.requests_finished = requests_finished_;
    s.steps = steps_;
    s.max_batch_seen = max_batch_seen_;
    s.healthy = healthy_;
    s.preemptions = scheduler_->num_preemptions();
    s.kv_blocks_reserved = reserved_blocks_;
    return s;
  }

  std::vector<std::string> adapters() const override {
    std::vector<std::string> names;
    for (const PrefixAdapter& a : adapters_) names.push_back(a.name);
    return names;
  }

  std::vector<float> debug_forward(const std::vector<std::vector<int32_t>>& chunks,
                                   const std::string& adapter) override {
    std::lock_guard<std::mutex> step_lk(step_mu_);
    {
      Events events;  // a launched step (of requests that have ended since) goes first
      finish_inflight(&events);
      deliver(events);
    }
    const Prefix* prefix = nullptr;
    if (!adapter.empty()) {
      auto it = prefixes_.find(adapter);
      if (it == prefixes_.end()) throw EngineError("debug_forward: unknown adapter \"" + adapter + "\"");
      prefix = &it->second;
    }
    const int P = prefix ? prefix->length : 0;
    if (chunks.empty() || chunks[0].empty()) throw EngineError("debug_forward: chunks must be non-empty lists of ids");
    std::vector<int32_t> all;
    for (const auto& ch : chunks) {
      if (ch.empty()) throw EngineError("debug_forward: empty chunk");
      for (int32_t id : ch)
        if (id < 0 || id >= cfg_.vocab_size)
          throw EngineError("debug_forward: id " + std::to_string(id) + " is out of the vocabulary [0, " +
                            std::to_string(cfg_.vocab_size) + ")");
      all.insert(all.end(), ch.begin(), ch.end());
    }
    if (static_cast<int>(all.size()) > cfg_.max_sequence_length)
      throw EngineError("debug_forward: " + std::to_string(all.size()) + " ids exceed max_sequence_length " +
                        std::to_string(cfg_.max_sequence_length));
    const int c = context_length_of_prompt(static_cast<int>(chunks[0].size()));
    const int g = find_mask_position(all.data(), c, cfg_.gmask_token_id, cfg_.mask_token_id);
    if (g < 0) throw EngineError("debug_forward: the first chunk must contain [gMASK] or [MASK] before its last id");
    const uint64_t kDebugSeq = ~uint64_t(0);
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (scheduler_->num_running() > 0) throw EngineError("debug_forward: only valid while no requests are running");
      const int n = static_cast<int>(all.size());
      if (blocks_->blocks_for(P + n) - P / opts_.block_size > blocks_->num_free())
        throw EngineError("debug_forward: not enough free KV blocks");
      if (prefix) {
        int32_t src = -1, dst = -1;
        blocks_->fork(prefix->owner, kDebugSeq, P, &src, &dst);
        if (src >= 0) runner_->copy_kv_block(src, dst);
        blocks_->append(kDebugSeq, P + n);
      } else {
        blocks_->allocate(kDebugSeq, n);
      }
    }
    std::vector<int32_t> table;
    {
      std::lock_guard<std::mutex> lk(mu_);
      table = blocks_->block_table(kDebugSeq);
    }
    std::vector<float> out;
    SamplingParams greedy;
    try {
      int cached = 0;
      for (const auto& ch : chunks) {
        const int m = static_cast<int>(ch.size());
        std::vector<int32_t> pos(static_cast<size_t>(m)), bpos(static_cast<size_t>(m));
        for (int j = 0; j < m; ++j) {
          pos[static_cast<size_t>(j)] = position_id(cached + j, c, g);
          bpos[static_cast<size_t>(j)] = block_position_id(cached + j, c);
        }
        StepBatch batch;
        batch.want_all_logits = true;
        SeqBatchEntry e;
        e.tokens = ch.data();
        e.num_tokens = m;
        e.num_cached = cached;
        e.position_ids = pos.data();
        e.block_position_ids = bpos.data();
        e.context_length = c;
        e.block_table = table.data();
        e.num_blocks = static_cast<int>(table.size());
        e.params = &greedy;
        e.history = all.data();
        e.history_len = cached + m;
        e.prompt_len = cached + m;
        e.prefix_len = P;
        batch.seqs.push_back(e);
        std::vector<float> logits;
        int32_t unused = 0;
        runner_->forward(batch, &unused, &logits);
        out.insert(out.end(), logits.begin(), logits.end());
        cached += m;
      }
    } catch (...) {
      std::lock_guard<std::mutex> lk(mu_);
      blocks_->free(kDebugSeq);
      throw;
    }
    std::lock_guard<std::mutex> lk(mu_);
    blocks_->free(kDebugSeq);
    return out;
  }

  void inject_fault() override { fault_injected_.store(true); }

 private:
  using Events = std::vector<std::pair<TokenCallback, TokenEvent>>;

  static void deliver(const Events& events) {
    for (const auto& e : events)
      if (e.first) e.first(e.second);
  }

  // Puts every adapter's K/V into KV blocks held for the engine's life (at start).
  void load_prefixes() {
    uint64_t owner = ~uint64_t(0) - 1;  // ids no sequence (nor debug_forward's) ever takes
    for (const PrefixAdapter& a : adapters_) {
      if (!blocks_->can_allocate(a.prefix_len))
        throw EngineError("adapter \"" + a.name + "\": its prefix of " + std::to_string(a.prefix_len) +
                          " tokens does not fit in the KV cache's free blocks");
      blocks_->allocate(owner, a.prefix_len);
      runner_->write_prefix(blocks_->block_table(owner), a.prefix_len, a.key.data(), a.value.data());
      reserved_blocks_ += blocks_->blocks_for(a.prefix_len);
      prefixes_[a.name] = Prefix{a.prefix_len, owner};
      --owner;
    }
  }

  std::unique_ptr<StopFilter> make_filter(const SamplingParams& p) const {
    return std::make_unique<StopFilter>(texts_.get(), p.stop, p.stop_token_ids, p.include_stop_str_in_output);
  }

  // A choice's event carrying the ids released now (mu_ held). With `reason`,
  // the choice's last: everything still held goes out, the choice leaves the
  // scheduler (its blocks are freed), and the request's last choice ends it.
  void emit(Sequence* s, int release, FinishReason reason, const std::string& error, int trim_bytes, Events* events) {
    RequestGroup& g = *s->group;
    TokenEvent ev;
    ev.request_id = g.request_id;
    ev.choice = s->choice;
    ev.prompt_tokens = g.prompt_len;
    ev.completion_tokens = s->num_generated;
    if (reason != FinishReason::kNone) release = static_cast<int>(s->unreleased.size());
    ev.new_tokens.assign(s->unreleased.begin(), s->unreleased.begin() + release);
    s->unreleased.erase(s->unreleased.begin(), s->unreleased.begin() + release);
    if (s->params.logprobs >= 0) {
      ev.logprobs.assign(s->unreleased_logprobs.begin(), s->unreleased_logprobs.begin() + release);
      s->unreleased_logprobs.erase(s->unreleased_logprobs.begin(), s->unreleased_logprobs.begin() + release);
    }
    if (reason != FinishReason::kNone) {
      ev.choice_finished = true;
      ev.reason = reason;
      ev.error = error;
      ev.trim_bytes = trim_bytes;
      g.live -= s->num_choices;  // choice 0 before its prefill also ends the choices never forked
      ev.finished = g.live <= 0;
      if (ev.finished) {
        groups_.erase(g.request_id);
        ++requests_finished_;
      }
      std::shared_ptr<RequestGroup> keep = s->group;
      scheduler_->remove(s->id);
      events->push_back({keep->on_tokens, std::move(ev)});
      return;
    }
    if (!ev.new_tokens.empty()) events->push_back({g.on_tokens, std::move(ev)});
  }

  // Ends every sequence (mu_ held), or only those of cancelled requests.
  void end_all(FinishReason reason, const std::string& error, Events* events, bool only_cancelled = false) {
    std::vector<Sequence*> seqs;
    for (Sequence* s : scheduler_->running())
      if (!only_cancelled || s->group->cancel_requested) seqs.push_back(s);
    for (Sequence* s : scheduler_->waiting())
      if (!only_cancelled || s->group->cancel_requested) seqs.push_back(s);
    for (Sequence* s : seqs) emit(s, 0, reason, error, 0, events);
  }

  // Starts choices 1..n-1 of s's request right after s (choice 0) ran its prefill
  // (mu_ held): each shares the context's full KV blocks and gets a copy of the
  // partial last one, then feeds <sop> itself to draw its first token.
  void fork_choices(Sequence* s) {
    const int n = s->num_choices;
    s->num_choices = 1;
    for (int i = 1; i < n; ++i) {
      auto child = std::make_unique<Sequence>();
      child->id = next_seq_id_++;
      child->tokens.assign(s->tokens.begin(), s->tokens.begin() + s->prompt_len);
      child->tokens.reserve(static_cast<size_t>(s->prompt_len + s->params.max_tokens));
      child->prompt_len = s->prompt_len;
      child->context_length = s->context_length;
      child->mask_position = s->mask_position;
      child->params = s->params;
      child->params.seed = s->params.seed + static_cast<uint64_t>(i);
      child->group = s->group;
      child->choice = i;
      child->prefix_len = s->prefix_len;
      child->prefix_owner = s->prefix_owner;
      child->filter = make_filter(child->params);
      int32_t src = -1, dst = -1;
      if (scheduler_->fork(s, std::move(child), s->context_length, &src, &dst) && src >= 0)
        runner_->copy_kv_block(src, dst);
    }
  }

  // A launched step: which sequence each row feeds, and where its results go.
  struct Launched {
    struct Row {
      uint64_t seq_id = 0;
      size_t token_index = 0;  // where its id goes in the sequence's tokens (a placeholder until collected)
      int gen_index = 0;       // how many ids the sequence had drawn before this one
      bool is_prefill = false;
    };
    std::vector<Row> rows;
    std::vector<TokenLogprob> logprobs;  // the runner writes here (SeqBatchEntry::logprob_out)
  };

  // Plans the next step and builds its batch (mu_ held). Returns nullptr when
  // nothing is scheduled. `batch` points into `storage` and the sequences.
  std::unique_ptr<Launched> plan_step(StepBatch* batch, std::vector<std::vector<int32_t>>* storage) {
    if (!healthy_) return nullptr;
    SchedulerOutput plan = scheduler_->schedule();
    for (const auto& [src, dst] : plan.kv_copies) runner_->copy_kv_block(src, dst);
    const size_t S = plan.batch.size();
    if (S == 0) return nullptr;
    auto l = std::make_unique<Launched>();
    l->rows.resize(S);
    l->logprobs.resize(S);
    storage->assign(3 * S, {});
    for (size_t i = 0; i < S; ++i) {
      const ScheduledSeq& ss = plan.batch[i];
      Sequence* s = ss.seq;
      std::vector<int32_t>& pos = (*storage)[3 * i];
      std::vector<int32_t>& bpos = (*storage)[3 * i + 1];
      std::vector<int32_t>& table = (*storage)[3 * i + 2];
      for (int j = 0; j < ss.num_new; ++j) {
        const int t = ss.num_cached + j;
        pos.push_back(position_id(t, s->context_length, s->mask_position));
        bpos.push_back(block_position_id(t, s->context_length));
      }
      table = blocks_->block_table(s->id);
      SeqBatchEntry e;
      e.tokens = s->tokens.data() + ss.num_cached;
      e.num_tokens = ss.num_new;
      e.num_cached = ss.num_cached;
      e.position_ids = pos.data();
      e.block_position_ids = bpos.data();
      e.context_length = s->context_length;
      e.block_table = table.data();
      e.num_blocks = static_cast<int>(table.size());
      e.params = &s->params;
      e.rng_offset = static_cast<uint64_t>(s->num_sampled);
      e.history = s->tokens.data();
      e.history_len = static_cast<int>(s->tokens.size());
      e.prompt_len = s->prompt_len;
      e.prefix_len = s->prefix_len;
      e.logprob_out = &l->logprobs[i];
      // Only a decode of one id can wait on the device for it (the scheduler
      // feeds a pending sequence exactly its placeholder).
      e.prev_row = s->pending_row;
      if (e.prev_row >= 0 && (ss.num_new != 1 || s->tokens[ss.num_cached] != kPendingToken))
        throw std::logic_error("engine: a pending id outside a one-token decode");
      batch->seqs.push_back(e);
      l->rows[i] = {s->id, s->tokens.size(), s->num_sampled, ss.is_prefill};
    }
    return l;
  }

  // After a launch (mu_ held): each row's id is a placeholder until collected.
  void mark_launched(const Launched& l, const StepBatch& batch) {
    ++steps_;
    max_batch_seen_ = std::max(max_batch_seen_, static_cast<int>(l.rows.size()));
    for (size_t i = 0; i < l.rows.size(); ++i) {
      Sequence* s = scheduler_->find(l.rows[i].seq_id);
      if (s == nullptr) continue;
      s->num_cached = batch.seqs[i].num_cached + batch.seqs[i].num_tokens;
      s->tokens.push_back(kPendingToken);
      ++s->num_sampled;
      s->pending_row = static_cast<int>(i);
      s->final_pending = s->num_sampled >= s->params.max_tokens ||
                         static_cast<int>(s->tokens.size()) >= cfg_.max_sequence_length;
    }
  }

  // A collected step's ids (mu_ held). A row whose sequence has ended since
  // (finished, stopped or cancelled while the step ran) is dropped: its id is
  // never reported.
  void apply(const Launched& l, const std::vector<int32_t>& next, Events* events) {
    for (size_t i = 0; i < l.rows.size(); ++i) {
      const Launched::Row& row = l.rows[i];
      Sequence* s = scheduler_->find(row.seq_id);
      if (s == nullptr) continue;
      if (row.token_index + 1 == s->tokens.size()) {  // else the step launched since holds its next id
        s->pending_row = -1;
        s->final_pending = false;
      }
      if (row.is_prefill && s->num_choices > 1) fork_choices(s);
      const int32_t tok = next[i];
      s->tokens[row.token_index] = tok;
      ++s->num_generated;
      ++tokens_generated_;
      s->unreleased.push_back(tok);
      if (s->params.logprobs >= 0) s->unreleased_logprobs.push_back(l.logprobs[i]);
      const StopFilter::Result r = s->filter->push(tok);
      FinishReason reason = FinishReason::kNone;
      if (r.stopped) reason = FinishReason::kStop;
      else if (tok == cfg_.eos_token_id && !s->params.ignore_eos) reason = FinishReason::kEos;
      else if (row.gen_index + 1 >= s->params.max_tokens) reason = FinishReason::kLength;
      else if (static_cast<int>(row.token_index) + 1 >= cfg_.max_sequence_length) reason = FinishReason::kContextLimit;
      else if (s->group->cancel_requested) reason = FinishReason::kCancelled;
      emit(s, r.release, reason, "", r.stopped ? r.trim_bytes : 0, events);
    }
  }

  // A back-end fault (mu_ held): unrecoverable; every request fails, new ones are refused.
  void fail_all(const std::string& error, Events* events) {
    healthy_ = false;
    fault_message_ = error;
    inflight_.reset();
    has_inflight_ = false;
    end_all(FinishReason::kError, error, events);
  }

  // Waits for the launched step and applies its ids.
  void finish_inflight(Events* events) {
    std::unique_ptr<Launched> l = std::move(inflight_);
    has_inflight_ = false;
    if (!l) return;
    std::vector<int32_t> next(l->rows.size(), -1);
    std::string error;
    try {
      runner_->collect(next.data());
    } catch (const std::exception& e) {
      error = std::string("back-end fault: ") + e.what();
    }
    std::lock_guard<std::mutex> lk(mu_);
    if (!error.empty()) fail_all(error, events);
    else apply(*l, next, events);
  }

  // One step. Overlapped (opts_.overlap_steps): plan and launch step n+1, then
  // collect and apply step n, so that the back-end never waits for the host.
  // A step whose batch may hold a sequence that needs every previous id (the
  // penalties) first collects step n. Synchronous: launch, then collect at once.
  bool step_locked() {
    Events events;
    bool drain_first = false, did = has_inflight_;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (cancels_pending_) {
        cancels_pending_ = false;
        end_all(FinishReason::kCancelled, "", &events, /*only_cancelled=*/true);
      }
      if (inflight_)
        for (const Sequence* s : scheduler_->running())
          if (s->pending_row >= 0 && s->params.has_penalties()) drain_first = true;
    }
    if (drain_first) finish_inflight(&events);

    StepBatch batch;
    std::vector<std::vector<int32_t>> storage;
    std::unique_ptr<Launched> next;
    {
      std::lock_guard<std::mutex> lk(mu_);
      next = plan_step(&batch, &storage);
    }
    if (next) {
      did = true;
      std::string error;
      try {
        if (fault_injected_.exchange(false)) throw EngineError("injected fault (Engine::inject_fault)");
        runner_->launch(batch);
      } catch (const std::exception& e) {
        error = std::string("back-end fault: ") + e.what();
      }
      std::lock_guard<std::mutex> lk(mu_);
      if (!error.empty()) {
        fail_all(error, &events);
        next.reset();
      } else {
        mark_launched(*next, batch);
      }
    }
    if (inflight_) finish_inflight(&events);  // step n, behind the one just launched
    if (next) {
      inflight_ = std::move(next);
      has_inflight_ = true;
      if (!opts_.overlap_steps) finish_inflight(&events);
    }
    deliver(events);
    return did || !events.empty();
  }

  void loop() {
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stopping_ || !scheduler_->idle() || cancels_pending_ || has_inflight_; });
        if (stopping_) return;
      }
      try {
        step();
      } catch (const std::exception&) {
        // step() reports back-end faults through events; anything else is a bug
        // that must not kill the server thread. Back off briefly.
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
  }

  EngineOptions opts_;
  ModelConfig cfg_;
  std::unique_ptr<ModelRunner> runner_;
  std::unique_ptr<BlockManager> blocks_;
  std::unique_ptr<Scheduler> scheduler_;

  mutable std::mutex mu_;
  std::mutex step_mu_;  // one step (or debug_forward) at a time
  std::condition_variable cv_;
  std::thread loop_;
  bool stopping_ = false;
  bool cancels_pending_ = false;
  bool healthy_ = true;
  std::string fault_message_;
  std::atomic<bool> fault_injected_{false};
  // The launched step not yet collected (step thread only; has_inflight_ for the loop's wait).
  std::unique_ptr<Launched> inflight_;
  std::atomic<bool> has_inflight_{false};
  int64_t tokens_generated_ = 0, requests_finished_ = 0, steps_ = 0;
  int max_batch_seen_ = 0;
  std::unique_ptr<TokenTexts> texts_;  // null: the checkpoint has no token_bytes.bin
  std::unordered_map<uint64_t, std::shared_ptr<RequestGroup>> groups_;  // live requests by request id
  // Adapters: their K/V sit in KV blocks held from the start by owner ids past
  // every sequence id (BlockManager), shared by the requests that name them.
  struct Prefix {
    int length = 0;
    uint64_t owner = 0;
  };
  std::vector<PrefixAdapter> adapters_;
  std::unordered_map<std::string, Prefix> prefixes_;
  int reserved_blocks_ = 0;
  uint64_t next_seq_id_ = 1;
};

}  // namespace

std::unique_ptr<Engine> Engine::create(const EngineOptions& options) { return std::make_unique<EngineImpl>(options); }

}  // namespace glm
