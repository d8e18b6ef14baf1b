// The epilogue of the activation-quantized linears (W8A8 int8, FP8): the raw
// products of the codes, acc [M, ldc] (columns [0, nc) are output columns
// n0..n0+nc), scaled per token and per output channel, plus bias and GeLU:
//   y[m, n] = act((float(acc[m, n - n0]) * sx[m]) * wscale[n] + bias[n])
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda_check.h"
#include "device_util.h"

namespace glm {
namespace cuda {

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
