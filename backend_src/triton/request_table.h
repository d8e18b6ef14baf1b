// The table of live requests of one model instance: every request Execute
// handed to the engine, from registration until its final response. Also
// decides when a live request must stop early: cancelled by its client, past
// its own timeout, or past the model's max_request_seconds.
//
// Threads: Execute registers (add) and, when engine.submit() throws, drops the
// entry again (erase); the responder thread looks entries up and is the only
// one that takes out entries it finished (take). ~DecoderInstance finishes
// what is left (ids).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine.h"
#include "triton_api.h"

namespace glmtriton {

// What one choice of a live request has produced. Stream: the last <= 16 ids
// (prev_ids of the next response). Not stream: every id and its log-probabilities
// so far (one response when the choice ends).
struct ChoiceOutput {
  std::vector<int32_t> ids;
  std::vector<glm::TokenLogprob> logprobs;
};

struct LiveRequest {
  uint64_t id = 0;  // the engine's request id
  TRITONBACKEND_Request* request = nullptr;
  TRITONBACKEND_ResponseFactory* factory = nullptr;
  bool stream = false;
  int logprobs = -1;                  // alternatives per token (-1: no log-probabilities)
  std::vector<ChoiceOutput> choices;  // one per choice (n)
  std::string adapter;                // "" = the base model (metrics label)
  uint64_t exec_start_ns = 0;
  uint64_t submit_ns = 0;
  std::atomic<bool> submitted{false};  // engine.submit() returned (else Execute may erase it)
  uint64_t deadline_ns = 0;  // from the request's timeout (0 = none)
  uint64_t timeout_us = 0;
  uint64_t cap_deadline_ns = 0;  // from max_request_seconds (0 = none)
  bool got_first = false;

  // Triton says the client cancelled (response factory or request).
  bool cancelled_by_client() const;
};

// Why a live request has to stop now (the error final it gets).
struct StopReason {
  TRITONSERVER_Error_Code code = TRITONSERVER_ERROR_CANCELLED;
  std::string message;  // stable (README "Error messages")
};

class RequestTable {
 public:
  explicit RequestTable(double max_request_seconds) : max_request_seconds_(max_request_seconds) {}
  RequestTable(const RequestTable&) = delete;
  RequestTable& operator=(const RequestTable&) = delete;

  // Registers a request Execute accepted under a new id, with its deadlines:
  // the request's timeout and max_request_seconds, both counted from
  // `exec_start_ns`. *live: entries now, this one included. The caller keeps
  // the returned pointer: the responder may finish the request (and take it
  // out) before engine.submit() returns.
  std::shared_ptr<LiveRequest> add(TRITONBACKEND_Request* request,
                                   TRITONBACKEND_ResponseFactory* factory, bool stream,
                                   int num_choices, int logprobs, uint64_t exec_start_ns,
                                   size_t* live);
  // Drops an entry that was never submitted (no answer, nothing released).
  void erase(uint64_t id);
  // The entry, or nullptr once it was finished. Only the responder thread may
  // hold on to the pointer (it is the one that takes entries out).
  LiveRequest* find(uint64_t id);
  // Takes the entry out (nullptr when already gone); *left: entries remaining.
  std::shared_ptr<LiveRequest> take(uint64_t id, size_t* left);
  size_t size();
  std::vector<uint64_t> ids();
  // The entries whose submit() returned (the others may still be dropped by Execute).
  std::vector<std::shared_ptr<LiveRequest>> submitted();

  // Cancelled by the client, or past a deadline at `now`: why it must stop; else nullopt.
  std::optional<StopReason> why_stop(const LiveRequest& r, uint64_t now) const;

 private:
  const double max_request_seconds_;
  std::mutex mu_;
  std::unordered_map<uint64_t, std::shared_ptr<LiveRequest>> live_;
  std::atomic<uint64_t> next_id_{1};
};

}  // namespace glmtriton
