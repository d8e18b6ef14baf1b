// glm::RequestField: how the request contract describes one request field, and the
// one range check that every C++ consumer of the contract uses. The fields
// themselves are generated from the table in glmserve/contract.py into
// request_fields.gen.h (see docs/request_fields.md); nothing here names a field.
#pragma once

#include <cstdint>
#include <string>

namespace glm {

enum class FieldType { kInt32, kUint64, kFp32, kBool, kBytes };

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
  double max;
  bool max_is_context;    // the maximum is the model's max_sequence_length
  bool max_exclusive;
  int64_t max_bytes;      // BYTES: per value (0 = no limit)
  const char* requirement;  // allowed values in words; "{context}" stands for the context
};

const char* type_name(FieldType t);  // "INT32", "UINT64", "FP32", "BOOL", "BYTES"

// The allowed values in words, with the model's context filled in.
std::string requirement(const RequestField& f, int context);

// "" when `value` is allowed, else "<name> must be <requirement>, got <value>".
std::string range_error(const RequestField& f, double value, int context);

}  // namespace glm
