#include "response_sender.h"

#include <cstring>

#include "util.h"

namespace glmtriton {
namespace {

constexpr size_t kPrevIds = 16;  // prev_ids context for streaming detokenization

}  // namespace

void ResponseSender::reject(TRITONBACKEND_Request* request, TRITONSERVER_Error_Code code,
                            const std::string& msg, uint64_t exec_start_ns) {
  TRITONBACKEND_Response* response = nullptr;
  TRITONSERVER_Error* err = TRITONBACKEND_ResponseNew(&response, request);
  if (err == nullptr) {
    TRITONSERVER_Error* rerr = make_error(code, msg);
    log_if_error(TRITONBACKEND_ResponseSend(response, TRITONSERVER_RESPONSE_COMPLETE_FINAL, rerr),
                 "sending an error response");
    TRITONSERVER_ErrorDelete(rerr);
  } else {
    log_if_error(err, "creating an error response");
  }
  uint64_t end = now_ns();
  log_if_error(TRITONBACKEND_ModelInstanceReportStatistics(instance_, request, false, exec_start_ns,
                                                           exec_start_ns, end, end),
               "reporting statistics");
  log_if_error(TRITONBACKEND_RequestRelease(request, TRITONSERVER_REQUEST_RELEASE_ALL),
               "releasing a request");
  if (metrics_) {
    metrics_->add_request(code == TRITONSERVER_ERROR_CANCELLED ? Outcome::kCancelled
                                                               : Outcome::kRejected);
  }
}

TRITONSERVER_Error* ResponseSender::send_tokens(LiveRequest& r, const ResponderEvent& ev) {
  if (ev.choice < 0 || static_cast<size_t>(ev.choice) >= r.choices.size()) {
    return make_error(TRITONSERVER_ERROR_INTERNAL,
                      "an event for choice " + std::to_string(ev.choice) + " of a request of " +
                          std::to_string(r.choices.size()));
  }
  ChoiceOutput& c = r.choices[static_cast<size_t>(ev.choice)];
  TRITONSERVER_Error* err = nullptr;
  if (r.stream) {
    if (!ev.tokens.empty() || ev.choice_finished) err = send_response(r, ev, ev.tokens, ev.logprobs, c.ids);
    c.ids.insert(c.ids.end(), ev.tokens.begin(), ev.tokens.end());
    if (c.ids.size() > kPrevIds) c.ids.erase(c.ids.begin(), c.ids.end() - kPrevIds);
  } else {
    c.ids.insert(c.ids.end(), ev.tokens.begin(), ev.tokens.end());
    c.logprobs.insert(c.logprobs.end(), ev.logprobs.begin(), ev.logprobs.end());
    if (ev.choice_finished) err = send_response(r, ev, c.ids, c.logprobs, {});
  }
  return err;
}

namespace {

const char* finish_reason(const ResponderEvent& ev) {
  if (!ev.choice_finished) return "";
  switch (ev.reason) {
    case glm::FinishReason::kEos:
    case glm::FinishReason::kStop: return "stop";
    case glm::FinishReason::kLength:
    case glm::FinishReason::kContextLimit: return "length";
    default: return "";
  }
}

}  // namespace

TRITONSERVER_Error* ResponseSender::send_response(LiveRequest& r, const ResponderEvent& ev,
                                                  const std::vector<int32_t>& ids,
                                                  const std::vector<glm::TokenLogprob>& logprobs,
                                                  const std::vector<int32_t>& prev) {
  TRITONBACKEND_Response* response = nullptr;
  GLM_RETURN_IF_ERROR(TRITONBACKEND_ResponseNewFromFactory(&response, r.factory));
  // One output: `dims` as given, with a batch dimension of 1 in front when batched.
  auto add = [&](const char* name, TRITONSERVER_DataType dt, const void* data, size_t bytes,
                 std::vector<int64_t> dims) -> TRITONSERVER_Error* {
    if (batched_) dims.insert(dims.begin(), 1);
    TRITONBACKEND_Output* out = nullptr;
    GLM_RETURN_IF_ERROR(TRITONBACKEND_ResponseOutput(response, &out, name, dt, dims.data(),
                                                     static_cast<uint32_t>(dims.size())));
    void* buf = nullptr;
    TRITONSERVER_MemoryType mt = TRITONSERVER_MEMORY_CPU;
    int64_t mt_id = 0;
    GLM_RETURN_IF_ERROR(TRITONBACKEND_OutputBuffer(out, &buf, bytes, &mt, &mt_id));
    if (mt == TRITONSERVER_MEMORY_GPU) {
      return make_error(TRITONSERVER_ERROR_INTERNAL, std::string(name) + ": got a GPU output buffer");
    }
    if (bytes > 0) std::memcpy(buf, data, bytes);
    return nullptr;
  };
  const bool choice_final = ev.choice_finished;
  const int32_t index = ev.choice, prompt = ev.prompt_tokens, completion = ev.completion_tokens,
                trim = ev.trim_bytes;
  // BYTES: a 4-byte little-endian length, then the bytes.
  const std::string reason = finish_reason(ev);
  std::string reason_bytes(4, '\0');
  for (int k = 0; k < 4; ++k) reason_bytes[static_cast<size_t>(k)] = static_cast<char>((reason.size() >> (8 * k)) & 0xFF);
  reason_bytes += reason;
  // Log-probabilities: [k] for the tokens, [k, N] for the alternatives.
  const size_t k = r.logprobs >= 0 ? ids.size() : 0, top = r.logprobs > 0 ? static_cast<size_t>(r.logprobs) : 0;
  std::vector<float> lp(k), top_lp(k * top);
  std::vector<int32_t> top_ids(k * top);
  for (size_t i = 0; i < k && i < logprobs.size(); ++i) {
    lp[i] = logprobs[i].logprob;
    for (size_t j = 0; j < top && j < logprobs[i].top_ids.size(); ++j) {
      top_ids[i * top + j] = logprobs[i].top_ids[j];
      top_lp[i * top + j] = logprobs[i].top_logprobs[j];
    }
  }
  const int64_t n = static_cast<int64_t>(ids.size()), np = static_cast<int64_t>(prev.size());
  const int64_t kk = static_cast<int64_t>(k), tt = static_cast<int64_t>(top);
  TRITONSERVER_Error* err = add("output_ids", TRITONSERVER_TYPE_INT32, ids.data(), ids.size() * 4, {n});
  if (err == nullptr) err = add("prev_ids", TRITONSERVER_TYPE_INT32, prev.data(), prev.size() * 4, {np});
  if (err == nullptr) err = add("is_final", TRITONSERVER_TYPE_BOOL, &choice_final, 1, {1});
  if (err == nullptr) err = add("index", TRITONSERVER_TYPE_INT32, &index, 4, {1});
  if (err == nullptr) err = add("finish_reason", TRITONSERVER_TYPE_BYTES, reason_bytes.data(), reason_bytes.size(), {1});
  if (err == nullptr) err = add("prompt_tokens", TRITONSERVER_TYPE_INT32, &prompt, 4, {1});
  if (err == nullptr) err = add("completion_tokens", TRITONSERVER_TYPE_INT32, &completion, 4, {1});
  if (err == nullptr) err = add("trim_bytes", TRITONSERVER_TYPE_INT32, &trim, 4, {1});
  if (err == nullptr) err = add("output_logprobs", TRITONSERVER_TYPE_FP32, lp.data(), lp.size() * 4, {kk});
  if (err == nullptr) err = add("top_logprob_ids", TRITONSERVER_TYPE_INT32, top_ids.data(), top_ids.size() * 4, {kk, tt});
  if (err == nullptr) err = add("top_logprobs", TRITONSERVER_TYPE_FP32, top_lp.data(), top_lp.size() * 4, {kk, tt});
  if (err != nullptr) {
    log_if_error(TRITONBACKEND_ResponseDelete(response), "deleting a response");
    return err;
  }
  return TRITONBACKEND_ResponseSend(response, ev.finished ? TRITONSERVER_RESPONSE_COMPLETE_FINAL : 0,
                                    nullptr);
}

void ResponseSender::finish_with_error(uint64_t id, TRITONSERVER_Error_Code code,
                                       const std::string& msg, Outcome outcome) {
  LiveRequest* r = table_->find(id);
  if (r == nullptr) return;
  TRITONBACKEND_Response* response = nullptr;
  TRITONSERVER_Error* err = TRITONBACKEND_ResponseNewFromFactory(&response, r->factory);
  if (err == nullptr) {
    TRITONSERVER_Error* rerr = make_error(code, msg);
    err = TRITONBACKEND_ResponseSend(response, TRITONSERVER_RESPONSE_COMPLETE_FINAL, rerr);
    TRITONSERVER_ErrorDelete(rerr);
  }
  if (err != nullptr) {
    // Could not send the error response: at least close the stream.
    TRITONSERVER_ErrorDelete(err);
    log_if_error(TRITONBACKEND_ResponseFactorySendFlags(r->factory,
                                                        TRITONSERVER_RESPONSE_COMPLETE_FINAL),
                 "sending the final flag");
  }
  finish(id, false, outcome);
}

void ResponseSender::finish(uint64_t id, bool success, Outcome outcome) {
  size_t left = 0;
  std::shared_ptr<LiveRequest> r = table_->take(id, &left);
  if (!r) return;
  const uint64_t end = now_ns();
  log_if_error(TRITONBACKEND_ModelInstanceReportStatistics(instance_, r->request, success,
                                                           r->exec_start_ns, r->submit_ns, end, end),
               "reporting statistics");
  log_if_error(TRITONBACKEND_ResponseFactoryDelete(r->factory), "deleting a response factory");
  if (metrics_) {
    metrics_->add_request(outcome, r->adapter);
    metrics_->set_active(left);
  }
  // Last: releasing the last request of a model being unloaded may destroy
  // this instance (and this sender) right here (see ResponderThread).
  TRITONBACKEND_Request* request = r->request;
  r.reset();
  log_if_error(TRITONBACKEND_RequestRelease(request, TRITONSERVER_REQUEST_RELEASE_ALL),
               "releasing a request");
}

}  // namespace glmtriton
