// FP8 E4M3 ("fn": no infinities; 0x7F / 0xFF are NaN; largest finite 448) on the
// host, exactly glmserve.fp8's rule: the fp8 checkpoint format and the CPU back-end's
// FP8 KV cache (the reference the CUDA kernels are checked against).
#pragma once

#include <cstdint>

namespace glm {

constexpr float kE4m3Max = 448.0f;

float e4m3_to_f32(uint8_t code);
// The value of every code, [256] (a table: for decoding many).
const float* e4m3_values();
// Nearest value, ties to the even code, saturating at +-448; NaN -> 0x7F (with x's sign).
uint8_t f32_to_e4m3(float x);
// One row quantized with its own scale: scale = max|x| / 448 (1 when that is not > 0),
// codes[i] = f32_to_e4m3(x[i] / scale). Returns the scale.
float quantize_e4m3_row(const float* x, int n, uint8_t* codes);

}  // namespace glm
