// The responder thread of one model instance and its event queue.
//
// The engine's step loop calls post() for every step's tokens; that only
// queues the event. ONE thread takes the queued events in batches, merges the
// events of one request that piled up while it was behind (coalescing: one
// response then carries several steps' ids), and hands each to the Handler
// (the DecoderInstance), which turns it into responses. A 100 ms tick also lets
// the Handler check requests still queued in the engine for cancellation and
// deadlines (no busy polling), and refresh the metrics.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine.h"

namespace glmtriton {

// What the engine's callback hands to the responder thread.
// One choice's new tokens (glm::TokenEvent: `choice_finished` ends the choice,
// `finished` the request).
struct ResponderEvent {
  uint64_t id = 0;
  int choice = 0;
  std::vector<int32_t> tokens;
  std::vector<glm::TokenLogprob> logprobs;
  bool choice_finished = false;
  bool finished = false;
  glm::FinishReason reason = glm::FinishReason::kNone;
  std::string error;
  int trim_bytes = 0;
  int prompt_tokens = 0;
  int completion_tokens = 0;
};

class ResponderThread {
 public:
  // Called on the responder thread only. handle() and check_cancellations()
  // may release requests, and so destroy the Handler and this object (see
  // ResponderControl).
  class Handler {
   public:
    virtual void handle(ResponderEvent& ev) = 0;
    // The tick: stop requests that were cancelled or ran late. Returns at once
    // when `gone` turns true.
    virtual void check_cancellations(const std::atomic<bool>& gone) = 0;
    // `force`: at once; else at most every 20 ms.
    virtual void refresh_metrics(bool force) = 0;

   protected:
    ~Handler() = default;
  };

  explicit ResponderThread(Handler* handler) : handler_(handler) {}
  ~ResponderThread() { stop(); }
  ResponderThread(const ResponderThread&) = delete;
  ResponderThread& operator=(const ResponderThread&) = delete;

  void start();
  // Engine thread: queues the event and wakes the responder.
  void post(const glm::TokenEvent& ev);
  // Wakes the responder (new requests were registered).
  void wake() { cv_.notify_one(); }
  // Lets the thread drain the queue and end, and joins it. Called on the
  // responder thread itself (it released the last request of a model being
  // unloaded, and Triton destroyed the instance right there), it detaches
  // instead and marks the thread `gone`. Idempotent.
  void stop();

 private:
  // The responder thread may itself run ~DecoderInstance: Triton unloads a
  // model when its last request is released, and we release requests on the
  // responder thread. `gone` then turns true, and from that moment the thread
  // touches no member (of this object or of the Handler): every path that can
  // release a request returns at once. The thread holds its own reference to
  // the control block, so `gone` outlives this object.
  struct ResponderControl {
    std::atomic<bool> gone{false};
  };
  void loop(std::shared_ptr<ResponderControl> ctl);

  Handler* handler_;
  std::mutex mu_;  // events_, stop_
  std::condition_variable cv_;
  std::deque<ResponderEvent> events_;
  bool stop_ = false;
  std::shared_ptr<ResponderControl> ctl_ = std::make_shared<ResponderControl>();
  std::thread thread_;
};

}  // namespace glmtriton
