// Request parsing: one TRITONBACKEND_Request -> a validated ParsedRequest, or
// the error to answer it with (INVALID_ARG naming the field and the allowed
// range; INTERNAL when Triton itself fails to hand over the inputs). Reads the
// request's inputs and parameters only: it never answers, releases or keeps
// the request. Thread-safe (no state beyond the limits it is given).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine.h"
#include "triton_api.h"

namespace glmtriton {

// A validated request, ready for the engine.
struct ParsedRequest {
  std::vector<int32_t> input_ids;
  glm::SamplingParams params;
  bool stream = false;
  bool inject_fault = false;  // test hook asked for (and allowed)
};

// What validation needs to know about the model; fixed per instance.
struct RequestLimits {
  int vocab_size = 0;
  int max_sequence_length = 0;
  int default_max_tokens = 128;        // when a request has no max_tokens
  bool batched = false;                // inputs carry a leading batch dimension of 1
  bool allow_fault_injection = false;  // the test hook is on (DecoderConfig)
};

// Why a request was refused.
struct RequestError {
  TRITONSERVER_Error_Code code = TRITONSERVER_ERROR_INVALID_ARG;
  std::string message;  // stable: starts with the input's name (README "Error messages")
};

// Fills *out and returns std::nullopt when `request` is valid; else the error.
std::optional<RequestError> parse_request(TRITONBACKEND_Request* request,
                                          const RequestLimits& limits, ParsedRequest* out);

}  // namespace glmtriton
