// The FP8 KV cache's writes (kv_cache_dtype=fp8): each new token's K and V rows
// (fp16 [T, heads, head_dim], from qkv_rotary_kv_write with stage_rows) quantized
// per (token, head) into the paged cache, exactly glm::quantize_e4m3_row:
//   scale = max |row| / 448 (fp32; 1 for an all-zero row), code = E4M3(x / scale)
// (nearest, ties to even, saturating). Codes [blocks, heads, block_size, head_dim],
// scales [blocks, heads, block_size]: the fp16 cache's layout, one byte a value.
#include <cuda_fp8.h>

#include "cuda_check.h"
#include "kernels.h"
#include "pdl.h"

namespace glm {
namespace cuda {
namespace {

// Block = 2 warps: warp 0 quantizes the K row of (token, head), warp 1 the V row.
__global__ void __launch_bounds__(64)
    kv_fp8_write_kernel(const __half* __restrict__ k_rows, const __half* __restrict__ v_rows,
                        const int32_t* __restrict__ slot, int heads, int head_dim, int block_size,
                        uint8_t* __restrict__ k_codes, float* __restrict__ k_scale, uint8_t* __restrict__ v_codes,
                        float* __restrict__ v_scale) {
  pdl_wait();
  pdl_launch_dependents();
  const int t = blockIdx.x, h = blockIdx.y;
  const int s = slot[t];
  if (s < 0) return;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const __half* row = (warp == 0 ? k_rows : v_rows) + ((int64_t)t * heads + h) * head_dim;
  float amax = 0.f;
  for (int d = lane; d < head_dim; d += 32) amax = fmaxf(amax, fabsf(__half2float(row[d])));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const float scale = amax > 0.f ? __fdiv_rn(amax, 448.f) : 1.f;
  const int64_t r = ((int64_t)(s / block_size) * heads + h) * block_size + s % block_size;
  uint8_t* codes = (warp == 0 ? k_codes : v_codes) + r * head_dim;
  for (int d = lane; d < head_dim; d += 32)
    codes[d] = __nv_cvt_float_to_fp8(__fdiv_rn(__half2float(row[d]), scale), __NV_SATFINITE, __NV_E4M3);
  if (lane == 0) (warp == 0 ? k_scale : v_scale)[r] = scale;
}

}  // namespace

void kv_fp8_write(const __half* k_rows, const __half* v_rows, const int32_t* slot, int heads, int head_dim,
                  int block_size, uint8_t* k_codes, float* k_scale, uint8_t* v_codes, float* v_scale, int tokens,
                  cudaStream_t stream) {
  const char* k = "kv_fp8_write";
  check_arg(k_rows && v_rows && slot && k_codes && k_scale && v_codes && v_scale, k, "null tensor");
  check_arg(heads > 0 && heads <= 65535 && block_size > 0, k, "heads must be in [1, 65535], block_size > 0");
  check_arg(head_dim >= 4 && head_dim <= 256 && head_dim % 4 == 0, k, "head_dim must be a multiple of 4 in [4, 256]");
  check_arg(tokens >= 0, k, "tokens < 0");
  if (tokens == 0) return;
  launch_k(k, kv_fp8_write_kernel, dim3(tokens, heads), dim3(64), 0, stream, k_rows, v_rows, slot, heads, head_dim,
           block_size, k_codes, k_scale, v_codes, v_scale);
}

}  // namespace cuda
}  // namespace glm
