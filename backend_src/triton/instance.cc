#include "instance.h"

#include "util.h"

namespace glmtriton {
namespace {

constexpr uint64_t kMetricsMinNs = 20ull * 1000000;

std::string instance_name_of(TRITONBACKEND_ModelInstance* instance) {
  const char* iname = nullptr;
  throw_if_error(TRITONBACKEND_ModelInstanceName(instance, &iname), "instance name");
  return iname ? iname : "chatglm_decoder";
}

}  // namespace

DecoderInstance::DecoderInstance(ModelState* model, TRITONBACKEND_ModelInstance* instance)
    : model_(model),
      instance_(instance),
      instance_name_(instance_name_of(instance)),
      batched_(model->config.max_batch_size > 0),
      table_(model->config.max_request_seconds),
      unload_(model->model, model->name, instance_name_),
      responder_(this) {
  TRITONSERVER_InstanceGroupKind kind = TRITONSERVER_INSTANCEGROUPKIND_CPU;
  throw_if_error(TRITONBACKEND_ModelInstanceKind(instance, &kind), "instance kind");
  int32_t device_id = 0;
  throw_if_error(TRITONBACKEND_ModelInstanceDeviceId(instance, &device_id), "instance device id");

  glm::EngineOptions opts =
      resolve_device(model->config, kind == TRITONSERVER_INSTANCEGROUPKIND_GPU, device_id);
  GLM_LOG_INFO("chatglm_decoder instance " + instance_name_ + ": checkpoint " +
               opts.checkpoint_dir + ", device " + opts.device +
               (opts.device == "cuda" ? ":" + std::to_string(opts.device_id) : std::string()) +
               ", dtype " + opts.dtype + (opts.int8 ? ", int8" : "") +
               ", num_kv_blocks " + std::to_string(opts.num_kv_blocks) + ", max_running_seqs " +
               std::to_string(opts.max_running_seqs) + ", max_queue " +
               std::to_string(opts.max_queue) + ", max_request_seconds " +
               seconds_str(model->config.max_request_seconds) +
               (model->config.allow_fault_injection ? ", FAULT INJECTION ON (tests only)" : ""));
  engine_ = glm::Engine::create(opts);
  info_ = engine_->model_info();
  limits_.vocab_size = info_.vocab_size;
  limits_.max_sequence_length = info_.max_sequence_length;
  limits_.default_max_tokens = model->config.default_max_tokens;
  limits_.batched = batched_;
  limits_.allow_fault_injection = model->config.allow_fault_injection;
  metrics_ = std::make_unique<InstanceMetrics>(
      model->families, model->name, model->version, instance_name_,
      opts.device == "cuda" ? "cuda:" + std::to_string(opts.device_id) : opts.device, engine_->adapters());
  sender_ = std::make_unique<ResponseSender>(instance_, &table_, metrics_.get(), batched_);
  engine_->start();
  responder_.start();
  refresh_metrics(true);
  glm::EngineStats s = engine_->stats();
  const std::string backend = engine_->backend_description();
  GLM_LOG_INFO("chatglm_decoder instance " + instance_name_ + " ready: vocab " +
               std::to_string(info_.vocab_size) + ", context " +
               std::to_string(info_.max_sequence_length) + ", KV blocks " +
               std::to_string(s.kv_blocks_total) + (backend.empty() ? "" : ", " + backend));
}

DecoderInstance::~DecoderInstance() {
  // Pending requests get their final (cancelled) events from stop().
  try {
    if (engine_) engine_->stop();
  } catch (const std::exception& e) {
    GLM_LOG_ERROR(std::string("stopping the engine: ") + e.what());
  }
  // Drains the events and joins; when this runs on the responder thread itself
  // (it released the last request), marks it gone instead: it returns without
  // touching this object again.
  responder_.stop();
  // Anything the engine did not finish gets an error now (never left hanging).
  for (uint64_t id : table_.ids()) {
    sender_->finish_with_error(id, TRITONSERVER_ERROR_UNAVAILABLE, "chatglm_decoder is unloading",
                               Outcome::kCancelled);
  }
  engine_.reset();
  metrics_.reset();
}

void DecoderInstance::execute(TRITONBACKEND_Request** requests, uint32_t count) {
  const uint64_t exec_start = now_ns();
  uint64_t accepted = 0;
  const bool engine_ok = engine_->stats().healthy;
  for (uint32_t i = 0; i < count; ++i) {
    TRITONBACKEND_Request* request = requests[i];
    if (request == nullptr) continue;
    try {
      if (admit(request, engine_ok, exec_start)) ++accepted;
    } catch (const std::exception& ex) {
      // Only reached when something failed before we handed out the request.
      GLM_LOG_ERROR(std::string("chatglm_decoder execute: ") + ex.what());
    }
  }
  const uint64_t exec_end = now_ns();
  if (accepted > 0) {
    log_if_error(TRITONBACKEND_ModelInstanceReportBatchStatistics(instance_, accepted, exec_start,
                                                                  exec_start, exec_end, exec_end),
                 "reporting batch statistics");
  }
  responder_.wake();
  if (!engine_ok) unload_.request_once();
}

bool DecoderInstance::admit(TRITONBACKEND_Request* request, bool engine_ok, uint64_t exec_start) {
  bool cancelled = false;
  log_if_error(TRITONBACKEND_RequestIsCancelled(request, &cancelled), "request cancelled?");
  if (cancelled) {
    sender_->reject(request, TRITONSERVER_ERROR_CANCELLED, "request cancelled", exec_start);
    return false;
  }
  if (!engine_ok) {
    sender_->reject(request, TRITONSERVER_ERROR_UNAVAILABLE, kNotServingMessage, exec_start);
    return false;
  }
  ParsedRequest parsed;
  if (std::optional<RequestError> bad = parse_request(request, limits_, &parsed)) {
    sender_->reject(request, bad->code, bad->message, exec_start);
    return false;
  }
  TRITONBACKEND_ResponseFactory* factory = nullptr;
  TRITONSERVER_Error* err = TRITONBACKEND_ResponseFactoryNew(&factory, request);
  if (err != nullptr) {
    std::string m = std::string("response factory: ") + TRITONSERVER_ErrorMessage(err);
    TRITONSERVER_ErrorDelete(err);
    sender_->reject(request, TRITONSERVER_ERROR_INTERNAL, m, exec_start);
    return false;
  }
  size_t n_active = 0;
  // `live` keeps the entry alive: the responder may finish it before submit() returns.
  std::shared_ptr<LiveRequest> live =
      table_.add(request, factory, parsed.stream, parsed.params.n, parsed.params.logprobs,
                 exec_start, &n_active);
  live->adapter = parsed.params.adapter;
  const uint64_t id = live->id;
  if (parsed.inject_fault) {
    GLM_LOG_WARN("chatglm_decoder: injecting an engine fault (test hook)");
    engine_->inject_fault();
  }
  try {
    engine_->submit(id, std::move(parsed.input_ids), parsed.params,
                    [this](const glm::TokenEvent& ev) { responder_.post(ev); });
    live->submitted = true;
    if (metrics_) metrics_->set_active(n_active);
    return true;
  } catch (const std::exception& ex) {
    table_.erase(id);
    log_if_error(TRITONBACKEND_ResponseFactoryDelete(factory), "deleting a response factory");
    // The engine's typed error decides the code (never its text).
    TRITONSERVER_Error_Code c = TRITONSERVER_ERROR_INTERNAL;
    if (const auto* ee = dynamic_cast<const glm::EngineError*>(&ex)) {
      c = ee->code() == glm::ErrorCode::kInvalidArgument ? TRITONSERVER_ERROR_INVALID_ARG
          : ee->code() == glm::ErrorCode::kUnavailable   ? TRITONSERVER_ERROR_UNAVAILABLE
                                                          : TRITONSERVER_ERROR_INTERNAL;
    }
    sender_->reject(request, c, ex.what(), exec_start);
    return false;
  }
}

bool DecoderInstance::healthy() const { return engine_ && engine_->stats().healthy; }

void DecoderInstance::refresh_metrics(bool force) {
  if (!metrics_ || !engine_) return;
  const uint64_t now = now_ns();
  if (!force && now - last_metrics_ns_ < kMetricsMinNs) return;
  last_metrics_ns_ = now;
  metrics_->update(engine_->stats());
  metrics_->set_active(table_.size());
}

void DecoderInstance::check_cancellations(const std::atomic<bool>& gone) {
  const uint64_t now = now_ns();
  for (const std::shared_ptr<LiveRequest>& r : table_.submitted()) {
    if (stop_if_cancelled_or_late(*r, now) && gone) return;
  }
}

bool DecoderInstance::stop_if_cancelled_or_late(const LiveRequest& r, uint64_t now) {
  std::optional<StopReason> why = table_.why_stop(r, now);
  if (!why) return false;
  const uint64_t id = r.id;
  engine_->cancel(id);
  refresh_metrics(true);  // the gauges show where the engine was when it was told to stop
  sender_->finish_with_error(id, why->code, why->message, Outcome::kCancelled);
  return true;
}

void DecoderInstance::handle(ResponderEvent& ev) {
  LiveRequest* a = table_.find(ev.id);
  if (a == nullptr) return;  // already finished (cancelled by us, or failed to send)
  if (!ev.finished && stop_if_cancelled_or_late(*a, now_ns())) return;
  // A cancelled or failed choice ends the whole request with an error final
  // (the other choices' events then find nothing to answer).
  if (ev.choice_finished && ev.reason == glm::FinishReason::kCancelled) {
    sender_->finish_with_error(
        ev.id, TRITONSERVER_ERROR_CANCELLED,
        a->cancelled_by_client() ? "request cancelled" : "request cancelled by the engine",
        Outcome::kCancelled);
    return;
  }
  if (ev.choice_finished && ev.reason == glm::FinishReason::kError) {
    // Before answering: releasing the request may destroy this instance (unload).
    if (!unload_.requested() && !healthy()) unload_.request_once();
    sender_->finish_with_error(
        ev.id, TRITONSERVER_ERROR_INTERNAL,
        "chatglm engine error: " + (ev.error.empty() ? std::string("unknown") : ev.error),
        Outcome::kError);
    return;
  }
  if (!ev.tokens.empty()) {
    if (!a->got_first) {
      a->got_first = true;
      if (metrics_) metrics_->observe_ttft(static_cast<double>(now_ns() - a->submit_ns) * 1e-9);
    }
    if (metrics_) metrics_->add_tokens(ev.tokens.size(), a->adapter);
  }
  TRITONSERVER_Error* err = sender_->send_tokens(*a, ev);
  if (err != nullptr) {
    std::string m = std::string("sending a response: ") + TRITONSERVER_ErrorMessage(err);
    TRITONSERVER_ErrorDelete(err);
    GLM_LOG_VERBOSE("chatglm_decoder: " + m);
    if (!ev.finished) engine_->cancel(ev.id);
    sender_->finish_with_error(ev.id, TRITONSERVER_ERROR_CANCELLED, m, Outcome::kCancelled);
    return;
  }
  if (ev.finished) sender_->finish(ev.id, true, Outcome::kOk);
}

}  // namespace glmtriton
