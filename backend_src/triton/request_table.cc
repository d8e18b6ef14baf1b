#include "request_table.h"

#include "util.h"

namespace glmtriton {

bool LiveRequest::cancelled_by_client() const {
  bool c = false;
  TRITONSERVER_Error* err = TRITONBACKEND_ResponseFactoryIsCancelled(factory, &c);
  if (err != nullptr) {
    TRITONSERVER_ErrorDelete(err);
    c = false;
  }
  if (!c && request != nullptr) {
    err = TRITONBACKEND_RequestIsCancelled(request, &c);
    if (err != nullptr) {
      TRITONSERVER_ErrorDelete(err);
      c = false;
    }
  }
  return c;
}

std::shared_ptr<LiveRequest> RequestTable::add(TRITONBACKEND_Request* request,
                                               TRITONBACKEND_ResponseFactory* factory, bool stream,
                                               int num_choices, int logprobs,
                                               uint64_t exec_start_ns, size_t* live) {
  auto r = std::make_shared<LiveRequest>();
  r->id = next_id_.fetch_add(1);
  r->request = request;
  r->factory = factory;
  r->stream = stream;
  r->logprobs = logprobs;
  r->choices.resize(static_cast<size_t>(num_choices < 1 ? 1 : num_choices));
  r->exec_start_ns = exec_start_ns;
  r->submit_ns = now_ns();
  uint64_t timeout_us = 0;
  log_if_error(TRITONBACKEND_InferenceRequestTimeoutMicroseconds(request, &timeout_us),
               "request timeout");
  if (timeout_us > 0) {
    r->timeout_us = timeout_us;
    r->deadline_ns = exec_start_ns + timeout_us * 1000ull;
  }
  if (max_request_seconds_ > 0) {
    r->cap_deadline_ns = exec_start_ns + static_cast<uint64_t>(max_request_seconds_ * 1e9);
  }
  std::lock_guard<std::mutex> lk(mu_);
  live_[r->id] = r;
  *live = live_.size();
  return r;
}

void RequestTable::erase(uint64_t id) {
  std::lock_guard<std::mutex> lk(mu_);
  live_.erase(id);
}

LiveRequest* RequestTable::find(uint64_t id) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = live_.find(id);
  return it == live_.end() ? nullptr : it->second.get();
}

std::shared_ptr<LiveRequest> RequestTable::take(uint64_t id, size_t* left) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = live_.find(id);
  if (it == live_.end()) return nullptr;
  std::shared_ptr<LiveRequest> r = std::move(it->second);
  live_.erase(it);
  *left = live_.size();
  return r;
}

size_t RequestTable::size() {
  std::lock_guard<std::mutex> lk(mu_);
  return live_.size();
}

std::vector<uint64_t> RequestTable::ids() {
  std::vector<uint64_t> out;
  std::lock_guard<std::mutex> lk(mu_);
  for (auto& kv : live_) out.push_back(kv.first);
  return out;
}

std::vector<std::shared_ptr<LiveRequest>> RequestTable::submitted() {
  std::vector<std::shared_ptr<LiveRequest>> out;
  std::lock_guard<std::mutex> lk(mu_);
  for (auto& kv : live_) {
    // Skip a request whose submit() has not returned: Execute may still drop it.
    if (kv.second->submitted) out.push_back(kv.second);
  }
  return out;
}

std::optional<StopReason> RequestTable::why_stop(const LiveRequest& r, uint64_t now) const {
  if (r.cancelled_by_client()) return StopReason{TRITONSERVER_ERROR_CANCELLED, "request cancelled"};
  if (r.deadline_ns != 0 && now > r.deadline_ns) {
    return StopReason{TRITONSERVER_ERROR_UNAVAILABLE, "request timeout expired (timeout " +
                                                          std::to_string(r.timeout_us) +
                                                          " us): generation stopped"};
  }
  if (r.cap_deadline_ns != 0 && now > r.cap_deadline_ns) {
    GLM_LOG_VERBOSE("chatglm_decoder: request " + std::to_string(r.id) +
                    " ran past max_request_seconds; stopped");
    return StopReason{TRITONSERVER_ERROR_UNAVAILABLE,
                      "request timeout expired (max_request_seconds " +
                          seconds_str(max_request_seconds_) + "): generation stopped"};
  }
  return std::nullopt;
}

}  // namespace glmtriton
