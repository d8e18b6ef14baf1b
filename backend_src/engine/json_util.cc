#include "json_util.h"

#include <cmath>
#include <set>
#include <vector>

namespace glm {

Json parse_json(const char* data, size_t size, int max_depth) {
  // One set of keys per open container (arrays get an unused one), to refuse
  // a key given twice in one object; the parser reports events in input order.
  std::vector<std::set<std::string>> open;
  auto check = [&](int depth, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
      case Json::parse_event_t::array_start:
        if (depth + 1 > max_depth)
          throw JsonError("JSON nesting deeper than " + std::to_string(max_depth) + " levels");
        open.emplace_back();
        break;
      case Json::parse_event_t::object_end:
      case Json::parse_event_t::array_end:
        open.pop_back();
        break;
      case Json::parse_event_t::key:
        if (!open.back().insert(parsed.get<std::string>()).second)
          throw JsonError("JSON duplicate object key \"" + parsed.get<std::string>() + "\"");
        break;
      case Json::parse_event_t::value:
        break;
    }
    return true;
  };
  try {
    return Json::parse(data, data + size, check);
  } catch (const Json::parse_error& e) {
    // "[json.exception.parse_error.101] parse error at line 1, column 9: ..." -> "JSON parse error at line 1, ..."
    std::string what = e.what();
    const size_t at = what.find("parse error");
    throw JsonError("JSON " + (at == std::string::npos ? what : what.substr(at)));
  }
}

const char* json_type_name(const Json& v) {
  switch (v.type()) {
    case Json::value_t::null: return "null";
    case Json::value_t::boolean: return "bool";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
    case Json::value_t::number_float: return "number";
    case Json::value_t::string: return "string";
    case Json::value_t::array: return "array";
    case Json::value_t::object: return "object";
    default: return "unknown";
  }
}

const Json* json_find(const Json& v, const std::string& key) {
  if (!v.is_object()) return nullptr;
  auto it = v.find(key);
  return it == v.end() ? nullptr : &*it;
}

bool json_integer_literal(const Json& v, int64_t* out) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(INT64_MAX)) return false;
    *out = static_cast<int64_t>(u);
    return true;
  }
  if (!v.is_number_integer()) return false;
  *out = v.get<int64_t>();
  return true;
}

bool json_whole_number(const Json& v, int64_t* out) {
  if (json_integer_literal(v, out)) return true;
  if (!v.is_number_float()) return false;
  const double d = v.get<double>();
  if (!std::isfinite(d) || std::floor(d) != d || std::fabs(d) >= 9.0e15) return false;
  *out = static_cast<int64_t>(d);
  return true;
}

}  // namespace glm
