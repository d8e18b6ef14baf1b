// Weight-streaming GEMV for decode steps with few tokens (M <= 8):
// y[m, n] = sum_k x[m, k] W[n, k] (+ bias[n], GeLU). Memory-bound on W: each
// warp streams two rows of W with 16-byte loads that skip L1 (x stays there),
// several loads in flight per lane, fp32 accumulation, a warp reduction.
#include "cuda_check.h"
#include "device_util.h"
#include "kernels.h"
#include "pdl.h"

namespace glm {
namespace cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kRows = 2;  // rows of W per warp

// Block = kWarps warps. KS warps share a pair of rows, each taking K/KS of the
// row (more loads in flight for short, few rows), partials summed in shared memory.
template <int M, bool F32OUT, bool GELU, int KS>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_kernel(const __half* __restrict__ x, const __half* __restrict__ w, void* __restrict__ y,
                const float* __restrict__ bias, int N, int K) {
  constexpr int kPairs = kWarps / KS;
  __shared__ float part[kWarps][kRows][M];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int pair = warp / KS, ks = warp % KS;
  const int n0 = (blockIdx.x * kPairs + pair) * kRows;
  const bool valid = n0 < N;
  const bool two = n0 + 1 < N;
  const int kper = K / KS;
  const int kbeg = ks * kper, kend = kbeg + kper;
  const __half* w0 = w + (int64_t)(valid ? n0 : 0) * K;
  const __half* w1 = w + (int64_t)(two ? n0 + 1 : (valid ? n0 : 0)) * K;
  float acc[kRows][M];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m) acc[r][m] = 0.f;
  constexpr int U = 4;
  int k = kbeg + lane * 8;
  // The weights do not depend on the previous kernel: start streaming them
  // before waiting for it (programmatic dependent launch).
  uint4 a[U], b[U];
  bool full = valid && k + (U - 1) * 256 < kend;
  if (full) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      a[u] = ld_stream(w0 + k + u * 256);
      b[u] = ld_stream(w1 + k + u * 256);
    }
  }
  pdl_wait();
  pdl_launch_dependents();
  if (valid) {
    auto body = [&](const uint4& a, const uint4& b, int kk) {
      float wa[8], wb[8];
      const __half2* ha = reinterpret_cast<const __half2*>(&a);
      const __half2* hb = reinterpret_cast<const __half2*>(&b);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 fa = __half22float2(ha[i]), fb = __half22float2(hb[i]);
        wa[2 * i] = fa.x;
        wa[2 * i + 1] = fa.y;
        wb[2 * i] = fb.x;
        wb[2 * i + 1] = fb.y;
      }
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const uint4 xv = *reinterpret_cast<const uint4*>(x + (int64_t)m * K + kk);
        const __half2* hx = reinterpret_cast<const __half2*>(&xv);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float2 fx = __half22float2(hx[i]);
          acc[0][m] = fmaf(wa[2 * i], fx.x, acc[0][m]);
          acc[0][m] = fmaf(wa[2 * i + 1], fx.y, acc[0][m]);
          acc[1][m] = fmaf(wb[2 * i], fx.x, acc[1][m]);
          acc[1][m] = fmaf(wb[2 * i + 1], fx.y, acc[1][m]);
        }
      }
    };
    while (full) {
#pragma unroll
      for (int u = 0; u < U; ++u) body(a[u], b[u], k + u * 256);
      k += U * 256;
      full = k + (U - 1) * 256 < kend;
      if (full) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
          a[u] = ld_stream(w0 + k + u * 256);
          b[u] = ld_stream(w1 + k + u * 256);
        }
      }
    }
    for (; k < kend; k += 256) body(ld_stream(w0 + k), ld_stream(w1 + k), k);
  }
  reduce_row_pairs<kRows, M, KS>(acc, part, warp, lane, ks);
  if (lane == 0 && ks == 0 && valid) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (r == 1 && !two) break;
      const int n = n0 + r;
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float v = acc[r][m];
        if (bias) v += bias[n];
        if (GELU) v = gelu_tanh(v);
        if (F32OUT)
          static_cast<float*>(y)[(int64_t)m * N + n] = v;
        else
          static_cast<__half*>(y)[(int64_t)m * N + n] = __float2half_rn(v);
      }
    }
  }
}

template <int M, int KS>
void launch_mk(const __half* x, const __half* w, void* y, bool f32_out, const float* bias, bool gelu, int N,
               int K, cudaStream_t stream) {
  const int pairs = (N + kRows - 1) / kRows;
  const int per_block = kWarps / KS;
  const int blocks = (pairs + per_block - 1) / per_block;
  if (f32_out)
    launch_k("gemv", gemv_kernel<M, true, false, KS>, dim3(blocks), dim3(kWarps * 32), 0, stream, x, w, y, bias, N, K);
  else if (gelu)
    launch_k("gemv", gemv_kernel<M, false, true, KS>, dim3(blocks), dim3(kWarps * 32), 0, stream, x, w, y, bias, N, K);
  else
    launch_k("gemv", gemv_kernel<M, false, false, KS>, dim3(blocks), dim3(kWarps * 32), 0, stream, x, w, y, bias, N,
             K);
}

template <int M>
void launch_m(const __half* x, const __half* w, void* y, bool f32_out, const float* bias, bool gelu, int N,
              int K, cudaStream_t stream) {
  // Few rows: split K over 4 warps so that enough loads are in flight.
  if (N <= 8192 && K % (4 * 256) == 0)
    launch_mk<M, 4>(x, w, y, f32_out, bias, gelu, N, K, stream);
  else
    launch_mk<M, 1>(x, w, y, f32_out, bias, gelu, N, K, stream);
}

}  // namespace

bool gemv_supported(const void* x, const void* w, int M, int K) {
  return M >= 1 && M <= kGemvMaxTokens && K % 8 == 0 && (uintptr_t)x % 16 == 0 && (uintptr_t)w % 16 == 0;
}

void gemv(const __half* x, const __half* w, void* y, bool f32_out, const float* bias, bool gelu, int M, int K,
          int N, cudaStream_t stream) {
  const char* k = "gemv";
  check_arg(x && w && y, k, "null tensor");
  check_arg(N > 0 && K > 0, k, "bad sizes");
  check_arg(gemv_supported(x, w, M, K), k, "needs 1 <= M <= 8, K % 8 == 0, 16-byte aligned x and w");
  check_arg(!(f32_out && gelu), k, "GeLU only with fp16 output");
  switch (M) {
    case 1: launch_m<1>(x, w, y, f32_out, bias, gelu, N, K, stream); break;
    case 2: launch_m<2>(x, w, y, f32_out, bias, gelu, N, K, stream); break;
    case 3: launch_m<3>(x, w, y, f32_out, bias, gelu, N, K, stream); break;
    case 4: launch_m<4>(x, w, y, f32_out, bias, gelu, N, K, stream); break;
    case 5: launch_m<5>(x, w, y, f32_out, bias, gelu, N, K, stream); break;
    case 6: launch_m<6>(x, w, y, f32_out, bias, gelu, N, K, stream); break;
    case 7: launch_m<7>(x, w, y, f32_out, bias, gelu, N, K, stream); break;
    default: launch_m<8>(x, w, y, f32_out, bias, gelu, N, K, stream); break;
  }
  GLM_CUDA_LAUNCH_CHECK(k);
}

}  // namespace cuda
}  // namespace glm
