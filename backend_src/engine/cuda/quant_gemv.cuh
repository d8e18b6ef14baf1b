// Weight-only GEMV for 1-8 tokens over quantized weight rows: y[m, n] = act(scale[n] *
// sum_k x[m, k] * value(q[n, k]) + bias[n]), x fp16 (not quantized), q [out, in]
// row-major codes, one scale per output channel, fp32 accumulation. The codes are a
// policy: int8 (int8_gemm.cu, fp16 scales) or E4M3 (fp8_gemm.cu, fp32 scales); the
// kernel is otherwise one, so both stream their weight bytes the same way.
#pragma once

#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_check.h"
#include "device_util.h"
#include "pdl.h"

namespace glm {
namespace cuda {
namespace quant_gemv {

__device__ __forceinline__ uint4 ld_cached(const void* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

// Four int8 (one 32-bit word, byte j = element j) -> fp32, exactly: with the
// sign bit flipped each byte is q + 128; placed under the exponent of 2^23 it
// reads 8388608 + q + 128, and one subtraction leaves q.
__device__ __forceinline__ void i8x4_to_f32(uint32_t w, float* f) {
  const uint32_t u = w ^ 0x80808080u;
  f[0] = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7540)) - 8388736.f;
  f[1] = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7541)) - 8388736.f;
  f[2] = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7542)) - 8388736.f;
  f[3] = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7543)) - 8388736.f;
}

// int8 codes, fp16 scales.
struct Int8Codes {
  using Code = int8_t;
  using Scale = __half;
  static constexpr bool kFp32Output = true;  // the lm_head's logits (int8_gemm.h)
  static __device__ __forceinline__ void decode4(uint32_t w, float* f) { i8x4_to_f32(w, f); }
  static __device__ __forceinline__ float scale(const Scale* s, int n) { return __half2float(s[n]); }
};

// E4M3 codes (byte j of a word = element j), fp32 scales; exact through fp16.
struct E4m3Codes {
  using Code = uint8_t;
  using Scale = float;
  static constexpr bool kFp32Output = false;  // fp16 outputs only: no fp32 kernels built
  static __device__ __forceinline__ void decode4(uint32_t w, float* f) {
    const __half2 lo(__nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w & 0xFFFFu), __NV_E4M3));
    const __half2 hi(__nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w >> 16), __NV_E4M3));
    const float2 a = __half22float2(lo), b = __half22float2(hi);
    f[0] = a.x;
    f[1] = a.y;
    f[2] = b.x;
    f[3] = b.y;
  }
  static __device__ __forceinline__ float scale(const Scale* s, int n) { return s[n]; }
};

__device__ __forceinline__ void store_out(void* y, bool f32_out, int64_t i, float v) {
  if (f32_out)
    static_cast<float*>(y)[i] = v;
  else
    static_cast<__half*>(y)[i] = __float2half_rn(v);
}

// ------------------------------------------------------------- GEMV (M <= 8)
// Block = 8 warps; a warp streams two weight rows, 16 int8 per lane per load
// (512 per warp), 4 loads per row in flight; KS warps split one row pair's K.
constexpr int kGemvWarps = 8;

template <class C, int M, bool F32OUT, bool GELU, int KS>
__global__ void __launch_bounds__(kGemvWarps * 32)
    gemv_kernel(const __half* __restrict__ x, const typename C::Code* __restrict__ q,
                const typename C::Scale* __restrict__ scale, void* __restrict__ y, const float* __restrict__ bias, int N,
                int K) {
  constexpr int kPairs = kGemvWarps / KS;
  __shared__ float part[kGemvWarps][2][M];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int pair = warp / KS, ks = warp % KS;
  const int n0 = (blockIdx.x * kPairs + pair) * 2;
  const bool valid = n0 < N;
  const bool two = n0 + 1 < N;
  const int kper = (K + KS * 16 - 1) / (KS * 16) * 16;
  const int kbeg = ks * kper, kend = min(K, kbeg + kper);
  const typename C::Code* q0 = q + (int64_t)(valid ? n0 : 0) * K;
  const typename C::Code* q1 = q + (int64_t)(two ? n0 + 1 : (valid ? n0 : 0)) * K;
  float acc[2][M];
#pragma unroll
  for (int r = 0; r < 2; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m) acc[r][m] = 0.f;
  auto body = [&](const uint4& a, const uint4& b, int kk) {
    float wa[16], wb[16];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      C::decode4(word_of(a, i), wa + 4 * i);
      C::decode4(word_of(b, i), wb + 4 * i);
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const __half* xr = x + (int64_t)m * K + kk;
#pragma unroll
      for (int hlf = 0; hlf < 2; ++hlf) {
        const uint4 xv = ld_cached(xr + 8 * hlf);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const uint32_t xw = word_of(xv, i);
          const float2 fx = __half22float2(*reinterpret_cast<const __half2*>(&xw));
          const int e = 8 * hlf + 2 * i;
          acc[0][m] = fmaf(wa[e], fx.x, acc[0][m]);
          acc[0][m] = fmaf(wa[e + 1], fx.y, acc[0][m]);
          acc[1][m] = fmaf(wb[e], fx.x, acc[1][m]);
          acc[1][m] = fmaf(wb[e + 1], fx.y, acc[1][m]);
        }
      }
    }
  };
  constexpr int U = 4;
  int k = kbeg + lane * 16;
  // The weights do not depend on the previous kernel: the first loads go out
  // before waiting for it (programmatic dependent launch, pdl.h).
  uint4 a[U], b[U];
  bool full = valid && k + (U - 1) * 512 < kend;
  if (full) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      a[u] = ld_stream(q0 + k + u * 512);
      b[u] = ld_stream(q1 + k + u * 512);
    }
  }
  pdl_wait();
  pdl_launch_dependents();
  if (valid) {
    while (full) {
#pragma unroll
      for (int u = 0; u < U; ++u) body(a[u], b[u], k + u * 512);
      k += U * 512;
      full = k + (U - 1) * 512 < kend;
      if (full) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
          a[u] = ld_stream(q0 + k + u * 512);
          b[u] = ld_stream(q1 + k + u * 512);
        }
      }
    }
    for (; k < kend; k += 512) body(ld_stream(q0 + k), ld_stream(q1 + k), k);
  }
  reduce_row_pairs<2, M, KS>(acc, part, warp, lane, ks);
  if (lane == 0 && ks == 0 && valid) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      if (r == 1 && !two) break;
      const int n = n0 + r;
      const float sc = C::scale(scale, n);
      const float b = bias ? bias[n] : 0.f;
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float v = acc[r][m] * sc + b;
        if (GELU) v = gelu_tanh(v);
        store_out(y, F32OUT, (int64_t)m * N + n, v);
      }
    }
  }
}

template <class C, int M, int KS>
void launch_mk(const char* name, const __half* x, const typename C::Code* q, const typename C::Scale* scale, void* y,
               bool f32_out, const float* bias, bool gelu, int N, int K, cudaStream_t stream) {
  const int pairs = (N + 1) / 2;
  const int per_block = kGemvWarps / KS;
  const int blocks = (pairs + per_block - 1) / per_block;
  if constexpr (C::kFp32Output) {
    if (f32_out) {
      launch_k(name, gemv_kernel<C, M, true, false, KS>, blocks, kGemvWarps * 32, 0, stream, x, q, scale, y, bias, N,
               K);
      return;
    }
  }
  if (gelu)
    launch_k(name, gemv_kernel<C, M, false, true, KS>, blocks, kGemvWarps * 32, 0, stream, x, q, scale, y, bias, N, K);
  else
    launch_k(name, gemv_kernel<C, M, false, false, KS>, blocks, kGemvWarps * 32, 0, stream, x, q, scale, y, bias, N,
             K);
}

template <class C, int M>
void launch_m(const char* name, const __half* x, const typename C::Code* q, const typename C::Scale* scale, void* y,
              bool f32_out, const float* bias, bool gelu, int N, int K, cudaStream_t stream) {
  if (N <= 8192 && K % (4 * 512) == 0)
    launch_mk<C, M, 4>(name, x, q, scale, y, f32_out, bias, gelu, N, K, stream);
  else
    launch_mk<C, M, 1>(name, x, q, scale, y, f32_out, bias, gelu, N, K, stream);
}

// 1 <= M <= 8, K % 16 == 0, x and q 16-byte aligned.
inline bool supported(const void* x, const void* q, int M, int K) {
  return M >= 1 && M <= 8 && K > 0 && K % 16 == 0 && (uintptr_t)x % 16 == 0 && (uintptr_t)q % 16 == 0;
}

// The launcher: checks its arguments (std::invalid_argument, naming `name`).
template <class C>
void gemv(const char* name, const __half* x, const typename C::Code* q, const typename C::Scale* scale, void* y,
          bool f32_out, const float* bias, bool gelu, int M, int K, int N, cudaStream_t stream) {
  check_arg(x && q && scale && y, name, "null tensor");
  check_arg(N > 0, name, "bad sizes");
  check_arg(supported(x, q, M, K), name, "needs 1 <= M <= 8, K % 16 == 0, 16-byte aligned x and q");
  check_arg(!(f32_out && gelu), name, "GeLU only with fp16 output");
  check_arg(!f32_out || C::kFp32Output, name, "fp32 output not built for these weight codes");
  switch (M) {
    case 1: launch_m<C, 1>(name, x, q, scale, y, f32_out, bias, gelu, N, K, stream); break;
    case 2: launch_m<C, 2>(name, x, q, scale, y, f32_out, bias, gelu, N, K, stream); break;
    case 3: launch_m<C, 3>(name, x, q, scale, y, f32_out, bias, gelu, N, K, stream); break;
    case 4: launch_m<C, 4>(name, x, q, scale, y, f32_out, bias, gelu, N, K, stream); break;
    case 5: launch_m<C, 5>(name, x, q, scale, y, f32_out, bias, gelu, N, K, stream); break;
    case 6: launch_m<C, 6>(name, x, q, scale, y, f32_out, bias, gelu, N, K, stream); break;
    case 7: launch_m<C, 7>(name, x, q, scale, y, f32_out, bias, gelu, N, K, stream); break;
    default: launch_m<C, 8>(name, x, q, scale, y, f32_out, bias, gelu, N, K, stream); break;
  }
  GLM_CUDA_LAUNCH_CHECK(name);
}

}  // namespace quant_gemv
}  // namespace cuda
}  // namespace glm
