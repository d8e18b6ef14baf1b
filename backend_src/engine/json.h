// A small, self-contained JSON parser (RFC 8259) for config files: the
// checkpoint's config.json, the safetensors header, Triton's model config.
//
//   glm::json::Value v = glm::json::parse(text);        // throws json::ParseError
//   int n = v["vocab_size"].as_int();                    // throws json::TypeError
//   if (const auto* q = v.find("quantization")) ...
//
// Numbers are kept as double (plus the exact int64 when the literal is an
// integer that fits). Objects keep their keys sorted (std::map); duplicate keys
// are a parse error.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace glm {
namespace json {

class ParseError : public std::runtime_error {
 public:
  ParseError(const std::string& what, size_t offset, int line, int column);
  size_t offset() const { return offset_; }
  int line() const { return line_; }
  int column() const { return column_; }

 private:
  size_t offset_;
  int line_, column_;
};

class TypeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };
const char* type_name(Type t);

class Value {
 public:
  using Array = std::vector<Value>;
  using Object = std::map<std::string, Value>;

  Value() = default;  // null
  static Value boolean(bool b);
  static Value number(double d);
  static Value integer(int64_t i);
  static Value string(std::string s);
  static Value array(Array a);
  static Value object(Object o);

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::kNull; }
  bool is_bool() const { return type_ == Type::kBool; }
  bool is_number() const { return type_ == Type::kNumber; }
  bool is_integer() const { return type_ == Type::kNumber && is_int_; }  // integer literal fitting int64
  bool is_string() const { return type_ == Type::kString; }
  bool is_array() const { return type_ == Type::kArray; }
  bool is_object() const { return type_ == Type::kObject; }

  // Accessors throw TypeError when the type does not match.
  bool as_bool() const;
  double as_double() const;
  int64_t as_int64() const;  // integer literals only (also 2.0-style doubles that are whole)
  int as_int() const;        // as_int64 within int range
  const std::string& as_string() const;
  const Array& as_array() const;
  const Object& as_object() const;

  // Object access: find() returns nullptr when missing (or when not an
  // object); operator[] / at() throw TypeError naming the key.
  const Value* find(const std::string& key) const;
  const Value& at(const std::string& key) const;
  const Value& operator[](const std::string& key) const { return at(key); }
  bool contains(const std::string& key) const { return find(key) != nullptr; }
  // Array access (throws TypeError when out of range).
  const Value& at(size_t index) const;
  const Value& operator[](size_t index) const { return at(index); }
  size_t size() const;  // array or object size; 0 otherwise

  // Compact serialization (round-trips through parse()).
  std::string dump() const;

 private:
  Type type_ = Type::kNull;
  bool bool_ = false;
  bool is_int_ = false;
  double num_ = 0.0;
  int64_t int_ = 0;
  std::string str_;
  std::shared_ptr<Array> arr_;
  std::shared_ptr<Object> obj_;
};

// Parses exactly one JSON value (surrounding whitespace allowed). Nesting
// deeper than max_depth is an error (protects the stack against hostile input).
Value parse(const std::string& text, int max_depth = 256);
Value parse(const char* data, size_t size, int max_depth = 256);

}  // namespace json
}  // namespace glm
