#include "json.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

namespace glm {
namespace json {

ParseError::ParseError(const std::string& what, size_t offset, int line, int column)
    : std::runtime_error("JSON parse error at line " + std::to_string(line) + ", column " +
                         std::to_string(column) + ": " + what),
      offset_(offset),
      line_(line),
      column_(column) {}

const char* type_name(Type t) {
  switch (t) {
    case Type::kNull: return "null";
    case Type::kBool: return "bool";
    case Type::kNumber: return "number";
    case Type::kString: return "string";
    case Type::kArray: return "array";
    case Type::kObject: return "object";
  }
  return "?";
}

Value Value::boolean(bool b) {
  Value v;
  v.type_ = Type::kBool;
  v.bool_ = b;
  return v;
}
Value Value::number(double d) {
  Value v;
  v.type_ = Type::kNumber;
  v.num_ = d;
  return v;
}
Value Value::integer(int64_t i) {
  Value v;
  v.type_ = Type::kNumber;
  v.num_ = static_cast<double>(i);
  v.int_ = i;
  v.is_int_ = true;
  return v;
}
Value Value::string(std::string s) {
  Value v;
  v.type_ = Type::kString;
  v.str_ = std::move(s);
  return v;
}
Value Value::array(Array a) {
  Value v;
  v.type_ = Type::kArray;
  v.arr_ = std::make_shared<Array>(std::move(a));
  return v;
}
Value Value::object(Object o) {
  Value v;
  v.type_ = Type::kObject;
  v.obj_ = std::make_shared<Object>(std::move(o));
  return v;
}

static void expect_type(const Value& v, Type want) {
  if (v.type() != want)
    throw TypeError(std::string("JSON value is ") + type_name(v.type()) + ", expected " +
                    type_name(want));
}

bool Value::as_bool() const {
  expect_type(*this, Type::kBool);
  return bool_;
}
double Value::as_double() const {
  expect_type(*this, Type::kNumber);
  return num_;
}
int64_t Value::as_int64() const {
  expect_type(*this, Type::kNumber);
  if (is_int_) return int_;
  if (std::isfinite(num_) && std::floor(num_) == num_ && std::fabs(num_) < 9.0e15)
    return static_cast<int64_t>(num_);
  throw TypeError("JSON number " + dump() + " is not an integer");
}
int Value::as_int() const {
  int64_t i = as_int64();
  if (i < std::numeric_limits<int>::min() || i > std::numeric_limits<int>::max())
    throw TypeError("JSON integer " + std::to_string(i) + " does not fit in int");
  return static_cast<int>(i);
}
const std::string& Value::as_string() const {
  expect_type(*this, Type::kString);
  return str_;
}
const Value::Array& Value::as_array() const {
  expect_type(*this, Type::kArray);
  return *arr_;
}
const Value::Object& Value::as_object() const {
  expect_type(*this, Type::kObject);
  return *obj_;
}
const Value* Value::find(const std::string& key) const {
  if (type_ != Type::kObject) return nullptr;
  auto it = obj_->find(key);
  return it == obj_->end() ? nullptr : &it->second;
}
const Value& Value::at(const std::string& key) const {
  expect_type(*this, Type::kObject);
  auto it = obj_->find(key);
  if (it == obj_->end()) throw TypeError("JSON object has no key \"" + key + "\"");
  return it->second;
}
const Value& Value::at(size_t index) const {
  expect_type(*this, Type::kArray);
  if (index >= arr_->size())
    throw TypeError("JSON array index " + std::to_string(index) + " out of range (size " +
                    std::to_string(arr_->size()) + ")");
  return (*arr_)[index];
}
size_t Value::size() const {
  if (type_ == Type::kArray) return arr_->size();
  if (type_ == Type::kObject) return obj_->size();
  return 0;
}

static void dump_string(const std::string& s, std::string& out) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

static void dump_value(const Value& v, std::string& out) {
  switch (v.type()) {
    case Type::kNull: out += "null"; break;
    case Type::kBool: out += v.as_bool() ? "true" : "false"; break;
    case Type::kNumber:
      if (v.is_integer()) {
        out += std::to_string(v.as_int64());
      } else if (!std::isfinite(v.as_double())) {
        out += "null";  // JSON has no NaN/Inf
      } else {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.17g", v.as_double());
        out += buf;
      }
      break;
    case Type::kString: dump_string(v.as_string(), out); break;
    case Type::kArray: {
      out += '[';
      bool first = true;
      for (const auto& e : v.as_array()) {
        if (!first) out += ',';
        first = false;
        dump_value(e, out);
      }
      out += ']';
      break;
    }
    case Type::kObject: {
      out += '{';
      bool first = true;
      for (const auto& kv : v.as_object()) {
        if (!first) out += ',';
        first = false;
        dump_string(kv.first, out);
        out += ':';
        dump_value(kv.second, out);
      }
      out += '}';
      break;
    }
  }
}

std::string Value::dump() const {
  std::string out;
  dump_value(*this, out);
  return out;
}

namespace {

class Parser {
 public:
  Parser(const char* data, size_t size, int max_depth)
      : p_(data), begin_(data), end_(data + size), max_depth_(max_depth) {}

  Value parse_document() {
    skip_ws();
    Value v = parse_value(0);
    skip_ws();
    if (p_ != end_) fail("unexpected trailing characters after the JSON value");
    return v;
  }

 private:
  const char* p_;
  const char* begin_;
  const char* end_;
  int max_depth_;

  [[noreturn]] void fail(const std::string& what) const {
    int line = 1, col = 1;
    for (const char* q = begin_; q < p_ && q < end_; ++q) {
      if (*q == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    throw ParseError(what, static_cast<size_t>(p_ - begin_), line, col);
  }

  void skip_ws() {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  }

  bool consume_literal(const char* lit) {
    const char* q = p_;
    for (const char* l = lit; *l; ++l, ++q)
      if (q >= end_ || *q != *l) return false;
    p_ = q;
    return true;
  }

  Value parse_value(int depth) {
    if (depth > max_depth_) fail("nesting deeper than " + std::to_string(max_depth_));
    if (p_ >= end_) fail("unexpected end of input, expected a value");
    char c = *p_;
    switch (c) {
      case '{': return parse_object(depth);
      case '[': return parse_array(depth);
      case '"': return Value::string(parse_string());
      case 't':
        if (consume_literal("true")) return Value::boolean(true);
        break;
      case 'f':
        if (consume_literal("false")) return Value::boolean(false);
        break;
      case 'n':
        if (consume_literal("null")) return Value();
        break;
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return parse_number();
    }
    fail(std::string("unexpected character '") + c + "', expected a value");
  }

  Value parse_object(int depth) {
    ++p_;  // '{'
    Value::Object obj;
    skip_ws();
    if (p_ < end_ && *p_ == '}') {
      ++p_;
      return Value::object(std::move(obj));
    }
    for (;;) {
      skip_ws();
      if (p_ >= end_ || *p_ != '"') fail("expected a string key in object");
      std::string key = parse_string();
      skip_ws();
      if (p_ >= end_ || *p_ != ':') fail("expected ':' after object key \"" + key + "\"");
      ++p_;
      skip_ws();
      Value v = parse_value(depth + 1);
      if (!obj.emplace(key, std::move(v)).second) fail("duplicate object key \"" + key + "\"");
      skip_ws();
      if (p_ >= end_) fail("unexpected end of input in object");
      if (*p_ == ',') {
        ++p_;
        continue;
      }
      if (*p_ == '}') {
        ++p_;
        return Value::object(std::move(obj));
      }
      fail("expected ',' or '}' in object");
    }
  }

  Value parse_array(int depth) {
    ++p_;  // '['
    Value::Array arr;
    skip_ws();
    if (p_ < end_ && *p_ == ']') {
      ++p_;
      return Value::array(std::move(arr));
    }
    for (;;) {
      skip_ws();
      arr.push_back(parse_value(depth + 1));
      skip_ws();
      if (p_ >= end_) fail("unexpected end of input in array");
      if (*p_ == ',') {
        ++p_;
        continue;
      }
      if (*p_ == ']') {
        ++p_;
        return Value::array(std::move(arr));
      }
      fail("expected ',' or ']' in array");
    }
  }

  unsigned parse_hex4() {
    if (end_ - p_ < 4) fail("truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; ++i) {
      char c = *p_++;
      v <<= 4;
      if (c >= '0' && c <= '9') v |= static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f') v |= static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= static_cast<unsigned>(c - 'A' + 10);
      else fail("bad hex digit in \\u escape");
    }
    return v;
  }

  static void append_utf8(std::string& s, unsigned cp) {
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else if (cp < 0x800) {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      s += static_cast<char>(0xE0 | (cp >> 12));
      s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      s += static_cast<char>(0xF0 | (cp >> 18));
      s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  std::string parse_string() {
    ++p_;  // '"'
    std::string s;
    for (;;) {
      if (p_ >= end_) fail("unterminated string");
      unsigned char c = static_cast<unsigned char>(*p_);
      if (c == '"') {
        ++p_;
        return s;
      }
      if (c < 0x20) fail("control character in string");
      if (c != '\\') {
        s += static_cast<char>(c);
        ++p_;
        continue;
      }
      ++p_;
      if (p_ >= end_) fail("unterminated escape in string");
      char e = *p_++;
      switch (e) {
        case '"': s += '"'; break;
        case '\\': s += '\\'; break;
        case '/': s += '/'; break;
        case 'b': s += '\b'; break;
        case 'f': s += '\f'; break;
        case 'n': s += '\n'; break;
        case 'r': s += '\r'; break;
        case 't': s += '\t'; break;
        case 'u': {
          unsigned cp = parse_hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (end_ - p_ < 2 || p_[0] != '\\' || p_[1] != 'u') fail("unpaired UTF-16 surrogate");
            p_ += 2;
            unsigned lo = parse_hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) fail("invalid UTF-16 low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            fail("unpaired UTF-16 surrogate");
          }
          append_utf8(s, cp);
          break;
        }
        default: --p_; fail(std::string("invalid escape '\\") + e + "' in string");
      }
    }
  }

  Value parse_number() {
    const char* start = p_;
    bool is_int = true;
    if (*p_ == '-') ++p_;
    if (p_ >= end_) fail("truncated number");
    if (*p_ == '0') {
      ++p_;
    } else if (*p_ >= '1' && *p_ <= '9') {
      while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    } else {
      fail("invalid number");
    }
    if (p_ < end_ && *p_ == '.') {
      is_int = false;
      ++p_;
      if (p_ >= end_ || !(*p_ >= '0' && *p_ <= '9')) fail("expected digits after '.' in number");
      while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    }
    if (p_ < end_ && (*p_ == 'e' || *p_ == 'E')) {
      is_int = false;
      ++p_;
      if (p_ < end_ && (*p_ == '+' || *p_ == '-')) ++p_;
      if (p_ >= end_ || !(*p_ >= '0' && *p_ <= '9')) fail("expected digits in number exponent");
      while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    }
    std::string lit(start, p_);
    if (is_int) {
      errno = 0;
      char* endp = nullptr;
      long long i = std::strtoll(lit.c_str(), &endp, 10);
      if (errno == 0 && endp && *endp == '\0') return Value::integer(static_cast<int64_t>(i));
    }
    char* endp = nullptr;
    double d = std::strtod(lit.c_str(), &endp);
    if (!endp || *endp != '\0') fail("invalid number '" + lit + "'");
    return Value::number(d);
  }
};

}  // namespace

Value parse(const char* data, size_t size, int max_depth) {
  return Parser(data, size, max_depth).parse_document();
}
Value parse(const std::string& text, int max_depth) {
  return parse(text.data(), text.size(), max_depth);
}

}  // namespace json
}  // namespace glm
