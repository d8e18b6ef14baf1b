// glm::RequestField: how the request contract describes one request field, and the
// one range check that every C++ consumer of the contract uses. The fields
// themselves are generated from the table in glmserve/contract.py into
// request_fields.gen.h (see docs/request_fields.md); nothing here names a field.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

namespace glm {

enum class FieldType { kInt32, kUint64, kFp32, kBool, kBytes };
// Where a field's maximum comes from: the table, or the model (known at run time).
enum class MaxBound { kFixed, kContext, kVocab };

// The model's values of the run-time maxima.
struct FieldLimits {
  int context = 0;  // max_sequence_length
  int vocab = 0;    // vocab_size
};

struct RequestField {
  const char* name;
  FieldType type;
  bool is_list;           // dims [-1] (else a single value)
  int64_t max_items;      // lists: at most this many values
  bool required;
  bool has_min;
  double min;
  bool min_exclusive;
  bool has_max;
  double max;             // when max_bound is kFixed
  MaxBound max_bound;
  bool max_exclusive;
  int64_t max_bytes;      // BYTES: per value (0 = no limit)
  const char* requirement;  // allowed values in words; "{context}", "{vocab}": the model's values
  const char* member;       // the glm::SamplingParams member it sets (nullptr: none)
};

const char* type_name(FieldType t);  // "INT32", "UINT64", "FP32", "BOOL", "BYTES"

// The allowed values in words, with the model's values filled in.
std::string requirement(const RequestField& f, const FieldLimits& limits);

// "" when `value` is allowed, else "<name> must be <requirement>, got <value>".
std::string range_error(const RequestField& f, double value, const FieldLimits& limits);
// "" when a list of `count` values is allowed, else "<name>: at most N values are allowed, got M".
std::string count_error(const RequestField& f, size_t count);
// "" when one BYTES value is allowed, else "<name>: a value is over the limit of N
// bytes" or "<name>: not valid UTF-8 (...)".
std::string bytes_error(const RequestField& f, const std::string& value);

// "" when the value of a SamplingParams member is allowed by its field, else the
// message: the range of numbers (of every element of a list), the length of
// lists, the byte limit of strings.
template <class T>
std::string field_error(const RequestField& f, const T& value, const FieldLimits& limits) {
  if constexpr (std::is_arithmetic_v<T>) {
    return range_error(f, static_cast<double>(value), limits);
  } else if constexpr (std::is_same_v<T, std::string>) {
    return bytes_error(f, value);
  } else {
    std::string e = count_error(f, value.size());
    for (const auto& item : value) {
      if (!e.empty()) break;
      if constexpr (std::is_arithmetic_v<std::decay_t<decltype(item)>>) {
        e = range_error(f, static_cast<double>(item), limits);
      } else {
        e = bytes_error(f, item);
      }
    }
    return e;
  }
}

}  // namespace glm
