#include "request_parser.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>
#include <sstream>

namespace glmtriton {
namespace {

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
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

// The checks in order; returns "" when valid, else the message with *code set.
std::string parse_inputs(TRITONBACKEND_Request* request, const RequestLimits& limits,
                         ParsedRequest* out, TRITONSERVER_Error_Code* code) {
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
  const int max_ctx = limits.max_sequence_length;

  // input_ids: INT32 [1, n] (batched config) or [n].
  if (!present.count("input_ids")) return "input_ids: required input is missing";
  Tensor ids;
  std::string e = read_tensor(request, "input_ids", &ids);
  if (!e.empty()) return e;
  if (ids.dtype != TRITONSERVER_TYPE_INT32) {
    return std::string("input_ids: expected INT32, got ") + dtype_name(ids.dtype);
  }
  if (limits.batched) {
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
    if (t < 0 || t >= limits.vocab_size) {
      return "input_ids: id " + std::to_string(t) + " at position " + std::to_string(i) +
             " is outside the vocabulary [0, " + std::to_string(limits.vocab_size) + ")";
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
    if (t->elements() != 1 || (limits.batched && (t->shape.empty() || t->shape[0] != 1))) {
      return std::string(name) + ": expected a single value (shape " +
             (limits.batched ? "[1, 1]" : "[1]") + "), got shape " + shape_str(t->shape);
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
    p.max_tokens = static_cast<int>(std::min<int64_t>(limits.default_max_tokens, room));
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
    if (!limits.allow_fault_injection) {
      return "inject_fault: fault injection is disabled (tests only: set the model parameter "
             "enable_fault_injection=true or start with "
             "--backend-config=chatglm,allow_fault_injection=true)";
    }
    out->inject_fault = true;
  }
  if (limits.allow_fault_injection && wants_fault(request)) out->inject_fault = true;
  return "";
}

}  // namespace

std::optional<RequestError> parse_request(TRITONBACKEND_Request* request,
                                          const RequestLimits& limits, ParsedRequest* out) {
  RequestError error;
  error.message = parse_inputs(request, limits, out, &error.code);
  if (error.message.empty()) return std::nullopt;
  return error;
}

}  // namespace glmtriton
