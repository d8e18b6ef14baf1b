// A minimal test harness: CHECK(cond), CHECK_EQ(a, b), CHECK_THROWS(expr, substring).
// A failed check prints file:line and the expression and marks the run failed;
// main() returns the number of failures.
#pragma once

#include <cstdio>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace check {
inline int& failures() {
  static int n = 0;
  return n;
}
inline std::vector<std::pair<const char*, std::function<void()>>>& tests() {
  static std::vector<std::pair<const char*, std::function<void()>>> t;
  return t;
}
struct Register {
  Register(const char* name, std::function<void()> fn) { tests().emplace_back(name, std::move(fn)); }
};
inline void fail(const char* file, int line, const std::string& what) {
  ++failures();
  std::cerr << file << ":" << line << ": FAILED: " << what << std::endl;
}
inline int run_all() {
  for (auto& t : tests()) {
    const int before = failures();
    try {
      t.second();
    } catch (const std::exception& e) {
      fail(t.first, 0, std::string("unexpected exception: ") + e.what());
    }
    std::cerr << (failures() == before ? "ok   " : "FAIL ") << t.first << std::endl;
  }
  std::cerr << (failures() ? "FAILED: " : "all passed: ") << tests().size() << " tests, " << failures()
            << " failed checks" << std::endl;
  return failures() ? 1 : 0;
}
}  // namespace check

#define TEST(name)                                              \
  static void name();                                           \
  static check::Register name##_registered(#name, name);        \
  static void name()

#define CHECK(cond) \
  do {              \
    if (!(cond)) check::fail(__FILE__, __LINE__, #cond); \
  } while (0)

#define CHECK_EQ(a, b)                                                                  \
  do {                                                                                  \
    const auto& va_ = (a);                                                              \
    const auto& vb_ = (b);                                                              \
    if (!(va_ == vb_)) {                                                                \
      std::ostringstream os_;                                                           \
      os_ << #a << " == " << #b << " (" << va_ << " vs " << vb_ << ")";                 \
      check::fail(__FILE__, __LINE__, os_.str());                                       \
    }                                                                                   \
  } while (0)

// expr must throw a std::exception whose what() contains `substr`.
#define CHECK_THROWS(expr, substr)                                                                   \
  do {                                                                                               \
    bool threw_ = false;                                                                             \
    try {                                                                                            \
      (void)(expr);                                                                                  \
    } catch (const std::exception& e_) {                                                             \
      threw_ = true;                                                                                 \
      if (std::string(e_.what()).find(substr) == std::string::npos)                                  \
        check::fail(__FILE__, __LINE__, std::string("message of ") + #expr + " lacks \"" + (substr) + \
                                            "\": " + e_.what());                                     \
    }                                                                                                \
    if (!threw_) check::fail(__FILE__, __LINE__, std::string(#expr) + " did not throw");             \
  } while (0)

#define TEST_MAIN() \
  int main() { return check::run_all(); }
