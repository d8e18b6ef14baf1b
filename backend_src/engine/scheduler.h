// Continuous (in-flight) batching. Requests wait in a FIFO queue; each step
// the scheduler
//   1. gives every running sequence room in the KV cache for the token it feeds
//      this step (decode), except one whose last id is being sampled now
//      (final_pending: overlapped stepping). When the cache is full, it preempts the most recently
//      admitted running sequence: its blocks are freed and it goes back to the
//      front of the queue, to be recomputed (prompt + tokens generated so far)
//      when it is admitted again. Nothing fails, and the oldest sequence always
//      makes progress;
//   2. admits waiting sequences in arrival order while they fit: a free slot
//      under max_running_seqs, KV blocks for their whole prefill, and the step's
//      prefill-token budget max_batched_tokens (the first prefill of a step is
//      always allowed). No admission in a step that had to preempt. A request
//      of n choices is admitted as one sequence (choice 0) that reserves n
//      slots and n - 1 extra blocks: right after its prefill the engine forks
//      the other choices from it (fork()), sharing the prompt's full KV blocks.
// Prefills and decodes run in the same step. Finished and cancelled sequences
// leave through remove(), which frees their blocks at once.
//
// The scheduler is not thread-safe; the engine serializes access.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

#include "block_manager.h"
#include "engine.h"
#include "stop_filter.h"

namespace glm {

struct RequestGroup;  // the engine's: one submitted request and its choices

// The placeholder of an id that a launched step samples and the host has not seen.
constexpr int32_t kPendingToken = -1;

struct Sequence {
  uint64_t id = 0;              // the engine's own id of this choice (not the request id)
  std::vector<int32_t> tokens;  // prompt + generated ids
  int prompt_len = 0;
  int context_length = 0;       // c (positions.h)
  int mask_position = 0;        // g
  int num_cached = 0;           // tokens whose K/V are in the cache (or being written by a launched step)
  int num_generated = 0;        // ids generated and known to the host
  // Overlapped stepping: a launched step's id is a placeholder (kPendingToken) at
  // the end of `tokens` until the step is collected.
  int num_sampled = 0;          // ids drawn or being drawn (= rng_offset of the next draw)
  int pending_row = -1;         // the row of this sequence in the launched, uncollected step
  bool final_pending = false;   // that step's id is its last (max_tokens or the context): not scheduled again
  // An adapter's prefix: prefix_len KV slots before token 0, taken from the
  // blocks of the BlockManager sequence prefix_owner (shared; the partial last
  // prefix block is copied). Token t lives in KV slot prefix_len + t.
  int prefix_len = 0;
  uint64_t prefix_owner = 0;
  SamplingParams params;        // seed = the request's seed + choice
  bool cancel_requested = false;
  int num_preemptions = 0;
  // Choices of one request.
  std::shared_ptr<RequestGroup> group;
  int choice = 0;
  int num_choices = 1;          // choice 0 before its prefill: itself + the choices to fork after it
  // Output: what may not be released yet (stop strings), in generation order.
  std::unique_ptr<StopFilter> filter;
  std::vector<int32_t> unreleased;
  std::vector<TokenLogprob> unreleased_logprobs;
};

// One sequence's part of a step: feed tokens[num_cached, num_cached + num_new).
struct ScheduledSeq {
  Sequence* seq = nullptr;
  int num_cached = 0;
  int num_new = 0;
  bool is_prefill = false;
};

struct SchedulerOutput {
  std::vector<ScheduledSeq> batch;
  int num_prefill_tokens = 0;
  int num_preempted = 0;
  // KV blocks to copy (src, dst) before this step's forward: the partial last
  // prefix block of each admitted sequence with an adapter.
  std::vector<std::pair<int32_t, int32_t>> kv_copies;
};

class Scheduler {
 public:
  struct Limits {
    int max_running_seqs = 256;
    int max_batched_tokens = 4096;
  };
  Scheduler(BlockManager* blocks, Limits limits);

  // Queues a new sequence (at the back).
  void add(std::unique_ptr<Sequence> seq);
  // Starts `child` (a further choice of parent's request) with the KV blocks of
  // parent's first num_tokens tokens (after the adapter prefix both have, if
  // any): full blocks shared, the partial last one
  // copied (the caller copies block *copy_src into *copy_dst; -1 when none). The
  // child joins the running batch with num_cached = num_tokens. When no block is
  // free for the copy it is queued at the front instead, to be recomputed, and
  // fork returns false.
  bool fork(Sequence* parent, std::unique_ptr<Sequence> child, int num_tokens, int32_t* copy_src,
            int32_t* copy_dst);
  // Removes a sequence wherever it is, frees its KV blocks, hands it back.
  std::unique_ptr<Sequence> remove(uint64_t id);
  Sequence* find(uint64_t id) const;

  // Plans one step (see the top of this file). Afterwards the block table of
  // every scheduled sequence covers num_cached + num_new tokens.
  SchedulerOutput schedule();

  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  int num_running() const { return static_cast<int>(running_.size()); }
  bool idle() const { return waiting_.empty() && running_.empty(); }
  const std::vector<Sequence*>& running() const { return running_; }
  const std::deque<Sequence*>& waiting() const { return waiting_; }
  int64_t num_preemptions() const { return preemptions_; }

 private:
  void preempt(Sequence* s);

  BlockManager* blocks_;
  Limits limits_;
  std::unordered_map<uint64_t, std::unique_ptr<Sequence>> seqs_;
  std::deque<Sequence*> waiting_;
  std::vector<Sequence*> running_;  // in admission order
  int64_t preemptions_ = 0;
};

}  // namespace glm
