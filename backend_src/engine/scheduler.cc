#include "scheduler.h"

#include <algorithm>
#include <stdexcept>

namespace glm {

Scheduler::Scheduler(BlockManager* blocks, Limits limits) : blocks_(blocks), limits_(limits) {
  if (limits_.max_running_seqs < 1) limits_.max_running_seqs = 1;
  if (limits_.max_batched_tokens < 1) limits_.max_batched_tokens = 1;
}

void Scheduler::add(std::unique_ptr<Sequence> seq) {
  Sequence* s = seq.get();
  if (!seqs_.emplace(s->id, std::move(seq)).second)
    throw std::logic_error("Scheduler::add: duplicate sequence id " + std::to_string(s->id));
  waiting_.push_back(s);
}

bool Scheduler::fork(Sequence* parent, std::unique_ptr<Sequence> child, int num_tokens, int32_t* copy_src,
                     int32_t* copy_dst) {
  Sequence* c = child.get();
  if (!seqs_.emplace(c->id, std::move(child)).second)
    throw std::logic_error("Scheduler::fork: duplicate sequence id " + std::to_string(c->id));
  if (!blocks_->fork(parent->id, c->id, c->prefix_len + num_tokens, copy_src, copy_dst)) {
    c->num_cached = 0;
    waiting_.push_front(c);
    return false;
  }
  c->num_cached = num_tokens;
  running_.push_back(c);
  return true;
}

Sequence* Scheduler::find(uint64_t id) const {
  auto it = seqs_.find(id);
  return it == seqs_.end() ? nullptr : it->second.get();
}

std::unique_ptr<Sequence> Scheduler::remove(uint64_t id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return nullptr;
  std::unique_ptr<Sequence> seq = std::move(it->second);
  seqs_.erase(it);
  blocks_->free(id);
  running_.erase(std::remove(running_.begin(), running_.end(), seq.get()), running_.end());
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), seq.get()), waiting_.end());
  return seq;
}

void Scheduler::preempt(Sequence* s) {
  blocks_->free(s->id);
  s->num_cached = 0;  // recompute prompt + generated tokens on re-admission
  ++s->num_preemptions;
  ++preemptions_;
  running_.erase(std::remove(running_.begin(), running_.end(), s), running_.end());
  waiting_.push_front(s);
}

SchedulerOutput Scheduler::schedule() {
  SchedulerOutput out;
  // 1. Decodes: room for the tokens each running sequence feeds this step.
  for (size_t i = 0; i < running_.size();) {
    Sequence* s = running_[i];
    if (s->final_pending) {
      ++i;
      continue;
    }
    const int total = static_cast<int>(s->tokens.size());
    bool self_preempted = false;
    while (!blocks_->append(s->id, s->prefix_len + total)) {
      Sequence* victim = running_.back();
      preempt(victim);
      ++out.num_preempted;
      if (victim == s) {
        self_preempted = true;
        break;
      }
    }
    if (self_preempted) break;  // s was the newest: nothing after it is left
    out.batch.push_back({s, s->num_cached, total - s->num_cached, false});
    ++i;
  }
  // 2. Admissions, oldest first; stop at the first that does not fit.
  if (out.num_preempted == 0) {
    while (!waiting_.empty()) {
      Sequence* s = waiting_.front();
      const int n = static_cast<int>(s->tokens.size());  // num_cached is 0 while waiting
      // Room for the choices forked right after this prefill: a slot and a block each.
      if (static_cast<int>(running_.size()) + s->num_choices > limits_.max_running_seqs) break;
      if (out.num_prefill_tokens > 0 && out.num_prefill_tokens + n > limits_.max_batched_tokens) break;
      // An adapter's full prefix blocks are shared: only the partial one and the tokens need room.
      const int need = blocks_->blocks_for(s->prefix_len + n) - s->prefix_len / blocks_->block_size();
      if (need + s->num_choices - 1 > blocks_->num_free()) break;
      if (s->prefix_len > 0) {
        int32_t src = -1, dst = -1;
        blocks_->fork(s->prefix_owner, s->id, s->prefix_len, &src, &dst);
        if (src >= 0) out.kv_copies.emplace_back(src, dst);
        blocks_->append(s->id, s->prefix_len + n);
      } else {
        blocks_->allocate(s->id, n);
      }
      waiting_.pop_front();
      running_.push_back(s);
      out.batch.push_back({s, 0, n, true});
      out.num_prefill_tokens += n;
    }
  }
  return out;
}

}  // namespace glm
