#include "request_field.h"

#include <cmath>
#include <sstream>

namespace glm {

const char* type_name(FieldType t) {
  switch (t) {
    case FieldType::kInt32: return "INT32";
    case FieldType::kUint64: return "UINT64";
    case FieldType::kFp32: return "FP32";
    case FieldType::kBool: return "BOOL";
    case FieldType::kBytes: return "BYTES";
  }
  return "?";
}

std::string requirement(const RequestField& f, int context) {
  std::string r = f.requirement;
  const std::string marker = "{context}";
  const size_t at = r.find(marker);
  if (at != std::string::npos) r.replace(at, marker.size(), std::to_string(context));
  return r;
}

std::string range_error(const RequestField& f, double v, int context) {
  if (f.type == FieldType::kBool || f.type == FieldType::kBytes) return "";
  bool ok = std::isfinite(v);
  if (ok && f.has_min) ok = f.min_exclusive ? v > f.min : v >= f.min;
  const double max = f.max_is_context ? static_cast<double>(context) : f.max;
  if (ok && f.has_max) ok = f.max_exclusive ? v < max : v <= max;
  if (ok) return "";
  std::ostringstream got;
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 1e18) {
    got << static_cast<long long>(v);
  } else {
    got.precision(9);
    got << v;
  }
  return std::string(f.name) + " must be " + requirement(f, context) + ", got " + got.str();
}

}  // namespace glm
