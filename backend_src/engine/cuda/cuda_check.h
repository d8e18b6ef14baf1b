// Error checking shared by the CUDA back-end's sources.
#pragma once

#include <cuda_runtime.h>

#include <mutex>
#include <stdexcept>
#include <string>

namespace glm {
namespace cuda {

[[noreturn]] inline void throw_cuda(cudaError_t e, const char* what, const char* file, int line) {
  throw std::runtime_error(std::string("CUDA error in ") + what + " (" + file + ":" +
                           std::to_string(line) + "): " + cudaGetErrorString(e));
}

inline void check_arg(bool ok, const char* kernel, const char* msg) {
  if (!ok) throw std::invalid_argument(std::string(kernel) + ": " + msg);
}

// init() run once for the current CUDA device (thread-safe), its result kept;
// each call site (its lambda type) has its own storage. For set-up that must
// happen before any graph capture: shared-memory limits, occupancy, probes.
template <typename T, typename Init>
const T& once_per_device(const char* what, Init init) {
  constexpr int kMaxDevices = 64;
  static std::mutex mu;
  static T value[kMaxDevices];
  static bool done[kMaxDevices] = {};
  int dev = 0;
  const cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
  check_arg(dev >= 0 && dev < kMaxDevices, what, "device ordinal out of range");
  std::lock_guard<std::mutex> lock(mu);
  if (!done[dev]) {
    value[dev] = init(dev);
    done[dev] = true;
  }
  return value[dev];
}

}  // namespace cuda
}  // namespace glm

#define GLM_CUDA_CHECK(expr)                                              \
  do {                                                                    \
    cudaError_t glm_e_ = (expr);                                          \
    if (glm_e_ != cudaSuccess) ::glm::cuda::throw_cuda(glm_e_, #expr, __FILE__, __LINE__); \
  } while (0)

// After a launch: catches bad configurations (not asynchronous faults).
#define GLM_CUDA_LAUNCH_CHECK(name)                                       \
  do {                                                                    \
    cudaError_t glm_e_ = cudaGetLastError();                              \
    if (glm_e_ != cudaSuccess) ::glm::cuda::throw_cuda(glm_e_, name, __FILE__, __LINE__); \
  } while (0)
