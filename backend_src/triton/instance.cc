#include "instance.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>
#include <sstream>

#include "util.h"

namespace glmtriton {
namespace {

constexpr size_t kPrevIds = 16;                 // prev_ids context for streaming detokenization
constexpr uint64_t kTickNs = 100ull * 1000000;  // slow tick: cancellation of queued requests, metrics
constexpr uint64_t kMetricsMinNs = 20ull * 1000000;

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

std::string seconds_str(double s) {
  std::ostringstream os;
  os << s;
  return os.str();
}

struct Tensor {
  TRITONSERVER_DataType dtype = TRITONSERVER_TYPE_INVALID;
  std::vector<int64_t> shape;
  std::vector<char> data;
  int64_t elements() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

size_t dtype_size(TRITONSERVER_DataType t) {
  switch (t) {
    case TRITONSERVER_TYPE_BOOL:
    case TRITONSERVER_TYPE_UINT8:
    case TRITONSERVER_TYPE_INT8:
      return 1;
    case TRITONSERVER_TYPE_UINT16:
    case TRITONSERVER_TYPE_INT16:
    case TRITONSERVER_TYPE_FP16:
    case TRITONSERVER_TYPE_BF16:
      return 2;
    case TRITONSERVER_TYPE_UINT32:
    case TRITONSERVER_TYPE_INT32:
    case TRITONSERVER_TYPE_FP32:
      return 4;
    case TRITONSERVER_TYPE_UINT64:
    case TRITONSERVER_TYPE_INT64:
    case TRITONSERVER_TYPE_FP64:
      return 8;
    default:
      return 0;
  }
}

const char* dtype_name(TRITONSERVER_DataType t) {
  switch (t) {
    case TRITONSERVER_TYPE_BOOL: return "BOOL";
    case TRITONSERVER_TYPE_INT32: return "INT32";
    case TRITONSERVER_TYPE_UINT64: return "UINT64";
    case TRITONSERVER_TYPE_FP32: return "FP32";
    default: return "another type";
  }
}

// Reads a whole input into host memory. Returns "" or an error message.
std::string read_tensor(TRITONBACKEND_Request* request, const char* name, Tensor* out) {
  TRITONBACKEND_Input* input = nullptr;
  TRITONSERVER_Error* err = TRITONBACKEND_RequestInput(request, name, &input);
  if (err != nullptr) {
    std::string msg = std::string(name) + ": " + TRITONSERVER_ErrorMessage(err);
    TRITONSERVER_ErrorDelete(err);
    return msg;
  }
  const char* iname = nullptr;
  const int64_t* shape = nullptr;
  uint32_t dims = 0, buffers = 0;
  uint64_t byte_size = 0;
  err = TRITONBACKEND_InputProperties(input, &iname, &out->dtype, &shape, &dims, &byte_size,
                                      &buffers);
  if (err != nullptr) {
    std::string msg = std::string(name) + ": " + TRITONSERVER_ErrorMessage(err);
    TRITONSERVER_ErrorDelete(err);
    return msg;
  }
  out->shape.assign(shape, shape + dims);
  for (int64_t d : out->shape) {
    if (d < 0) return std::string(name) + ": invalid shape " + shape_str(out->shape);
  }
  out->data.clear();
  out->data.reserve(byte_size);
  for (uint32_t b = 0; b < buffers; ++b) {
    const void* buf = nullptr;
    uint64_t size = 0;
    TRITONSERVER_MemoryType mt = TRITONSERVER_MEMORY_CPU;
    int64_t mt_id = 0;
    err = TRITONBACKEND_InputBuffer(input, b, &buf, &size, &mt, &mt_id);
    if (err != nullptr) {
      std::string msg = std::string(name) + ": " + TRITONSERVER_ErrorMessage(err);
      TRITONSERVER_ErrorDelete(err);
      return msg;
    }
    if (mt == TRITONSERVER_MEMORY_GPU) return std::string(name) + ": GPU-memory inputs are not supported";
    const char* p = static_cast<const char*>(buf);
    out->data.insert(out->data.end(), p, p + size);
  }
  size_t es = dtype_size(out->dtype);
  if (es == 0) return std::string(name) + ": unsupported data type";
  if (out->data.size() != static_cast<size_t>(out->elements()) * es) {
    return std::string(name) + ": " + std::to_string(out->data.size()) +
           " bytes of data do not match shape " + shape_str(out->shape);
  }
  return "";
}

// When the responder falls behind, several steps' events of one request wait
// in the same batch: merge them into one event (one response carrying all the
// new ids; prev_ids stay right because they are taken before the merged ids).
// The last event of a request is its final one, so finished/reason/error come
// from it. Order between different requests does not matter.
void coalesce(std::deque<DecoderInstanceEvent>* batch) {
  if (batch->size() < 2) return;
  std::unordered_map<uint64_t, size_t> first;  // request id -> index of its merged event
  std::deque<DecoderInstanceEvent> out;
  for (auto& ev : *batch) {
    auto it = first.find(ev.id);
    if (it == first.end()) {
      first.emplace(ev.id, out.size());
      out.push_back(std::move(ev));
      continue;
    }
    DecoderInstanceEvent& m = out[it->second];
    m.tokens.insert(m.tokens.end(), ev.tokens.begin(), ev.tokens.end());
    m.finished = ev.finished;
    m.reason = ev.reason;
    m.error = std::move(ev.error);
  }
  batch->swap(out);
}

// The request parameter glm_inject_fault=true (bool, or string "true").
bool wants_fault(TRITONBACKEND_Request* request) {
  uint32_t count = 0;
  if (TRITONSERVER_Error* err = TRITONBACKEND_RequestParameterCount(request, &count)) {
    TRITONSERVER_ErrorDelete(err);
    return false;
  }
  for (uint32_t i = 0; i < count; ++i) {
    const char* key = nullptr;
    TRITONSERVER_ParameterType type = TRITONSERVER_PARAMETER_STRING;
    const void* value = nullptr;
    if (TRITONSERVER_Error* err = TRITONBACKEND_RequestParameter(request, i, &key, &type, &value)) {
      TRITONSERVER_ErrorDelete(err);
      continue;
    }
    if (key == nullptr || value == nullptr || std::strcmp(key, "glm_inject_fault") != 0) continue;
    if (type == TRITONSERVER_PARAMETER_BOOL) return *static_cast<const bool*>(value);
    if (type == TRITONSERVER_PARAMETER_STRING) {
      return std::strcmp(static_cast<const char*>(value), "true") == 0;
    }
  }
  return false;
}

}  // namespace

DecoderInstance::DecoderInstance(ModelState* model, TRITONBACKEND_ModelInstance* instance)
    : model_(model), instance_(instance) {
  const char* iname = nullptr;
  throw_if_error(TRITONBACKEND_ModelInstanceName(instance, &iname), "instance name");
  instance_name_ = iname ? iname : "chatglm_decoder";
  TRITONSERVER_InstanceGroupKind kind = TRITONSERVER_INSTANCEGROUPKIND_CPU;
  throw_if_error(TRITONBACKEND_ModelInstanceKind(instance, &kind), "instance kind");
  int32_t device_id = 0;
  throw_if_error(TRITONBACKEND_ModelInstanceDeviceId(instance, &device_id), "instance device id");
  batched_ = model->config.max_batch_size > 0;

  glm::EngineOptions opts =
      resolve_device(model->config, kind == TRITONSERVER_INSTANCEGROUPKIND_GPU, device_id);
  GLM_LOG_INFO("chatglm_decoder instance " + instance_name_ + ": checkpoint " +
               opts.checkpoint_dir + ", device " + opts.device +
               (opts.device == "cuda" ? ":" + std::to_string(opts.device_id) : std::string()) +
               ", dtype " + opts.dtype + (opts.int8 ? ", int8" : "") +
               ", num_kv_blocks " + std::to_string(opts.num_kv_blocks) + ", max_running_seqs " +
               std::to_string(opts.max_running_seqs) + ", max_queue " +
               std::to_string(opts.max_queue) + ", max_request_seconds " +
               seconds_str(model->config.max_request_seconds) +
               (model->config.allow_fault_injection ? ", FAULT INJECTION ON (tests only)" : ""));
  engine_ = glm::Engine::create(opts);
  info_ = engine_->model_info();
  metrics_ = std::make_unique<InstanceMetrics>(
      model->families, model->name, model->version, instance_name_,
      opts.device == "cuda" ? "cuda:" + std::to_string(opts.device_id) : opts.device);
  engine_->start();
  responder_ = std::thread([this, ctl = ctl_] { responder_loop(ctl); });
  refresh_metrics(true);
  glm::EngineStats s = engine_->stats();
  const std::string backend = engine_->backend_description();
  GLM_LOG_INFO("chatglm_decoder instance " + instance_name_ + " ready: vocab " +
               std::to_string(info_.vocab_size) + ", context " +
               std::to_string(info_.max_sequence_length) + ", KV blocks " +
               std::to_string(s.kv_blocks_total) + (backend.empty() ? "" : ", " + backend));
}

DecoderInstance::~DecoderInstance() {
  // Pending requests get their final (cancelled) events from stop().
  try {
    if (engine_) engine_->stop();
  } catch (const std::exception& e) {
    GLM_LOG_ERROR(std::string("stopping the engine: ") + e.what());
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (responder_.joinable()) {
    if (std::this_thread::get_id() == responder_.get_id()) {
      // We are inside the responder (it released the last request): it must
      // not touch this object again; it returns as soon as it sees `gone`.
      ctl_->gone = true;
      responder_.detach();
    } else {
      responder_.join();
    }
  }
  // Anything the engine did not finish gets an error now (never left hanging).
  std::vector<uint64_t> left;
  {
    std::lock_guard<std::mutex> lk(active_mu_);
    for (auto& kv : active_) left.push_back(kv.first);
  }
  for (uint64_t id : left) {
    finish_with_error(id, TRITONSERVER_ERROR_UNAVAILABLE, "chatglm_decoder is unloading",
                      Outcome::kCancelled);
  }
  engine_.reset();
  metrics_.reset();
}

std::string DecoderInstance::parse(TRITONBACKEND_Request* request, ParsedRequest* out,
                                   TRITONSERVER_Error_Code* code) const {
  *code = TRITONSERVER_ERROR_INVALID_ARG;
  std::set<std::string> present;
  uint32_t count = 0;
  TRITONSERVER_Error* err = TRITONBACKEND_RequestInputCount(request, &count);
  if (err != nullptr) {
    std::string msg = TRITONSERVER_ErrorMessage(err);
    TRITONSERVER_ErrorDelete(err);
    *code = TRITONSERVER_ERROR_INTERNAL;
    return msg;
  }
  for (uint32_t i = 0; i < count; ++i) {
    const char* n = nullptr;
    err = TRITONBACKEND_RequestInputName(request, i, &n);
    if (err != nullptr) {
      TRITONSERVER_ErrorDelete(err);
      continue;
    }
    if (n != nullptr) present.insert(n);
  }
  const int max_ctx = info_.max_sequence_length;

  // input_ids: INT32 [1, n] (batched config) or [n].
  if (!present.count("input_ids")) return "input_ids: required input is missing";
  Tensor ids;
  std::string e = read_tensor(request, "input_ids", &ids);
  if (!e.empty()) return e;
  if (ids.dtype != TRITONSERVER_TYPE_INT32) {
    return std::string("input_ids: expected INT32, got ") + dtype_name(ids.dtype);
  }
  if (batched_) {
    if (ids.shape.size() != 2) {
      return "input_ids: expected shape [1, n] (one prompt per request), got " + shape_str(ids.shape);
    }
    if (ids.shape[0] != 1) {
      return "input_ids: batch size " + std::to_string(ids.shape[0]) +
             " is not supported: send one prompt per request (shape [1, n])";
    }
  } else if (ids.shape.size() != 1) {
    return "input_ids: expected shape [n], got " + shape_str(ids.shape);
  }
  const int64_t n = ids.elements();
  if (n < 1) return "input_ids: empty prompt (need at least 1 id)";
  if (n >= max_ctx) {
    return "input_ids: prompt of " + std::to_string(n) + " tokens leaves no room in the context of " +
           std::to_string(max_ctx) + " tokens (allowed prompt length: [1, " +
           std::to_string(max_ctx - 1) + "])";
  }
  out->input_ids.resize(static_cast<size_t>(n));
  std::memcpy(out->input_ids.data(), ids.data.data(), static_cast<size_t>(n) * sizeof(int32_t));
  for (int64_t i = 0; i < n; ++i) {
    int32_t t = out->input_ids[static_cast<size_t>(i)];
    if (t < 0 || t >= info_.vocab_size) {
      return "input_ids: id " + std::to_string(t) + " at position " + std::to_string(i) +
             " is outside the vocabulary [0, " + std::to_string(info_.vocab_size) + ")";
    }
  }

  // Scalars: exactly one element ([1, 1] batched, [1] otherwise).
  auto scalar = [&](const char* name, TRITONSERVER_DataType want, Tensor* t,
                    bool* has) -> std::string {
    *has = present.count(name) > 0;
    if (!*has) return "";
    std::string r = read_tensor(request, name, t);
    if (!r.empty()) return r;
    if (t->dtype != want) {
      return std::string(name) + ": expected " + dtype_name(want) + ", got " + dtype_name(t->dtype);
    }
    if (t->elements() != 1 || (batched_ && (t->shape.empty() || t->shape[0] != 1))) {
      return std::string(name) + ": expected a single value (shape " +
             (batched_ ? "[1, 1]" : "[1]") + "), got shape " + shape_str(t->shape);
    }
    return "";
  };
  Tensor t;
  bool has = false;
  glm::SamplingParams& p = out->params;

  if (!(e = scalar("max_tokens", TRITONSERVER_TYPE_INT32, &t, &has)).empty()) return e;
  const int64_t room = max_ctx - n;
  if (has) {
    int32_t v;
    std::memcpy(&v, t.data.data(), 4);
    if (v < 1 || v > max_ctx) {
      return "max_tokens: " + std::to_string(v) + " is out of range [1, " + std::to_string(max_ctx) +
             "]";
    }
    if (v > room) {
      return "max_tokens: prompt of " + std::to_string(n) + " tokens + max_tokens " +
             std::to_string(v) + " exceeds the context of " + std::to_string(max_ctx) +
             " tokens (allowed for this prompt: [1, " + std::to_string(room) + "])";
    }
    p.max_tokens = v;
  } else {
    p.max_tokens = static_cast<int>(std::min<int64_t>(model_->config.default_max_tokens, room));
  }

  if (!(e = scalar("temperature", TRITONSERVER_TYPE_FP32, &t, &has)).empty()) return e;
  if (has) {
    float v;
    std::memcpy(&v, t.data.data(), 4);
    if (!std::isfinite(v) || v < 0.0f) {
      return "temperature: " + std::to_string(v) +
             " is out of range: need a finite number >= 0 (0 = greedy)";
    }
    p.temperature = v;
  }
  if (!(e = scalar("top_k", TRITONSERVER_TYPE_INT32, &t, &has)).empty()) return e;
  if (has) {
    int32_t v;
    std::memcpy(&v, t.data.data(), 4);
    if (v < 0) return "top_k: " + std::to_string(v) + " is out of range: need >= 0 (0 = off)";
    p.top_k = v;
  }
  if (!(e = scalar("top_p", TRITONSERVER_TYPE_FP32, &t, &has)).empty()) return e;
  if (has) {
    float v;
    std::memcpy(&v, t.data.data(), 4);
    if (!std::isfinite(v) || v <= 0.0f || v > 1.0f) {
      return "top_p: " + std::to_string(v) + " is out of range (0, 1]";
    }
    p.top_p = v;
  }
  if (!(e = scalar("repetition_penalty", TRITONSERVER_TYPE_FP32, &t, &has)).empty()) return e;
  if (has) {
    float v;
    std::memcpy(&v, t.data.data(), 4);
    if (!std::isfinite(v) || v <= 0.0f) {
      return "repetition_penalty: " + std::to_string(v) +
             " is out of range: need a finite number > 0 (1 = off)";
    }
    p.repetition_penalty = v;
  }
  if (!(e = scalar("random_seed", TRITONSERVER_TYPE_UINT64, &t, &has)).empty()) return e;
  if (has) std::memcpy(&p.seed, t.data.data(), 8);
  if (!(e = scalar("stream", TRITONSERVER_TYPE_BOOL, &t, &has)).empty()) return e;
  if (has) out->stream = t.data[0] != 0;
  if (!(e = scalar("ignore_eos", TRITONSERVER_TYPE_BOOL, &t, &has)).empty()) return e;
  if (has) p.ignore_eos = t.data[0] != 0;

  // Test hook. The input inject_fault (only where a test's config declares it)
  // is refused while the hook is off; the request parameter glm_inject_fault
  // is then ignored, like any request parameter the backend does not use.
  if (!(e = scalar("inject_fault", TRITONSERVER_TYPE_BOOL, &t, &has)).empty()) return e;
  if (has && t.data[0] != 0) {
    if (!model_->config.allow_fault_injection) {
      return "inject_fault: fault injection is disabled (tests only: set the model parameter "
             "enable_fault_injection=true or start with "
             "--backend-config=chatglm,allow_fault_injection=true)";
    }
    out->inject_fault = true;
  }
  if (model_->config.allow_fault_injection && wants_fault(request)) out->inject_fault = true;
  return "";
}

void DecoderInstance::reject(TRITONBACKEND_Request* request, TRITONSERVER_Error_Code code,
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

void DecoderInstance::execute(TRITONBACKEND_Request** requests, uint32_t count) {
  const uint64_t exec_start = now_ns();
  uint64_t accepted = 0;
  const bool engine_ok = engine_->stats().healthy;
  for (uint32_t i = 0; i < count; ++i) {
    TRITONBACKEND_Request* request = requests[i];
    if (request == nullptr) continue;
    try {
      bool cancelled = false;
      log_if_error(TRITONBACKEND_RequestIsCancelled(request, &cancelled), "request cancelled?");
      if (cancelled) {
        reject(request, TRITONSERVER_ERROR_CANCELLED, "request cancelled", exec_start);
        continue;
      }
      if (!engine_ok) {
        reject(request, TRITONSERVER_ERROR_UNAVAILABLE, kNotServingMessage, exec_start);
        continue;
      }
      ParsedRequest parsed;
      TRITONSERVER_Error_Code code;
      std::string msg = parse(request, &parsed, &code);
      if (!msg.empty()) {
        reject(request, code, msg, exec_start);
        continue;
      }
      TRITONBACKEND_ResponseFactory* factory = nullptr;
      TRITONSERVER_Error* err = TRITONBACKEND_ResponseFactoryNew(&factory, request);
      if (err != nullptr) {
        std::string m = std::string("response factory: ") + TRITONSERVER_ErrorMessage(err);
        TRITONSERVER_ErrorDelete(err);
        reject(request, TRITONSERVER_ERROR_INTERNAL, m, exec_start);
        continue;
      }
      const uint64_t id = next_id_.fetch_add(1);
      auto a = std::make_shared<Active>();
      std::shared_ptr<Active> keep = a;  // the responder may finish it before submit() returns
      a->request = request;
      a->factory = factory;
      a->stream = parsed.stream;
      a->exec_start_ns = exec_start;
      a->submit_ns = now_ns();
      uint64_t timeout_us = 0;
      log_if_error(TRITONBACKEND_InferenceRequestTimeoutMicroseconds(request, &timeout_us),
                   "request timeout");
      if (timeout_us > 0) {
        a->timeout_us = timeout_us;
        a->deadline_ns = exec_start + timeout_us * 1000ull;
      }
      if (model_->config.max_request_seconds > 0) {
        a->cap_deadline_ns =
            exec_start + static_cast<uint64_t>(model_->config.max_request_seconds * 1e9);
      }
      size_t n_active;
      {
        std::lock_guard<std::mutex> lk(active_mu_);
        active_[id] = std::move(a);
        n_active = active_.size();
      }
      if (parsed.inject_fault) {
        GLM_LOG_WARN("chatglm_decoder: injecting an engine fault (test hook)");
        engine_->inject_fault();
      }
      try {
        engine_->submit(id, std::move(parsed.input_ids), parsed.params,
                        [this](const glm::TokenEvent& ev) { on_tokens(ev); });
        keep->submitted = true;
        ++accepted;
        if (metrics_) metrics_->set_active(n_active);
      } catch (const std::exception& ex) {
        {
          std::lock_guard<std::mutex> lk(active_mu_);
          active_.erase(id);
        }
        log_if_error(TRITONBACKEND_ResponseFactoryDelete(factory), "deleting a response factory");
        std::string m = ex.what();
        TRITONSERVER_Error_Code c = TRITONSERVER_ERROR_INVALID_ARG;
        if (m.rfind("queue full", 0) == 0) {
          c = TRITONSERVER_ERROR_UNAVAILABLE;
        } else if (dynamic_cast<const glm::EngineError*>(&ex) == nullptr) {
          c = TRITONSERVER_ERROR_INTERNAL;
        }
        reject(request, c, m, exec_start);
      }
    } catch (const std::exception& ex) {
      // Only reached when something above failed before we handed out the request.
      GLM_LOG_ERROR(std::string("chatglm_decoder execute: ") + ex.what());
    }
  }
  const uint64_t exec_end = now_ns();
  if (accepted > 0) {
    log_if_error(TRITONBACKEND_ModelInstanceReportBatchStatistics(instance_, accepted, exec_start,
                                                                  exec_start, exec_end, exec_end),
                 "reporting batch statistics");
  }
  cv_.notify_one();
  if (!engine_ok) request_unload_once();
}

bool DecoderInstance::healthy() const { return engine_ && engine_->stats().healthy; }

void DecoderInstance::request_unload_once() {
  if (unload_requested_.exchange(true)) return;
  TRITONSERVER_Server* server = nullptr;
  TRITONSERVER_Error* err = TRITONBACKEND_ModelServer(model_->model, &server);
  if (err != nullptr) {
    GLM_LOG_WARN(std::string("chatglm_decoder: the engine failed; cannot reach the server to "
                             "unload the model: ") +
                 TRITONSERVER_ErrorMessage(err));
    TRITONSERVER_ErrorDelete(err);
    return;
  }
  const std::string name = model_->name;
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

void DecoderInstance::on_tokens(const glm::TokenEvent& ev) {
  Event e;
  e.id = ev.request_id;
  e.tokens = ev.new_tokens;
  e.finished = ev.finished;
  e.reason = ev.reason;
  e.error = ev.error;
  {
    std::lock_guard<std::mutex> lk(mu_);
    events_.push_back(std::move(e));
  }
  cv_.notify_one();
}

DecoderInstance::Active* DecoderInstance::find(uint64_t id) {
  std::lock_guard<std::mutex> lk(active_mu_);
  auto it = active_.find(id);
  return it == active_.end() ? nullptr : it->second.get();
}

bool DecoderInstance::is_cancelled(const Active& a) const {
  bool c = false;
  TRITONSERVER_Error* err = TRITONBACKEND_ResponseFactoryIsCancelled(a.factory, &c);
  if (err != nullptr) {
    TRITONSERVER_ErrorDelete(err);
    c = false;
  }
  if (!c && a.request != nullptr) {
    err = TRITONBACKEND_RequestIsCancelled(a.request, &c);
    if (err != nullptr) {
      TRITONSERVER_ErrorDelete(err);
      c = false;
    }
  }
  return c;
}

void DecoderInstance::responder_loop(std::shared_ptr<ResponderControl> ctl) {
  const std::atomic<bool>& gone = ctl->gone;
  std::deque<Event> batch;
  uint64_t last_tick = now_ns();
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait_for(lk, std::chrono::nanoseconds(kTickNs),
                   [this] { return !events_.empty() || stop_; });
      batch.swap(events_);
      if (stop_ && batch.empty()) break;
    }
    coalesce(&batch);
    for (Event& ev : batch) {
      try {
        handle(ev);
      } catch (const std::exception& ex) {
        GLM_LOG_ERROR(std::string("chatglm_decoder responder: ") + ex.what());
      }
      if (gone) return;  // this object no longer exists
    }
    batch.clear();
    const uint64_t now = now_ns();
    if (now - last_tick >= kTickNs) {
      last_tick = now;
      check_cancellations(gone);
      if (gone) return;
      refresh_metrics(true);
    } else {
      refresh_metrics(false);
    }
  }
  refresh_metrics(true);
}

void DecoderInstance::refresh_metrics(bool force) {
  if (!metrics_ || !engine_) return;
  const uint64_t now = now_ns();
  if (!force && now - last_metrics_ns_ < kMetricsMinNs) return;
  last_metrics_ns_ = now;
  metrics_->update(engine_->stats());
  size_t n;
  {
    std::lock_guard<std::mutex> lk(active_mu_);
    n = active_.size();
  }
  metrics_->set_active(n);
}

void DecoderInstance::check_cancellations(const std::atomic<bool>& gone) {
  std::vector<std::pair<uint64_t, std::shared_ptr<Active>>> all;
  {
    std::lock_guard<std::mutex> lk(active_mu_);
    for (auto& kv : active_) {
      // Skip a request whose submit() has not returned: Execute may still drop it.
      if (kv.second->submitted) all.emplace_back(kv.first, kv.second);
    }
  }
  const uint64_t now = now_ns();
  for (auto& e : all) {
    if (stop_if_cancelled_or_late(e.first, *e.second, now) && gone) return;
  }
}

bool DecoderInstance::stop_if_cancelled_or_late(uint64_t id, const Active& a, uint64_t now) {
  if (is_cancelled(a)) {
    engine_->cancel(id);
    finish_with_error(id, TRITONSERVER_ERROR_CANCELLED, "request cancelled", Outcome::kCancelled);
    return true;
  }
  if (a.deadline_ns != 0 && now > a.deadline_ns) {
    engine_->cancel(id);
    finish_with_error(id, TRITONSERVER_ERROR_UNAVAILABLE,
                      "request timeout expired (timeout " + std::to_string(a.timeout_us) +
                          " us): generation stopped",
                      Outcome::kCancelled);
    return true;
  }
  if (a.cap_deadline_ns != 0 && now > a.cap_deadline_ns) {
    GLM_LOG_VERBOSE("chatglm_decoder: request " + std::to_string(id) +
                    " ran past max_request_seconds; stopped");
    engine_->cancel(id);
    finish_with_error(id, TRITONSERVER_ERROR_UNAVAILABLE,
                      "request timeout expired (max_request_seconds " +
                          seconds_str(model_->config.max_request_seconds) +
                          "): generation stopped",
                      Outcome::kCancelled);
    return true;
  }
  return false;
}

void DecoderInstance::handle(Event& ev) {
  Active* a = find(ev.id);
  if (a == nullptr) return;  // already finished (cancelled by us, or failed to send)
  if (!ev.finished && stop_if_cancelled_or_late(ev.id, *a, now_ns())) return;
  if (ev.finished && ev.reason == glm::FinishReason::kCancelled) {
    finish_with_error(ev.id, TRITONSERVER_ERROR_CANCELLED,
                      is_cancelled(*a) ? "request cancelled" : "request cancelled by the engine",
                      Outcome::kCancelled);
    return;
  }
  if (ev.finished && ev.reason == glm::FinishReason::kError) {
    // Before answering: releasing the request may destroy this instance (unload).
    if (!unload_requested_ && !healthy()) request_unload_once();
    finish_with_error(ev.id, TRITONSERVER_ERROR_INTERNAL,
                      "chatglm engine error: " + (ev.error.empty() ? std::string("unknown") : ev.error),
                      Outcome::kError);
    return;
  }
  if (!ev.tokens.empty()) {
    if (!a->got_first) {
      a->got_first = true;
      if (metrics_) metrics_->observe_ttft(static_cast<double>(now_ns() - a->submit_ns) * 1e-9);
    }
    if (metrics_) metrics_->add_tokens(ev.tokens.size());
  }
  TRITONSERVER_Error* err = nullptr;
  if (a->stream) {
    if (!ev.tokens.empty() || ev.finished) {
      err = send_ids(*a, ev.tokens.data(), ev.tokens.size(), a->ids.data(), a->ids.size(),
                     ev.finished);
    }
    a->ids.insert(a->ids.end(), ev.tokens.begin(), ev.tokens.end());
    if (a->ids.size() > kPrevIds) a->ids.erase(a->ids.begin(), a->ids.end() - kPrevIds);
  } else {
    a->ids.insert(a->ids.end(), ev.tokens.begin(), ev.tokens.end());
    if (ev.finished) err = send_ids(*a, a->ids.data(), a->ids.size(), nullptr, 0, true);
  }
  if (err != nullptr) {
    std::string m = std::string("sending a response: ") + TRITONSERVER_ErrorMessage(err);
    TRITONSERVER_ErrorDelete(err);
    GLM_LOG_VERBOSE("chatglm_decoder: " + m);
    if (!ev.finished) engine_->cancel(ev.id);
    finish_with_error(ev.id, TRITONSERVER_ERROR_CANCELLED, m, Outcome::kCancelled);
    return;
  }
  if (ev.finished) finish(ev.id, true, Outcome::kOk);
}

TRITONSERVER_Error* DecoderInstance::send_ids(Active& a, const int32_t* ids, size_t n,
                                              const int32_t* prev, size_t n_prev, bool final) {
  TRITONBACKEND_Response* response = nullptr;
  GLM_RETURN_IF_ERROR(TRITONBACKEND_ResponseNewFromFactory(&response, a.factory));
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

void DecoderInstance::finish_with_error(uint64_t id, TRITONSERVER_Error_Code code,
                                        const std::string& msg, Outcome outcome) {
  Active* a = find(id);
  if (a == nullptr) return;
  TRITONBACKEND_Response* response = nullptr;
  TRITONSERVER_Error* err = TRITONBACKEND_ResponseNewFromFactory(&response, a->factory);
  if (err == nullptr) {
    TRITONSERVER_Error* rerr = make_error(code, msg);
    err = TRITONBACKEND_ResponseSend(response, TRITONSERVER_RESPONSE_COMPLETE_FINAL, rerr);
    TRITONSERVER_ErrorDelete(rerr);
  }
  if (err != nullptr) {
    // Could not send the error response: at least close the stream.
    TRITONSERVER_ErrorDelete(err);
    log_if_error(TRITONBACKEND_ResponseFactorySendFlags(a->factory,
                                                        TRITONSERVER_RESPONSE_COMPLETE_FINAL),
                 "sending the final flag");
  }
  finish(id, false, outcome);
}

void DecoderInstance::finish(uint64_t id, bool success, Outcome outcome) {
  std::shared_ptr<Active> a;
  size_t left;
  {
    std::lock_guard<std::mutex> lk(active_mu_);
    auto it = active_.find(id);
    if (it == active_.end()) return;
    a = std::move(it->second);
    active_.erase(it);
    left = active_.size();
  }
  const uint64_t end = now_ns();
  log_if_error(TRITONBACKEND_ModelInstanceReportStatistics(instance_, a->request, success,
                                                           a->exec_start_ns, a->submit_ns, end, end),
               "reporting statistics");
  log_if_error(TRITONBACKEND_ResponseFactoryDelete(a->factory), "deleting a response factory");
  if (metrics_) {
    metrics_->add_request(outcome);
    metrics_->set_active(left);
  }
  // Last: releasing the last request of a model being unloaded may destroy
  // this instance right here (see ResponderControl).
  TRITONBACKEND_Request* request = a->request;
  a.reset();
  log_if_error(TRITONBACKEND_RequestRelease(request, TRITONSERVER_REQUEST_RELEASE_ALL),
               "releasing a request");
}

}  // namespace glmtriton
