// The TRITONBACKEND entry points of libtriton_chatglm.so. Every function
// returns a TRITONSERVER_Error*; no exception leaves this file.
#include <cstdlib>
#include <map>
#include <memory>
#include <string>

#include "decoder_config.h"
#include "instance.h"
#include "json_util.h"
#include "metrics.h"
#include "triton_api.h"
#include "util.h"

namespace glmtriton {
namespace {

struct BackendState {
  std::map<std::string, std::string> cmdline;  // --backend-config=chatglm,key=value
  std::unique_ptr<MetricFamilies> families;
};

std::string message_json(TRITONSERVER_Message* msg) {
  const char* base = nullptr;
  size_t size = 0;
  throw_if_error(TRITONSERVER_MessageSerializeToJson(msg, &base, &size), "serializing a message");
  return std::string(base, size);
}

template <typename F>
TRITONSERVER_Error* guarded(const char* where, F&& f) {
  try {
    return f();
  } catch (const TritonException& e) {
    return make_error(e.code(), std::string(where) + ": " + e.what());
  } catch (const std::exception& e) {
    return make_error(TRITONSERVER_ERROR_INTERNAL, std::string(where) + ": " + e.what());
  } catch (...) {
    return make_error(TRITONSERVER_ERROR_INTERNAL, std::string(where) + ": unknown exception");
  }
}

// The state object a TRITONBACKEND_*State getter returns for `handle`, as a T*.
template <typename T, typename H>
T* state_of(H* handle, TRITONSERVER_Error* (*get)(H*, void**)) {
  void* state = nullptr;
  throw_if_error(get(handle, &state), "reading a backend state");
  return static_cast<T*>(state);
}

}  // namespace
}  // namespace glmtriton

using namespace glmtriton;

extern "C" {

TRITONSERVER_Error* TRITONBACKEND_Initialize(TRITONBACKEND_Backend* backend) {
  return guarded("chatglm backend initialize", [&]() -> TRITONSERVER_Error* {
    uint32_t major = 0, minor = 0, be_major = 0, be_minor = 0;
    GLM_RETURN_IF_ERROR(TRITONBACKEND_ApiVersion(&major, &minor));
    be_major = major;
    be_minor = minor;
    if (major != GLM_TRITONBACKEND_API_VERSION_MAJOR ||
        minor < GLM_TRITONBACKEND_API_VERSION_MINOR) {
      return make_error(TRITONSERVER_ERROR_UNSUPPORTED,
                        "chatglm backend needs TRITONBACKEND API " +
                            std::to_string(GLM_TRITONBACKEND_API_VERSION_MAJOR) + "." +
                            std::to_string(GLM_TRITONBACKEND_API_VERSION_MINOR) +
                            "+, the server has " + std::to_string(major) + "." +
                            std::to_string(minor));
    }
    GLM_RETURN_IF_ERROR(TRITONSERVER_ApiVersion(&major, &minor));
    if (major != GLM_TRITONSERVER_API_VERSION_MAJOR ||
        minor < GLM_TRITONSERVER_API_VERSION_MINOR) {
      return make_error(TRITONSERVER_ERROR_UNSUPPORTED,
                        "chatglm backend needs TRITONSERVER API " +
                            std::to_string(GLM_TRITONSERVER_API_VERSION_MAJOR) + "." +
                            std::to_string(GLM_TRITONSERVER_API_VERSION_MINOR) +
                            "+, the server has " + std::to_string(major) + "." +
                            std::to_string(minor));
    }
    auto state = std::make_unique<BackendState>();
    TRITONSERVER_Message* msg = nullptr;
    GLM_RETURN_IF_ERROR(TRITONBACKEND_BackendConfig(backend, &msg));
    // The backend config message is owned by Triton: read it, never free it.
    const glm::Json cfg = glm::parse_json(message_json(msg));
    const glm::Json* cmd = glm::json_find(cfg, "cmdline");
    if (cmd != nullptr && cmd->is_object()) {
      for (const auto& kv : cmd->items()) {
        if (kv.value().is_string()) state->cmdline[kv.key()] = kv.value().get<std::string>();
      }
    }
    state->families = std::make_unique<MetricFamilies>();
    GLM_RETURN_IF_ERROR(TRITONBACKEND_BackendSetState(backend, state.get()));
    state.release();
    GLM_LOG_INFO("chatglm backend initialized (TRITONBACKEND API " + std::to_string(be_major) + "." +
                 std::to_string(be_minor) + ", TRITONSERVER API " + std::to_string(major) + "." +
                 std::to_string(minor) + ")");
    return nullptr;
  });
}

TRITONSERVER_Error* TRITONBACKEND_Finalize(TRITONBACKEND_Backend* backend) {
  return guarded("chatglm backend finalize", [&]() -> TRITONSERVER_Error* {
    delete state_of<BackendState>(backend, TRITONBACKEND_BackendState);
    return nullptr;
  });
}

TRITONSERVER_Error* TRITONBACKEND_ModelInitialize(TRITONBACKEND_Model* model) {
  return guarded("chatglm model initialize", [&]() -> TRITONSERVER_Error* {
    auto state = std::make_unique<ModelState>();
    state->model = model;
    const char* name = nullptr;
    GLM_RETURN_IF_ERROR(TRITONBACKEND_ModelName(model, &name));
    state->name = name ? name : "";
    GLM_RETURN_IF_ERROR(TRITONBACKEND_ModelVersion(model, &state->version));
    TRITONBACKEND_ArtifactType artifact = TRITONBACKEND_ARTIFACT_FILESYSTEM;
    const char* location = nullptr;
    GLM_RETURN_IF_ERROR(TRITONBACKEND_ModelRepository(model, &artifact, &location));
    TRITONBACKEND_Backend* backend = nullptr;
    GLM_RETURN_IF_ERROR(TRITONBACKEND_ModelBackend(model, &backend));
    void* vbackend = nullptr;
    GLM_RETURN_IF_ERROR(TRITONBACKEND_BackendState(backend, &vbackend));
    auto* bstate = static_cast<BackendState*>(vbackend);

    TRITONSERVER_Message* msg = nullptr;
    GLM_RETURN_IF_ERROR(TRITONBACKEND_ModelConfig(model, 1, &msg));
    std::string json;
    try {
      json = message_json(msg);
    } catch (...) {
      TRITONSERVER_MessageDelete(msg);
      throw;
    }
    log_if_error(TRITONSERVER_MessageDelete(msg), "deleting the model config message");

    try {
      state->config = parse_decoder_config(json, bstate->cmdline, location ? location : ".",
                                           std::getenv("GLM_CHECKPOINT_DIR"));
    } catch (const std::exception& e) {
      return make_error(TRITONSERVER_ERROR_INVALID_ARG, e.what());
    }
    if (!state->config.decoupled) {
      return make_error(TRITONSERVER_ERROR_INVALID_ARG,
                        "model '" + state->name +
                            "': the chatglm backend streams; set model_transaction_policy { "
                            "decoupled: true } in config.pbtxt");
    }
    state->families = bstate->families.get();
    GLM_RETURN_IF_ERROR(TRITONBACKEND_ModelSetState(model, state.get()));
    state.release();
    return nullptr;
  });
}

TRITONSERVER_Error* TRITONBACKEND_ModelFinalize(TRITONBACKEND_Model* model) {
  return guarded("chatglm model finalize", [&]() -> TRITONSERVER_Error* {
    delete state_of<ModelState>(model, TRITONBACKEND_ModelState);
    return nullptr;
  });
}

TRITONSERVER_Error* TRITONBACKEND_ModelInstanceInitialize(TRITONBACKEND_ModelInstance* instance) {
  return guarded("chatglm instance initialize", [&]() -> TRITONSERVER_Error* {
    TRITONBACKEND_Model* model = nullptr;
    GLM_RETURN_IF_ERROR(TRITONBACKEND_ModelInstanceModel(instance, &model));
    auto inst = std::make_unique<DecoderInstance>(
        state_of<ModelState>(model, TRITONBACKEND_ModelState), instance);
    GLM_RETURN_IF_ERROR(TRITONBACKEND_ModelInstanceSetState(instance, inst.get()));
    inst.release();
    return nullptr;
  });
}

TRITONSERVER_Error* TRITONBACKEND_ModelInstanceFinalize(TRITONBACKEND_ModelInstance* instance) {
  return guarded("chatglm instance finalize", [&]() -> TRITONSERVER_Error* {
    delete state_of<DecoderInstance>(instance, TRITONBACKEND_ModelInstanceState);
    return nullptr;
  });
}

TRITONSERVER_Error* TRITONBACKEND_ModelInstanceReady(TRITONBACKEND_ModelInstance* instance) {
  return guarded("chatglm instance ready", [&]() -> TRITONSERVER_Error* {
    auto* inst = state_of<DecoderInstance>(instance, TRITONBACKEND_ModelInstanceState);
    if (inst == nullptr || inst->healthy()) return nullptr;
    return make_error(TRITONSERVER_ERROR_UNAVAILABLE, kNotServingMessage);
  });
}

TRITONSERVER_Error* TRITONBACKEND_ModelInstanceExecute(TRITONBACKEND_ModelInstance* instance,
                                                       TRITONBACKEND_Request** requests,
                                                       const uint32_t request_count) {
  // Once this returns nullptr every request is ours: DecoderInstance::execute
  // answers and releases each one itself.
  void* vstate = nullptr;
  TRITONSERVER_Error* err = TRITONBACKEND_ModelInstanceState(instance, &vstate);
  if (err != nullptr) return err;
  auto* inst = static_cast<DecoderInstance*>(vstate);
  try {
    inst->execute(requests, request_count);
  } catch (...) {
    GLM_LOG_ERROR("chatglm_decoder execute: unexpected exception");
  }
  return nullptr;
}

}  // extern "C"
