#include "json.h"

#include <cmath>

#include "check.h"

using glm::json::parse;

TEST(parses_scalars_and_nesting) {
  auto v = parse(R"( {"a": 1, "b": [true, false, null], "c": {"d": "x\ny\u00e9\ud83d\ude00"}, "e": -2.5e3, "f": 0} )");
  CHECK(v.is_object());
  CHECK_EQ(v["a"].as_int(), 1);
  CHECK(v["a"].is_integer());
  CHECK(v["b"][0].as_bool());
  CHECK(!v["b"][1].as_bool());
  CHECK(v["b"][2].is_null());
  CHECK_EQ(v["c"]["d"].as_string(), std::string("x\ny\xc3\xa9\xf0\x9f\x98\x80"));
  CHECK_EQ(v["e"].as_double(), -2500.0);
  CHECK(!v["e"].is_integer());
  CHECK_EQ(v["f"].as_int64(), 0);
  CHECK_EQ(v.size(), size_t(5));
  CHECK(v.find("zzz") == nullptr);
}

TEST(large_integers_stay_exact) {
  auto v = parse("[9007199254740993, 1e2]");
  CHECK_EQ(v[0].as_int64(), int64_t(9007199254740993));
  CHECK_EQ(v[1].as_int64(), int64_t(100));  // whole doubles convert
}

TEST(round_trips_through_dump) {
  const char* text = R"({"a":[1,2.5,"q\"\\"],"b":{"c":null,"d":true}})";
  CHECK_EQ(parse(text).dump(), std::string(text));
}

TEST(errors_name_the_place) {
  CHECK_THROWS(parse("{\"a\": 1,}"), "line 1, column 9");
  CHECK_THROWS(parse("{\"a\": 1}\n x"), "trailing");
  CHECK_THROWS(parse("[1, 2"), "end of input");
  CHECK_THROWS(parse("{\"a\": 1, \"a\": 2}"), "duplicate object key \"a\"");
  CHECK_THROWS(parse("\"abc"), "unterminated string");
  CHECK_THROWS(parse("01"), "trailing");
  CHECK_THROWS(parse("[1.]"), "digits after '.'");
  CHECK_THROWS(parse("tru"), "unexpected character");
  CHECK_THROWS(parse(""), "end of input");
  CHECK_THROWS(parse("\"\\x\""), "invalid escape");
  CHECK_THROWS(parse("\"\\ud83d\""), "surrogate");
  CHECK_THROWS(parse(std::string(300, '[') + std::string(300, ']')), "nesting deeper");
}

TEST(type_errors_are_clear) {
  auto v = parse(R"({"a": "x", "n": 1.5})");
  CHECK_THROWS(v["a"].as_int(), "is string, expected number");
  CHECK_THROWS(v["missing"], "no key \"missing\"");
  CHECK_THROWS(v["n"].as_int(), "not an integer");
  CHECK_THROWS(parse("[1]")[3], "out of range");
  CHECK_THROWS(parse("5000000000").as_int(), "does not fit");
}

TEST_MAIN()
