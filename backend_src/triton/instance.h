// One chatglm_decoder model instance: one glm::Engine, one responder thread.
//
// Execute() only validates each request, registers it and submits it to the
// engine, then returns (decoupled). The engine's step loop calls on_tokens()
// for every step's tokens; that only queues the event. The responder thread
// turns events into Triton responses, checks for cancellation when a request's
// event arrives (and on a slow tick for requests still queued in the engine),
// reports per-request statistics and releases each request after its final
// response. The final flag goes out exactly once per request.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "decoder_config.h"
#include "engine.h"
#include "metrics.h"
#include "triton_api.h"

namespace glmtriton {

struct ModelState {
  TRITONBACKEND_Model* model = nullptr;
  std::string name;
  uint64_t version = 0;
  DecoderConfig config;
  MetricFamilies* families = nullptr;  // owned by the backend state; may be null
};

// A validated request, ready for the engine.
struct ParsedRequest {
  std::vector<int32_t> input_ids;
  glm::SamplingParams params;
  bool stream = false;
  bool inject_fault = false;  // test hook asked for (and allowed)
};

// What the engine's callback hands to the responder thread.
struct DecoderInstanceEvent {
  uint64_t id = 0;
  std::vector<int32_t> tokens;
  bool finished = false;
  glm::FinishReason reason = glm::FinishReason::kNone;
  std::string error;
};

// The UNAVAILABLE answer once the engine failed (stable: clients match "is not serving").
inline constexpr const char* kNotServingMessage =
    "chatglm_decoder: the engine failed and is not serving (reload the model)";

class DecoderInstance {
 public:
  // Creates and starts the engine. Throws std::exception with a clear message.
  DecoderInstance(ModelState* model, TRITONBACKEND_ModelInstance* instance);
  ~DecoderInstance();
  DecoderInstance(const DecoderInstance&) = delete;
  DecoderInstance& operator=(const DecoderInstance&) = delete;

  // Takes ownership of every request (each gets its responses and is released).
  void execute(TRITONBACKEND_Request** requests, uint32_t count);

  // False once an engine step failed (the engine serves nothing after that).
  bool healthy() const;

 private:
  struct Active {
    TRITONBACKEND_Request* request = nullptr;
    TRITONBACKEND_ResponseFactory* factory = nullptr;
    bool stream = false;
    std::vector<int32_t> ids;  // non-stream: everything so far; stream: the last <= 16
    uint64_t exec_start_ns = 0;
    uint64_t submit_ns = 0;
    std::atomic<bool> submitted{false};  // engine.submit() returned (else Execute may erase it)
    uint64_t deadline_ns = 0;  // from the request's timeout (0 = none)
    uint64_t timeout_us = 0;
    uint64_t cap_deadline_ns = 0;  // from max_request_seconds (0 = none)
    bool got_first = false;
  };
  using Event = DecoderInstanceEvent;

  // Returns an empty string when valid; else the message, with *code set.
  std::string parse(TRITONBACKEND_Request* request, ParsedRequest* out,
                    TRITONSERVER_Error_Code* code) const;
  void reject(TRITONBACKEND_Request* request, TRITONSERVER_Error_Code code, const std::string& msg,
              uint64_t exec_start_ns);
  void on_tokens(const glm::TokenEvent& ev);  // engine thread
  // The responder thread may itself run ~DecoderInstance: Triton unloads a
  // model when its last request is released, and we release requests on the
  // responder thread. `gone` then turns true, and from that moment the thread
  // touches no member: every path that can release a request returns at once.
  struct ResponderControl {
    std::atomic<bool> gone{false};
  };
  void responder_loop(std::shared_ptr<ResponderControl> ctl);
  void handle(Event& ev);
  void check_cancellations(const std::atomic<bool>& gone);
  bool is_cancelled(const Active& a) const;
  // Cancels `id` in the engine and answers it when it was cancelled by the
  // client or ran past its timeout. Returns true when it did.
  bool stop_if_cancelled_or_late(uint64_t id, const Active& a, uint64_t now);
  // Sends an error final response, reports statistics, releases, forgets `id`.
  void finish_with_error(uint64_t id, TRITONSERVER_Error_Code code, const std::string& msg,
                         Outcome outcome);
  void finish(uint64_t id, bool success, Outcome outcome);
  TRITONSERVER_Error* send_ids(Active& a, const int32_t* ids, size_t n, const int32_t* prev,
                               size_t n_prev, bool final);
  void refresh_metrics(bool force);
  // Once, after the engine failed: asks the server (from a detached thread) to
  // unload this model, so that it stops reporting ready. Refused in model-control
  // mode none: then one warning, and requests keep getting UNAVAILABLE.
  void request_unload_once();
  Active* find(uint64_t id);

  ModelState* model_;
  TRITONBACKEND_ModelInstance* instance_;
  std::string instance_name_;
  std::unique_ptr<glm::Engine> engine_;
  glm::Engine::ModelInfo info_{};
  std::unique_ptr<InstanceMetrics> metrics_;
  bool batched_ = false;  // inputs/outputs carry a leading batch dimension

  std::mutex mu_;  // events_, stop_
  std::condition_variable cv_;
  std::deque<Event> events_;
  bool stop_ = false;

  std::mutex active_mu_;  // active_ (the responder is the only one that erases entries it finished)
  std::unordered_map<uint64_t, std::shared_ptr<Active>> active_;
  std::atomic<uint64_t> next_id_{1};
  std::atomic<bool> unload_requested_{false};
  uint64_t last_metrics_ns_ = 0;
  std::shared_ptr<ResponderControl> ctl_ = std::make_shared<ResponderControl>();
  std::thread responder_;
};

}  // namespace glmtriton
