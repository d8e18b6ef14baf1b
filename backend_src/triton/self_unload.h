// Self-unload after an engine failure. Triton 2.51 never asks a backend
// whether an instance is ready (TRITONBACKEND_ModelInstanceReady is exported
// for newer servers), so once the engine failed the instance asks the server to
// unload its model, so that it stops reporting ready. Refused in model-control
// mode none: then one warning, and requests keep getting UNAVAILABLE
// (glm_engine_healthy == 0 is the signal there).
#pragma once

#include <atomic>
#include <string>
#include <utility>

#include "triton_api.h"

namespace glmtriton {

class SelfUnload {
 public:
  SelfUnload(TRITONBACKEND_Model* model, std::string model_name, std::string instance_name)
      : model_(model), model_name_(std::move(model_name)), instance_name_(std::move(instance_name)) {}
  SelfUnload(const SelfUnload&) = delete;
  SelfUnload& operator=(const SelfUnload&) = delete;

  // Once: asks the server, from a detached thread, to unload the model.
  // Unloading waits for the instance to finalize, which joins the responder:
  // so never synchronously from Execute or the responder. Any thread.
  void request_once();
  bool requested() const { return requested_; }

 private:
  TRITONBACKEND_Model* model_;
  const std::string model_name_;
  const std::string instance_name_;
  std::atomic<bool> requested_{false};
};

}  // namespace glmtriton
