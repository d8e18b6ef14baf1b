// INT8 weight-only linear layers over the packed weight layout (Hopper, sm_90a):
// the layout, its GEMV (1-8 tokens), its warp-specialized wgmma kernel (more
// tokens) and its dequantization for prefill. Contract: int8_gemm.h ("packed
// layout"); method and numbers: docs/int8.md. The kernel design was worked out
// as a lab experiment (docs/int8.md, "Kernel experiments").
#include <cooperative_groups.h>

#include <algorithm>

#include "cuda_check.h"
#include "device_util.h"
#include "int8_gemm.h"
#include "pdl.h"

namespace glm {
namespace cuda {
namespace {
namespace cg = cooperative_groups;

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GLM_PACKED_WGMMA 1
#endif

// ------------------------------------------------------------- the layout
// [N/128 row groups][K/64 chunks][8 m16 tiles][2 halves][32 lanes][16 bytes].
// Record (group, chunk, tile, half, lane g*4+t) holds, for the two k16 steps j
// of its 32-wide half, word 2j+hi = {A[g][k], A[g][k+1], A[g+8][k], A[g+8][k+1]}
// with k = 16j + 8hi + 2t: the register A fragments of mma/wgmma m16k16 for
// rows g and g+8 of the tile, each byte stored as q + 128. A 128-row x 64-k
// chunk is 8 KB contiguous.
constexpr int kGroupRows = 128, kChunk = 64, kChunkBytes = kGroupRows * kChunk;

// One thread per 16-byte record.
__global__ void pack_kernel(const int8_t* __restrict__ q, uint4* __restrict__ qp, int N, int K) {
  const int64_t records = (int64_t)N * K / 16;
  const int chunks = K / kChunk;
  for (int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; r < records; r += (int64_t)gridDim.x * blockDim.x) {
    const int lane = (int)(r & 31), h = (int)((r >> 5) & 1), mt = (int)((r >> 6) & 7);
    const int64_t piece = r >> 9;
    const int grp = (int)(piece / chunks), c = (int)(piece % chunks);
    const int g = lane >> 2, t = lane & 3;
    const int64_t row0 = (int64_t)grp * kGroupRows + mt * 16 + g, row1 = row0 + 8;
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {  // i = 2j + hi
      const int k = c * kChunk + h * 32 + (i >> 1) * 16 + (i & 1) * 8 + 2 * t;
      const uint32_t a = *reinterpret_cast<const uint16_t*>(q + row0 * K + k);
      const uint32_t b = *reinterpret_cast<const uint16_t*>(q + row1 * K + k);
      w[i] = (a | (b << 16)) ^ 0x80808080u;  // q + 128 per byte
    }
    qp[r] = make_uint4(w[0], w[1], w[2], w[3]);
  }
}

// out[n - row0, k] = fp16(q[n, k] * scale[n]) for rows [row0, row0 + rows), both multiples of 128.
__global__ void unpack_dequantize_kernel(const uint4* __restrict__ qp, const __half* __restrict__ scale,
                                         __half* __restrict__ out, int row0, int rows, int K) {
  const int64_t records = (int64_t)rows * K / 16;
  const int chunks = K / kChunk;
  const int64_t first = (int64_t)row0 * K / 16;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < records; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = first + i;
    const int lane = (int)(r & 31), h = (int)((r >> 5) & 1), mt = (int)((r >> 6) & 7);
    const int64_t piece = r >> 9;
    const int grp = (int)(piece / chunks), c = (int)(piece % chunks);
    const int g = lane >> 2, t = lane & 3;
    const int n0 = grp * kGroupRows + mt * 16 + g;
    const float s0 = __half2float(scale[n0]), s1 = __half2float(scale[n0 + 8]);
    const uint4 v = qp[r];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int k = c * kChunk + h * 32 + (i >> 1) * 16 + (i & 1) * 8 + 2 * t;
      const uint32_t u = word_of(v, i);
      const float q0 = (float)(int)(u & 0xFF) - 128.f, q1 = (float)(int)((u >> 8) & 0xFF) - 128.f;
      const float q2 = (float)(int)((u >> 16) & 0xFF) - 128.f, q3 = (float)(int)(u >> 24) - 128.f;
      *reinterpret_cast<__half2*>(out + (int64_t)(n0 - row0) * K + k) = __floats2half2_rn(q0 * s0, q1 * s0);
      *reinterpret_cast<__half2*>(out + (int64_t)(n0 + 8 - row0) * K + k) = __floats2half2_rn(q2 * s1, q3 * s1);
    }
  }
}

// ------------------------------------------------------------- GEMV (1-8 tokens)
// The weights streamed straight from memory into tensor cores: a block is one
// 128-row group, its 8 warps and the ksb blocks of grid.x split the group's
// 64-wide chunks into contiguous slices, so each warp streams contiguous 8 KB
// chunks (16 records of 16 bytes per lane, issued ahead: a record's next load
// goes out as soon as it is consumed). Per record: dequantize (exact), two
// mma.m16n8k16 with the tokens (x rows, zero past M) as the n8 side, fp32
// accumulators. Reductions: the 8 warps through shared memory, then the ksb
// blocks through fp32 partials, summed in a fixed order by the last block of
// the group to finish (deterministic), which applies scale, bias and GeLU.
constexpr int kPGemvWarps = 8, kPGemvMaxTokens = 8;

template <bool GELU>
__global__ void __launch_bounds__(kPGemvWarps * 32)
    packed_gemv_kernel(const __half* __restrict__ x, const uint8_t* __restrict__ qp, const __half* __restrict__ scale,
                       __half* __restrict__ y, const float* __restrict__ bias, int M, int N, int K,
                       float* __restrict__ partials, int* __restrict__ counters) {
  __shared__ float red[kPGemvWarps][kPGemvMaxTokens][kGroupRows + 4];
  __shared__ int last_block;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int ksb = gridDim.x, kz = blockIdx.x, grp = blockIdx.y;
  const int chunks = K / kChunk, slices = ksb * kPGemvWarps, slice = kz * kPGemvWarps + warp;
  const int c0 = (int)((int64_t)slice * chunks / slices), c1 = (int)((int64_t)(slice + 1) * chunks / slices);
  const uint8_t* base = qp + ((int64_t)grp * chunks) * kChunkBytes + lane * 16;
  float acc[8][4];
#pragma unroll
  for (int i = 0; i < 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  uint4 v[16];  // record i = tile (i / 2), half (i % 2): chunk offset 512 i
  if (c0 < c1) {
#pragma unroll
    for (int i = 0; i < 16; ++i) v[i] = ld_stream(base + (int64_t)c0 * kChunkBytes + i * 512);
  }
  // the weights above do not depend on the previous kernel; x and the counters do
  pdl_wait();
  pdl_launch_dependents();
  const bool tok_ok = g < M;
  const __half* xr = x + (int64_t)(tok_ok ? g : 0) * K + 2 * t;
  for (int c = c0; c < c1; ++c) {
    uint32_t b[4][2];  // B fragments of the chunk's four k16 steps (token g)
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      b[s][0] = tok_ok ? __ldg(reinterpret_cast<const unsigned int*>(xr + c * kChunk + 16 * s)) : 0u;
      b[s][1] = tok_ok ? __ldg(reinterpret_cast<const unsigned int*>(xr + c * kChunk + 16 * s + 8)) : 0u;
    }
    const bool more = c + 1 < c1;
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const uint4 r = v[i];
      if (more) v[i] = ld_stream(base + (int64_t)(c + 1) * kChunkBytes + i * 512);
      const int tile = i >> 1, h = i & 1;
      mma16816(acc[tile], u8x2_to_h2(r.x, 0x4140), u8x2_to_h2(r.x, 0x4342), u8x2_to_h2(r.y, 0x4140),
               u8x2_to_h2(r.y, 0x4342), b[2 * h][0], b[2 * h][1]);
      mma16816(acc[tile], u8x2_to_h2(r.z, 0x4140), u8x2_to_h2(r.z, 0x4342), u8x2_to_h2(r.w, 0x4140),
               u8x2_to_h2(r.w, 0x4342), b[2 * h + 1][0], b[2 * h + 1][1]);
    }
  }
  // C fragment: acc[tile] = rows (16 tile + g, 16 tile + g + 8) x tokens (2t, 2t + 1)
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    red[warp][2 * t][16 * i + g] = acc[i][0];
    red[warp][2 * t + 1][16 * i + g] = acc[i][1];
    red[warp][2 * t][16 * i + g + 8] = acc[i][2];
    red[warp][2 * t + 1][16 * i + g + 8] = acc[i][3];
  }
  __syncthreads();
  const int outputs = M * kGroupRows;
  float sums[kGroupRows * kPGemvMaxTokens / (kPGemvWarps * 32)];
#pragma unroll
  for (int j = 0; j < kGroupRows * kPGemvMaxTokens / (kPGemvWarps * 32); ++j) {
    const int e = threadIdx.x + j * kPGemvWarps * 32, tok = e / kGroupRows, row = e % kGroupRows;
    float s = 0.f;
    if (e < outputs)
#pragma unroll
      for (int w = 0; w < kPGemvWarps; ++w) s += red[w][tok][row];  // fixed order
    sums[j] = s;
  }
  if (ksb > 1) {
#pragma unroll
    for (int j = 0; j < kGroupRows * kPGemvMaxTokens / (kPGemvWarps * 32); ++j) {
      const int e = threadIdx.x + j * kPGemvWarps * 32, tok = e / kGroupRows, row = e % kGroupRows;
      if (e < outputs) partials[((int64_t)kz * M + tok) * N + grp * kGroupRows + row] = sums[j];
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last_block = atomicAdd(&counters[grp], 1) == ksb - 1;
    __syncthreads();
    if (!last_block) return;
    __threadfence();
#pragma unroll
    for (int j = 0; j < kGroupRows * kPGemvMaxTokens / (kPGemvWarps * 32); ++j) {
      const int e = threadIdx.x + j * kPGemvWarps * 32, tok = e / kGroupRows, row = e % kGroupRows;
      float s = 0.f;
      if (e < outputs)
        for (int z = 0; z < ksb; ++z) s += __ldcg(partials + ((int64_t)z * M + tok) * N + grp * kGroupRows + row);
      sums[j] = s;
    }
    if (threadIdx.x == 0) counters[grp] = 0;  // left zero for the next launch
  }
#pragma unroll
  for (int j = 0; j < kGroupRows * kPGemvMaxTokens / (kPGemvWarps * 32); ++j) {
    const int e = threadIdx.x + j * kPGemvWarps * 32, tok = e / kGroupRows, row = e % kGroupRows;
    if (e < outputs) {
      const int n = grp * kGroupRows + row;
      float o = sums[j] * __half2float(scale[n]) + (bias ? bias[n] : 0.f);
      if (GELU) o = gelu_tanh(o);
      y[(int64_t)tok * N + n] = __float2half_rn(o);
    }
  }
}

void packed_gemv(const __half* x, const uint8_t* qp, const __half* scale, __half* y, const float* bias, bool gelu,
                 int M, int K, int N, float* partials, size_t partial_floats, int* counters, int counter_count,
                 int resident_blocks, cudaStream_t stream) {
  const int groups = N / kGroupRows, chunks = K / kChunk;
  // Split each group's chunks over ksb blocks, as many as keep the whole grid
  // resident at once (one wave: no tail) and give every warp at least one chunk;
  // needs the partials and one counter per group. (H200, 1 token: 4-warp blocks
  // or a fixed split of 2-16 were all slower; docs/int8.md.)
  int ksb = 1;
  if (partials && counters && groups <= counter_count) {
    ksb = std::max(1, std::min({16, resident_blocks / groups, chunks / kPGemvWarps}));
    while (ksb > 1 && (size_t)ksb * M * N > partial_floats) --ksb;
  }
  const dim3 grid(ksb, groups), block(kPGemvWarps * 32);
  if (gelu)
    launch_k("int8_packed_gemv", packed_gemv_kernel<true>, grid, block, 0, stream, x, qp, scale, y, bias, M, N, K,
             partials, counters);
  else
    launch_k("int8_packed_gemv", packed_gemv_kernel<false>, grid, block, 0, stream, x, qp, scale, y, bias, M, N, K,
             partials, counters);
}

// ------------------------------------------------------------- warp-specialized wgmma kernel
// Block = 3 warpgroups: warpgroup 0 produces, warpgroups 1 and 2 consume, each
// consumer owning 2 m64 tiles (256 weight rows per block) for T tokens (wgmma's
// N side). A ring of kStages 64-wide chunks, one `full` and one `empty`
// mbarrier per slot, no __syncthreads in the main loop:
//  - producer: thread 0 waits for the slot to be empty, arms `full` with the
//    weight bytes and issues two 8 KB cp.async.bulk copies (one per 128-row
//    group); all 128 producer threads cp.async the x tile into wgmma's K-major
//    no-swizzle core-matrix layout, then (one chunk behind) wait for their own
//    copies, fence.proxy.async and arrive on `full` (count 128 + 1).
//  - consumers: the A fragments of chunk c+1 are loaded (one LDS.128 per two
//    k16 steps) and dequantized while the wgmma groups of chunks c-1 and c run;
//    three A register arrays rotate, and the retired group's array is "used"
//    right after the wait so that ptxas keeps it until the group is done
//    (ptxas does not keep an in-flight wgmma's A registers reserved across a
//    loop edge: docs/int8.md, "Kernel experiments"). Each consumer warp arrives on `empty` once
//    the chunk's group is retired.
// Split K over the ks blocks of one thread-block cluster: each writes its fp32
// tile to its shared memory and the cluster reduces through DSMEM in a fixed
// order (deterministic), applying scale, bias and GeLU. Programmatic dependent
// launch: the first weight stages are requested before griddepcontrol.wait.
constexpr int kWsStages = 8, kWsRows = 256, kWsThreads = 384;

template <int T>
struct WsCfg {
  static constexpr int kWB = kWsRows * kChunk;  // weight bytes per stage
  static constexpr int kXB = T * kChunk * 2;    // token bytes per stage
  static constexpr int kSB = kWB + kXB;
  static constexpr int kPS = kWsRows + 4;  // fp32 partial tile row stride (tokens x rows)
  static constexpr int kSmem = 1024 + (kWsStages * kSB > T * kPS * 4 ? kWsStages * kSB : T * kPS * 4);
  static_assert(kSmem <= 227 * 1024, "shared memory");
};

#ifdef GLM_PACKED_WGMMA
__device__ __forceinline__ uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }
__device__ __forceinline__ void cp16z(uint32_t dst, const void* src, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(ok ? 16 : 0));
}
__device__ __forceinline__ uint4 lds128(uint32_t a) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(a));
  return v;
}
// no-swizzle K-major descriptor: start, leading (K) and stride (N) byte offsets >> 4
__device__ __forceinline__ uint64_t wg_desc(uint32_t saddr, uint32_t lbo, uint32_t sbo) {
  return (uint64_t)((saddr & 0x3FFFF) >> 4) | ((uint64_t)((lbo & 0x3FFFF) >> 4) << 16) |
         ((uint64_t)((sbo & 0x3FFFF) >> 4) << 32);
}
template <int R>
__device__ __forceinline__ void fence_regs(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
__device__ __forceinline__ void mbar_init(uint32_t a, int n) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(a), "r"(n) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t a, uint32_t par) {
  asm volatile(
      "{\n.reg .pred P1;\nGLM_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
      "@P1 bra GLM_DONE;\nbra GLM_WAIT;\nGLM_DONE:\n}\n" ::"r"(a),
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
__device__ __forceinline__ void cluster_sync_all() {
  asm volatile("barrier.cluster.arrive.aligned;\nbarrier.cluster.wait.aligned;\n" ::: "memory");
}

// d (+)= A[64x16] (4 registers of fp16x2, the dequantized weights) x B[16xT] (shared memory, descriptor)
template <int T>
struct WgRS;
template <>
struct WgRS<8> {
  __device__ __forceinline__ static void mma(float (&d)[4], const uint32_t (&a)[4], uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n8k16.f32.f16.f16 {%0, %1, %2, %3}, {%4, %5, %6, %7}, %8, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
  }
};
template <>
struct WgRS<16> {
  __device__ __forceinline__ static void mma(float (&d)[8], const uint32_t (&a)[4], uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7}, {%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
  }
};
template <>
struct WgRS<32> {
  __device__ __forceinline__ static void mma(float (&d)[16], const uint32_t (&a)[4], uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %20, p, 1, "
        "1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
  }
};
template <>
struct WgRS<64> {
  __device__ __forceinline__ static void mma(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, "
        "%23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
  }
};
#endif  // GLM_PACKED_WGMMA

template <int T>
__global__ void __launch_bounds__(kWsThreads, 1)
    ws_kernel(const __half* __restrict__ x, const uint8_t* __restrict__ qp, const __half* __restrict__ scale,
              const float* __restrict__ bias, __half* __restrict__ y, int M, int N, int K, int gelu) {
#ifdef GLM_PACKED_WGMMA
  using C = WsCfg<T>;
  constexpr int S = kWsStages, RT = 2;
  extern __shared__ __align__(128) unsigned char smem[];
  const int tid = threadIdx.x;
  const int ks = gridDim.x, kz = blockIdx.x;
  pdl_launch_dependents();
  const int rb = blockIdx.y * kWsRows, mb = blockIdx.z * T;
  const int chunks = K / kChunk;
  const int c0 = kz * chunks / ks, nc = (kz + 1) * chunks / ks - c0;
  const uint32_t sbar = smem_u32(smem), sbase = sbar + 1024;
  // full[s] at sbar + 8 s, empty[s] at sbar + 8 (S + s); chunk c uses slot c % S, round parity (c / S) & 1
  if (tid == 0) {
    for (int s = 0; s < S; ++s) {
      mbar_init(sbar + 8 * s, 129);
      mbar_init(sbar + 8 * (S + s), 8);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (tid < 128) {  // ---------------- producer warpgroup
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    constexpr int XG = T * 8, XI = (XG + 127) / 128;
    const int grp0 = rb / kGroupRows;
    // rotate the chunk order per row block, so that the blocks running together read different x lines
    const int lchunk0 = (blockIdx.y * 7) % nc;
    auto lch_of = [&](int c) {
      const int l = lchunk0 + c;
      return l >= nc ? l - nc : l;
    };
    auto wload = [&](int c) {
      if (tid == 0) {
        const uint32_t fb = sbar + 8 * (c % S);
        mbar_arrive_tx(fb, C::kWB);
        const uint32_t sw = sbase + (c % S) * C::kSB;
        const int ch = c0 + lch_of(c);
#pragma unroll
        for (int i = 0; i < 2; ++i)
          bulk_g2s(sw + i * kChunkBytes, qp + ((int64_t)(grp0 + i) * chunks + ch) * kChunkBytes, kChunkBytes, fb);
      }
    };
    auto xload = [&](int c) {
      const int lch = lch_of(c);
      const uint32_t sw = sbase + (c % S) * C::kSB + C::kWB;
#pragma unroll
      for (int i = 0; i < XI; ++i) {
        const int idx = tid + i * 128;
        if ((XG & 127) && idx >= XG) break;
        const int r = idx >> 3, gr = idx & 7;
        const bool ok = mb + r < M;
        cp16z(sw + (r >> 3) * 1024 + gr * 128 + (r & 7) * 16,
              x + (int64_t)(ok ? mb + r : 0) * K + (c0 + lch) * kChunk + gr * 8, ok);
      }
      asm volatile("cp.async.commit_group;\n" ::);
    };
    // the x tile of chunk c is visible to the async proxy (wgmma): wait for this thread's copies, fence, arrive
    auto xdone = [&](int c, bool last) {
      if (last)
        asm volatile("cp.async.wait_group 0;\n" ::);
      else
        asm volatile("cp.async.wait_group 1;\n" ::);
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
      mbar_arrive(sbar + 8 * (c % S));
    };
    const int pre = nc < S ? nc : S;
    for (int c = 0; c < pre; ++c) wload(c);  // weights do not depend on the previous kernel
    pdl_wait();
    for (int c = 0; c < pre; ++c) {
      xload(c);
      if (c > 0) xdone(c - 1, false);
    }
    for (int c = pre; c < nc; ++c) {
      mbar_wait(sbar + 8 * (S + c % S), ((c / S) & 1) ^ 1);
      wload(c);
      xload(c);
      xdone(c - 1, false);
    }
    xdone(nc - 1, true);
    __syncthreads();     // A: consumers done, slots free
    cluster_sync_all();  // B: partial tiles written
    cluster_sync_all();  // C: reductions done
    return;
  }
  // ---------------- consumer warpgroups
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
  const int ct = tid - 128, warp = ct >> 5, lane = ct & 31, wg = warp >> 2, w = warp & 3;
  const int g = lane >> 2, t = lane & 3;
  uint32_t aoff[RT];
#pragma unroll
  for (int r = 0; r < RT; ++r) aoff[r] = (wg * RT + r) * 4096 + w * 1024 + lane * 16;
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
        a[r][2 * h][0] = u8x2_to_h2(v.x, 0x4140);
        a[r][2 * h][1] = u8x2_to_h2(v.x, 0x4342);
        a[r][2 * h][2] = u8x2_to_h2(v.y, 0x4140);
        a[r][2 * h][3] = u8x2_to_h2(v.y, 0x4342);
        a[r][2 * h + 1][0] = u8x2_to_h2(v.z, 0x4140);
        a[r][2 * h + 1][1] = u8x2_to_h2(v.z, 0x4342);
        a[r][2 * h + 1][2] = u8x2_to_h2(v.w, 0x4140);
        a[r][2 * h + 1][3] = u8x2_to_h2(v.w, 0x4342);
      }
  };
  int c = 0, sc = 0;
  mbar_wait(sbar, 0);
  frag(a0, sbase);
  // chunk c: issue its group (A = ac), load + dequantize chunk c+1 into an, retire group c-1 (A = ap)
  auto step = [&](uint32_t(&ac)[RT][4][4], uint32_t(&an)[RT][4][4], uint32_t(&ap)[RT][4][4]) {
    const uint64_t bd = wg_desc(sbase + sc * C::kSB + C::kWB, 128, 1024);
#pragma unroll
    for (int r = 0; r < RT; ++r) fence_regs(acc[r]);
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int s = 0; s < 4; ++s)
#pragma unroll
      for (int r = 0; r < RT; ++r) WgRS<T>::mma(acc[r], ac[r][s], bd + (uint64_t)(s * 16));
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    const int sn = sc + 1 == S ? 0 : sc + 1;
    if (c + 1 < nc) {
      mbar_wait(sbar + 8 * ((c + 1) % S), ((c + 1) / S) & 1);
      frag(an, sbase + sn * C::kSB);
    }
    asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
    keep_alive(ap);
#pragma unroll
    for (int r = 0; r < RT; ++r) fence_regs(acc[r]);
    if (c >= 1 && lane == 0) mbar_arrive(sbar + 8 * (S + (c - 1) % S));  // chunk c-1 retired: slot free
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
  pdl_wait();  // (already passed by the producer) before y is written
#pragma unroll
  for (int r = 0; r < RT; ++r) fence_regs(acc[r]);
  __syncthreads();  // A

  float* part = reinterpret_cast<float*>(smem + 1024);
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
  constexpr int R4 = kWsRows / 4, F4 = T * R4;
  const int q0 = kz * F4 / ks, q1 = (kz + 1) * F4 / ks;
  const float* peer[8];
#pragma unroll
  for (int z = 0; z < 8; ++z) peer[z] = z < ks ? cluster.map_shared_rank(part, z) : part;
  constexpr int NTH = 256, B = 4;  // B items per thread at once: their DSMEM loads are in flight together
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
      if (m < M) {
        const float o[4] = {sum[b].x, sum[b].y, sum[b].z, sum[b].w};
        const uint2 sc2 = *reinterpret_cast<const uint2*>(scale + n);
        const __half* scp = reinterpret_cast<const __half*>(&sc2);
        __align__(8) __half out[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          float u = o[i] * __half2float(scp[i]);
          if (bias) u += bias[n + i];
          if (gelu) u = gelu_tanh(u);
          out[i] = __float2half_rn(u);
        }
        *reinterpret_cast<uint2*>(y + (int64_t)m * N + n) = *reinterpret_cast<const uint2*>(out);
      }
    }
  }
  cluster_sync_all();  // C
#endif
}

template <int T>
void ws_launch(const __half* x, const uint8_t* qp, const __half* scale, const float* bias, __half* y, bool gelu, int M,
               int K, int N, int num_sms, cudaStream_t stream) {
  const int row_blocks = N / kWsRows, tiles = (M + T - 1) / T, chunks = K / kChunk;
  // split K over a cluster of up to 4 blocks while the grid still fits one wave (1 block per SM)
  int ks = 1;
  while (ks < 4 && 2 * ks <= chunks && (int64_t)row_blocks * tiles * ks * 2 <= num_sms) ks *= 2;
  check_arg(row_blocks <= 65535 && tiles <= 65535, "int8_packed_linear", "too many output rows or tokens");
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(ks, row_blocks, tiles);
  cfg.blockDim = dim3(kWsThreads);
  cfg.dynamicSmemBytes = WsCfg<T>::kSmem;
  cfg.stream = stream;
  cudaLaunchAttribute at[2];
  at[0].id = cudaLaunchAttributeClusterDimension;
  at[0].val.clusterDim.x = ks;
  at[0].val.clusterDim.y = 1;
  at[0].val.clusterDim.z = 1;
  at[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  at[1].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = at;
  cfg.numAttrs = pdl_enabled() ? 2 : 1;
  GLM_CUDA_CHECK(cudaLaunchKernelEx(&cfg, ws_kernel<T>, x, qp, scale, bias, y, M, N, K, gelu ? 1 : 0));
  GLM_CUDA_LAUNCH_CHECK("int8_packed_linear");
}

__global__ void packed_probe_kernel(int* out) {
#ifdef GLM_PACKED_WGMMA
  *out = 1;
#else
  *out = 0;
#endif
}

int grid_for(int64_t total) { return static_cast<int>(std::min<int64_t>((total + 255) / 256, 65535)); }

// Per device, once (Int8Gemm's constructor calls int8_packed_available() before
// any graph capture): whether this build runs the packed kernels here, their
// shared-memory limits, and how many GEMV blocks fit on the device at once.
struct PackedSetup {
  bool available = false;
  int gemv_resident = 0;  // GEMV blocks resident on the whole device
};

const PackedSetup& packed_setup() {
  return once_per_device<PackedSetup>("int8_packed_available", [](int dev) {
    PackedSetup p;
    int* flag = nullptr;
    int have = 0;
    GLM_CUDA_CHECK(cudaMalloc(&flag, sizeof(int)));
    packed_probe_kernel<<<1, 1>>>(flag);
    const cudaError_t e = cudaMemcpy(&have, flag, sizeof(int), cudaMemcpyDeviceToHost);
    cudaFree(flag);
    GLM_CUDA_CHECK(e);
    p.available = have == 1;
    if (p.available) {
      GLM_CUDA_CHECK(cudaFuncSetAttribute(ws_kernel<8>, cudaFuncAttributeMaxDynamicSharedMemorySize, WsCfg<8>::kSmem));
      GLM_CUDA_CHECK(cudaFuncSetAttribute(ws_kernel<16>, cudaFuncAttributeMaxDynamicSharedMemorySize, WsCfg<16>::kSmem));
      GLM_CUDA_CHECK(cudaFuncSetAttribute(ws_kernel<32>, cudaFuncAttributeMaxDynamicSharedMemorySize, WsCfg<32>::kSmem));
      GLM_CUDA_CHECK(cudaFuncSetAttribute(ws_kernel<64>, cudaFuncAttributeMaxDynamicSharedMemorySize, WsCfg<64>::kSmem));
      int per_sm = 0, sms = 0;
      GLM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, packed_gemv_kernel<false>,
                                                                   kPGemvWarps * 32, 0));
      GLM_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
      p.gemv_resident = std::max(1, per_sm) * sms;
    }
    return p;
  });
}

}  // namespace

bool int8_packed_available() { return packed_setup().available; }

bool int8_packed_shape_ok(int64_t N, int64_t K) {
  return N > 0 && K > 0 && N % kWsRows == 0 && K % kChunk == 0 && N * K < (1ll << 40);
}

void int8_pack(const int8_t* q, uint8_t* qp, int N, int K, cudaStream_t stream) {
  const char* k = "int8_pack";
  check_arg(q && qp && q != reinterpret_cast<const int8_t*>(qp), k, "null or aliased tensors");
  check_arg(int8_packed_shape_ok(N, K), k, "needs N % 256 == 0 and K % 64 == 0");
  check_arg((uintptr_t)q % 16 == 0 && (uintptr_t)qp % 16 == 0, k, "q and qp must be 16-byte aligned");
  pack_kernel<<<grid_for((int64_t)N * K / 16), 256, 0, stream>>>(q, reinterpret_cast<uint4*>(qp), N, K);
  GLM_CUDA_LAUNCH_CHECK(k);
}

void int8_packed_dequantize(const uint8_t* qp, const __half* scale, __half* out, int row0, int rows, int K,
                            cudaStream_t stream) {
  const char* k = "int8_packed_dequantize";
  check_arg(qp && scale && out, k, "null tensor");
  check_arg(row0 >= 0 && rows > 0 && row0 % kGroupRows == 0 && rows % kGroupRows == 0 && K > 0 && K % kChunk == 0,
            k, "rows must be whole 128-row groups and K % 64 == 0");
  check_arg((uintptr_t)qp % 16 == 0 && (uintptr_t)out % 4 == 0, k, "misaligned tensors");
  unpack_dequantize_kernel<<<grid_for((int64_t)rows * K / 16), 256, 0, stream>>>(
      reinterpret_cast<const uint4*>(qp), scale, out, row0, rows, K);
  GLM_CUDA_LAUNCH_CHECK(k);
}

void int8_packed_linear(const __half* x, const uint8_t* qp, const __half* scale, __half* y, const float* bias, bool gelu,
                        int M, int K, int N, int gemv_max, float* partials, size_t partial_floats, int* counters,
                        int counter_count, int num_sms, cudaStream_t stream) {
  const char* k = "int8_packed_linear";
  check_arg(x && qp && scale && y, k, "null tensor");
  check_arg(M >= 1, k, "bad sizes");
  check_arg(int8_packed_shape_ok(N, K), k, "needs N % 256 == 0 and K % 64 == 0");
  check_arg((uintptr_t)x % 16 == 0 && (uintptr_t)qp % 16 == 0 && (uintptr_t)scale % 8 == 0 && (uintptr_t)y % 8 == 0,
            k, "x and the weights must be 16-byte aligned, scale and y 8-byte aligned");
  check_arg(int8_packed_available(), k, "this build has no sm_90a code for this device");
  if (M <= gemv_max && M <= kPGemvMaxTokens)
    packed_gemv(x, qp, scale, y, bias, gelu, M, K, N, partials, partial_floats, counters, counter_count,
                packed_setup().gemv_resident, stream);
  else if (M <= 8)
    ws_launch<8>(x, qp, scale, bias, y, gelu, M, K, N, num_sms, stream);
  else if (M <= 16)
    ws_launch<16>(x, qp, scale, bias, y, gelu, M, K, N, num_sms, stream);
  else if (M <= 32)
    ws_launch<32>(x, qp, scale, bias, y, gelu, M, K, N, num_sms, stream);
  else
    ws_launch<64>(x, qp, scale, bias, y, gelu, M, K, N, num_sms, stream);
}

}  // namespace cuda
}  // namespace glm
