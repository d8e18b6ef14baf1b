#include "request_field.h"

#include <cmath>
#include <sstream>
#include <utility>

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

std::string requirement(const RequestField& f, const FieldLimits& limits) {
  std::string r = f.requirement;
  for (const auto& [marker, value] : {std::pair<std::string, int>{"{context}", limits.context},
                                      std::pair<std::string, int>{"{vocab}", limits.vocab}}) {
    const size_t at = r.find(marker);
    if (at != std::string::npos) r.replace(at, marker.size(), std::to_string(value));
  }
  return r;
}

std::string count_error(const RequestField& f, size_t count) {
  if (!f.is_list || static_cast<int64_t>(count) <= f.max_items) return "";
  return std::string(f.name) + ": at most " + std::to_string(f.max_items) + " values are allowed, got " +
         std::to_string(count);
}

std::string bytes_error(const RequestField& f, size_t bytes) {
  if (f.max_bytes <= 0 || static_cast<int64_t>(bytes) <= f.max_bytes) return "";
  return std::string(f.name) + ": a value is over the limit of " + std::to_string(f.max_bytes) + " bytes";
}

std::string range_error(const RequestField& f, double v, const FieldLimits& limits) {
  if (f.type == FieldType::kBool || f.type == FieldType::kBytes) return "";
  bool ok = std::isfinite(v);
  if (ok && f.has_min) ok = f.min_exclusive ? v > f.min : v >= f.min;
  const double max = f.max_bound == MaxBound::kContext ? static_cast<double>(limits.context)
                     : f.max_bound == MaxBound::kVocab ? static_cast<double>(limits.vocab)
                                                       : f.max;
  if (ok && f.has_max) ok = f.max_exclusive ? v < max : v <= max;
  if (ok) return "";
  std::ostringstream got;
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 1e18) {
    got << static_cast<long long>(v);
  } else {
    got.precision(9);
    got << v;
  }
  return std::string(f.name) + " must be " + requirement(f, limits) + ", got " + got.str();
}

}  // namespace glm
