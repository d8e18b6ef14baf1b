// The chatglm_decoder model configuration, read once at model load: Triton's
// model config (JSON) + the backend's command-line settings
// (--backend-config=chatglm,key=value) + the environment. No Triton calls in
// here, so it is testable on its own.
//
// Precedence for every key: --backend-config=chatglm,<key>=<value> (start-time
// override), then the model config's `parameters`, then the default. The
// checkpoint directory may also come from the environment variable
// GLM_CHECKPOINT_DIR (between the command line and the model config), the same
// variable the Python pre/postprocessing models read, so one variable moves the
// whole ensemble to another checkpoint.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "engine.h"

namespace glmtriton {

struct DecoderConfig {
  glm::EngineOptions engine;    // device / device_id are settled per instance (see resolve_device)
  std::string device = "auto";  // auto | cpu | cuda, as configured
  bool dtype_set = false;       // dtype given explicitly (else: fp32 on cpu, fp16 on cuda)
  int default_max_tokens = 128; // used when a request carries no max_tokens
  // Server-side cap on a request's life (0 = off): a request still running this
  // long after it arrived ends with UNAVAILABLE "request timeout expired
  // (max_request_seconds N) ...". Bounds what a stream cancelled through the
  // ensemble costs (Triton 2.51 never tells the decoder about that cancel).
  double max_request_seconds = 0.0;
  int max_batch_size = 0;       // Triton's max_batch_size (inputs carry a batch dim when > 0)
  bool decoupled = false;
  // Test hook, off unless --backend-config=chatglm,allow_fault_injection=true or
  // the model parameter enable_fault_injection=true (never in the shipped
  // configs): a request with the Triton request parameter glm_inject_fault=true,
  // or with the BOOL input inject_fault=true (when the model config declares
  // it), makes the engine's next step fail inside the back-end
  // (Engine::inject_fault). While off, the input gets INVALID_ARG and the
  // request parameter is ignored.
  bool allow_fault_injection = false;
};

// Throws std::runtime_error with a message naming the offending key.
// `model_dir` is the model's directory in the repository (relative checkpoint
// paths are resolved against it). `cmdline` holds the backend's cmdline
// settings; unknown keys there are ignored (Triton adds its own).
DecoderConfig parse_decoder_config(const std::string& model_config_json,
                                   const std::map<std::string, std::string>& cmdline,
                                   const std::string& model_dir, const char* env_checkpoint_dir);

// Settles device, device_id and dtype for one instance. `instance_kind_gpu`:
// the instance group is KIND_GPU (then cuda on `instance_device_id`). Throws
// std::runtime_error on a contradiction (device=cpu with KIND_GPU).
glm::EngineOptions resolve_device(const DecoderConfig& cfg, bool instance_kind_gpu,
                                  int instance_device_id);

// The keys understood in `parameters` / --backend-config (for docs and errors).
const std::vector<std::string>& known_parameter_keys();

}  // namespace glmtriton
