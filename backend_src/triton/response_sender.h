// Everything that answers a request: data responses, error finals, per-request
// statistics, the outcome metric, and the release of the request.
//
// A data response is one choice's new tokens: output_ids, prev_ids (the up to
// 16 ids of that choice before them), is_final (the choice's last response),
// index (the choice), finish_reason ("" until the choice's last response, then
// "stop" or "length"), prompt_tokens, completion_tokens (the choice's tokens so
// far), trim_bytes (on a stop's last response: bytes to cut from the end of the
// choice's text), output_logprobs [k], top_logprob_ids and top_logprobs [k, N]
// (N = the request's logprobs; empty when off).
//
// The FINAL flag goes out exactly once per request: a live request is answered
// only while it is in the RequestTable, and finish() takes it out before
// anything else, so a second finish (or an event that comes after) finds
// nothing to answer.
//
// finish() and finish_with_error() release the request as their very last
// step. Releasing the last request of a model being unloaded may destroy the
// DecoderInstance, and this sender with it, right there (see ResponderThread):
// nothing in here touches a member after the release, and callers return at
// once.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "metrics.h"
#include "request_table.h"
#include "responder_thread.h"
#include "triton_api.h"

namespace glmtriton {

class ResponseSender {
 public:
  // `metrics` may be null; `batched`: outputs carry a leading batch dimension of 1.
  ResponseSender(TRITONBACKEND_ModelInstance* instance, RequestTable* table,
                 InstanceMetrics* metrics, bool batched)
      : instance_(instance), table_(table), metrics_(metrics), batched_(batched) {}
  ResponseSender(const ResponseSender&) = delete;
  ResponseSender& operator=(const ResponseSender&) = delete;

  // A request that never got into the table (refused in Execute): one error
  // final, statistics, release. Counted `cancelled` for CANCELLED, else `rejected`.
  void reject(TRITONBACKEND_Request* request, TRITONSERVER_Error_Code code, const std::string& msg,
              uint64_t exec_start_ns);

  // Sends what the event adds to its choice of `r`. stream: one response with
  // the new ids. Not stream: collects, and once the choice ends sends one
  // response with all of its ids, prev_ids empty. The FINAL flag goes with the
  // response of the event that ends the request. Returns the send error
  // (nullptr when sent or nothing to send); the request stays in the table
  // either way: the caller finishes it.
  TRITONSERVER_Error* send_tokens(LiveRequest& r, const ResponderEvent& ev);

  // Sends an error final response (or, when that fails, at least the final
  // flag), then finish(id, false, outcome). No-op when `id` is already finished.
  void finish_with_error(uint64_t id, TRITONSERVER_Error_Code code, const std::string& msg,
                         Outcome outcome);
  // Takes `id` out of the table, reports statistics, deletes the response
  // factory, counts the outcome, releases the request (last). The final flag
  // must have been sent already. No-op when `id` is already finished.
  void finish(uint64_t id, bool success, Outcome outcome);

 private:
  TRITONSERVER_Error* send_response(LiveRequest& r, const ResponderEvent& ev,
                                    const std::vector<int32_t>& ids,
                                    const std::vector<glm::TokenLogprob>& logprobs,
                                    const std::vector<int32_t>& prev);

  TRITONBACKEND_ModelInstance* instance_;
  RequestTable* table_;
  InstanceMetrics* metrics_;
  bool batched_;
};

}  // namespace glmtriton
