#include "request_parser.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>
#include <sstream>
#include <type_traits>

#include "request_fields.gen.h"

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
    case TRITONSERVER_TYPE_UINT8: return "UINT8";
    case TRITONSERVER_TYPE_UINT16: return "UINT16";
    case TRITONSERVER_TYPE_UINT32: return "UINT32";
    case TRITONSERVER_TYPE_UINT64: return "UINT64";
    case TRITONSERVER_TYPE_INT8: return "INT8";
    case TRITONSERVER_TYPE_INT16: return "INT16";
    case TRITONSERVER_TYPE_INT32: return "INT32";
    case TRITONSERVER_TYPE_INT64: return "INT64";
    case TRITONSERVER_TYPE_FP16: return "FP16";
    case TRITONSERVER_TYPE_FP32: return "FP32";
    case TRITONSERVER_TYPE_FP64: return "FP64";
    case TRITONSERVER_TYPE_BYTES: return "BYTES";
    case TRITONSERVER_TYPE_BF16: return "BF16";
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
  if (out->dtype == TRITONSERVER_TYPE_BYTES) return "";  // length-prefixed strings: split_bytes()
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

// "" when `t` has the field's type and shape: one value ([1, 1] batched, [1]
// otherwise) or one list ([1, k] batched, [k] otherwise).
std::string check_shape(const Tensor& t, const char* name, TRITONSERVER_DataType want, bool list,
                        bool batched) {
  if (t.dtype != want) {
    return std::string(name) + ": expected " + dtype_name(want) + ", got " + dtype_name(t.dtype);
  }
  if (list) {
    if (batched ? (t.shape.size() != 2 || t.shape[0] != 1) : t.shape.size() != 1) {
      return std::string(name) + ": expected shape " + (batched ? "[1, n]" : "[n]") +
             " (one request), got shape " + shape_str(t.shape);
    }
    return "";
  }
  if (t.elements() != 1 || (batched && (t.shape.empty() || t.shape[0] != 1))) {
    return std::string(name) + ": expected a single value (shape " + (batched ? "[1, 1]" : "[1]") +
           "), got shape " + shape_str(t.shape);
  }
  return "";
}

TRITONSERVER_DataType triton_type(glm::FieldType t) {
  switch (t) {
    case glm::FieldType::kInt32: return TRITONSERVER_TYPE_INT32;
    case glm::FieldType::kUint64: return TRITONSERVER_TYPE_UINT64;
    case glm::FieldType::kFp32: return TRITONSERVER_TYPE_FP32;
    case glm::FieldType::kBool: return TRITONSERVER_TYPE_BOOL;
    case glm::FieldType::kBytes: return TRITONSERVER_TYPE_BYTES;
  }
  return TRITONSERVER_TYPE_INVALID;
}

// The values of a BYTES tensor: each a 4-byte little-endian length, then the bytes.
std::string split_bytes(const Tensor& t, const char* name, std::vector<std::string>* out) {
  out->clear();
  size_t at = 0;
  while (at < t.data.size()) {
    if (t.data.size() - at < 4) return std::string(name) + ": malformed BYTES tensor";
    uint32_t len = 0;
    for (int k = 3; k >= 0; --k) len = (len << 8) | static_cast<uint8_t>(t.data[at + static_cast<size_t>(k)]);
    at += 4;
    if (len > t.data.size() - at) return std::string(name) + ": malformed BYTES tensor";
    out->emplace_back(t.data.data() + at, len);
    at += len;
  }
  if (static_cast<int64_t>(out->size()) != t.elements()) {
    return std::string(name) + ": " + std::to_string(out->size()) + " strings for shape " +
           shape_str(t.shape);
  }
  return "";
}

// Reads field `f` into a SamplingParams member (or another value of its type):
// type and shape checked against the field; "" or the message.
template <class T>
std::string read_field(TRITONBACKEND_Request* request, const glm::RequestField& f, bool batched,
                       T* value) {
  Tensor t;
  std::string e = read_tensor(request, f.name, &t);
  if (e.empty()) e = check_shape(t, f.name, triton_type(f.type), f.is_list, batched);
  if (!e.empty()) return e;
  if constexpr (std::is_same_v<T, std::vector<std::string>>) {
    return split_bytes(t, f.name, value);
  } else if constexpr (std::is_same_v<T, std::string>) {
    std::vector<std::string> one;
    e = split_bytes(t, f.name, &one);
    if (e.empty()) *value = one.empty() ? std::string() : one[0];
    return e;
  } else if constexpr (std::is_same_v<T, std::vector<int32_t>>) {
    value->resize(static_cast<size_t>(t.elements()));
    if (!value->empty()) std::memcpy(value->data(), t.data.data(), value->size() * sizeof(int32_t));
  } else if constexpr (std::is_same_v<T, bool>) {
    *value = t.data[0] != 0;
  } else {
    static_assert(std::is_arithmetic_v<T>, "a field bound to an unsupported member type");
    if (t.data.size() != sizeof(T)) return std::string(f.name) + ": the contract binds it to another type";
    std::memcpy(value, t.data.data(), sizeof(T));
  }
  return "";
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

  // Every other field of the request contract that the request sets: type and
  // shape from the table (request_fields.gen.h), then field_error() (ranges, list
  // lengths, byte limits), in table order.
  glm::SamplingParams& p = out->params;
  const glm::FieldLimits field_limits{max_ctx, limits.vocab_size};
  glm::for_each_sampling_field(p, [&](const glm::RequestField& f, auto& member) {
    if (!e.empty() || !present.count(f.name)) return;
    e = read_field(request, f, limits.batched, &member);
    if (e.empty()) e = glm::field_error(f, member, field_limits);
  });
  if (!e.empty()) return e;
  const int64_t room = max_ctx - n;
  if (!present.count(glm::fields::kMaxTokens.name)) {
    p.max_tokens = static_cast<int>(std::min<int64_t>(limits.default_max_tokens, room));
  } else if (p.max_tokens > room) {
    return "max_tokens: prompt of " + std::to_string(n) + " tokens + max_tokens " +
           std::to_string(p.max_tokens) + " exceeds the context of " + std::to_string(max_ctx) +
           " tokens (allowed for this prompt: [1, " + std::to_string(room) + "])";
  }
  if (present.count(glm::fields::kStream.name)) {
    e = read_field(request, glm::fields::kStream, limits.batched, &out->stream);
    if (!e.empty()) return e;
  }
  Tensor t;
  bool has = false;
  auto scalar = [&](const char* name, TRITONSERVER_DataType want, Tensor* t,
                    bool* has) -> std::string {
    *has = present.count(name) > 0;
    if (!*has) return "";
    std::string r = read_tensor(request, name, t);
    if (!r.empty()) return r;
    return check_shape(*t, name, want, /*list=*/false, limits.batched);
  };

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
