// JSON input of the engine and the Triton backend (the checkpoint's config.json,
// the safetensors header, Triton's model and backend configs), read with
// nlohmann/json (Debian/Ubuntu: nlohmann-json3-dev) plus the rules these files
// have always been held to here:
//   - a key given twice in one object is an error (nlohmann would keep the last),
//   - nesting deeper than max_depth is an error (hostile headers),
//   - config.json's integer fields also accept whole numbers such as 2.0.
//
//   glm::Json v = glm::parse_json(text);                  // throws glm::JsonError
//   if (const glm::Json* q = glm::json_find(v, "quantization")) ...
//   int64_t n;  if (glm::json_whole_number(v["vocab_size"], &n)) ...
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace glm {

using Json = nlohmann::json;

// A syntax error (the message names line and column), a duplicate key or too
// deep a nesting.
class JsonError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Parses exactly one JSON value (surrounding whitespace allowed).
Json parse_json(const char* data, size_t size, int max_depth = 256);
inline Json parse_json(const std::string& text, int max_depth = 256) {
  return parse_json(text.data(), text.size(), max_depth);
}

// "null", "bool", "number", "string", "array" or "object".
const char* json_type_name(const Json& v);

// The member `key` of an object; nullptr when v is not an object or has no such key.
const Json* json_find(const Json& v, const std::string& key);

// An integer literal that fits int64: stored in *out, true. Anything else
// (2.0, strings, booleans): false.
bool json_integer_literal(const Json& v, int64_t* out);
// An integer literal, or a number with no fraction below 2^53 (2.0): stored in
// *out, true. Anything else: false.
bool json_whole_number(const Json& v, int64_t* out);

}  // namespace glm
