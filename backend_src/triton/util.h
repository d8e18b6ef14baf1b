// Small helpers around the Triton C API: logging, errors, clocks, number formatting.
#pragma once

#include <chrono>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

#include "triton_api.h"

namespace glmtriton {

inline void log(TRITONSERVER_LogLevel level, const char* file, int line, const std::string& msg) {
  if (!TRITONSERVER_LogIsEnabled(level)) return;
  TRITONSERVER_Error* err = TRITONSERVER_LogMessage(level, file, line, msg.c_str());
  if (err != nullptr) TRITONSERVER_ErrorDelete(err);
}

#define GLM_LOG_INFO(msg) ::glmtriton::log(TRITONSERVER_LOG_INFO, __FILE__, __LINE__, (msg))
#define GLM_LOG_WARN(msg) ::glmtriton::log(TRITONSERVER_LOG_WARN, __FILE__, __LINE__, (msg))
#define GLM_LOG_ERROR(msg) ::glmtriton::log(TRITONSERVER_LOG_ERROR, __FILE__, __LINE__, (msg))
#define GLM_LOG_VERBOSE(msg) ::glmtriton::log(TRITONSERVER_LOG_VERBOSE, __FILE__, __LINE__, (msg))

inline TRITONSERVER_Error* make_error(TRITONSERVER_Error_Code code, const std::string& msg) {
  return TRITONSERVER_ErrorNew(code, msg.c_str());
}

// A Triton error code travelling through C++ code (never across extern "C").
class TritonException : public std::runtime_error {
 public:
  TritonException(TRITONSERVER_Error_Code code, const std::string& msg)
      : std::runtime_error(msg), code_(code) {}
  TRITONSERVER_Error_Code code() const { return code_; }

 private:
  TRITONSERVER_Error_Code code_;
};

// Takes ownership of `err`: throws TritonException when it is an error.
inline void throw_if_error(TRITONSERVER_Error* err, const char* what) {
  if (err == nullptr) return;
  TRITONSERVER_Error_Code code = TRITONSERVER_ErrorCode(err);
  std::string msg = std::string(what) + ": " + TRITONSERVER_ErrorMessage(err);
  TRITONSERVER_ErrorDelete(err);
  throw TritonException(code, msg);
}

// Logs and deletes `err` when it is an error.
inline void log_if_error(TRITONSERVER_Error* err, const char* what) {
  if (err == nullptr) return;
  GLM_LOG_ERROR(std::string(what) + ": " + TRITONSERVER_ErrorMessage(err));
  TRITONSERVER_ErrorDelete(err);
}

#define GLM_RETURN_IF_ERROR(expr)           \
  do {                                      \
    TRITONSERVER_Error* glm_err__ = (expr); \
    if (glm_err__ != nullptr) return glm_err__; \
  } while (false)

inline uint64_t now_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

// A number of seconds as the config wrote it (3600, 0.5), for messages and logs.
inline std::string seconds_str(double s) {
  std::ostringstream os;
  os << s;
  return os.str();
}

}  // namespace glmtriton
