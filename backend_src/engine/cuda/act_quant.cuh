// What the activation-quantized linears (W8A8 int8: w8a8.cu, FP8: fp8_gemm.cu) share:
// - the row quantizer: one block per row, scale = max|row| / Code::kMax (fp32; 1 when
//   that is not > 0), code = Code::encode(x / scale), both divisions IEEE-rounded (the
//   host references compute the same bits);
// - the epilogue: the raw products of the codes, acc [M, ldc] (columns [0, nc) are output
//   columns n0..n0+nc), scaled per token and per output channel, plus bias and GeLU:
//   y[m, n] = act((float(acc[m, n - n0]) * sx[m]) * wscale[n] + bias[n])
#pragma once

#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda_check.h"
#include "device_util.h"

namespace glm {
namespace cuda {

// int8: round half to even, clamped to [-127, 127]
struct Int8Code {
  using type = int8_t;
  static constexpr float kMax = 127.f;
  __device__ static int8_t encode(float v) { return static_cast<int8_t>(fminf(127.f, fmaxf(-127.f, rintf(v)))); }
};
// E4M3: nearest, ties to even, saturating at 448
struct E4m3Code {
  using type = uint8_t;
  static constexpr float kMax = 448.f;
  __device__ static uint8_t encode(float v) { return __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3); }
};

__device__ __forceinline__ float quant_in(float v) { return v; }
__device__ __forceinline__ float quant_in(__half v) { return __half2float(v); }

constexpr int kQuantRowThreads = 256;

template <typename T, typename Code>
__global__ void __launch_bounds__(kQuantRowThreads)
    quantize_rows_kernel(const T* __restrict__ x, int64_t cols, typename Code::type* __restrict__ q,
                         float* __restrict__ scale) {
  __shared__ float red[kQuantRowThreads / 32];
  __shared__ float s_scale;
  const int64_t row = blockIdx.x;
  const T* xr = x + row * cols;
  float amax = 0.f;
  for (int64_t c = threadIdx.x; c < cols; c += kQuantRowThreads) amax = fmaxf(amax, fabsf(quant_in(xr[c])));
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = amax;
  __syncthreads();
  if (threadIdx.x == 0) {
    float m = red[0];
    for (int i = 1; i < kQuantRowThreads / 32; ++i) m = fmaxf(m, red[i]);
    float s = __fdiv_rn(m, Code::kMax);
    if (!(s > 0.f)) s = 1.f;
    scale[row] = s;
    s_scale = s;
  }
  __syncthreads();
  const float s = s_scale;
  for (int64_t c = threadIdx.x; c < cols; c += kQuantRowThreads) q[row * cols + c] = Code::encode(__fdiv_rn(quant_in(xr[c]), s));
}

// Launches the row quantizer (arguments checked; `what` names the caller in errors).
template <typename T, typename Code>
void quantize_rows(const T* x, int64_t rows, int64_t cols, typename Code::type* q, float* scale, cudaStream_t stream,
                   const char* what) {
  check_arg(x && q && scale, what, "null tensor");
  check_arg(rows >= 0 && rows < (1ll << 31) && cols > 0, what, "bad sizes");
  if (rows == 0) return;
  quantize_rows_kernel<T, Code><<<static_cast<unsigned>(rows), kQuantRowThreads, 0, stream>>>(x, cols, q, scale);
  GLM_CUDA_LAUNCH_CHECK(what);
}

__device__ __forceinline__ float quant_scale_of(__half s) { return __half2float(s); }
__device__ __forceinline__ float quant_scale_of(float s) { return s; }

template <typename Acc, typename WScale>
__global__ void quant_epilogue_kernel(const Acc* __restrict__ acc, int ldc, const float* __restrict__ sx,
                                      const WScale* __restrict__ wscale, const float* __restrict__ bias, bool gelu,
                                      void* __restrict__ y, bool f32_out, int M, int N, int n0, int nc) {
  const int64_t total = (int64_t)M * nc;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int m = static_cast<int>(i / nc), c = static_cast<int>(i % nc), n = n0 + c;
    float v = __fmul_rn(__fmul_rn(static_cast<float>(acc[(int64_t)m * ldc + c]), sx[m]), quant_scale_of(wscale[n]));
    if (bias) v = __fadd_rn(v, bias[n]);
    if (gelu) v = gelu_tanh(v);
    const int64_t o = (int64_t)m * N + n;
    if (f32_out)
      static_cast<float*>(y)[o] = v;
    else
      static_cast<__half*>(y)[o] = __float2half_rn(v);
  }
}

template <typename Acc, typename WScale>
void quant_epilogue(const Acc* acc, int ldc, const float* sx, const WScale* wscale, const float* bias, bool gelu,
                    void* y, bool f32_out, int M, int N, int n0, int nc, cudaStream_t stream, const char* what) {
  const int64_t total = (int64_t)M * nc;
  const int grid = static_cast<int>(std::min<int64_t>((total + 255) / 256, 65535));
  quant_epilogue_kernel<Acc, WScale><<<grid, 256, 0, stream>>>(acc, ldc, sx, wscale, bias, gelu, y, f32_out, M, N,
                                                                n0, nc);
  GLM_CUDA_LAUNCH_CHECK(what);
}

}  // namespace cuda
}  // namespace glm
