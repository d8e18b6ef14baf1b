// Small device helpers shared by the CUDA back-end's kernels.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace glm {
namespace cuda {

// 16 bytes through the read-only path, not kept in L1 (weights, read once).
__device__ __forceinline__ uint4 ld_stream(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

// ChatGLM-6B's GeLU (tanh approximation).
__device__ __forceinline__ float gelu_tanh(float x) {
  return 0.5f * x * (1.f + tanhf(0.7978845608028654f * x * (1.f + 0.044715f * x * x)));
}

__device__ __forceinline__ uint32_t word_of(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// Two bytes of u (picked by sel, e.g. 0x4140 = bytes 0 and 1), each holding
// q + 128, -> fp16x2 of q, exactly: under 0x64 a byte reads 1024 + q + 128 in
// fp16, and one subtraction of 1152 leaves q (|q| <= 128).
__device__ __forceinline__ uint32_t u8x2_to_h2(uint32_t u, uint32_t sel) {
  const uint32_t h = __byte_perm(u, 0x64646464u, sel);
  uint32_t r;
  asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(h), "r"(0x64806480u));
  return r;
}

// c (+)= A[16x16] B[16x8], fp16 in, fp32 accumulate (sm_80 and newer).
__device__ __forceinline__ void mma16816(float* c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// The GEMVs' reduction (gemv.cu, quant_gemv.cuh): each accumulator summed over the
// warp's lanes, then, with KS > 1, over the KS warps that share a row pair (through
// `part`, one [R][M] slot per warp of the block; a __syncthreads every thread reaches).
// The sums end in lane 0 of the pair's first warp (ks == 0).
template <int R, int M, int KS>
__device__ __forceinline__ void reduce_row_pairs(float (&acc)[R][M], float (*part)[R][M], int warp, int lane,
                                                 int ks) {
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) acc[r][m] += __shfl_xor_sync(0xffffffffu, acc[r][m], o);
  if (KS > 1) {
    if (lane == 0)
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < M; ++m) part[warp][r][m] = acc[r][m];
    __syncthreads();
    if (lane == 0 && ks == 0) {
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < M; ++m) {
          float t = 0.f;
#pragma unroll
          for (int j = 0; j < KS; ++j) t += part[warp + j][r][m];
          acc[r][m] = t;
        }
    }
  }
}

}  // namespace cuda
}  // namespace glm
