#include "decoder_config.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <stdexcept>

#include "cuda_tuning.h"
#include "json_util.h"

namespace glmtriton {
namespace {

// The engine's CUDA tuning fields are parameters "cuda_<field>" (engine.h CudaTuning).
const char kCudaPrefix[] = "cuda_";

std::vector<std::string> all_keys() {
  std::vector<std::string> keys = {
      "checkpoint_dir", "device",          "device_id",         "dtype",
      "int8",           "fp8",             "kv_cache_dtype",    "random_weights",  "weights_seed",      "block_size",
      "num_kv_blocks",  "kv_cache_fraction", "kv_cache_bytes",  "max_running_seqs",
      "max_batched_tokens", "max_queue",   "num_threads",       "use_cuda_graphs",
      "default_max_tokens", "enable_fault_injection", "max_request_seconds", "adapters_dir",
      "overlap_steps"};
  for (const glm::CudaTuningField& f : glm::cuda_tuning_fields()) keys.push_back(kCudaPrefix + std::string(f.name));
  return keys;
}

const std::vector<std::string> kKeys = all_keys();

[[noreturn]] void bad(const std::string& key, const std::string& value, const std::string& want) {
  throw std::runtime_error("chatglm_decoder parameter '" + key + "' = '" + value + "': expected " +
                           want);
}

int64_t to_int(const std::string& key, const std::string& v, int64_t lo, int64_t hi) {
  errno = 0;
  char* end = nullptr;
  long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || errno != 0 || end == nullptr || *end != '\0' || x < lo || x > hi) {
    bad(key, v, "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  }
  return x;
}

uint64_t to_uint64(const std::string& key, const std::string& v) {
  errno = 0;
  char* end = nullptr;
  if (v.empty() || v[0] == '-') bad(key, v, "an unsigned 64-bit integer");
  unsigned long long x = std::strtoull(v.c_str(), &end, 10);
  if (errno != 0 || end == nullptr || *end != '\0') bad(key, v, "an unsigned 64-bit integer");
  return x;
}

double to_double(const std::string& key, const std::string& v, double lo, double hi,
                 bool lo_open) {
  errno = 0;
  char* end = nullptr;
  double x = std::strtod(v.c_str(), &end);
  bool ok = !v.empty() && errno == 0 && end != nullptr && *end == '\0' && std::isfinite(x) &&
            (lo_open ? x > lo : x >= lo) && x <= hi;
  if (!ok) {
    bad(key, v,
        std::string("a number in ") + (lo_open ? "(" : "[") + std::to_string(lo) + ", " +
            std::to_string(hi) + "]");
  }
  return x;
}

bool to_bool(const std::string& key, const std::string& v) {
  if (v == "1" || v == "true" || v == "True" || v == "TRUE" || v == "yes" || v == "on") return true;
  if (v == "0" || v == "false" || v == "False" || v == "FALSE" || v == "no" || v == "off" ||
      v.empty()) {
    return false;
  }
  bad(key, v, "a boolean (true/false/1/0)");
}

}  // namespace

const std::vector<std::string>& known_parameter_keys() { return kKeys; }

DecoderConfig parse_decoder_config(const std::string& model_config_json,
                                   const std::map<std::string, std::string>& cmdline,
                                   const std::string& model_dir, const char* env_checkpoint_dir) {
  glm::Json cfg;
  try {
    cfg = glm::parse_json(model_config_json);
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string("cannot parse the model configuration: ") + e.what());
  }
  DecoderConfig out;
  if (const auto* mbs = glm::json_find(cfg, "max_batch_size")) {
    int64_t n;
    if (glm::json_whole_number(*mbs, &n)) out.max_batch_size = static_cast<int>(n);
  }
  if (const auto* pol = glm::json_find(cfg, "model_transaction_policy")) {
    if (const auto* d = glm::json_find(*pol, "decoupled")) out.decoupled = d->is_boolean() && d->get<bool>();
  }

  // Collect the values: model-config parameters, then the overrides.
  std::map<std::string, std::string> values;
  std::map<std::string, std::string> source;
  const auto* params = glm::json_find(cfg, "parameters");
  if (params != nullptr && params->is_object()) {
    for (const auto& kv : params->items()) {
      const auto* sv = glm::json_find(kv.value(), "string_value");
      if (sv == nullptr || !sv->is_string()) continue;
      bool known = false;
      for (const auto& k : kKeys) known = known || k == kv.key();
      if (!known) {
        throw std::runtime_error("chatglm_decoder: unknown parameter '" + kv.key() +
                                 "' in the model configuration");
      }
      values[kv.key()] = sv->get<std::string>();
      source[kv.key()] = "model config";
    }
  }
  if (env_checkpoint_dir != nullptr && env_checkpoint_dir[0] != '\0') {
    values["checkpoint_dir"] = env_checkpoint_dir;
    source["checkpoint_dir"] = "GLM_CHECKPOINT_DIR";
  }
  for (const auto& k : kKeys) {
    auto it = cmdline.find(k);
    if (it != cmdline.end()) {
      values[k] = it->second;
      source[k] = "--backend-config";
    }
  }

  glm::EngineOptions& e = out.engine;
  auto get = [&](const std::string& k) -> const std::string* {
    auto it = values.find(k);
    return it == values.end() ? nullptr : &it->second;
  };
  if (const auto* v = get("checkpoint_dir")) {
    std::string dir = *v;
    if (!dir.empty() && dir[0] != '/') dir = model_dir + "/" + dir;
    e.checkpoint_dir = dir;
  }
  if (e.checkpoint_dir.empty()) {
    throw std::runtime_error(
        "chatglm_decoder: no checkpoint: set parameter 'checkpoint_dir' in config.pbtxt, "
        "GLM_CHECKPOINT_DIR, or --backend-config=chatglm,checkpoint_dir=<dir>");
  }
  if (const auto* v = get("device")) {
    if (*v != "auto" && *v != "cpu" && *v != "cuda" && !v->empty()) bad("device", *v, "auto, cpu or cuda");
    out.device = v->empty() ? "auto" : *v;
  }
  if (const auto* v = get("device_id")) e.device_id = static_cast<int>(to_int("device_id", *v, 0, 1023));
  if (const auto* v = get("dtype")) {
    if (!v->empty()) {
      if (*v != "fp32" && *v != "fp16") bad("dtype", *v, "fp32 or fp16");
      e.dtype = *v;
      out.dtype_set = true;
    }
  }
  if (const auto* v = get("int8")) e.int8 = to_bool("int8", *v);
  if (const auto* v = get("fp8")) e.fp8 = to_bool("fp8", *v);
  if (const auto* v = get("kv_cache_dtype")) {
    if (*v != "auto" && *v != "fp8") bad("kv_cache_dtype", *v, "auto or fp8");
    e.kv_cache_dtype = *v;
  }
  if (const auto* v = get("random_weights")) e.random_weights = to_bool("random_weights", *v);
  if (const auto* v = get("weights_seed")) e.weights_seed = to_uint64("weights_seed", *v);
  if (const auto* v = get("block_size")) e.block_size = static_cast<int>(to_int("block_size", *v, 1, 1024));
  if (const auto* v = get("num_kv_blocks"))
    e.num_kv_blocks = static_cast<int>(to_int("num_kv_blocks", *v, 0, 1 << 30));
  if (const auto* v = get("kv_cache_fraction"))
    e.kv_cache_fraction = to_double("kv_cache_fraction", *v, 0.0, 1.0, true);
  if (const auto* v = get("kv_cache_bytes"))
    e.kv_cache_bytes = to_int("kv_cache_bytes", *v, 0, int64_t(1) << 50);
  if (const auto* v = get("max_running_seqs"))
    e.max_running_seqs = static_cast<int>(to_int("max_running_seqs", *v, 1, 1 << 20));
  if (const auto* v = get("max_batched_tokens"))
    e.max_batched_tokens = static_cast<int>(to_int("max_batched_tokens", *v, 1, 1 << 24));
  if (const auto* v = get("max_queue"))
    e.max_queue = static_cast<int>(to_int("max_queue", *v, 0, 1 << 30));
  if (const auto* v = get("num_threads"))
    e.num_threads = static_cast<int>(to_int("num_threads", *v, 0, 4096));
  if (const auto* v = get("use_cuda_graphs")) e.use_cuda_graphs = to_bool("use_cuda_graphs", *v);
  if (const auto* v = get("overlap_steps")) e.overlap_steps = to_bool("overlap_steps", *v);
  if (const auto* v = get("adapters_dir")) {  // "" = <checkpoint_dir>/adapters (the engine's default)
    e.adapters_dir = *v;
    if (!v->empty() && (*v)[0] != '/') e.adapters_dir = model_dir + "/" + *v;
  }
  for (const glm::CudaTuningField& f : glm::cuda_tuning_fields()) {
    const std::string key = kCudaPrefix + std::string(f.name);
    const auto* v = get(key);
    if (v == nullptr) continue;
    try {
      glm::set_cuda_tuning(e.cuda, f.name, *v);
    } catch (const glm::EngineError& err) {
      throw std::runtime_error("chatglm_decoder parameter '" + key + "' = '" + *v + "': " + err.what());
    }
  }
  {
    auto it = cmdline.find("allow_fault_injection");  // command line only
    if (it != cmdline.end()) out.allow_fault_injection = to_bool("allow_fault_injection", it->second);
  }
  if (const auto* v = get("enable_fault_injection")) {  // model parameter (tests' own configs)
    out.allow_fault_injection =
        out.allow_fault_injection || to_bool("enable_fault_injection", *v);
  }
  if (const auto* v = get("max_request_seconds"))
    out.max_request_seconds = to_double("max_request_seconds", *v, 0.0, 1e7, false);
  if (const auto* v = get("default_max_tokens"))
    out.default_max_tokens = static_cast<int>(to_int("default_max_tokens", *v, 1, 1 << 20));
  return out;
}

glm::EngineOptions resolve_device(const DecoderConfig& cfg, bool instance_kind_gpu,
                                  int instance_device_id) {
  glm::EngineOptions e = cfg.engine;
  if (instance_kind_gpu) {
    if (cfg.device == "cpu") {
      throw std::runtime_error(
          "chatglm_decoder: parameter device=cpu contradicts instance_group kind KIND_GPU");
    }
    e.device = "cuda";
    e.device_id = instance_device_id;
  } else {
    // KIND_CPU (or KIND_MODEL): the parameter decides; auto means cpu here.
    e.device = cfg.device == "cuda" ? "cuda" : "cpu";
  }
  if (!cfg.dtype_set) e.dtype = e.device == "cuda" ? "fp16" : "fp32";
  return e;
}

}  // namespace glmtriton
