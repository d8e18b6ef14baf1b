#include "responder_thread.h"

#include <unordered_map>

#include "util.h"

namespace glmtriton {
namespace {

constexpr uint64_t kTickNs = 100ull * 1000000;  // slow tick: cancellation of queued requests, metrics

// When the responder falls behind, several steps' events of one request wait
// in the same batch: merge them into one event (one response carrying all the
// new ids; prev_ids stay right because they are taken before the merged ids).
// The last event of a request is its final one, so finished/reason/error come
// from it. Order between different requests does not matter.
void coalesce(std::deque<ResponderEvent>* batch) {
  if (batch->size() < 2) return;
  std::unordered_map<uint64_t, size_t> first;  // request id -> index of its merged event
  std::deque<ResponderEvent> out;
  for (auto& ev : *batch) {
    auto it = first.find(ev.id);
    if (it == first.end()) {
      first.emplace(ev.id, out.size());
      out.push_back(std::move(ev));
      continue;
    }
    ResponderEvent& m = out[it->second];
    m.tokens.insert(m.tokens.end(), ev.tokens.begin(), ev.tokens.end());
    m.finished = ev.finished;
    m.reason = ev.reason;
    m.error = std::move(ev.error);
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
  e.tokens = ev.new_tokens;
  e.finished = ev.finished;
  e.reason = ev.reason;
  e.error = ev.error;
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
