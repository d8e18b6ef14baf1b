#include "responder_thread.h"

#include <map>
#include <utility>

#include "util.h"

namespace glmtriton {
namespace {

constexpr uint64_t kTickNs = 100ull * 1000000;  // slow tick: cancellation of queued requests, metrics

// When the responder falls behind, several steps' events of one choice wait in
// the same batch: merge them into one event (one response carrying all the new
// ids; prev_ids stay right because they are taken before the merged ids). The
// last event of a choice is its final one, so the end fields come from it. A
// merged event takes the place of its last part, so the event that ends the
// request stays the last of its request. Order between requests does not matter.
void coalesce(std::deque<ResponderEvent>* batch) {
  if (batch->size() < 2) return;
  std::map<std::pair<uint64_t, int>, size_t> last;  // (request, choice) -> index of its last event
  for (size_t i = 0; i < batch->size(); ++i) last[{(*batch)[i].id, (*batch)[i].choice}] = i;
  if (last.size() == batch->size()) return;
  std::map<std::pair<uint64_t, int>, ResponderEvent> merged;
  std::deque<ResponderEvent> out;
  for (size_t i = 0; i < batch->size(); ++i) {
    ResponderEvent& ev = (*batch)[i];
    const std::pair<uint64_t, int> key{ev.id, ev.choice};
    auto it = merged.find(key);
    if (it == merged.end()) {
      it = merged.emplace(key, std::move(ev)).first;
    } else {
      ResponderEvent& m = it->second;
      m.tokens.insert(m.tokens.end(), ev.tokens.begin(), ev.tokens.end());
      m.logprobs.insert(m.logprobs.end(), std::make_move_iterator(ev.logprobs.begin()),
                        std::make_move_iterator(ev.logprobs.end()));
      m.choice_finished = ev.choice_finished;
      m.finished = ev.finished;
      m.reason = ev.reason;
      m.error = std::move(ev.error);
      m.trim_bytes = ev.trim_bytes;
      m.prompt_tokens = ev.prompt_tokens;
      m.completion_tokens = ev.completion_tokens;
    }
    if (last[key] == i) {
      out.push_back(std::move(it->second));
      merged.erase(it);
    }
  }
  batch->swap(out);
}

}  // namespace

void ResponderThread::start() {
  thread_ = std::thread([this, ctl = ctl_] { loop(ctl); });
}

void ResponderThread::post(const glm::TokenEvent& ev) {
  ResponderEvent e;
  e.id = ev.request_id;
  e.choice = ev.choice;
  e.tokens = ev.new_tokens;
  e.logprobs = ev.logprobs;
  e.choice_finished = ev.choice_finished;
  e.finished = ev.finished;
  e.reason = ev.reason;
  e.error = ev.error;
  e.trim_bytes = ev.trim_bytes;
  e.prompt_tokens = ev.prompt_tokens;
  e.completion_tokens = ev.completion_tokens;
  {
    std::lock_guard<std::mutex> lk(mu_);
    events_.push_back(std::move(e));
  }
  cv_.notify_one();
}

void ResponderThread::stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (!thread_.joinable()) return;
  if (std::this_thread::get_id() == thread_.get_id()) {
    // We are inside the responder (it released the last request): it must
    // not touch this object again; it returns as soon as it sees `gone`.
    ctl_->gone = true;
    thread_.detach();
  } else {
    thread_.join();
  }
}

void ResponderThread::loop(std::shared_ptr<ResponderControl> ctl) {
  const std::atomic<bool>& gone = ctl->gone;
  std::deque<ResponderEvent> batch;
  uint64_t last_tick = now_ns();
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait_for(lk, std::chrono::nanoseconds(kTickNs),
                   [this] { return !events_.empty() || stop_; });
      batch.swap(events_);
      if (stop_ && batch.empty()) break;
    }
    coalesce(&batch);
    for (ResponderEvent& ev : batch) {
      try {
        handler_->handle(ev);
      } catch (const std::exception& ex) {
        GLM_LOG_ERROR(std::string("chatglm_decoder responder: ") + ex.what());
      }
      if (gone) return;  // this object and the Handler no longer exist
    }
    batch.clear();
    const uint64_t now = now_ns();
    if (now - last_tick >= kTickNs) {
      last_tick = now;
      handler_->check_cancellations(gone);
      if (gone) return;
      handler_->refresh_metrics(true);
    } else {
      handler_->refresh_metrics(false);
    }
  }
  handler_->refresh_metrics(true);
}

}  // namespace glmtriton
