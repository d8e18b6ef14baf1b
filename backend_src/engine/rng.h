// Counter-based random numbers shared by every sampler (CPU and CUDA), so that
// a request's draws depend only on (seed, rng_offset), never on the batch.
//
// uniform01(seed, k) is the k-th output (k = 0, 1, ...) of the SplitMix64
// stream started at state `seed`, turned into a float in [0, 1) with 24 bits:
//   z = mix64(seed + (k + 1) * 0x9E3779B97F4A7C15);  u = (z >> 40) * 2^-24.
// (mix64 is SplitMix64's finalizer.) The value is exact in float and double.
// For a sequence, k = rng_offset = the number of tokens it has sampled so far.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define GLM_HOST_DEVICE __host__ __device__
#else
#define GLM_HOST_DEVICE
#endif

namespace glm {

GLM_HOST_DEVICE inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The k-th SplitMix64 output of the stream seeded with `seed`.
GLM_HOST_DEVICE inline uint64_t splitmix64(uint64_t seed, uint64_t k) {
  return mix64(seed + (k + 1) * 0x9E3779B97F4A7C15ull);
}
// One-argument form: the first output of the stream seeded with x.
GLM_HOST_DEVICE inline uint64_t splitmix64(uint64_t x) { return splitmix64(x, 0); }

// Uniform in [0, 1), 24 random bits.
GLM_HOST_DEVICE inline float uniform01(uint64_t seed, uint64_t k) {
  return static_cast<float>(splitmix64(seed, k) >> 40) * (1.0f / 16777216.0f);
}

}  // namespace glm
