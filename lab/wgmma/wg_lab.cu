// wg_lab.cu: INT8 weight-only linear layer for decode batches (M = 16..128 tokens) on
// Hopper (sm_90a), with wgmma.mma_async taking the dequantized weights as the A operand
// FROM REGISTERS (weights = wgmma M side, 64 rows per warpgroup) and the tokens as the
// B operand from shared memory (wgmma N side = token tile).
//
//   y[m, n] = fp16( scale[n] * sum_k x[m, k] * q[n, k] )  (+ bias[n], GeLU-tanh optional)
//
// Weight layout ("prepacked", made once at load time by prepack_kernel):
//   [N/128 row groups][K/64 chunks][8 m16 tiles][2 halves (k 0..31, 32..63)][32 lanes][16 B]
// Lane (g = lane/4, t = lane%4) of a 16-byte record holds, for the two k16 steps j of the
// half, word 2j = {A[g][2t], A[g][2t+1], A[g+8][2t], A[g+8][2t+1]}, word 2j+1 = the same at
// columns 2t+8, 2t+9, each byte stored as q + 128. One 8 KB (128 rows x 64 k) chunk is
// contiguous, so a block stage is one linear cp.async copy, and one LDS.128 per lane gives
// the A fragments of two k16 steps. Dequant: prmt(u, 0x64646464) -> fp16 1024 + u, then
// sub.f16x2 1152 -> q exactly; the scale is applied in the epilogue.
//
// Block: 2 warpgroups (256 threads), RT m64 tiles per warpgroup (128 RT rows), T tokens.
// One cp.async ring of S stages (64 k each: weights + x tile in wgmma's K-major
// no-swizzle core-matrix layout) with lookahead S-2, one __syncthreads per stage and one
// wgmma group per stage kept in flight (wait_group 1) while the next stage is dequantized.
// Split-K: grid.x = ksplit blocks forming one thread-block cluster; each writes its fp32
// tile to its own shared memory and the cluster reduces through DSMEM in fixed order
// (deterministic, no global partials).
//
// Build: nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -lcublas -o wg lab/wgmma/wg_lab.cu
#include <cooperative_groups.h>
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace cg = cooperative_groups;

#define CK(x)                                                                               \
  do {                                                                                      \
    cudaError_t e_ = (x);                                                                   \
    if (e_ != cudaSuccess) {                                                                \
      fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__, __LINE__, #x); \
      exit(2);                                                                              \
    }                                                                                       \
  } while (0)
#define CB(x)                                                               \
  do {                                                                      \
    cublasStatus_t s_ = (x);                                                \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                      \
      fprintf(stderr, "cuBLAS error %d at %s:%d\n", (int)s_, __FILE__, __LINE__); \
      exit(2);                                                              \
    }                                                                       \
  } while (0)

// ------------------------------------------------------------------ device helpers
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp16(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void cp16z(uint32_t dst, const void* src, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(ok ? 16 : 0));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ uint4 lds128(uint32_t a) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(a));
  return v;
}
// byte pair (sel) of u = q + 128 -> fp16x2 of q, exactly
__device__ __forceinline__ uint32_t deq2(uint32_t u, uint32_t sel) {
  uint32_t h = __byte_perm(u, 0x64646464u, sel), r;
  asm("sub.f16x2 %0, %1, %2;\n" : "=r"(r) : "r"(h), "r"(0x64806480u));
  return r;
}
__device__ __forceinline__ float gelu_tanh(float v) {
  return 0.5f * v * (1.f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
}
// wgmma no-swizzle K-major descriptor: start, leading (K) and stride (N) byte offsets >> 4
__device__ __forceinline__ uint64_t wg_desc(uint32_t saddr, uint32_t lbo, uint32_t sbo) {
  return (uint64_t)((saddr & 0x3FFFF) >> 4) | ((uint64_t)((lbo & 0x3FFFF) >> 4) << 16) |
         ((uint64_t)((sbo & 0x3FFFF) >> 4) << 32);
}
template <int R>
__device__ __forceinline__ void fence_regs(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

template <int N>
struct WgRS;
template <> struct WgRS<16> {
  __device__ __forceinline__ static void mma(float (&d)[8], const uint32_t (&a)[4], uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7}, {%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
  }
};
template <> struct WgRS<32> {
  __device__ __forceinline__ static void mma(float (&d)[16], const uint32_t (&a)[4], uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
  }
};
template <> struct WgRS<64> {
  __device__ __forceinline__ static void mma(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
  }
};
template <> struct WgRS<128> {
  __device__ __forceinline__ static void mma(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
  }
};

// ------------------------------------------------------------------ the kernel
template <int T, int RT, int S>
struct Cfg {
  static constexpr int kR = 128 * RT;          // weight rows per block
  static constexpr int kKC = 64;               // k per stage
  static constexpr int kWB = kR * kKC;         // int8 bytes per stage
  static constexpr int kXB = T * kKC * 2;      // fp16 token bytes per stage
  static constexpr int kSB = kWB + kXB;
  static constexpr int kPS = kR + 4;           // fp32 partial tile row stride (per token)
  static constexpr int kSmem = std::max(S * kSB, T * kPS * 4);
  static constexpr int kL = S - 2;             // stages loaded ahead
  static_assert(S >= 3, "stages");
};

template <int T, int RT, int S, int MINB>
__global__ void __launch_bounds__(256, MINB)
    wg_kernel(const __half* __restrict__ x, const uint8_t* __restrict__ qp, const __half* __restrict__ scale,
              const __half* __restrict__ bias, __half* __restrict__ y, int M, int N, int K, int gelu,
              int pfence) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using C = Cfg<T, RT, S>;
  extern __shared__ __align__(128) unsigned char smem[];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wg = warp >> 2, w = warp & 3;
  const int g = lane >> 2, t = lane & 3;
  const int ks = gridDim.x, kz = blockIdx.x;
  const int rb = blockIdx.y * C::kR, mb = blockIdx.z * T;
  const int chunks = K >> 6;
  const int nc = chunks / ks, c0 = kz * nc;
  const uint32_t sbase = smem_u32(smem);

  // per-thread cp.async sources (advanced by one chunk per load) and destinations (stage 0)
  constexpr int WI = C::kWB / 16 / 256, XG = T * 8, XI = (XG + 255) / 256;
  const uint8_t* wsrc = qp + ((size_t)(rb >> 7) * chunks + c0) * 8192 + tid * 16;
  const size_t wgrp = (size_t)chunks * 8192;  // next 128-row group
  const __half* xsrc[XI];
  uint32_t xdst[XI];
  bool xok[XI];
#pragma unroll
  for (int i = 0; i < XI; ++i) {
    const int idx = tid + i * 256, r = idx >> 3, gr = idx & 7;
    xok[i] = (idx < XG) && (mb + r < M);
    xsrc[i] = x + (size_t)(xok[i] ? mb + r : 0) * K + c0 * 64 + gr * 8;
    xdst[i] = C::kWB + (r >> 3) * 1024 + gr * 128 + (r & 7) * 16;
  }
  // Chunks are visited in a rotated order (start (7 blockIdx.y) % nc) so that the blocks
  // running at the same time read different x lines from L2 instead of all hitting the
  // same few; the fp32 sum order stays fixed per output (deterministic).
  int lchunk = (pfence & 2) ? 0 : (blockIdx.y * 7) % nc;  // next chunk to load, relative to c0 (WG_ROT=0: no rotation)
  auto load = [&](uint32_t sw) {  // chunk lchunk into the stage at shared address sw
    const uint8_t* ws = wsrc + (size_t)lchunk * 8192;
#pragma unroll
    for (int i = 0; i < WI; ++i) {
      const int idx = tid + i * 256;  // 16-byte unit of the stage: (128-row group, unit)
      cp16(sw + idx * 16, ws + (i >> 1) * wgrp + (i & 1) * 4096);
    }
#pragma unroll
    for (int i = 0; i < XI; ++i) {
      if ((XG & 255) && tid + i * 256 >= XG) break;
      cp16z(sw + xdst[i], xsrc[i] + lchunk * 64, xok[i]);
    }
    lchunk = lchunk + 1 == nc ? 0 : lchunk + 1;
  };

  float acc[RT][T / 2];
#pragma unroll
  for (int r = 0; r < RT; ++r)
#pragma unroll
    for (int i = 0; i < T / 2; ++i) acc[r][i] = 0.f;

#pragma unroll
  for (int s = 0; s < C::kL; ++s) {
    if (s < nc) load(sbase + s * C::kSB);
    cp_commit();
  }
  // this warp's m16 tile of each of its RT m64 tiles: offset inside a stage
  uint32_t aoff[RT];
#pragma unroll
  for (int r = 0; r < RT; ++r) {
    const int t64 = wg * RT + r;
    aoff[r] = (t64 >> 1) * 8192 + (((t64 & 1) * 4 + w) * 2) * 512 + lane * 16;
  }

  uint32_t rbuf = sbase, wbuf = sbase + C::kL * C::kSB;  // stage read now, stage written next
  const uint32_t send = sbase + S * C::kSB;
#pragma unroll 2
  for (int c = 0; c < nc; ++c) {
    cp_wait<C::kL - 1>();
    // generic-proxy cp.async writes -> async-proxy wgmma reads (MEMBAR.ALL.CTA in SASS)
    if (pfence & 1) asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();  // stage c landed; every warpgroup's wgmma group c-2 is complete
    if (c + C::kL < nc) load(wbuf);
    cp_commit();
    wbuf += C::kSB;
    if (wbuf == send) wbuf = sbase;
    const uint32_t sw = rbuf, sx = sw + C::kWB;
    rbuf += C::kSB;
    if (rbuf == send) rbuf = sbase;
    uint32_t a[RT][4][4];
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const uint4 v = lds128(sw + aoff[r] + h * 512);
        a[r][2 * h][0] = deq2(v.x, 0x4140);
        a[r][2 * h][1] = deq2(v.x, 0x4342);
        a[r][2 * h][2] = deq2(v.y, 0x4140);
        a[r][2 * h][3] = deq2(v.y, 0x4342);
        a[r][2 * h + 1][0] = deq2(v.z, 0x4140);
        a[r][2 * h + 1][1] = deq2(v.z, 0x4342);
        a[r][2 * h + 1][2] = deq2(v.w, 0x4140);
        a[r][2 * h + 1][3] = deq2(v.w, 0x4342);
      }
    const uint64_t bd = wg_desc(sx, 128, 1024);
#pragma unroll
    for (int r = 0; r < RT; ++r) fence_regs(acc[r]);
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int s = 0; s < 4; ++s)
#pragma unroll
      for (int r = 0; r < RT; ++r) WgRS<T>::mma(acc[r], a[r][s], bd + (uint64_t)(s * 16));
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
#pragma unroll
    for (int r = 0; r < RT; ++r) fence_regs(acc[r]);
  }
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#pragma unroll
  for (int r = 0; r < RT; ++r) fence_regs(acc[r]);
  cp_wait<0>();
  __syncthreads();

  // fp32 tile -> own shared memory, [token][row] (row stride kPS)
  float* part = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int r = 0; r < RT; ++r)
#pragma unroll
    for (int j = 0; j < T / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int row = (wg * RT + r) * 64 + w * 16 + g + (e >= 2 ? 8 : 0);
        const int tok = 8 * j + 2 * t + (e & 1);
        part[tok * C::kPS + row] = acc[r][4 * j + e];
      }
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();
  // block kz of the cluster reduces rows [kz RR, kz RR + RR) over the ks partial tiles:
  // float4 DSMEM reads, all ks of them in flight, summed in fixed order z = 0..ks-1
  const int RR = C::kR / ks, RR4 = RR >> 2;
  const float* peer[8];
#pragma unroll
  for (int z = 0; z < 8; ++z) peer[z] = z < ks ? cluster.map_shared_rank(part, z) : part;
#pragma unroll 2
  for (int e = tid; e < T * RR4; e += 256) {
    const int tok = e / RR4, rl = kz * RR + (e - tok * RR4) * 4;
    const int m = mb + tok, n = rb + rl;
    float4 v[8];
#pragma unroll
    for (int z = 0; z < 8; ++z)
      if (z < ks) v[z] = *reinterpret_cast<const float4*>(peer[z] + tok * C::kPS + rl);
    float4 sum = v[0];
#pragma unroll
    for (int z = 1; z < 8; ++z)
      if (z < ks) sum.x += v[z].x, sum.y += v[z].y, sum.z += v[z].z, sum.w += v[z].w;
    if (m < M && n < N) {  // N % 128 == 0: the 4 rows are all in range
      float o[4] = {sum.x, sum.y, sum.z, sum.w};
      const uint2 sc2 = *reinterpret_cast<const uint2*>(scale + n);
      const __half* sc = reinterpret_cast<const __half*>(&sc2);
      __align__(8) __half out[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float u = o[i] * __half2float(sc[i]);
        if (bias) u += __half2float(bias[n + i]);
        if (gelu) u = gelu_tanh(u);
        out[i] = __float2half_rn(u);
      }
      *reinterpret_cast<uint2*>(y + (size_t)m * N + n) = *reinterpret_cast<const uint2*>(out);
    }
  }
  cluster.sync();
#endif
}

// ------------------------------------------------------------------ stream-K persistent kernel
// Persistent grid (G = resident blocks, all SMs busy), no clusters. The (row tile, 64-k
// chunk) work units of the layer, U = tiles * K/64, are split evenly: block i takes units
// [i U / G, (i+1) U / G), walking row tiles in order, with ONE cp.async ring running across
// tile boundaries (no pipeline refill per tile). A tile covered by one block is written
// straight from the accumulator registers; a tile shared by nc blocks: each writes its fp32
// partial (fragment-native layout, coalesced float4) to a global slot, signals a per-tile
// counter; after its main loop each contributor waits for the count and reduces 1/nc of
// the tile over the nc slots in fixed order (deterministic), then the last one resets the
// counters. Every block of the grid is resident (G <= occupancy * SMs), so the spin
// waits cannot deadlock; all signals are sent before any wait. W = wgmma groups in flight.
// 32-bit arithmetic: the host guarantees (U + 1) * G < 2^31
__device__ __forceinline__ int sk_b(int i, int U, int G) { return i * U / G; }
// largest block i with b(i) <= x
__device__ __forceinline__ int sk_owner(int x, int U, int G) { return ((x + 1) * G + U - 1) / U - 1; }
__device__ __forceinline__ int ld_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void sk_emit(__half* y, const __half* scale, const __half* bias, int gelu, int M, int N,
                                        int m, int n, float v) {
  if (m >= M) return;
  float u = v * __half2float(scale[n]);
  if (bias) u += __half2float(bias[n]);
  if (gelu) u = gelu_tanh(u);
  y[(size_t)m * N + n] = __float2half_rn(u);
}

template <int T, int RT, int S, int W, int MINB>
__global__ void __launch_bounds__(256, MINB)
    sk_kernel(const __half* __restrict__ x, const uint8_t* __restrict__ qp, const __half* __restrict__ scale,
              const __half* __restrict__ bias, __half* __restrict__ y, int M, int N, int K, int gelu, int pfence,
              float* __restrict__ ws, int* __restrict__ cnt) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using C = Cfg<T, RT, S>;
  constexpr int kL = S - 1 - W;  // stages loaded ahead; slot reuse distance W + 1
  static_assert(kL >= 1, "stages");
  static_assert(W == 1, "A double buffer covers one group in flight");
  extern __shared__ __align__(128) unsigned char smem[];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wg = warp >> 2, w = warp & 3;
  const int chunks = K >> 6, mt = (M + T - 1) / T;
  const int tiles = (N / C::kR) * mt;
  const int G = gridDim.x, U = tiles * chunks;
  const int cta = blockIdx.x;
  const int ub = sk_b(cta, U, G), ue = sk_b(cta + 1, U, G);
  const uint32_t sbase = smem_u32(smem);

  constexpr int WI = C::kWB / 16 / 256, XG = T * 8, XI = (XG + 255) / 256;
  const size_t wgrp = (size_t)chunks * 8192;
  // load cursor
  int lu = ub;
  int ltile = ub / chunks, lchunk = ub % chunks;
  const uint8_t* wsrc;
  const __half* xsrc[XI];
  bool xok[XI];
  uint32_t xdst[XI];
#pragma unroll
  for (int i = 0; i < XI; ++i) {
    const int idx = tid + i * 256, r = idx >> 3, gr = idx & 7;
    xdst[i] = C::kWB + (r >> 3) * 1024 + gr * 128 + (r & 7) * 16;
  }
  auto set_ltile = [&]() {
    const int rbi = ltile / mt, mz = ltile - rbi * mt;
    wsrc = qp + (size_t)(rbi * RT) * wgrp + tid * 16;
#pragma unroll
    for (int i = 0; i < XI; ++i) {
      const int idx = tid + i * 256, r = idx >> 3, gr = idx & 7;
      xok[i] = (idx < XG) && (mz * T + r < M);
      xsrc[i] = x + (size_t)(xok[i] ? mz * T + r : 0) * K + gr * 8;
    }
  };
  set_ltile();
  auto load = [&](uint32_t sw) {
    if (lu < ue) {
      const uint8_t* wsp = wsrc + (size_t)lchunk * 8192;
#pragma unroll
      for (int i = 0; i < WI; ++i) cp16(sw + (tid + i * 256) * 16, wsp + (i >> 1) * wgrp + (i & 1) * 4096);
#pragma unroll
      for (int i = 0; i < XI; ++i) {
        if ((XG & 255) && tid + i * 256 >= XG) break;
        cp16z(sw + xdst[i], xsrc[i] + lchunk * 64, xok[i]);
      }
      ++lu;
      if (++lchunk == chunks) {
        lchunk = 0;
        ++ltile;
        if (lu < ue) set_ltile();
      }
    }
    cp_commit();
  };

  float acc[RT][T / 2];
#pragma unroll
  for (int r = 0; r < RT; ++r)
#pragma unroll
    for (int i = 0; i < T / 2; ++i) acc[r][i] = 0.f;
#pragma unroll 1
  for (int s = 0; s < kL; ++s) load(sbase + s * C::kSB);
  uint32_t aoff[RT];
#pragma unroll
  for (int r = 0; r < RT; ++r) {
    const int t64 = wg * RT + r;
    aoff[r] = (t64 >> 1) * 8192 + (((t64 & 1) * 4 + w) * 2) * 512 + lane * 16;
  }
  // output coordinates of this thread's accumulator element (r, 4j + e) within a tile
  auto row_of = [&](int wgq, int wq, int lq, int r, int e) { return (wgq * RT + r) * 64 + wq * 16 + (lq >> 2) + (e >= 2 ? 8 : 0); };
  auto tok_of = [&](int lq, int j, int e) { return 8 * j + 2 * (lq & 3) + (e & 1); };

  uint32_t rbuf = sbase, wbuf = sbase + kL * C::kSB;
  const uint32_t send = sbase + S * C::kSB;
  int ctile = ub / chunks, cchunk = ub % chunks, segk0 = cchunk;
  int ptile0 = -1, ptile1 = -1;
  bool first_seg = true;
  uint32_t aA[RT][4][4], aB[RT][4][4];
#pragma unroll
  for (int r = 0; r < RT; ++r)
#pragma unroll
    for (int s = 0; s < 4; ++s)
#pragma unroll
      for (int i = 0; i < 4; ++i) aA[r][s][i] = aB[r][s][i] = 0u;
  auto keep_alive = [](uint32_t(&v)[RT][4][4]) {
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
      for (int s = 0; s < 4; ++s)
        asm volatile("" ::"r"(v[r][s][0]), "r"(v[r][s][1]), "r"(v[r][s][2]), "r"(v[r][s][3]) : "memory");
  };
  int u = ub;
  // one stage; a = this stage's A fragments, ap = the previous stage's (two arrays alternate)
  auto step = [&](uint32_t(&a)[RT][4][4], uint32_t(&ap)[RT][4][4]) {
    cp_wait<kL - 1>();
    if (pfence & 1) asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
    load(wbuf);
    wbuf += C::kSB;
    if (wbuf == send) wbuf = sbase;
    const uint32_t sw = rbuf, sx = sw + C::kWB;
    rbuf += C::kSB;
    if (rbuf == send) rbuf = sbase;
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const uint4 v = lds128(sw + aoff[r] + h * 512);
        a[r][2 * h][0] = deq2(v.x, 0x4140);
        a[r][2 * h][1] = deq2(v.x, 0x4342);
        a[r][2 * h][2] = deq2(v.y, 0x4140);
        a[r][2 * h][3] = deq2(v.y, 0x4342);
        a[r][2 * h + 1][0] = deq2(v.z, 0x4140);
        a[r][2 * h + 1][1] = deq2(v.z, 0x4342);
        a[r][2 * h + 1][2] = deq2(v.w, 0x4140);
        a[r][2 * h + 1][3] = deq2(v.w, 0x4342);
      }
    const uint64_t bd = wg_desc(sx, 128, 1024);
#pragma unroll
    for (int r = 0; r < RT; ++r) fence_regs(acc[r]);
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int s = 0; s < 4; ++s)
#pragma unroll
      for (int r = 0; r < RT; ++r) WgRS<T>::mma(acc[r], a[r][s], bd + (uint64_t)(s * 16));
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(W) : "memory");
    // the previous stage's A registers were read by the group that just completed: keep them
    // allocated until here (ptxas does not track wgmma's asynchronous register reads across the
    // loop edge; with one array the next stage's LDS overwrote A of the group still in flight)
    keep_alive(ap);
#pragma unroll
    for (int r = 0; r < RT; ++r) fence_regs(acc[r]);
    const bool tile_end = cchunk == chunks - 1;
    if (tile_end || u == ue - 1) {  // segment ends (uniform over the block)
      asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#pragma unroll
      for (int r = 0; r < RT; ++r) fence_regs(acc[r]);
      const int rbi = ctile / mt, mz = ctile - rbi * mt;
      if (segk0 == 0 && tile_end) {  // whole tile here: scale (+bias, GeLU) straight from registers
#pragma unroll
        for (int r = 0; r < RT; ++r)
#pragma unroll
          for (int j = 0; j < T / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e)
              sk_emit(y, scale, bias, gelu, M, N, mz * T + tok_of(lane, j, e), rbi * C::kR + row_of(wg, w, lane, r, e),
                      acc[r][4 * j + e]);
      } else {
        const int slot = first_seg ? 0 : 1;
        // partial tile, [token][row] fp32 (a warp store = 4 full 32-byte sectors)
        float* dst = ws + (size_t)(cta * 2 + slot) * (T * C::kR);
#pragma unroll
        for (int r = 0; r < RT; ++r)
#pragma unroll
          for (int j = 0; j < T / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e)
              __stcg(dst + tok_of(lane, j, e) * C::kR + row_of(wg, w, lane, r, e), acc[r][4 * j + e]);
        __threadfence();
        __syncthreads();
        if (tid == 0) atomicAdd(cnt + ctile, 1);
        if (slot == 0) ptile0 = ctile; else ptile1 = ctile;
      }
#pragma unroll
      for (int r = 0; r < RT; ++r)
#pragma unroll
        for (int i = 0; i < T / 2; ++i) acc[r][i] = 0.f;
      first_seg = false;
      segk0 = 0;
    }
    if (tile_end) cchunk = 0, ++ctile; else ++cchunk;
  };
#pragma unroll 1
  while (u < ue) {
    step(aA, aB);
    if (++u == ue) break;
    step(aB, aA);
    ++u;
  }
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  cp_wait<0>();

  // reduce this block's share of each tile it holds a partial of
  int* done = cnt + tiles;
#pragma unroll 1
  for (int sl = 0; sl < 2; ++sl) {
    const int t = sl ? ptile1 : ptile0;
    if (t < 0) continue;
    const int x0 = t * chunks;
    const int f = sk_owner(x0, U, G), l = sk_owner(x0 + chunks - 1, U, G), nc = l - f + 1, ci = cta - f;
    if (tid == 0)
      while (ld_acquire(cnt + t) < nc) __nanosleep(64);
    __syncthreads();
    const int rbi = t / mt, mz = t - rbi * mt;
    constexpr int R4 = C::kR / 4, F4 = T * R4;  // float4 per slot
    const int per = (F4 + nc - 1) / nc, q0 = ci * per, q1 = min(F4, q0 + per);
#pragma unroll 2
    for (int q = q0 + tid; q < q1; q += 256) {
      const int tok = q / R4, rl = (q - tok * R4) * 4, m = mz * T + tok, n = rbi * C::kR + rl;
      if (m >= M) continue;
      const uint2 sc2 = *reinterpret_cast<const uint2*>(scale + n);
      uint2 bi2 = make_uint2(0u, 0u);
      if (bias) bi2 = *reinterpret_cast<const uint2*>(bias + n);
      float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
      for (int c = 0; c < nc; ++c) {
        const int cid = f + c;
        const int csl = sk_b(cid, U, G) >= x0 ? 0 : 1;
        const float4 v = __ldcg(reinterpret_cast<const float4*>(ws + (size_t)(cid * 2 + csl) * (T * C::kR)) + q);
        s.x += v.x, s.y += v.y, s.z += v.z, s.w += v.w;
      }
      const float o[4] = {s.x, s.y, s.z, s.w};
      const __half* sc = reinterpret_cast<const __half*>(&sc2);
      const __half* bi = reinterpret_cast<const __half*>(&bi2);
      __align__(8) __half out[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float u = o[i] * __half2float(sc[i]) + __half2float(bi[i]);
        if (gelu) u = gelu_tanh(u);
        out[i] = __float2half_rn(u);
      }
      *reinterpret_cast<uint2*>(y + (size_t)m * N + n) = *reinterpret_cast<const uint2*>(out);
    }
    __syncthreads();
    if (tid == 0 && atomicAdd(done + t, 1) == nc - 1) {
      cnt[t] = 0;
      done[t] = 0;
    }
  }
#endif
}

// ------------------------------------------------------------------ warp-specialized kernel
// Block = 3 warpgroups (384 threads): warpgroup 0 = producer (setmaxnreg 40), warpgroups 1, 2 =
// consumers (setmaxnreg 232), each RT m64 tiles as in wg_kernel. A ring of S stages with one
// `full` and one `empty` mbarrier per stage, no __syncthreads in the main loop:
//  - producer: waits empty[s] (8 consumer-warp arrivals), thread 0 arms full[s] with
//    arrive.expect_tx and issues RT cp.async.bulk copies (8 KB each, one per 128-row group,
//    complete_tx on full[s]); all 128 producer threads cp.async the x tile (core-matrix layout)
//    and cp.async.mbarrier.arrive.noinc on full[s] (count 128 + 1).
//  - consumers: A fragments of chunk c+1 are loaded + dequantized while wgmma groups c-1 and c
//    are in flight (wait_group 1 after the loads); three A register arrays rotate (loop unrolled by
//    3 by hand) and the array of the retired group is "used" right after the wait, so ptxas keeps
//    it allocated until its group is done (see the A-register hazard in NOTES.md). Each consumer
//    warp arrives on empty[stage of c-1] once group c-1 is retired.
// Split K across the blocks of a cluster exactly as wg_kernel (DSMEM, fixed order), with an
// uneven chunk split allowed (chunks * kz / ks) and the reduction split over float4 items.
__device__ __forceinline__ void mbar_init(uint32_t a, int n) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(a), "r"(n) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t a, uint32_t par) {
  asm volatile(
      "{\n.reg .pred P1;\nLAB_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
      "@P1 bra DONE;\nbra LAB_WAIT;\nDONE:\n}\n" ::"r"(a),
      "r"(par)
      : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t a) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(a) : "memory");
}
__device__ __forceinline__ void mbar_arrive_tx(uint32_t a, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(a), "r"(bytes) : "memory");
}
__device__ __forceinline__ void bulk_g2s(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}
__device__ __forceinline__ void cp_mbar_arrive(uint32_t a) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(a) : "memory");
}
__device__ __forceinline__ void cluster_sync_all() {
  asm volatile("barrier.cluster.arrive.aligned;\nbarrier.cluster.wait.aligned;\n" ::: "memory");
}

__device__ __forceinline__ void griddep_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
__device__ __forceinline__ void griddep_launch() { asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); }

// NW consumer warpgroups, RT m64 tiles each: 64 NW RT weight rows per block; S chunk slots (64 k each),
// one full/empty mbarrier pair per group of G consecutive chunks (G = 2 halves the handshakes per k)
template <int T, int RT, int S, int NW, int G = 1>
struct WsCfg {
  static constexpr int kNB = S / G;  // barrier pairs
  static constexpr int kR = 64 * NW * RT, kWB = kR * 64, kXB = T * 128, kSB = kWB + kXB, kPS = kR + 4;
  static constexpr int kSmem = 1024 + std::max(S * kSB, T * kPS * 4);
  static constexpr int kThreads = 128 * (NW + 1);
  // setmaxnreg: launch bound gives 65536 / kThreads per thread; the producer gives back what consumers take
  static constexpr int kRegP = NW == 2 ? 40 : 32, kRegC = NW == 2 ? 232 : 160;
  static_assert(NW == 2 || NW == 3, "consumer warpgroups");
  static_assert(S % G == 0 && S >= 2 * G + 2, "slots: c-1, c in flight, c+1 being loaded, one group of lag");
};

template <int T, int RT, int S, int NW, int G>
__global__ void __launch_bounds__(WsCfg<T, RT, S, NW, G>::kThreads, 1)
    ws_kernel(const __half* __restrict__ x, const uint8_t* __restrict__ qp, const __half* __restrict__ scale,
              const __half* __restrict__ bias, __half* __restrict__ y, int M, int N, int K, int gelu, int pfence) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using C = WsCfg<T, RT, S, NW, G>;
  constexpr int NB = C::kNB;
  extern __shared__ __align__(128) unsigned char smem[];
  const int tid = threadIdx.x;
  const int ks = gridDim.x, kz = blockIdx.x;
  // programmatic dependent launch: the next layer's grid may start (and prefetch its weights) now;
  // it waits (griddepcontrol.wait) for this grid to complete before it reads x or writes y
  griddep_launch();
  const int rb = blockIdx.y * C::kR, mb = blockIdx.z * T;
  const int chunks = K >> 6;
  const int c0 = kz * chunks / ks, nc = (kz + 1) * chunks / ks - c0;
  const uint32_t sbar = smem_u32(smem), sbase = sbar + 1024;
  // full[b] at sbar + 8 b, empty[b] at sbar + 8 (NB + b); group g of chunks [gG, gG+G) uses b = g % NB,
  // chunk c lives in slot c % S; the round parity of group g is (g / NB) & 1
  if (tid == 0) {
#pragma unroll 1
    for (int b = 0; b < NB; ++b) {
      mbar_init(sbar + 8 * b, 129);
      mbar_init(sbar + 8 * (NB + b), 4 * NW);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (tid < 128) {  // ---------------- producer warpgroup
    if (C::kRegP == 40) asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    else asm volatile("setmaxnreg.dec.sync.aligned.u32 32;\n" ::: "memory");
    constexpr int XG = T * 8, XI = (XG + 127) / 128, NT = NW * RT;
    const int gt0 = rb >> 6;  // first m64 tile of the block
    const int lchunk0 = (pfence & 2) ? 0 : (blockIdx.y * 7) % nc;
    const int ng = (nc + G - 1) / G;
    auto lch_of = [&](int c) { int l = lchunk0 + c; return l >= nc ? l - nc : l; };
    // pfence & 64: chunk-major prepacked weights ([K/64][N/128][8 KB]: the blocks running at the same time
    // read neighbouring 8 KB pieces instead of pieces 512 KB apart); else row-group-major ([N/128][K/64][8 KB])
    const size_t gs = (pfence & 64) ? 8192 : (size_t)chunks * 8192, cs = (pfence & 64) ? (size_t)(N >> 7) * 8192 : 8192;
    auto wptr = [&](int grp, int ch) { return qp + (size_t)grp * gs + (size_t)ch * cs; };
    // weights of group g (thread 0): per chunk one bulk copy per m64 tile (4 KB) or per aligned pair (8 KB)
    auto wload = [&](int g) {
      if (tid == 0) {
        const uint32_t fb = sbar + 8 * (g % NB);
        const int n = min(G, nc - g * G);
        if (pfence & 256) {  // diagnostic: no weight copies
          mbar_arrive(fb);
          return;
        }
        mbar_arrive_tx(fb, n * C::kWB);
        for (int j = 0; j < n; ++j) {
          const int c = g * G + j, lch = lch_of(c);
          const uint32_t sw = sbase + (c % S) * C::kSB;
          if (NT % 2 == 0) {
#pragma unroll
            for (int i = 0; i < NT; i += 2) bulk_g2s(sw + i * 4096, wptr((gt0 + i) >> 1, c0 + lch), 8192, fb);
          } else {
#pragma unroll
            for (int i = 0; i < NT; ++i) {
              const int gt = gt0 + i;
              bulk_g2s(sw + i * 4096, wptr(gt >> 1, c0 + lch) + (gt & 1) * 4096, 4096, fb);
            }
          }
        }
      }
    };
    // x tiles of group g (all 128 producer threads), then the noinc arrival (or a commit, see xdone)
    auto xload = [&](int g) {
      const int n = min(G, nc - g * G);
      for (int j = 0; j < n; ++j) {
        const int c = g * G + j, lch = lch_of(c);
        const uint32_t sw = sbase + (c % S) * C::kSB;
#pragma unroll
        for (int i = 0; i < XI; ++i) {
          const int idx = tid + i * 128;
          if ((XG & 127) && idx >= XG) break;
          if (pfence & 128) break;  // diagnostic: no x copies
          const int r = idx >> 3, gr = idx & 7;
          const bool ok = mb + r < M;
          cp16z(sw + C::kWB + (r >> 3) * 1024 + gr * 128 + (r & 7) * 16,
                x + (size_t)(ok ? mb + r : 0) * K + (c0 + lch) * 64 + gr * 8, ok);
        }
      }
      if (pfence & 32) cp_commit();
      else cp_mbar_arrive(sbar + 8 * (g % NB));
    };
    // pfence & 32: the producer makes its generic-proxy x writes visible to the async proxy itself
    // (wait for the copies of group g, fence.proxy.async, then a plain arrival), one group behind,
    // so the consumers need no fence on their critical path
    auto xdone = [&](int g, bool last) {
      if (last) cp_wait<0>(); else cp_wait<1>();
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
      mbar_arrive(sbar + 8 * (g % NB));
    };
    const int pre = ng < NB ? ng : NB;
#pragma unroll 1
    for (int g = 0; g < pre; ++g) wload(g);  // weights do not depend on the previous layer: before the wait
    griddep_wait();
#pragma unroll 1
    for (int g = 0; g < pre; ++g) {
      xload(g);
      if ((pfence & 32) && g > 0) xdone(g - 1, false);
    }
#pragma unroll 1
    for (int g = pre; g < ng; ++g) {
      mbar_wait(sbar + 8 * (NB + g % NB), ((g / NB) & 1) ^ 1);
      wload(g);
      xload(g);
      if (pfence & 32) xdone(g - 1, false);
    }
    if (pfence & 32) xdone(ng - 1, true);
    __syncthreads();    // A: consumers done, stages free
    cluster_sync_all(); // B: partial tiles written
    cluster_sync_all(); // C: reductions done
    return;
  }
  // ---------------- consumer warpgroups
  if (C::kRegC == 232) asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
  else asm volatile("setmaxnreg.inc.sync.aligned.u32 160;\n" ::: "memory");
  const int ct = tid - 128, warp = ct >> 5, lane = ct & 31, wg = warp >> 2, w = warp & 3;
  const int g = lane >> 2, t = lane & 3;
  uint32_t aoff[RT];
#pragma unroll
  for (int r = 0; r < RT; ++r) {
    const int t64 = wg * RT + r;
    aoff[r] = t64 * 4096 + w * 1024 + lane * 16;
  }
  float acc[RT][T / 2];
#pragma unroll
  for (int r = 0; r < RT; ++r)
#pragma unroll
    for (int i = 0; i < T / 2; ++i) acc[r][i] = 0.f;
  uint32_t a0[RT][4][4], a1[RT][4][4], a2[RT][4][4];
#pragma unroll
  for (int r = 0; r < RT; ++r)
#pragma unroll
    for (int s = 0; s < 4; ++s)
#pragma unroll
      for (int i = 0; i < 4; ++i) a0[r][s][i] = a1[r][s][i] = a2[r][s][i] = 0u;
  auto keep_alive = [](uint32_t(&v)[RT][4][4]) {
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
      for (int s = 0; s < 4; ++s)
        asm volatile("" ::"r"(v[r][s][0]), "r"(v[r][s][1]), "r"(v[r][s][2]), "r"(v[r][s][3]) : "memory");
  };
  auto frag = [&](uint32_t(&a)[RT][4][4], uint32_t sw) {
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const uint4 v = lds128(sw + aoff[r] + h * 512);
        a[r][2 * h][0] = deq2(v.x, 0x4140);
        a[r][2 * h][1] = deq2(v.x, 0x4342);
        a[r][2 * h][2] = deq2(v.y, 0x4140);
        a[r][2 * h][3] = deq2(v.y, 0x4342);
        a[r][2 * h + 1][0] = deq2(v.z, 0x4140);
        a[r][2 * h + 1][1] = deq2(v.z, 0x4342);
        a[r][2 * h + 1][2] = deq2(v.w, 0x4140);
        a[r][2 * h + 1][3] = deq2(v.w, 0x4342);
      }
  };
  auto wait_full = [&](int b, uint32_t par) {
    mbar_wait(sbar + 8 * b, par);
    // generic-proxy cp.async writes (x tile) -> async-proxy wgmma reads
    if (pfence & 1) asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  };
  int c = 0, sc = 0;
  wait_full(0, 0);
  frag(a0, sbase);
  // chunk c: issue its group (A = ac), load + dequantize chunk c+1 into an, retire group c-1 (A = ap)
  auto step = [&](uint32_t(&ac)[RT][4][4], uint32_t(&an)[RT][4][4], uint32_t(&ap)[RT][4][4]) {
    const uint64_t bd = wg_desc(sbase + sc * C::kSB + C::kWB, 128, 1024);
#pragma unroll
    for (int r = 0; r < RT; ++r) fence_regs(acc[r]);
    if (!(pfence & 8)) {  // (pfence & 8: diagnostic, no wgmma)
      asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
      for (int s = 0; s < 4; ++s)
#pragma unroll
        for (int r = 0; r < RT; ++r) WgRS<T>::mma(acc[r], ac[r][s], bd + (uint64_t)(s * 16));
    }
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    const int sn = sc + 1 == S ? 0 : sc + 1;
    if (c + 1 < nc) {
      const int gn = (c + 1) / G;
      if (gn * G == c + 1) wait_full(gn % NB, (gn / NB) & 1);  // first chunk of its group
      if (!(pfence & 4)) frag(an, sbase + sn * C::kSB);  // (pfence & 4: diagnostic, no LDS + dequant)
    }
    asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
    keep_alive(ap);
#pragma unroll
    for (int r = 0; r < RT; ++r) fence_regs(acc[r]);
    // chunk c-1 retired: release its group once its last chunk is retired
    if (c >= 1 && (c % G) == 0 && lane == 0) mbar_arrive(sbar + 8 * (NB + ((c - 1) / G) % NB));
    sc = sn;
    ++c;
  };
#pragma unroll 1
  while (true) {
    step(a0, a1, a2);
    if (c == nc) break;
    step(a1, a2, a0);
    if (c == nc) break;
    step(a2, a0, a1);
    if (c == nc) break;
  }
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  keep_alive(a0);
  keep_alive(a1);
  keep_alive(a2);
  griddep_wait();  // (already passed by the producer) before y is written
#pragma unroll
  for (int r = 0; r < RT; ++r) fence_regs(acc[r]);
  __syncthreads();  // A

  float* part = reinterpret_cast<float*>(smem + 1024);
  if (pfence & 512) {  // diagnostic: no epilogue (no partial tile, no reduction, no y)
    cluster_sync_all();
    cluster_sync_all();
    return;
  }
#pragma unroll
  for (int r = 0; r < RT; ++r)
#pragma unroll
    for (int j = 0; j < T / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int row = (wg * RT + r) * 64 + w * 16 + g + (e >= 2 ? 8 : 0);
        const int tok = 8 * j + 2 * t + (e & 1);
        part[tok * C::kPS + row] = acc[r][4 * j + e];
      }
  cluster_sync_all();  // B
  cg::cluster_group cluster = cg::this_cluster();
  constexpr int R4 = C::kR / 4, F4 = T * R4;
  const int q0 = kz * F4 / ks, q1 = (kz + 1) * F4 / ks;
  const float* peer[8];
#pragma unroll
  for (int z = 0; z < 8; ++z) peer[z] = z < ks ? cluster.map_shared_rank(part, z) : part;
  // B items per thread at once, so that all their DSMEM loads are in flight together
  constexpr int NTH = 128 * NW, B = 4;
#pragma unroll 1
  for (int e0 = q0 + ct; e0 < q1; e0 += B * NTH) {
    float4 sum[B];
#pragma unroll
    for (int b = 0; b < B; ++b) {
      const int e = e0 + b * NTH;
      sum[b] = make_float4(0.f, 0.f, 0.f, 0.f);
      if (e < q1) {
        const int tok = e / R4, rl = (e - tok * R4) * 4;
        float4 v[8];
#pragma unroll
        for (int z = 0; z < 8; ++z)
          if (z < ks) v[z] = *reinterpret_cast<const float4*>(peer[z] + tok * C::kPS + rl);
        sum[b] = v[0];
#pragma unroll
        for (int z = 1; z < 8; ++z)  // fixed order z = 0..ks-1: deterministic
          if (z < ks) sum[b].x += v[z].x, sum[b].y += v[z].y, sum[b].z += v[z].z, sum[b].w += v[z].w;
      }
    }
#pragma unroll
    for (int b = 0; b < B; ++b) {
      const int e = e0 + b * NTH;
      if (e >= q1) break;
      const int tok = e / R4, rl = (e - tok * R4) * 4;
      const int m = mb + tok, n = rb + rl;
      if (m < M && n < N) {
        float o[4] = {sum[b].x, sum[b].y, sum[b].z, sum[b].w};
        const uint2 sc2 = *reinterpret_cast<const uint2*>(scale + n);
        const __half* scp = reinterpret_cast<const __half*>(&sc2);
        __align__(8) __half out[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          float u = o[i] * __half2float(scp[i]);
          if (bias) u += __half2float(bias[n + i]);
          if (gelu) u = gelu_tanh(u);
          out[i] = __float2half_rn(u);
        }
        *reinterpret_cast<uint2*>(y + (size_t)m * N + n) = *reinterpret_cast<const uint2*>(out);
      }
    }
  }
  cluster_sync_all();  // C
#endif
}

// ------------------------------------------------------------------ setup kernels
__device__ __forceinline__ uint32_t hash32(uint64_t x) {
  x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
  return (uint32_t)x;
}
__global__ void fill_kernel(__half* p, size_t n, uint64_t seed, float amp) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    const float u = (hash32(i * 0x9E3779B97F4A7C15ULL + seed) >> 8) * (1.f / 16777216.f);  // [0, 1)
    p[i] = __float2half_rn((2.f * u - 1.f) * amp);
  }
}
// one block per row: scale = max|w| / 127 (fp16), q = round(w / scale)
__global__ void quant_kernel(const __half* w, int8_t* q, __half* scale, int K) {
  const __half* row = w + (size_t)blockIdx.x * K;
  float mx = 0.f;
  for (int k = threadIdx.x; k < K; k += blockDim.x) mx = fmaxf(mx, fabsf(__half2float(row[k])));
  __shared__ float red[32];
  for (int o = 16; o; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = mx;
  __syncthreads();
  if (threadIdx.x < 32) {
    mx = threadIdx.x < blockDim.x / 32 ? red[threadIdx.x] : 0.f;
    for (int o = 16; o; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (threadIdx.x == 0) red[0] = mx;
  }
  __syncthreads();
  const __half sh = __float2half_rn(fmaxf(red[0], 1e-6f) / 127.f);
  if (threadIdx.x == 0) scale[blockIdx.x] = sh;
  const float s = __half2float(sh);
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
    const float v = rintf(__half2float(row[k]) / s);
    q[(size_t)blockIdx.x * K + k] = (int8_t)fmaxf(-127.f, fminf(127.f, v));
  }
}
// q [N, K] row-major -> the prepacked layout (see the top of the file), bytes stored as q + 128
// cm = 1: chunk-major order of the 8 KB (128-row x 64-k) pieces, [K/64][N/128] (ws kernel)
__global__ void prepack_kernel(const int8_t* q, uint8_t* qp, int N, int K, int cm) {
  const size_t total = (size_t)N * K;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
    const int n = (int)(i / K), k = (int)(i % K);
    const int rg = n >> 7, mt = (n >> 4) & 7, r = n & 15, g = r & 7, up = r >> 3;
    const int c = k >> 6, kk = k & 63, h = kk >> 5, j = (kk >> 4) & 1, kq = kk & 15;
    const int hi = kq >= 8, t = (kq & 7) >> 1;
    const int word = 2 * j + hi, byte = up * 2 + (kq & 1);
    const size_t piece = cm ? (size_t)c * (N >> 7) + rg : (size_t)rg * (K >> 6) + c;
    const size_t off = ((piece * 8 + mt) * 2 + h) * 512 + (g * 4 + t) * 16 + word * 4 + byte;
    qp[off] = (uint8_t)(q[i] + 128);
  }
}
// reference on sampled rows (n % 3 == 0): one warp per row, 8 tokens at a time
__global__ void ref_kernel(const __half* x, const int8_t* q, const __half* scale, const __half* bias, float* yref,
                           int M, int N, int K, int gelu) {
  const int n = 3 * (blockIdx.x * 8 + (threadIdx.x >> 5)), lane = threadIdx.x & 31;
  if (n >= N) return;
  for (int m0 = 0; m0 < M; m0 += 8) {
    float a[8] = {};
    for (int k = lane * 4; k < K; k += 128) {
      const char4 qq = *reinterpret_cast<const char4*>(q + (size_t)n * K + k);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        if (m0 + i >= M) break;
        const __half* xr = x + (size_t)(m0 + i) * K + k;
        a[i] += __half2float(xr[0]) * qq.x + __half2float(xr[1]) * qq.y + __half2float(xr[2]) * qq.z +
                __half2float(xr[3]) * qq.w;
      }
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      float v = a[i];
      for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane == 0 && m0 + i < M) {
        v *= __half2float(scale[n]);
        if (bias) v += __half2float(bias[n]);
        if (gelu) v = gelu_tanh(v);
        yref[(size_t)(m0 + i) * N + n] = v;
      }
    }
  }
}
__global__ void cmp_kernel(const __half* y, const float* yref, int M, int N, unsigned* out) {
  unsigned e = 0, r = 0;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)M * N; i += (size_t)gridDim.x * blockDim.x) {
    if ((i % N) % 3) continue;
    const float ref = yref[i], v = __half2float(y[i]);
    float d = fabsf(v - ref);
    if (!(d == d)) d = 1e30f;  // NaN -> huge
    e = max(e, __float_as_uint(d));
    r = max(r, __float_as_uint(fabsf(ref)));
  }
  atomicMax(out, e);
  atomicMax(out + 1, r);
}

// ------------------------------------------------------------------ host
struct Args {
  const __half* x;
  const uint8_t* qp;
  const __half* scale;
  const __half* bias;
  __half* y;
  int M, N, K, gelu, pfence;
  float* ws;  // stream-K partial slots
  int* cnt;   // stream-K tile counters (zero between launches)
  int sms;
  int pdl;    // ws_kernel launches with programmatic dependent launch
};
struct Variant {
  int T, RT, S, R, smem;
  cudaError_t (*launch)(const Args&, int ks, cudaStream_t);
  int (*prep)();  // returns resident blocks per SM
  int sk, W, occ;  // sk: 1 = stream-K persistent kernel (ks = blocks per SM), 2 = warp-specialized
                   // cluster kernel (ws_kernel); W: wgmma groups in flight
  int nw = 2;      // consumer warpgroups (ws_kernel)
  int g = 1;       // chunks per full/empty barrier pair (ws_kernel)
};
template <int T, int RT, int S, int MINB>
cudaError_t launch_wg(const Args& a, int ks, cudaStream_t st) {
  using C = Cfg<T, RT, S>;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(ks, a.N / C::kR, (a.M + T - 1) / T);
  cfg.blockDim = dim3(256);
  cfg.dynamicSmemBytes = C::kSmem;
  cfg.stream = st;
  cudaLaunchAttribute at[1];
  at[0].id = cudaLaunchAttributeClusterDimension;
  at[0].val.clusterDim.x = ks;
  at[0].val.clusterDim.y = 1;
  at[0].val.clusterDim.z = 1;
  cfg.attrs = at;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, wg_kernel<T, RT, S, MINB>, a.x, a.qp, a.scale, a.bias, a.y, a.M, a.N, a.K, a.gelu, a.pfence);
}
template <int T, int RT, int S, int MINB>
int prep_wg() {
  CK(cudaFuncSetAttribute(wg_kernel<T, RT, S, MINB>, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg<T, RT, S>::kSmem));
  return 1;
}
template <int T, int RT, int S, int W, int MINB>
cudaError_t launch_sk(const Args& a, int bps, cudaStream_t st) {
  using C = Cfg<T, RT, S>;
  const long long U = (long long)(a.N / C::kR) * ((a.M + T - 1) / T) * (a.K / 64);
  const int G = (int)std::min<long long>((long long)bps * a.sms, U);
  if ((U + 1) * G >= (1ll << 31)) return cudaErrorInvalidValue;
  sk_kernel<T, RT, S, W, MINB><<<G, 256, S * C::kSB, st>>>(a.x, a.qp, a.scale, a.bias, a.y, a.M, a.N, a.K, a.gelu,
                                                             a.pfence, a.ws, a.cnt);
  return cudaGetLastError();
}
template <int T, int RT, int S, int W, int MINB>
int prep_sk() {
  using C = Cfg<T, RT, S>;
  CK(cudaFuncSetAttribute(sk_kernel<T, RT, S, W, MINB>, cudaFuncAttributeMaxDynamicSharedMemorySize, S * C::kSB));
  int occ = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, sk_kernel<T, RT, S, W, MINB>, 256, S * C::kSB));
  return occ;
}
template <int T, int RT, int S, int NW, int G>
cudaError_t launch_ws(const Args& a, int ks, cudaStream_t st) {
  using C = WsCfg<T, RT, S, NW, G>;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(ks, a.N / C::kR, (a.M + T - 1) / T);
  cfg.blockDim = dim3(C::kThreads);
  cfg.dynamicSmemBytes = C::kSmem;
  cfg.stream = st;
  cudaLaunchAttribute at[2];
  at[0].id = cudaLaunchAttributeClusterDimension;
  at[0].val.clusterDim.x = ks;
  at[0].val.clusterDim.y = 1;
  at[0].val.clusterDim.z = 1;
  at[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  at[1].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = at;
  cfg.numAttrs = a.pdl ? 2 : 1;
  return cudaLaunchKernelEx(&cfg, ws_kernel<T, RT, S, NW, G>, a.x, a.qp, a.scale, a.bias, a.y, a.M, a.N, a.K, a.gelu, a.pfence);
}
template <int T, int RT, int S, int NW, int G>
int prep_ws() {
  CK(cudaFuncSetAttribute(ws_kernel<T, RT, S, NW, G>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                          WsCfg<T, RT, S, NW, G>::kSmem));
  return 1;
}
#define WSV(T, RT, S, NW, G)                                                                                       \
  Variant {                                                                                                       \
    T, RT, S, 64 * NW * RT, WsCfg<T, RT, S, NW, G>::kSmem, launch_ws<T, RT, S, NW, G>, prep_ws<T, RT, S, NW, G>, 2, \
        2, 1, NW, G                                                                                               \
  }
#define VAR(T, RT, S, MINB) \
  Variant { T, RT, S, 128 * RT, Cfg<T, RT, S>::kSmem, launch_wg<T, RT, S, MINB>, prep_wg<T, RT, S, MINB>, 0, 1, 1 }
#define SKV(T, RT, S, W, MINB)                                                                                    \
  Variant {                                                                                                      \
    T, RT, S, 128 * RT, S * Cfg<T, RT, S>::kSB, launch_sk<T, RT, S, W, MINB>, prep_sk<T, RT, S, W, MINB>, 1, W, 1 \
  }
static std::vector<Variant> variants() {
  return {VAR(16, 1, 8, 2),  VAR(16, 2, 6, 2),  VAR(16, 2, 11, 1), VAR(32, 1, 8, 2),  VAR(32, 2, 5, 1),
          VAR(32, 2, 10, 1), VAR(64, 1, 6, 2),  VAR(64, 2, 4, 1),  VAR(64, 2, 8, 1),  VAR(64, 1, 11, 1),
          VAR(128, 1, 4, 2), VAR(128, 2, 4, 1), VAR(128, 1, 8, 1),
          // stream-K persistent variants
          SKV(16, 2, 8, 1, 1), SKV(16, 1, 8, 1, 2), SKV(32, 2, 8, 1, 1), SKV(32, 1, 6, 1, 2),
          SKV(64, 2, 5, 1, 1), SKV(64, 2, 4, 1, 1), SKV(64, 2, 8, 1, 1), SKV(64, 1, 6, 1, 2),
          SKV(128, 2, 4, 1, 1), SKV(128, 2, 5, 1, 1), SKV(128, 1, 4, 1, 1),
          // warp-specialized (producer warpgroup + 2 consumer warpgroups, mbarrier ring, 2 groups in flight)
          // (G = 2 chunks per barrier pair, e.g. WSV(64, 2, 6, 2, 2), compiles and passes but was 24% slower: not tuned)
          WSV(16, 2, 8, 2, 1), WSV(32, 2, 8, 2, 1), WSV(32, 1, 10, 3, 1), WSV(64, 2, 6, 2, 1), WSV(64, 2, 8, 2, 1),
          WSV(64, 1, 8, 2, 1), WSV(64, 1, 8, 3, 1), WSV(64, 1, 10, 3, 1), WSV(128, 1, 4, 2, 1), WSV(128, 1, 6, 2, 1),
          WSV(128, 1, 6, 3, 1)};
}

struct Layer {
  const char* name;
  int N, K, gelu;
  __half *w, *scale, *bias, *x, *y;
  int8_t* q;
  uint8_t* qp;
  uint8_t* qpc;  // chunk-major copy (ws kernel)
  float* yref;
};
struct Choice {
  int v, ks;
};

int main() {
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
  const int MMAX = 128;
  const int pfence = getenv("WG_FENCE") ? atoi(getenv("WG_FENCE")) : 2;
  const int rot = getenv("WG_ROT") ? atoi(getenv("WG_ROT")) : 1;
  const int use_ws = getenv("WG_WS") ? atoi(getenv("WG_WS")) : 1;  // WG_WS=0: leave out the warp-specialized kernel
  const int pdl = getenv("WG_PDL") ? atoi(getenv("WG_PDL")) : 1;  // WG_PDL=0: no programmatic dependent launch
  printf("warp-specialized kernel: %s (WG_WS), its programmatic dependent launch: %s (WG_PDL)\n", use_ws ? "on" : "off",
         pdl ? "on" : "off");
  printf("fence.proxy.async per stage: %s (WG_FENCE; 2 = ws kernel: by the producer), cluster-kernel chunk rotation: %s (WG_ROT)\n",
         pfence == 2 ? "on, ws: producer side" : pfence ? "on" : "off", rot ? "on" : "off");
  Layer L[4] = {{"qkv", 12288, 4096, 0}, {"dense", 4096, 4096, 0}, {"h_to_4h", 16384, 4096, 1}, {"4h_to_h", 4096, 16384, 0}};
  size_t wbytes = 0;
  for (int l = 0; l < 4; ++l) {
    Layer& y = L[l];
    const size_t nk = (size_t)y.N * y.K;
    wbytes += nk;
    CK(cudaMalloc(&y.w, nk * 2));
    CK(cudaMalloc(&y.q, nk));
    CK(cudaMalloc(&y.qp, nk));
    CK(cudaMalloc(&y.qpc, nk));
    CK(cudaMalloc(&y.scale, y.N * 2));
    CK(cudaMalloc(&y.bias, y.N * 2));
    CK(cudaMalloc(&y.x, (size_t)MMAX * y.K * 2));
    CK(cudaMalloc(&y.y, (size_t)MMAX * y.N * 2));
    CK(cudaMalloc(&y.yref, (size_t)MMAX * y.N * 4));
    fill_kernel<<<4096, 256>>>(y.w, nk, 1000 + l, 0.05f);
    fill_kernel<<<256, 256>>>(y.x, (size_t)MMAX * y.K, 2000 + l, 1.0f);
    fill_kernel<<<64, 256>>>(y.bias, y.N, 3000 + l, 0.5f);
    quant_kernel<<<y.N, 256>>>(y.w, y.q, y.scale, y.K);
    prepack_kernel<<<8192, 256>>>(y.q, y.qp, y.N, y.K, 0);
    prepack_kernel<<<8192, 256>>>(y.q, y.qpc, y.N, y.K, 1);
    CK(cudaGetLastError());
  }
  CK(cudaDeviceSynchronize());
  printf("int8 weights per block: %.1f MB\n", wbytes / 1e6);

  std::vector<Variant> V = variants();
  for (auto& v : V) v.occ = v.prep();
  float* dws;
  int* dcnt;
  const size_t wsBytes = 96u << 20;
  CK(cudaMalloc(&dws, wsBytes));
  CK(cudaMalloc(&dcnt, 8192 * sizeof(int)));
  CK(cudaMemset(dcnt, 0, 8192 * sizeof(int)));
  cublasHandle_t hb;
  CB(cublasCreate(&hb));
  cudaStream_t st;
  CK(cudaStreamCreate(&st));
  CB(cublasSetStream(hb, st));
  unsigned* dcmp;
  CK(cudaMalloc(&dcmp, 8));
  cudaEvent_t ev[6];
  for (auto& e : ev) CK(cudaEventCreate(&e));

  // pfence bits: 1 consumer-side fence (all kernels), 2 no chunk rotation, 32 ws: producer-side fence (and the
  // old kernels keep 1), 4 / 8 ws diagnostics (no dequant / no wgmma: wrong results, profile mode only)
  const int l2pf = getenv("WG_L2PF") ? atoi(getenv("WG_L2PF")) : 0;  // ws kernel: L2 prefetch distance (chunks)
  printf("ws kernel L2 prefetch distance: %d chunks (WG_L2PF)\n", l2pf);
  const int cmaj = getenv("WG_CM") ? atoi(getenv("WG_CM")) : 0;  // ws kernel: chunk-major weights (no gain measured)
  printf("ws kernel weight layout: %s (WG_CM)\n", cmaj ? "chunk-major" : "row-group-major");
  const int pf0 = (pfence == 2 ? 1 | 32 : pfence ? 1 : 0) | (rot ? 0 : 2) | (l2pf << 10) | (cmaj ? 64 : 0);
  auto run_mine = [&](int l, int M, const Choice& ch, int pfo = -1) -> cudaError_t {
    Layer& y = L[l];
    int pf = pfo >= 0 ? pfo : pf0;
    if (V[ch.v].sk == 2 && (pf & 32)) pf &= ~1;  // ws kernel: producer-side fence replaces the consumer one
    const bool cmo = V[ch.v].sk == 2 && (pf & 64);
    if (!cmo) pf &= ~64;
    Args a{y.x, cmo ? y.qpc : y.qp, y.scale, y.gelu ? y.bias : nullptr, y.y, M, y.N, y.K, y.gelu, pf, dws, dcnt,
           prop.multiProcessorCount, pdl};
    return V[ch.v].launch(a, ch.ks, st);
  };
  auto run_cublas = [&](int l, int M) {
    Layer& y = L[l];
    const float one = 1.f, zero = 0.f;
    CB(cublasGemmEx(hb, CUBLAS_OP_T, CUBLAS_OP_N, y.N, M, y.K, &one, y.w, CUDA_R_16F, y.K, y.x, CUDA_R_16F, y.K,
                    &zero, y.y, CUDA_R_16F, y.N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  };
  auto check = [&](int l, int M) -> double {
    Layer& y = L[l];
    CK(cudaMemsetAsync(dcmp, 0, 8, st));
    cmp_kernel<<<512, 256, 0, st>>>(y.y, y.yref, M, y.N, dcmp);
    unsigned h[2];
    CK(cudaMemcpyAsync(h, dcmp, 8, cudaMemcpyDeviceToHost, st));
    CK(cudaStreamSynchronize(st));
    float e, r;
    memcpy(&e, &h[0], 4);
    memcpy(&r, &h[1], 4);
    return e / std::max(r, 1e-20f);
  };
  auto time_seq = [&](auto&& body, int warm, int reps) -> float {
    for (int i = 0; i < warm; ++i) body();
    CK(cudaEventRecord(ev[0], st));
    for (int i = 0; i < reps; ++i) body();
    CK(cudaEventRecord(ev[1], st));
    CK(cudaEventSynchronize(ev[1]));
    float ms;
    CK(cudaEventElapsedTime(&ms, ev[0], ev[1]));
    return ms * 1000.f / reps;
  };

  bool fail = false;
  static const char* kname[3] = {"cluster", "streamK", "ws"};
  // WG_PROF=1: profile mode for ncu: only M=64 qkv, the old cluster kernel (64/2/4, ksplit 2) then the
  // stream-K kernel (64/2/5/W1, 1 block/SM), 60 launches each, checked, no autotune
  if (getenv("WG_PROF") && atoi(getenv("WG_PROF"))) {
    const int M = 64;
    // W: stream-K groups in flight / ws consumer warpgroups; gg: ws chunks per barrier pair
    auto find = [&](int sk, int T, int RT, int S, int W, int gg = 1) {
      for (int v = 0; v < (int)V.size(); ++v)
        if (V[v].sk == sk && V[v].T == T && V[v].RT == RT && V[v].S == S && (sk == 0 || (sk == 1 ? V[v].W : V[v].nw) == W) &&
            (sk != 2 || V[v].g == gg))
          return v;
      fprintf(stderr, "variant not found\n");
      exit(1);
    };
    Layer& y = L[0];
    ref_kernel<<<(y.N / 3 + 8) / 8, 256, 0, st>>>(y.x, y.q, y.scale, nullptr, y.yref, M, y.N, y.K, 0);
    const Choice cs[4] = {{find(0, 64, 2, 4, 1), 2}, {find(1, 64, 2, 5, 1), 1}, {find(2, 64, 2, 6, 2), 2},
                          {find(2, 64, 1, 8, 3), 2}};
    for (const Choice& ch : cs) {
      CK(cudaMemsetAsync(y.y, 0xFF, (size_t)M * y.N * 2, st));
      CK(run_mine(0, M, ch));
      const double err = check(0, M);
      const float us = time_seq([&] { CK(run_mine(0, M, ch)); }, 0, 60);
      if (V[ch.v].sk == 2 && getenv("WG_DIAG")) {  // ws kernel: fence placement and diagnostics
        const int pfs[5] = {32, 32 | 512, 32 | 4 | 8, 32 | 4 | 8 | 128 | 256, 32 | 4 | 8 | 128 | 256 | 512};
        const char* nm[5] = {"all", "no epilogue (wrong)", "no deq/mma (wrong)", "no deq/mma/x/w (wrong)",
                             "no deq/mma/x/w/epilogue (wrong)"};
        for (int i = 0; i < 5; ++i) {
          CK(cudaMemsetAsync(y.y, 0xFF, (size_t)M * y.N * 2, st));
          CK(run_mine(0, M, ch, pfs[i]));
          const double e2 = check(0, M);
          const float u2 = time_seq([&] { CK(run_mine(0, M, ch, pfs[i])); }, 5, 100);
          printf("diag M=64 qkv ws%dg%d %d/%d/%d ks%d %-30s: err %.3e, %.1f us/launch\n", V[ch.v].nw, V[ch.v].g, V[ch.v].T,
                 V[ch.v].RT, V[ch.v].S, ch.ks, nm[i], e2, u2);
        }
      }
      printf("prof M=64 qkv %s: err %.3e, %.1f us/launch (alone, back to back)\n", V[ch.v].sk == 1 ? "streamK 64/2/5/1" : V[ch.v].sk == 2 ? (V[ch.v].nw == 3 ? (V[ch.v].g == 2 ? "ws3g2 64/1/8 ks2" : "ws3 64/1/8 ks2") : (V[ch.v].g == 2 ? "ws2g2 64/2/6 ks2" : "ws2 64/2/6 ks2")) : "cluster 64/2/4 ks2", err, us);
      if (!(err <= 2e-3)) fail = true;
    }
    return fail ? 1 : 0;
  }
  const int Ms[4] = {16, 32, 64, 128};
  struct Row {
    int M;
    float fp16, mine, lf[4], lm[4];
    Choice ch[4];
  };
  std::vector<Row> rows;
  for (int M : Ms) {
    const int T = M <= 16 ? 16 : M <= 32 ? 32 : M <= 64 ? 64 : 128;
    // references
    for (int l = 0; l < 4; ++l) {
      Layer& y = L[l];
      ref_kernel<<<(y.N / 3 + 8) / 8, 256, 0, st>>>(y.x, y.q, y.scale, y.gelu ? y.bias : nullptr, y.yref, M, y.N, y.K,
                                                   y.gelu);
      CK(cudaGetLastError());
    }
    // candidates per layer; every one is checked
    std::vector<Choice> cand[4];
    for (int l = 0; l < 4; ++l) {
      for (int v = 0; v < (int)V.size(); ++v) {
        if (V[v].T != T || L[l].N % V[v].R) continue;
        for (int ks = 1; ks <= 8; ks *= 2) {
          if (V[v].sk == 2 && !use_ws) continue;
          if (V[v].sk == 1) {
            if (ks > V[v].occ) continue;
          } else if ((L[l].K / 64) % ks || (V[v].R / ks) % 4) continue;
          Choice ch{v, ks};
          // poison the output (fp16 NaN) so that a candidate that skips outputs cannot pass
          CK(cudaMemsetAsync(L[l].y, 0xFF, (size_t)M * L[l].N * 2, st));
          cudaError_t e = run_mine(l, M, ch);
          if (e != cudaSuccess) {
            cudaGetLastError();
            printf("  [M=%d %s] T=%d RT=%d S=%d ks=%d: launch failed (%s)\n", M, L[l].name, T, V[v].RT, V[v].S, ks,
                   cudaGetErrorString(e));
            continue;
          }
          CK(cudaGetLastError());
          const double err = check(l, M);
          if (!(err <= 2e-3)) {
            fail = true;
            printf("  [M=%d %s] T=%d RT=%d S=%d ks=%d: ERROR rel %.3e\n", M, L[l].name, T, V[v].RT, V[v].S, ks, err);
            continue;
          }
          cand[l].push_back(ch);
        }
      }
      if (cand[l].empty()) {
        printf("no working config for M=%d %s\n", M, L[l].name);
        return 1;
      }
    }
    // tune: coordinate descent, each layer's choice timed inside the whole 4-layer sequence
    Choice best[4];
    for (int l = 0; l < 4; ++l) best[l] = cand[l][0];
    for (int pass = 0; pass < 2; ++pass)
      for (int l = 0; l < 4; ++l) {
        float bt = 1e30f, bk[3] = {1e30f, 1e30f, 1e30f};
        Choice bc = best[l], bkc[3] = {};
        for (const Choice& ch : cand[l]) {
          Choice cur[4] = {best[0], best[1], best[2], best[3]};
          cur[l] = ch;
          const float us = time_seq([&] { for (int i = 0; i < 4; ++i) run_mine(i, M, cur[i]); }, 2, 8);
          if (us < bt) bt = us, bc = ch;
          const int kd = V[ch.v].sk;
          if (us < bk[kd]) bk[kd] = us, bkc[kd] = ch;
        }
        best[l] = bc;
        if (pass == 1) {  // best 4-layer sequence time with this layer's kernel of each kind
          printf("  tune M=%3d %-8s (4-layer us):", M, L[l].name);
          for (int kd = 0; kd < 3; ++kd)
            if (bk[kd] < 1e29f)
              printf("  %s%s %.1f (%d/%d/%d/%d)", kname[kd],
                     kd == 2 ? (V[bkc[kd].v].nw == 3 ? (V[bkc[kd].v].g == 2 ? "3g2" : "3") : (V[bkc[kd].v].g == 2 ? "2g2" : "2"))
                             : "",
                     bk[kd], V[bkc[kd].v].T, V[bkc[kd].v].RT, V[bkc[kd].v].S, bkc[kd].ks);
          printf("\n");
        }
      }
    // final checks of the chosen configs, then the timings
    Row row{};
    row.M = M;
    for (int l = 0; l < 4; ++l) {
      row.ch[l] = best[l];
      CK(cudaMemsetAsync(L[l].y, 0xFF, (size_t)M * L[l].N * 2, st));
      CK(run_mine(l, M, best[l]));
      const double err = check(l, M);
      printf("check M=%3d %-8s N=%5d K=%5d: max err / max|ref| = %.3e  (%s T=%d RT=%d S=%d %s=%d)\n", M, L[l].name,
             L[l].N, L[l].K, err, V[best[l].v].sk == 2 ? (V[best[l].v].nw == 3 ? (V[best[l].v].g == 2 ? "ws3g2" : "ws3") : (V[best[l].v].g == 2 ? "ws2g2" : "ws2")) : kname[V[best[l].v].sk], V[best[l].v].T, V[best[l].v].RT,
             V[best[l].v].S, V[best[l].v].sk == 1 ? "blocks/SM" : "ksplit", best[l].ks);
      if (!(err <= 2e-3)) fail = true;
    }
    row.fp16 = time_seq([&] { for (int i = 0; i < 4; ++i) run_cublas(i, M); }, 3, 20);
    row.mine = time_seq([&] { for (int i = 0; i < 4; ++i) run_mine(i, M, best[i]); }, 3, 20);
    // per layer: events between the layers of the back-to-back sequence
    for (int which = 0; which < 2; ++which) {
      float acc[4] = {};
      for (int rep = 0; rep < 23; ++rep) {
        CK(cudaEventRecord(ev[0], st));
        for (int i = 0; i < 4; ++i) {
          if (which) CK(run_mine(i, M, best[i])); else run_cublas(i, M);
          CK(cudaEventRecord(ev[i + 1], st));
        }
        CK(cudaEventSynchronize(ev[4]));
        if (rep < 3) continue;
        for (int i = 0; i < 4; ++i) {
          float ms;
          CK(cudaEventElapsedTime(&ms, ev[i], ev[i + 1]));
          acc[i] += ms * 1000.f / 20;
        }
      }
      for (int i = 0; i < 4; ++i) (which ? row.lm : row.lf)[i] = acc[i];
    }
    rows.push_back(row);
  }
  printf("\nFour layers of one ChatGLM-6B block back to back (%s), 3 warm-ups + 20 reps:\n\n", prop.name);
  printf("| M | fp16 cuBLAS us | int8 wgmma us | fp16/yours |\n|---|---|---|---|\n");
  for (auto& r : rows) printf("| %d | %.1f | %.1f | %.2fx |\n", r.M, r.fp16, r.mine, r.fp16 / r.mine);
  printf("\nPer layer (events between layers; GB/s = int8 weight bytes / time):\n\n");
  printf("| M | layer | config T/RT/S/ksplit (sk: T/RT/S/W/blocks per SM) | fp16 us | int8 us | int8 GB/s |\n|---|---|---|---|---|---|\n");
  for (auto& r : rows)
    for (int l = 0; l < 4; ++l) {
      const Variant& v = V[r.ch[l].v];
      char cfg[64];
      if (v.sk == 1) snprintf(cfg, sizeof cfg, "sk %d/%d/%d/%d/%d", v.T, v.RT, v.S, v.W, r.ch[l].ks);
      else if (v.sk == 2) snprintf(cfg, sizeof cfg, "ws%d%s %d/%d/%d/%d", v.nw, v.g == 2 ? "g2" : "", v.T, v.RT, v.S, r.ch[l].ks);
      else snprintf(cfg, sizeof cfg, "%d/%d/%d/%d", v.T, v.RT, v.S, r.ch[l].ks);
      printf("| %d | %s | %s | %.1f | %.1f | %.0f |\n", r.M, L[l].name, cfg, r.lf[l], r.lm[l],
             (double)L[l].N * L[l].K / (r.lm[l] * 1e3));
    }
  printf("\n%s\n", fail ? "FAILED: some error > 2e-3" : "all checks passed (max err / max|ref| <= 2e-3)");
  return fail ? 1 : 0;
}
