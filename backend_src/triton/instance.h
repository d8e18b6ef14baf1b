// One chatglm_decoder model instance: one glm::Engine, one responder thread,
// and the pieces it wires together:
//
//   request_parser    TRITONBACKEND_Request -> ParsedRequest, or the error
//   request_table     the live requests, their cancellation and deadlines
//   response_sender   responses, error finals, statistics, release
//   responder_thread  the event queue and the thread that drains it
//   self_unload       asks the server to unload the model after an engine failure
//   metrics           custom Prometheus metrics
//
// Execute() only validates each request, registers it and submits it to the
// engine, then returns (decoupled). The engine's step loop calls back for
// every step's tokens; that only queues the event. The responder thread turns
// events into Triton responses (handle()), checks for cancellation when a
// request's event arrives (and on a slow tick for requests still queued in the
// engine), reports per-request statistics and releases each request after its
// final response. The final flag goes out exactly once per request.
//
// The responder thread may itself run ~DecoderInstance (Triton unloads a
// model when its last request is released, and requests are released on the
// responder thread): see ResponderThread's ResponderControl. Every path in
// here that can release a request (a ResponseSender finish) returns right
// after it, touching no member.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "decoder_config.h"
#include "engine.h"
#include "metrics.h"
#include "request_parser.h"
#include "request_table.h"
#include "responder_thread.h"
#include "response_sender.h"
#include "self_unload.h"
#include "triton_api.h"

namespace glmtriton {

struct ModelState {
  TRITONBACKEND_Model* model = nullptr;
  std::string name;
  uint64_t version = 0;
  DecoderConfig config;
  MetricFamilies* families = nullptr;  // owned by the backend state; may be null
};

// The UNAVAILABLE answer once the engine failed (stable: clients match "is not serving").
inline constexpr const char* kNotServingMessage =
    "chatglm_decoder: the engine failed and is not serving (reload the model)";

class DecoderInstance final : private ResponderThread::Handler {
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
  // One request of an Execute batch: answers it at once when it cannot run,
  // else registers and submits it. True when the engine took it.
  bool admit(TRITONBACKEND_Request* request, bool engine_ok, uint64_t exec_start);
  // ResponderThread::Handler (responder thread).
  void handle(ResponderEvent& ev) override;
  void check_cancellations(const std::atomic<bool>& gone) override;
  void refresh_metrics(bool force) override;
  // Cancels `r` in the engine and answers it when it was cancelled by the
  // client or ran past a deadline. Returns true when it did.
  bool stop_if_cancelled_or_late(const LiveRequest& r, uint64_t now);

  ModelState* model_;
  TRITONBACKEND_ModelInstance* instance_;
  const std::string instance_name_;
  const bool batched_;  // inputs/outputs carry a leading batch dimension
  std::unique_ptr<glm::Engine> engine_;
  glm::Engine::ModelInfo info_{};
  RequestLimits limits_;
  std::unique_ptr<InstanceMetrics> metrics_;
  RequestTable table_;
  std::unique_ptr<ResponseSender> sender_;  // made once metrics_ exists
  SelfUnload unload_;
  uint64_t last_metrics_ns_ = 0;
  ResponderThread responder_;  // last: stopped (joined) before anything else goes
};

}  // namespace glmtriton
