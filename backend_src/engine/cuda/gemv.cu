// Weight-streaming GEMVs for decode steps with few tokens (M <= 8 on CUDA cores,
// M <= 16 on tensor cores: gemv_mma below):
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

// The GEMVs' epilogue for one output: + bias[n], GeLU, stored as fp32 or fp16 at y[o].
template <bool F32OUT, bool GELU>
__device__ __forceinline__ void store_output(void* y, int64_t o, float v, const float* bias, int n) {
  if (bias) v += bias[n];
  if (GELU) v = gelu_tanh(v);
  if (F32OUT)
    static_cast<float*>(y)[o] = v;
  else
    static_cast<__half*>(y)[o] = __float2half_rn(v);
}

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
        store_output<F32OUT, GELU>(y, (int64_t)m * N + n, acc[r][m], bias, n);
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

// ---- tensor-core GEMV (gemv_mma) ----
// For 5..16 tokens the CUDA-core GEMV above is no longer memory-bound: every weight
// is multiplied by every token in fp32 FMAs, and x is re-read from L1 per token. This
// variant feeds the same stream of weights to mma.sync (m16n8k16, fp16 in, fp32
// accumulate): a warp owns 16 rows of W and one or two 8-token tiles, and takes 64
// columns per chunk. Within a chunk, lane (g, t) loads 16 contiguous fp16 of rows g
// and g + 8 (columns [16t, 16t + 16)) and of tokens g (and g + 8). The four k16-steps
// of the chunk read those registers in a fixed permutation of the 64 columns: step s
// uses columns 16t + 4s .. 16t + 4s + 3 as the fragment's k = 2t, 2t+1, 2t+8, 2t+9.
// A and B follow the same permutation, and a dot product does not depend on the order
// of its terms, so the sum is the GEMV's. Every load is 16 bytes and no shared
// memory is needed. KS warps split a row tile's K and add their partials through
// shared memory.
constexpr int kMmaWarps = 8;
constexpr int kMmaU = 4;  // 64-column chunks of W in flight per warp

template <int NT, bool F32OUT, bool GELU, int KS>
__global__ void __launch_bounds__(kMmaWarps * 32)
    gemv_mma_kernel(const __half* __restrict__ x, const __half* __restrict__ w, void* __restrict__ y,
                    const float* __restrict__ bias, int M, int N, int K) {
  constexpr int kTiles = kMmaWarps / KS;  // 16-row tiles per block
  __shared__ float part[KS > 1 ? kMmaWarps : 1][NT * 4][32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int tile = warp / KS, ks = warp % KS;
  const int r0 = (blockIdx.x * kTiles + tile) * 16;
  const int kper = K / KS;  // a multiple of 64 (gemv_mma_supported, the launcher's KS)
  const int kbeg = ks * kper;
  const int chunks = kper / 64;
  // Rows g and g + 8 of the tile; rows past N read the last row and are never stored.
  const __half* wa = w + (int64_t)min(r0 + g, N - 1) * K + kbeg + 16 * t;
  const __half* wb = w + (int64_t)min(r0 + g + 8, N - 1) * K + kbeg + 16 * t;
  uint4 a[kMmaU][4];  // per chunk in flight: row g's 16 columns (2 x 16 bytes), then row g + 8's
  auto load_a = [&](int c, uint4(&s)[4]) {
    const int64_t o = (int64_t)c * 64;
    s[0] = ld_stream(wa + o);
    s[1] = ld_stream(wa + o + 8);
    s[2] = ld_stream(wb + o);
    s[3] = ld_stream(wb + o + 8);
  };
  // The weights do not depend on the previous kernel (programmatic dependent launch).
#pragma unroll
  for (int u = 0; u < kMmaU; ++u)
    if (u < chunks) load_a(u, a[u]);
  pdl_wait();
  pdl_launch_dependents();
  const __half* xr[NT];  // token 8 nt + g; tokens past M are zeros
  bool xok[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int m = 8 * nt + g;
    xok[nt] = m < M;
    xr[nt] = x + (int64_t)(xok[nt] ? m : 0) * K + kbeg + 16 * t;
  }
  float acc[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
  for (int c0 = 0; c0 < chunks; c0 += kMmaU) {
#pragma unroll
    for (int u = 0; u < kMmaU; ++u) {
      const int c = c0 + u;
      if (c >= chunks) break;
      uint4 xv[NT][2];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        if (xok[nt]) {
          xv[nt][0] = *reinterpret_cast<const uint4*>(xr[nt] + (int64_t)c * 64);
          xv[nt][1] = *reinterpret_cast<const uint4*>(xr[nt] + (int64_t)c * 64 + 8);
        } else {
          xv[nt][0] = xv[nt][1] = make_uint4(0, 0, 0, 0);
        }
      }
#pragma unroll
      for (int s = 0; s < 4; ++s) {  // k-step s: words 2s and 2s + 1 of each 16-column run
        const int h = s >> 1, i = (s & 1) * 2;
        const uint32_t a0 = word_of(a[u][h], i), a1 = word_of(a[u][2 + h], i);
        const uint32_t a2 = word_of(a[u][h], i + 1), a3 = word_of(a[u][2 + h], i + 1);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
          mma16816(acc[nt], a0, a1, a2, a3, word_of(xv[nt][h], i), word_of(xv[nt][h], i + 1));
      }
      if (c + kMmaU < chunks) load_a(c + kMmaU, a[u]);
    }
  }
  if constexpr (KS > 1) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) part[warp][nt * 4 + e][lane] = acc[nt][e];
    __syncthreads();
    if (ks != 0) return;
#pragma unroll
    for (int j = 1; j < KS; ++j)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[nt][e] += part[warp + j][nt * 4 + e][lane];
  }
  // C fragment: e = 0/1 row g, tokens 2t/2t+1 (of tile nt); e = 2/3 row g + 8.
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int n = r0 + g + (e >= 2 ? 8 : 0);
      const int m = 8 * nt + 2 * t + (e & 1);
      if (n >= N || m >= M) continue;
      store_output<F32OUT, GELU>(y, (int64_t)m * N + n, acc[nt][e], bias, n);
    }
}

template <int NT, int KS>
void launch_mma_k(const __half* x, const __half* w, void* y, bool f32_out, const float* bias, bool gelu, int M,
                  int N, int K, cudaStream_t stream) {
  const int tiles = (N + 15) / 16;
  const int per_block = kMmaWarps / KS;
  const dim3 grid((tiles + per_block - 1) / per_block), block(kMmaWarps * 32);
  if (f32_out)
    launch_k("gemv_mma", gemv_mma_kernel<NT, true, false, KS>, grid, block, 0, stream, x, w, y, bias, M, N, K);
  else if (gelu)
    launch_k("gemv_mma", gemv_mma_kernel<NT, false, true, KS>, grid, block, 0, stream, x, w, y, bias, M, N, K);
  else
    launch_k("gemv_mma", gemv_mma_kernel<NT, false, false, KS>, grid, block, 0, stream, x, w, y, bias, M, N, K);
}

template <int NT>
void launch_mma(const __half* x, const __half* w, void* y, bool f32_out, const float* bias, bool gelu, int M,
                int N, int K, cudaStream_t stream) {
  // Few row tiles: split K over more warps so that enough weights are in flight.
  const int tiles = (N + 15) / 16;
  if (tiles <= 512 && K % (64 * 8) == 0)
    launch_mma_k<NT, 8>(x, w, y, f32_out, bias, gelu, M, N, K, stream);
  else if (tiles <= 2048 && K % (64 * 4) == 0)
    launch_mma_k<NT, 4>(x, w, y, f32_out, bias, gelu, M, N, K, stream);
  else
    launch_mma_k<NT, 1>(x, w, y, f32_out, bias, gelu, M, N, K, stream);
}

}  // namespace

bool gemv_mma_supported(const void* x, const void* w, int M, int K) {
  return M >= 1 && M <= kGemvMmaMaxTokens && K % 64 == 0 && (uintptr_t)x % 16 == 0 && (uintptr_t)w % 16 == 0;
}

void gemv_mma(const __half* x, const __half* w, void* y, bool f32_out, const float* bias, bool gelu, int M, int K,
              int N, cudaStream_t stream) {
  const char* k = "gemv_mma";
  check_arg(x && w && y, k, "null tensor");
  check_arg(N > 0 && K > 0, k, "bad sizes");
  check_arg(gemv_mma_supported(x, w, M, K), k, "needs 1 <= M <= 16, K % 64 == 0, 16-byte aligned x and w");
  check_arg(!(f32_out && gelu), k, "GeLU only with fp16 output");
  if (M <= 8)
    launch_mma<1>(x, w, y, f32_out, bias, gelu, M, N, K, stream);
  else
    launch_mma<2>(x, w, y, f32_out, bias, gelu, M, N, K, stream);
  GLM_CUDA_LAUNCH_CHECK(k);
}

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
