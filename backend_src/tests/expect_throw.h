// EXPECT_THROW_MSG(statement, substring): the statement throws a std::exception
// whose what() contains `substring` (GoogleTest's EXPECT_THROW checks only the type).
#pragma once

#include <gtest/gtest.h>

#include <exception>
#include <string>

namespace glmtest {

template <typename F>
::testing::AssertionResult throws_with(const char* statement, F&& f, const std::string& substring) {
  try {
    f();
  } catch (const std::exception& e) {
    if (std::string(e.what()).find(substring) != std::string::npos) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "the message of " << statement << " lacks \"" << substring
                                         << "\": " << e.what();
  }
  return ::testing::AssertionFailure() << statement << " did not throw";
}

}  // namespace glmtest

#define EXPECT_THROW_MSG(statement, substring) \
  EXPECT_TRUE(::glmtest::throws_with(#statement, [&] { (void)(statement); }, substring))
