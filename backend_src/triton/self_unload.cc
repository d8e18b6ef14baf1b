#include "self_unload.h"

#include <thread>

#include "util.h"

namespace glmtriton {

void SelfUnload::request_once() {
  if (requested_.exchange(true)) return;
  TRITONSERVER_Server* server = nullptr;
  TRITONSERVER_Error* err = TRITONBACKEND_ModelServer(model_, &server);
  if (err != nullptr) {
    GLM_LOG_WARN(std::string("chatglm_decoder: the engine failed; cannot reach the server to "
                             "unload the model: ") +
                 TRITONSERVER_ErrorMessage(err));
    TRITONSERVER_ErrorDelete(err);
    return;
  }
  const std::string name = model_name_;
  GLM_LOG_WARN("chatglm_decoder instance " + instance_name_ +
               ": the engine failed; asking the server to unload model '" + name + "'");
  // Unloading waits for this instance to finalize, which joins the responder:
  // never from Execute or the responder. The thread holds no pointer into us.
  std::thread([server, name] {
    TRITONSERVER_Error* e = TRITONSERVER_ServerUnloadModel(server, name.c_str());
    if (e == nullptr) {
      GLM_LOG_INFO("chatglm_decoder: model '" + name +
                   "' is being unloaded after an engine failure (load it again to recover)");
      return;
    }
    GLM_LOG_WARN("chatglm_decoder: the engine failed and the server refused to unload model '" +
                 name + "' (" + TRITONSERVER_ErrorMessage(e) +
                 "); it stays loaded and answers UNAVAILABLE until it is reloaded or the server "
                 "restarts (alert on glm_engine_healthy == 0)");
    TRITONSERVER_ErrorDelete(e);
  }).detach();
}

}  // namespace glmtriton
