#include "e4m3.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

namespace glm {

namespace {

// The non-negative finite values, code 0x00 .. 0x7E (increasing with the code).
const std::array<float, 0x7F>& positive_values() {
  static const std::array<float, 0x7F> v = [] {
    std::array<float, 0x7F> a{};
    for (int c = 0; c <= 0x7E; ++c) a[static_cast<size_t>(c)] = e4m3_to_f32(static_cast<uint8_t>(c));
    return a;
  }();
  return v;
}

}  // namespace

const float* e4m3_values() {
  static const std::array<float, 256> v = [] {
    std::array<float, 256> a{};
    for (int c = 0; c < 256; ++c) a[static_cast<size_t>(c)] = e4m3_to_f32(static_cast<uint8_t>(c));
    return a;
  }();
  return v.data();
}

float e4m3_to_f32(uint8_t c) {
  const int e = (c >> 3) & 0xF, m = c & 7;
  if (e == 0xF && m == 7) return std::numeric_limits<float>::quiet_NaN();
  const float v = e == 0 ? std::ldexp(static_cast<float>(m), -9) : std::ldexp(1.0f + m / 8.0f, e - 7);
  return (c & 0x80) ? -v : v;
}

uint8_t f32_to_e4m3(float x) {
  const uint8_t sign = std::signbit(x) ? 0x80 : 0;
  if (std::isnan(x)) return static_cast<uint8_t>(0x7F | sign);
  const float a = std::min(std::fabs(x), kE4m3Max);
  const auto& v = positive_values();
  const auto hi_it = std::lower_bound(v.begin(), v.end(), a);
  const int hi = static_cast<int>(std::min<std::ptrdiff_t>(hi_it - v.begin(), 0x7E));
  const int lo = std::max(hi - 1, 0);
  const float d_lo = a - v[static_cast<size_t>(lo)], d_hi = v[static_cast<size_t>(hi)] - a;
  const int code = (d_hi < d_lo || (d_hi == d_lo && hi % 2 == 0)) ? hi : lo;
  return static_cast<uint8_t>(code | sign);
}

float quantize_e4m3_row(const float* x, int n, uint8_t* codes) {
  float amax = 0.0f;
  for (int i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  float scale = amax / kE4m3Max;
  if (!(scale > 0.0f)) scale = 1.0f;  // an all-zero row (or one whose scale underflows)
  for (int i = 0; i < n; ++i) codes[i] = f32_to_e4m3(x[i] / scale);
  return scale;
}

}  // namespace glm
