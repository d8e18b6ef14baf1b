// Our rules on top of nlohmann/json (json_util.h): errors that name the place,
// duplicate keys and deep nesting refused, integer fields, type names.
#include "json_util.h"

#include <gtest/gtest.h>

#include <string>

#include "expect_throw.h"

using glm::Json;
using glm::parse_json;

TEST(JsonUtilTest, parses_scalars_and_nesting) {
  Json v = parse_json(R"( {"a": 1, "b": [true, false, null], "c": {"d": "x\ny\u00e9\ud83d\ude00"}, "e": -2.5e3, "f": 0} )");
  ASSERT_TRUE(v.is_object());
  EXPECT_EQ(v["a"].get<int>(), 1);
  EXPECT_TRUE(v["b"][0].get<bool>());
  EXPECT_FALSE(v["b"][1].get<bool>());
  EXPECT_TRUE(v["b"][2].is_null());
  EXPECT_EQ(v["c"]["d"].get<std::string>(), std::string("x\ny\xc3\xa9\xf0\x9f\x98\x80"));
  EXPECT_EQ(v["e"].get<double>(), -2500.0);
  EXPECT_EQ(v.size(), size_t(5));
  EXPECT_TRUE(glm::json_find(v, "zzz") == nullptr);
  EXPECT_EQ(glm::json_find(v, "f"), &v["f"]);
  EXPECT_TRUE(glm::json_find(v["b"], "a") == nullptr);  // not an object
}

TEST(JsonUtilTest, integers) {
  Json v = parse_json("[9007199254740993, 1e2, 2.5, -7, \"3\", true, 18446744073709551615]");
  int64_t i = 0;
  EXPECT_TRUE(glm::json_integer_literal(v[0], &i));
  EXPECT_EQ(i, int64_t(9007199254740993));  // large integers stay exact
  EXPECT_FALSE(glm::json_integer_literal(v[1], &i));
  EXPECT_TRUE(glm::json_whole_number(v[1], &i));  // whole doubles convert
  EXPECT_EQ(i, int64_t(100));
  EXPECT_FALSE(glm::json_whole_number(v[2], &i));
  EXPECT_TRUE(glm::json_integer_literal(v[3], &i));
  EXPECT_EQ(i, int64_t(-7));
  EXPECT_FALSE(glm::json_whole_number(v[4], &i));
  EXPECT_FALSE(glm::json_whole_number(v[5], &i));
  EXPECT_FALSE(glm::json_integer_literal(v[6], &i));  // beyond int64
}

TEST(JsonUtilTest, errors_name_the_place) {
  EXPECT_THROW_MSG(parse_json("{\"a\": 1,}"), "line 1, column 9");
  EXPECT_THROW_MSG(parse_json("{\"a\": 1}\n x"), "line 2, column 2");  // trailing text
  EXPECT_THROW_MSG(parse_json("[1, 2"), "JSON parse error");
  EXPECT_THROW_MSG(parse_json(""), "JSON parse error");
  EXPECT_THROW_MSG(parse_json("\"abc"), "JSON parse error");
  EXPECT_THROW_MSG(parse_json("\"\\ud83d\""), "surrogate");
  EXPECT_THROW_MSG(parse_json("{\"a\": 1, \"a\": 2}"), "duplicate object key \"a\"");
  EXPECT_THROW_MSG(parse_json("{\"x\": {\"a\": 1}, \"y\": {\"a\": 2, \"b\": [{\"a\": 3, \"a\": 4}]}}"),
                   "duplicate object key \"a\"");
  EXPECT_NO_THROW(parse_json("{\"x\": {\"a\": 1}, \"y\": {\"a\": 2, \"b\": [{\"a\": 3}, {\"a\": 4}]}}"));
  EXPECT_THROW_MSG(parse_json(std::string(300, '[') + std::string(300, ']')), "nesting deeper than 256");
  EXPECT_NO_THROW(parse_json(std::string(256, '[') + std::string(256, ']')));
  EXPECT_THROW_MSG(parse_json(std::string("[[1]]"), 1), "nesting deeper than 1");
}

TEST(JsonUtilTest, type_names) {
  Json v = parse_json(R"([null, true, 1, -1, 1.5, "s", [], {}])");
  const char* want[] = {"null", "bool", "number", "number", "number", "string", "array", "object"};
  for (size_t i = 0; i < v.size(); ++i) EXPECT_STREQ(glm::json_type_name(v.at(i)), want[i]) << i;
}
