// Layernorm with the alpha-residual and bias fused in; bias + GeLU.
#include "cuda_check.h"
#include "device_util.h"
#include "kernels.h"
#include "pdl.h"

namespace glm {
namespace cuda {
namespace {

constexpr int kLnThreads = 256;

__device__ __forceinline__ float block_sum(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();  // red may still be read by a previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float t = 0.f;
  const int nw = blockDim.x >> 5;
  for (int i = 0; i < nw; ++i) t += red[i];
  return t;
}

__global__ void __launch_bounds__(kLnThreads)
    add_layernorm_kernel(const __half* __restrict__ resid, float alpha, const __half* __restrict__ y,
                         const float* __restrict__ y_bias, const int32_t* __restrict__ in_rows,
                         const float* __restrict__ gamma, const float* __restrict__ beta, float eps,
                         __half* __restrict__ out, int hidden) {
  extern __shared__ float xs[];  // [hidden]
  __shared__ float red[32];
  pdl_wait();
  pdl_launch_dependents();
  const int row = blockIdx.x;
  const int64_t src = in_rows ? (int64_t)in_rows[row] : (int64_t)row;
  const __half2* y2 = reinterpret_cast<const __half2*>(y + src * hidden);
  const __half2* r2 = resid ? reinterpret_cast<const __half2*>(resid + src * hidden) : nullptr;
  const int h2 = hidden >> 1;
  float s = 0.f;
  for (int i = threadIdx.x; i < h2; i += blockDim.x) {
    float2 v = __half22float2(y2[i]);
    if (r2) {
      float2 r = __half22float2(r2[i]);
      v.x += alpha * r.x;
      v.y += alpha * r.y;
    }
    if (y_bias) {
      v.x += y_bias[2 * i];
      v.y += y_bias[2 * i + 1];
    }
    xs[2 * i] = v.x;
    xs[2 * i + 1] = v.y;
    s += v.x + v.y;
  }
  const float mean = block_sum(s, red) / hidden;
  float q = 0.f;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float d = xs[i] - mean;
    q += d * d;
  }
  const float var = block_sum(q, red) / hidden;
  const float rstd = rsqrtf(var + eps);
  __half2* o2 = reinterpret_cast<__half2*>(out + (int64_t)row * hidden);
  for (int i = threadIdx.x; i < h2; i += blockDim.x) {
    const float a = (xs[2 * i] - mean) * rstd * gamma[2 * i] + beta[2 * i];
    const float b = (xs[2 * i + 1] - mean) * rstd * gamma[2 * i + 1] + beta[2 * i + 1];
    o2[i] = __floats2half2_rn(a, b);
  }
}

// Fast path: the row lives in registers, VPT 16-byte vectors per thread,
// blockDim = hidden / (8 * VPT) (a multiple of 32). One read, one write.
template <int VPT>
__global__ void __launch_bounds__(256)
    add_layernorm_vec_kernel(const __half* __restrict__ resid, float alpha, const __half* __restrict__ y,
                             const float* __restrict__ y_bias, const int32_t* __restrict__ in_rows,
                             const float* __restrict__ gamma, const float* __restrict__ beta, float eps,
                             __half* __restrict__ out, int hidden) {
  __shared__ float red[2][32];
  pdl_wait();
  pdl_launch_dependents();
  const int row = blockIdx.x;
  const int64_t src = in_rows ? (int64_t)in_rows[row] : (int64_t)row;
  const uint4* y4 = reinterpret_cast<const uint4*>(y + src * hidden);
  const uint4* r4 = resid ? reinterpret_cast<const uint4*>(resid + src * hidden) : nullptr;
  const float4* b4 = reinterpret_cast<const float4*>(y_bias);
  const float4* g4 = reinterpret_cast<const float4*>(gamma);
  const float4* be4 = reinterpret_cast<const float4*>(beta);
  // Issue every load up front (activations, bias, gamma, beta): one memory round trip.
  uint4 yr[VPT], rr[VPT];
  float4 bb[VPT][2], gg[VPT][2], ee[VPT][2];
#pragma unroll
  for (int j = 0; j < VPT; ++j) {
    const int c = j * blockDim.x + threadIdx.x;
    yr[j] = y4[c];
    if (r4) rr[j] = r4[c];
    if (b4) {
      bb[j][0] = b4[2 * c];
      bb[j][1] = b4[2 * c + 1];
    } else {
      bb[j][0] = bb[j][1] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
    gg[j][0] = g4[2 * c];
    gg[j][1] = g4[2 * c + 1];
    ee[j][0] = be4[2 * c];
    ee[j][1] = be4[2 * c + 1];
  }
  float v[VPT][8];
  float s = 0.f;
#pragma unroll
  for (int j = 0; j < VPT; ++j) {
    const __half2* yh = reinterpret_cast<const __half2*>(&yr[j]);
    const __half2* rh = reinterpret_cast<const __half2*>(&rr[j]);
    const float* bf = reinterpret_cast<const float*>(&bb[j][0]);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float2 f = __half22float2(yh[e]);
      if (r4) {
        const float2 g = __half22float2(rh[e]);
        f.x += alpha * g.x;
        f.y += alpha * g.y;
      }
      f.x += bf[2 * e];
      f.y += bf[2 * e + 1];
      v[j][2 * e] = f.x;
      v[j][2 * e + 1] = f.y;
      s += f.x + f.y;
    }
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (lane == 0) red[0][warp] = s;
  __syncthreads();
  s = 0.f;
  for (int i = 0; i < nw; ++i) s += red[0][i];
  const float mean = s / hidden;
  float q = 0.f;
#pragma unroll
  for (int j = 0; j < VPT; ++j)
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float d = v[j][e] - mean;
      q += d * d;
    }
  for (int o = 16; o > 0; o >>= 1) q += __shfl_xor_sync(0xffffffffu, q, o);
  if (lane == 0) red[1][warp] = q;
  __syncthreads();
  q = 0.f;
  for (int i = 0; i < nw; ++i) q += red[1][i];
  const float rstd = rsqrtf(q / hidden + eps);
  uint4* o4 = reinterpret_cast<uint4*>(out + (int64_t)row * hidden);
#pragma unroll
  for (int j = 0; j < VPT; ++j) {
    const int c = j * blockDim.x + threadIdx.x;
    const float* gf = reinterpret_cast<const float*>(&gg[j][0]);
    const float* ef = reinterpret_cast<const float*>(&ee[j][0]);
    uint4 w;
    __half2* wh = reinterpret_cast<__half2*>(&w);
#pragma unroll
    for (int e = 0; e < 4; ++e)
      wh[e] = __floats2half2_rn((v[j][2 * e] - mean) * rstd * gf[2 * e] + ef[2 * e],
                                (v[j][2 * e + 1] - mean) * rstd * gf[2 * e + 1] + ef[2 * e + 1]);
    o4[c] = w;
  }
}

__global__ void bias_gelu_kernel(__half2* __restrict__ x, const float* __restrict__ bias, int64_t n2,
                                 int cols2) {
  pdl_wait();
  pdl_launch_dependents();
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n2;
       i += (int64_t)gridDim.x * blockDim.x) {
    float2 v = __half22float2(x[i]);
    if (bias) {
      const int c = (int)(i % cols2) * 2;
      v.x += bias[c];
      v.y += bias[c + 1];
    }
    x[i] = __floats2half2_rn(gelu_tanh(v.x), gelu_tanh(v.y));
  }
}

}  // namespace

void add_layernorm(const __half* resid, float alpha, const __half* y, const float* y_bias,
                   const int32_t* in_rows, const float* gamma, const float* beta, float eps,
                   __half* out, int rows, int hidden, cudaStream_t stream) {
  const char* k = "add_layernorm";
  check_arg(y && gamma && beta && out, k, "null tensor");
  check_arg(rows >= 0, k, "rows < 0");
  check_arg(hidden >= 2 && hidden % 2 == 0 && hidden <= 12288, k, "hidden must be even, <= 12288");
  check_arg(eps > 0.f, k, "eps must be > 0");
  if (rows == 0) return;
  const bool aligned = ((uintptr_t)y % 16 == 0) && ((uintptr_t)out % 16 == 0) && (!resid || (uintptr_t)resid % 16 == 0);
  if (aligned && hidden % (8 * 32 * 4) == 0 && hidden / 32 <= 256) {
    launch_k(k, add_layernorm_vec_kernel<4>, dim3(rows), dim3(hidden / 32), 0, stream, resid, alpha, y, y_bias,
             in_rows, gamma, beta, eps, out, hidden);
  } else if (aligned && hidden % (8 * 32) == 0 && hidden / 8 <= 256) {
    launch_k(k, add_layernorm_vec_kernel<1>, dim3(rows), dim3(hidden / 8), 0, stream, resid, alpha, y, y_bias,
             in_rows, gamma, beta, eps, out, hidden);
  } else {
    launch_k(k, add_layernorm_kernel, dim3(rows), dim3(kLnThreads), hidden * sizeof(float), stream, resid, alpha,
             y, y_bias, in_rows, gamma, beta, eps, out, hidden);
  }
  GLM_CUDA_LAUNCH_CHECK(k);
}

void bias_gelu(__half* x, const float* bias, int rows, int cols, cudaStream_t stream) {
  const char* k = "bias_gelu";
  check_arg(x != nullptr, k, "null tensor");
  check_arg(rows >= 0 && cols >= 2 && cols % 2 == 0, k, "cols must be even");
  if (rows == 0) return;
  const int64_t n2 = (int64_t)rows * cols / 2;
  const int threads = 256;
  int64_t blocks = (n2 + threads - 1) / threads;
  if (blocks > 65535LL * 8) blocks = 65535LL * 8;
  launch_k(k, bias_gelu_kernel, dim3((unsigned)blocks), dim3(threads), 0, stream, reinterpret_cast<__half2*>(x),
           bias, n2, cols / 2);
  GLM_CUDA_LAUNCH_CHECK(k);
}

}  // namespace cuda
}  // namespace glm
