// GEMV lab (not part of the build): int8 weight-only GEMV variants for 1-2
// tokens against the library's int8_gemv and the fp16 GEMV, on ChatGLM-6B's
// shapes (lab/README.md). Build: nvcc -std=c++17 -O3 -arch=sm_90a -Ibackend_src/engine/cuda lab/gemv/gemv_lab.cu
//   backend_src/engine/cuda/{int8_gemm,gemv,init}.cu -lcublas -o /tmp/gl && /tmp/gl
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "cuda_check.h"
#include "int8_gemm.h"
#include "kernels.h"
#include "pdl.h"

using namespace glm::cuda;

namespace {

template <bool HINT>
__device__ __forceinline__ uint4 ldw(const void* p) {
  uint4 r;
  if (HINT)
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
  else
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
  return r;
}

__device__ __forceinline__ uint32_t wof(const uint4& v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }

__device__ __forceinline__ void i8x4_f32(uint32_t w, float* f) {
  const uint32_t u = w ^ 0x80808080u;
  f[0] = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7540)) - 8388736.f;
  f[1] = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7541)) - 8388736.f;
  f[2] = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7542)) - 8388736.f;
  f[3] = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7543)) - 8388736.f;
}

__device__ __forceinline__ float gelu(float x) {
  return 0.5f * x * (1.f + tanhf(0.7978845608028654f * x * (1.f + 0.044715f * x * x)));
}

// Warp = R rows x (NS * 512) columns, every load issued up front; KS warps of a
// block share R rows (KS = K / (NS * 512)); W warps per block.
template <int M, int R, int NS, int W, bool HINT>
__global__ void __launch_bounds__(W * 32) gemv2(const __half* __restrict__ x, const int8_t* __restrict__ q,
                                                 const __half* __restrict__ scale, __half* __restrict__ y,
                                                 const float* __restrict__ bias, bool act, int N, int K, int KS) {
  __shared__ float part[W][R][M];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int grp = warp / KS, ks = warp % KS;
  const int groups = W / KS;
  const int n0 = (blockIdx.x * groups + grp) * R;
  const int kbeg = ks * NS * 512 + lane * 16;
  uint4 w[R][NS];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int n = min(n0 + r, N - 1);
    const int8_t* row = q + (int64_t)n * K + kbeg;
#pragma unroll
    for (int s = 0; s < NS; ++s) w[r][s] = ldw<HINT>(row + s * 512);
  }
  pdl_wait();
  pdl_launch_dependents();
  float acc[R][M];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m) acc[r][m] = 0.f;
#pragma unroll
  for (int s = 0; s < NS; ++s) {
    const int kk = kbeg + s * 512;
    float xf[M][16];
#pragma unroll
    for (int m = 0; m < M; ++m) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + (int64_t)m * K + kk + 8 * h));
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const uint32_t xw = wof(xv, i);
          const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&xw));
          xf[m][8 * h + 2 * i] = f.x;
          xf[m][8 * h + 2 * i + 1] = f.y;
        }
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float wf[16];
#pragma unroll
      for (int i = 0; i < 4; ++i) i8x4_f32(wof(w[r][s], i), wf + 4 * i);
#pragma unroll
      for (int m = 0; m < M; ++m)
#pragma unroll
        for (int e = 0; e < 16; ++e) acc[r][m] = fmaf(wf[e], xf[m][e], acc[r][m]);
    }
  }
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
    if (ks != 0) return;
    if (lane == 0)
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < M; ++m) {
          float t = 0.f;
          for (int j = 0; j < KS; ++j) t += part[warp + j][r][m];
          acc[r][m] = t;
        }
  }
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int n = n0 + r;
      if (n >= N) break;
      const float sc = __half2float(scale[n]);
      const float b = bias ? bias[n] : 0.f;
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float v = acc[r][m] * sc + b;
        if (act) v = gelu(v);
        y[(int64_t)m * N + n] = __float2half_rn(v);
      }
    }
  }
}

// Bandwidth ceiling: the same access pattern, no arithmetic.
template <int R, int NS, int W>
__global__ void __launch_bounds__(W * 32) readonly(const int8_t* __restrict__ q, int* flag, int N, int K, int KS) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int grp = warp / KS, ks = warp % KS;
  const int n0 = (blockIdx.x * (W / KS) + grp) * R;
  const int kbeg = ks * NS * 512 + lane * 16;
  uint4 w[R][NS];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int n = min(n0 + r, N - 1);
#pragma unroll
    for (int s = 0; s < NS; ++s) w[r][s] = ldw<false>(q + (int64_t)n * K + kbeg + s * 512);
  }
  uint32_t a = 0;
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int s = 0; s < NS; ++s) a ^= w[r][s].x ^ w[r][s].y ^ w[r][s].z ^ w[r][s].w;
  if (a == 0x12345678u) *flag = 1;
}

struct Shape {
  const char* name;
  int N, K;
  bool gelu;
};

float time_us(const std::function<void()>& f, int reps = 30) {
  cudaEvent_t a, b;
  GLM_CUDA_CHECK(cudaEventCreate(&a));
  GLM_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) f();
  GLM_CUDA_CHECK(cudaEventRecord(a));
  for (int i = 0; i < reps; ++i) f();
  GLM_CUDA_CHECK(cudaEventRecord(b));
  GLM_CUDA_CHECK(cudaEventSynchronize(b));
  float ms = 0;
  GLM_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  return 1000.f * ms / reps;
}

template <int M, int R, int NS, int W, bool HINT>
bool launch2(const __half* x, const Int8Weight& w, __half* y, const float* bias, bool act, int N, int K) {
  if (K % (NS * 512)) return false;
  const int KS = K / (NS * 512);
  if (KS > W || W % KS) return false;
  const int rows_per_block = (W / KS) * R;
  const int blocks = (N + rows_per_block - 1) / rows_per_block;
  launch_k("gemv2", gemv2<M, R, NS, W, HINT>, blocks, W * 32, 0, nullptr, x, w.q, w.scale, y, bias, act, N, K, KS);
  return true;
}

struct Cfg {
  const char* name;
  bool (*fn1)(const __half*, const Int8Weight&, __half*, const float*, bool, int, int);
  bool (*fn2)(const __half*, const Int8Weight&, __half*, const float*, bool, int, int);
};

#define CFG(R, NS, W, H) \
  Cfg{"R" #R " NS" #NS " W" #W " H" #H, launch2<1, R, NS, W, H>, launch2<2, R, NS, W, H>}

}  // namespace

int main() {
  set_pdl(std::getenv("NOPDL") == nullptr);
  const Shape shapes[] = {{"qkv", 12288, 4096, false},
                          {"dense", 4096, 4096, false},
                          {"h_to_4h", 16384, 4096, true},
                          {"4h_to_h", 4096, 16384, false},
                          {"lm_head", 130528, 4096, false}};
  const std::vector<Cfg> cfgs = {CFG(2, 8, 8, false), CFG(2, 8, 8, true),  CFG(1, 8, 8, false),
                                 CFG(4, 8, 8, false), CFG(2, 4, 8, false), CFG(4, 4, 8, false),
                                 CFG(2, 8, 4, false), CFG(4, 2, 8, false), CFG(2, 2, 8, false),
                                 CFG(1, 16, 8, false), CFG(2, 16, 8, false), CFG(4, 4, 4, false)};
  std::vector<__half*> wh;
  std::vector<Int8Weight> wq;
  float* bias = nullptr;
  GLM_CUDA_CHECK(cudaMalloc(&bias, 16384 * sizeof(float)));
  fill_uniform_float(bias, 16384, 3, 0.01f, nullptr);
  for (const Shape& s : shapes) {
    __half* w = nullptr;
    GLM_CUDA_CHECK(cudaMalloc(&w, (size_t)s.N * s.K * 2));
    fill_uniform_half(w, (int64_t)s.N * s.K, 17 + wh.size(), 0.02f, nullptr);
    Int8Weight q;
    GLM_CUDA_CHECK(cudaMalloc(&q.q, (size_t)s.N * s.K));
    GLM_CUDA_CHECK(cudaMalloc(&q.scale, (size_t)s.N * 2));
    int8_quantize_rows(w, s.N, s.K, q.q, q.scale, nullptr);
    wh.push_back(w);
    wq.push_back(q);
  }
  __half *x, *y, *yref;
  int* flag;
  GLM_CUDA_CHECK(cudaMalloc(&x, 2 * 16384 * 2));
  GLM_CUDA_CHECK(cudaMalloc(&y, (size_t)2 * 130528 * 2));
  GLM_CUDA_CHECK(cudaMalloc(&yref, (size_t)2 * 130528 * 2));
  GLM_CUDA_CHECK(cudaMalloc(&flag, 4));
  fill_uniform_half(x, 2 * 16384, 5, 1.f, nullptr);
  GLM_CUDA_CHECK(cudaDeviceSynchronize());
  Int8Gemm lib;
  lib.set_stream(nullptr);
  auto err = [&](int M, const Shape& s) {
    std::vector<__half> a((size_t)M * s.N), b((size_t)M * s.N);
    GLM_CUDA_CHECK(cudaMemcpy(a.data(), y, a.size() * 2, cudaMemcpyDeviceToHost));
    GLM_CUDA_CHECK(cudaMemcpy(b.data(), yref, b.size() * 2, cudaMemcpyDeviceToHost));
    double e = 0, mx = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      e = std::fmax(e, std::fabs((double)__half2float(a[i]) - __half2float(b[i])));
      mx = std::fmax(mx, std::fabs((double)__half2float(b[i])));
    }
    return e / mx;
  };
  int fails = 0;
  for (int M = 1; M <= 2; ++M) {
    std::printf("\n## M = %d: us per layer (GB/s of weights)\n| config |", M);
    for (const Shape& s : shapes) std::printf(" %s |", s.name);
    std::printf("\n|---|---:|---:|---:|---:|---:|\n");
    // fp16 GEMV (the engine's) and the library int8 GEMV.
    std::printf("| fp16 gemv |");
    for (size_t i = 0; i < 5; ++i) {
      const Shape& s = shapes[i];
      const float t = time_us([&] { gemv(x, wh[i], y, false, s.gelu ? bias : nullptr, s.gelu, M, s.K, s.N, nullptr); });
      std::printf(" %.1f (%.0f) |", t, 2.0 * s.N * s.K / (t * 1e3));
    }
    std::printf("\n| lib int8_gemv |");
    for (size_t i = 0; i < 5; ++i) {
      const Shape& s = shapes[i];
      const float t = time_us([&] {
        int8_gemv(x, wq[i].q, wq[i].scale, yref, false, s.gelu ? bias : nullptr, s.gelu, M, s.K, s.N, nullptr);
      });
      std::printf(" %.1f (%.0f) |", t, 1.0 * s.N * s.K / (t * 1e3));
    }
    if (M == 1) {
      std::printf("\n| read only R2 NS8 W8 |");
      for (size_t i = 0; i < 5; ++i) {
        const Shape& s = shapes[i];
        const int KS = s.K / 4096;
        const int blocks = (s.N + (8 / KS) * 2 - 1) / ((8 / KS) * 2);
        const float t = time_us([&] { readonly<2, 8, 8><<<blocks, 256>>>(wq[i].q, flag, s.N, s.K, KS); });
        std::printf(" %.1f (%.0f) |", t, 1.0 * s.N * s.K / (t * 1e3));
      }
    }
    std::printf("\n");
    for (const Cfg& c : cfgs) {
      std::printf("| %s |", c.name);
      for (size_t i = 0; i < 5; ++i) {
        const Shape& s = shapes[i];
        auto fn = M == 1 ? c.fn1 : c.fn2;
        int8_gemv(x, wq[i].q, wq[i].scale, yref, false, s.gelu ? bias : nullptr, s.gelu, M, s.K, s.N, nullptr);
        GLM_CUDA_CHECK(cudaMemset(y, 0xff, (size_t)M * s.N * 2));
        if (!fn(x, wq[i], y, s.gelu ? bias : nullptr, s.gelu, s.N, s.K)) {
          std::printf(" - |");
          continue;
        }
        GLM_CUDA_CHECK(cudaDeviceSynchronize());
        const double e = err(M, s);
        if (!(e <= 2e-3)) ++fails;
        const float t = time_us([&] { fn(x, wq[i], y, s.gelu ? bias : nullptr, s.gelu, s.N, s.K); });
        std::printf(" %.1f (%.0f)%s |", t, 1.0 * s.N * s.K / (t * 1e3), e <= 2e-3 ? "" : " WRONG");
      }
      std::printf("\n");
    }
    // The block of four layers back to back: fp16, library int8, best-guess new.
    const float t16 = time_us([&] {
      for (int i = 0; i < 4; ++i)
        gemv(x, wh[i], y, false, shapes[i].gelu ? bias : nullptr, shapes[i].gelu, M, shapes[i].K, shapes[i].N,
             nullptr);
    });
    const float tl = time_us([&] {
      for (int i = 0; i < 4; ++i)
        int8_gemv(x, wq[i].q, wq[i].scale, y, false, shapes[i].gelu ? bias : nullptr, shapes[i].gelu, M, shapes[i].K,
                  shapes[i].N, nullptr);
    });
    std::printf("\nblock of 4 layers, M=%d: fp16 %.1f us, lib int8 %.1f us (%.2fx)\n", M, t16, tl, t16 / tl);
    for (const Cfg& c : cfgs) {
      auto fn = M == 1 ? c.fn1 : c.fn2;
      bool ok = true;
      const float t = time_us([&] {
        for (int i = 0; i < 4; ++i)
          ok &= fn(x, wq[i], y, shapes[i].gelu ? bias : nullptr, shapes[i].gelu, shapes[i].N, shapes[i].K);
      });
      if (ok) std::printf("  %s: %.1f us (%.2fx fp16)\n", c.name, t, t16 / t);
    }
  }
  std::printf("\n%s\n", fails ? "SOME RESULTS WRONG" : "all results within 2e-3");
  return fails ? 1 : 0;
}
