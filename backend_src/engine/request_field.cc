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

namespace {

// Length of the valid UTF-8 sequence at s[i] (strict: no overlong forms, no
// surrogates, <= U+10FFFF), or 0.
size_t utf8_len(const std::string& s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  size_t n = 0;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  if (b(i + 1) < lo || b(i + 1) > hi) return 0;
  for (size_t k = 2; k < n; ++k)
    if (b(i + k) < 0x80 || b(i + k) > 0xBF) return 0;
  return n;
}

}  // namespace

std::string bytes_error(const RequestField& f, const std::string& value) {
  if (f.max_bytes > 0 && static_cast<int64_t>(value.size()) > f.max_bytes)
    return std::string(f.name) + ": a value is over the limit of " + std::to_string(f.max_bytes) + " bytes";
  for (size_t i = 0; i < value.size();) {
    const size_t n = utf8_len(value, i);
    if (n == 0) return std::string(f.name) + ": not valid UTF-8 (invalid byte at " + std::to_string(i) + ")";
    i += n;
  }
  return "";
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
