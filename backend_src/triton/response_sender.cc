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

TRITONSERVER_Error* ResponseSender::send_tokens(LiveRequest& r, const std::vector<int32_t>& tokens,
                                                bool finished) {
  TRITONSERVER_Error* err = nullptr;
  if (r.stream) {
    if (!tokens.empty() || finished) {
      err = send_ids(r, tokens.data(), tokens.size(), r.ids.data(), r.ids.size(), finished);
    }
    r.ids.insert(r.ids.end(), tokens.begin(), tokens.end());
    if (r.ids.size() > kPrevIds) r.ids.erase(r.ids.begin(), r.ids.end() - kPrevIds);
  } else {
    r.ids.insert(r.ids.end(), tokens.begin(), tokens.end());
    if (finished) err = send_ids(r, r.ids.data(), r.ids.size(), nullptr, 0, true);
  }
  return err;
}

TRITONSERVER_Error* ResponseSender::send_ids(LiveRequest& r, const int32_t* ids, size_t n,
                                             const int32_t* prev, size_t n_prev, bool final) {
  TRITONBACKEND_Response* response = nullptr;
  GLM_RETURN_IF_ERROR(TRITONBACKEND_ResponseNewFromFactory(&response, r.factory));
  auto add = [&](const char* name, TRITONSERVER_DataType dt, const void* data, size_t count,
                 size_t elem) -> TRITONSERVER_Error* {
    int64_t shape[2];
    uint32_t dims;
    if (batched_) {
      shape[0] = 1;
      shape[1] = static_cast<int64_t>(count);
      dims = 2;
    } else {
      shape[0] = static_cast<int64_t>(count);
      dims = 1;
    }
    TRITONBACKEND_Output* out = nullptr;
    GLM_RETURN_IF_ERROR(TRITONBACKEND_ResponseOutput(response, &out, name, dt, shape, dims));
    void* buf = nullptr;
    TRITONSERVER_MemoryType mt = TRITONSERVER_MEMORY_CPU;
    int64_t mt_id = 0;
    GLM_RETURN_IF_ERROR(TRITONBACKEND_OutputBuffer(out, &buf, count * elem, &mt, &mt_id));
    if (mt == TRITONSERVER_MEMORY_GPU) {
      return make_error(TRITONSERVER_ERROR_INTERNAL, std::string(name) + ": got a GPU output buffer");
    }
    if (count > 0) std::memcpy(buf, data, count * elem);
    return nullptr;
  };
  const bool fin = final;
  TRITONSERVER_Error* err = add("output_ids", TRITONSERVER_TYPE_INT32, ids, n, sizeof(int32_t));
  if (err == nullptr) err = add("prev_ids", TRITONSERVER_TYPE_INT32, prev, n_prev, sizeof(int32_t));
  if (err == nullptr) err = add("is_final", TRITONSERVER_TYPE_BOOL, &fin, 1, 1);
  if (err != nullptr) {
    log_if_error(TRITONBACKEND_ResponseDelete(response), "deleting a response");
    return err;
  }
  return TRITONBACKEND_ResponseSend(response, final ? TRITONSERVER_RESPONSE_COMPLETE_FINAL : 0,
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
    metrics_->add_request(outcome);
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
