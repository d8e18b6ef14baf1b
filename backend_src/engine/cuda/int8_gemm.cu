// INT8 weight-only linear layers: see int8_gemm.h for the contract and
// docs/int8.md for the method and the numbers.
#include "int8_gemm.h"

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>

#include "cuda_check.h"
#include "device_util.h"
#include "pdl.h"

namespace glm {
namespace cuda {
namespace {

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

template <int M, bool F32OUT, bool GELU, int KS>
__global__ void __launch_bounds__(kGemvWarps * 32)
    int8_gemv_kernel(const __half* __restrict__ x, const int8_t* __restrict__ q, const __half* __restrict__ scale,
                     void* __restrict__ y, const float* __restrict__ bias, int N, int K) {
  constexpr int kPairs = kGemvWarps / KS;
  __shared__ float part[kGemvWarps][2][M];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int pair = warp / KS, ks = warp % KS;
  const int n0 = (blockIdx.x * kPairs + pair) * 2;
  const bool valid = n0 < N;
  const bool two = n0 + 1 < N;
  const int kper = (K + KS * 16 - 1) / (KS * 16) * 16;
  const int kbeg = ks * kper, kend = min(K, kbeg + kper);
  const int8_t* q0 = q + (int64_t)(valid ? n0 : 0) * K;
  const int8_t* q1 = q + (int64_t)(two ? n0 + 1 : (valid ? n0 : 0)) * K;
  float acc[2][M];
#pragma unroll
  for (int r = 0; r < 2; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m) acc[r][m] = 0.f;
  auto body = [&](const uint4& a, const uint4& b, int kk) {
    float wa[16], wb[16];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      i8x4_to_f32(word_of(a, i), wa + 4 * i);
      i8x4_to_f32(word_of(b, i), wb + 4 * i);
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
#pragma unroll
  for (int r = 0; r < 2; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) acc[r][m] += __shfl_xor_sync(0xffffffffu, acc[r][m], o);
  if (KS > 1) {
    if (lane == 0)
#pragma unroll
      for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int m = 0; m < M; ++m) part[warp][r][m] = acc[r][m];
    __syncthreads();
    if (lane == 0 && ks == 0) {
#pragma unroll
      for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int m = 0; m < M; ++m) {
          float s = 0.f;
#pragma unroll
          for (int j = 0; j < KS; ++j) s += part[warp + j][r][m];
          acc[r][m] = s;
        }
    }
  }
  if (lane == 0 && ks == 0 && valid) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      if (r == 1 && !two) break;
      const int n = n0 + r;
      const float sc = __half2float(scale[n]);
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

template <int M, int KS>
void gemv_launch_mk(const __half* x, const int8_t* q, const __half* scale, void* y, bool f32_out, const float* bias,
                    bool gelu, int N, int K, cudaStream_t stream) {
  const int pairs = (N + 1) / 2;
  const int per_block = kGemvWarps / KS;
  const int blocks = (pairs + per_block - 1) / per_block;
  const char* k = "int8_gemv";
  if (f32_out)
    launch_k(k, int8_gemv_kernel<M, true, false, KS>, blocks, kGemvWarps * 32, 0, stream, x, q, scale, y, bias, N, K);
  else if (gelu)
    launch_k(k, int8_gemv_kernel<M, false, true, KS>, blocks, kGemvWarps * 32, 0, stream, x, q, scale, y, bias, N, K);
  else
    launch_k(k, int8_gemv_kernel<M, false, false, KS>, blocks, kGemvWarps * 32, 0, stream, x, q, scale, y, bias, N,
             K);
}

template <int M>
void gemv_launch_m(const __half* x, const int8_t* q, const __half* scale, void* y, bool f32_out, const float* bias,
                   bool gelu, int N, int K, cudaStream_t stream) {
  if (N <= 8192 && K % (4 * 512) == 0)
    gemv_launch_mk<M, 4>(x, q, scale, y, f32_out, bias, gelu, N, K, stream);
  else
    gemv_launch_mk<M, 1>(x, q, scale, y, f32_out, bias, gelu, N, K, stream);
}

// ------------------------------------------------------------- tensor cores: shared pieces
// mma.m16n8k16: A = weight rows (row-major), B = tokens (x rows, "col"),
// C = [rows, tokens] in fp32. K order inside a 64-wide chunk is permuted (the
// sum does not care, as long as A and B agree): lane (g = lane/4, t = lane%4)
// takes bytes [16t, 16t+16) of its rows and the 16 matching fp16 of x; in
// k-step s it uses bytes 16t+4s+{0..3} as the logical columns {2t, 2t+1, 2t+8,
// 2t+9}, for A and B alike.
constexpr int kMmaWarps = 8;
// Split-K partials: at most (2 * SMs + grid) blocks of this many outputs.
constexpr int kSplitTileOutputs = 256 * 64;

// One output of a block's tile: its fp32 partial sum for split blockIdx.z
// (split K) or, without a split, the finished y = act(acc * scale + bias).
__device__ __forceinline__ void emit_output(float acc, int m, int n, int M, int N, int ksplit, float* part,
                                            const __half* scale, const float* bias, bool gelu, void* y,
                                            bool f32_out) {
  if (ksplit > 1) {
    part[((int64_t)blockIdx.z * M + m) * N + n] = acc;
    return;
  }
  float v = acc * __half2float(scale[n]) + (bias ? bias[n] : 0.f);
  if (gelu) v = gelu_tanh(v);
  store_out(y, f32_out, (int64_t)m * N + n, v);
}

// Split K, after every block wrote its partials: the last block of the tile
// (rows [rb, rb + rows), tokens [mb, mb + toks)) to finish, told by a counter
// per tile that it resets (CUDA-graph replays need no memset), sums the
// partials in split order (deterministic) and applies the epilogue.
__device__ __forceinline__ void splitk_finish(const float* part, int* counters, int rb, int rows, int mb, int toks,
                                              int M, int N, int ksplit, const __half* scale, const float* bias,
                                              bool gelu, void* y, bool f32_out) {
  __shared__ int s_last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    int* cnt = counters + blockIdx.y * gridDim.x + blockIdx.x;
    const int done = atomicAdd(cnt, 1);
    s_last = done == ksplit - 1;
    if (s_last) *cnt = 0;
  }
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  const int64_t plane = (int64_t)M * N;
  for (int e = threadIdx.x; e < rows * toks; e += blockDim.x) {
    const int n = rb + e % rows;
    const int m = mb + e / rows;
    if (n >= N || m >= M) continue;
    const float* pp = part + (int64_t)m * N + n;
    float v = 0.f;
    for (int z = 0; z < ksplit; ++z) v += __ldcg(pp + z * plane);
    v = v * __half2float(scale[n]) + (bias ? bias[n] : 0.f);
    if (gelu) v = gelu_tanh(v);
    store_out(y, f32_out, (int64_t)m * N + n, v);
  }
}

// Host: the launch geometry of a split-K tensor-core kernel whose blocks cover
// tile_rows weight rows x tile_toks tokens, stage_cols K columns per stage.
// grid = (token tiles, row blocks, splits). K is split at stage boundaries to
// fill the GPU without a ragged last wave; the time is modelled as waves x
// (stages per block + the pipeline fill). No split without the partials and
// counters, or when the grid fills the GPU twice already; every split non-empty.
struct SplitGrid {
  dim3 grid;
  int slice;   // K columns per split
  int ksplit;  // splits
};

SplitGrid split_grid(const char* name, int M, int N, int K, int tile_rows, int tile_toks, int stage_cols,
                     int pipe_depth, size_t partial_floats, bool have_buffers, int counter_count, int64_t slots) {
  const int row_blocks = (N + tile_rows - 1) / tile_rows;
  const int tiles = (M + tile_toks - 1) / tile_toks;
  const int64_t base = (int64_t)row_blocks * tiles;
  const int stages = (K + stage_cols - 1) / stage_cols;
  int ksplit = 1;
  if (have_buffers && base < 2 * slots && base <= counter_count) {
    int64_t best = -1;
    for (int ks = 1; ks <= stages; ++ks) {
      if ((size_t)ks * M * N > partial_floats) break;
      const int per = (stages + ks - 1) / ks;
      const int64_t blocks = base * ((stages + per - 1) / per);
      const int64_t cost = (blocks + slots - 1) / slots * (per + pipe_depth - 1);
      if (best < 0 || cost < best) best = cost, ksplit = ks;
    }
  }
  const int per = (stages + ksplit - 1) / ksplit;
  ksplit = (stages + per - 1) / per;
  check_arg(row_blocks <= 65535, name, "too many output rows");
  return {dim3(tiles, row_blocks, ksplit), per * stage_cols, ksplit};
}

// ------------------------------------------------------------- tensor cores, pipelined (variant 4)
// The same mma.m16n8k16 and in-register dequantization as above, fed from
// shared memory by a multi-stage cp.async pipeline: each stage holds KC 64-wide
// K chunks of the block's weight rows (int8; KC * 64 contiguous bytes of every
// row, so DRAM is read in whole 128-byte lines or more) and of its tokens
// (fp16), copied global -> shared by all threads with 16-byte cp.async.cg (L2
// only, no register round trip), STAGES-1 stages ahead of the one being
// multiplied: many bytes in flight per SM with few registers. Warps split the
// block's rows (8 warps x 16*WM rows) and each covers all of the block's 8*WN
// tokens, so every weight is dequantized once per token tile. K order inside a
// 64-wide chunk: the permutation described above (lane t takes bytes
// [16t, 16t+16) of a row and the matching 16 fp16 of x). Shared memory is
// swizzled by 16-byte granule so that the lanes' reads are conflict-free:
// weight granule ^ 4 on odd rows (rows are KC * 64 bytes), activation granule
// ^ (token % 8) inside each 128-byte chunk. Split-K (splitk_finish): the last
// block of a tile (a counter, reset by that block) sums the fp32 partials in
// split order, so results are deterministic.
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0) : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

template <int WM, int WN, int KC, int STAGES>
struct PipeTile {
  static constexpr int kThreads = kMmaWarps * 32;
  static constexpr int kRows = kMmaWarps * 16 * WM;  // weight rows (output channels) per block
  static constexpr int kToks = 8 * WN;               // tokens per block
  static constexpr int kCols = 64 * KC;              // K columns per stage
  static constexpr int kWRow = kCols;                // bytes of one weight row in a stage
  static constexpr int kXRow = 2 * kCols;            // bytes of one token row in a stage
  static constexpr int kWBytes = kRows * kWRow;
  static constexpr int kXBytes = kToks * kXRow;
  static constexpr int kStageBytes = kWBytes + kXBytes;
  static constexpr int kSmemBytes = STAGES * kStageBytes;
  static_assert(KC == 1 || KC % 2 == 0, "KC: 1 or even");
  // weight granule gr (16 bytes) of row r -> byte offset in the stage
  __device__ static int w_off(int r, int gr) { return r * kWRow + ((KC == 1 ? gr : gr ^ ((r & 1) << 2)) << 4); }
  // activation granule gr (8 fp16) of token row r -> byte offset in the stage
  __device__ static int x_off(int r, int gr) { return kWBytes + r * kXRow + (((gr & ~7) | ((gr ^ r) & 7)) << 4); }
};

template <int WM, int WN, int KC, int STAGES>
__global__ void __launch_bounds__(kMmaWarps * 32, WM == 1 ? 2 : 1)  // <= 128 registers: 2 blocks per SM
    int8_mma_pipe_kernel(const __half* __restrict__ x, const int8_t* __restrict__ q, const __half* __restrict__ scale,
                         float* __restrict__ part, int* __restrict__ counters, void* __restrict__ y,
                         const float* __restrict__ bias, int M, int K, int N, int slice, int ksplit, bool f32_out,
                         bool gelu) {
  using T = PipeTile<WM, WN, KC, STAGES>;
  extern __shared__ __align__(128) unsigned char smem[];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int rb = blockIdx.y * T::kRows;  // first weight row of the block
  const int mb = blockIdx.x * T::kToks;  // first token of the block
  const int kbeg = blockIdx.z * slice;
  const int kend = min(K, kbeg + slice);
  const int ns = (kend - kbeg + T::kCols - 1) / T::kCols;  // stages of work (the last may be partial)
  const uint32_t sbase = smem_addr(smem);

  // Stage c (columns kbeg + kCols*c ...) -> buffer st. Rows past N, tokens past
  // M and columns past kend are zero-filled (cp.async with source size 0).
  auto load_w = [&](int c, int st) {
    const uint32_t sb = sbase + st * T::kStageBytes;
    const int k0 = kbeg + T::kCols * c;
    constexpr int kWG = T::kRows * KC * 4;  // granules
#pragma unroll
    for (int it = 0; it < (kWG + T::kThreads - 1) / T::kThreads; ++it) {
      const int i = tid + it * T::kThreads;
      if (i >= kWG) break;
      const int r = i / (KC * 4), gr = i % (KC * 4);
      const int k = k0 + gr * 16;
      const bool ok = rb + r < N && k < kend;
      cp_async16(sb + T::w_off(r, gr), q + (ok ? (int64_t)(rb + r) * K + k : 0), ok);
    }
  };
  auto load_x = [&](int c, int st) {
    const uint32_t sb = sbase + st * T::kStageBytes;
    const int k0 = kbeg + T::kCols * c;
    constexpr int kXG = T::kToks * KC * 8;  // granules
#pragma unroll
    for (int it = 0; it < (kXG + T::kThreads - 1) / T::kThreads; ++it) {
      const int i = tid + it * T::kThreads;
      if (i >= kXG) break;
      const int r = i / (KC * 8), gr = i % (KC * 8);
      const int k = k0 + gr * 8;
      const bool ok = mb + r < M && k < kend;
      cp_async16(sb + T::x_off(r, gr), x + (ok ? (int64_t)(mb + r) * K + k : 0), ok);
    }
  };

  float acc[WM][WN][4];
#pragma unroll
  for (int r = 0; r < WM; ++r)
#pragma unroll
    for (int j = 0; j < WN; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[r][j][e] = 0.f;

  // The weights of the first stages do not depend on the previous kernel: they
  // are requested before waiting for it (programmatic dependent launch, pdl.h);
  // the first commit group then holds them all, with stage 0's tokens.
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s)
    if (s < ns) load_w(s, s);
  pdl_wait();
  pdl_launch_dependents();
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < ns) load_x(s, s);
    cp_async_commit();
  }
  const int wrow = warp * 16 * WM + g;  // this lane's first row inside the block
  for (int c = 0; c < ns; ++c) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // stage c is in shared memory; stage c-1's buffer is free
    if (c + STAGES - 1 < ns) {
      load_w(c + STAGES - 1, (c + STAGES - 1) % STAGES);
      load_x(c + STAGES - 1, (c + STAGES - 1) % STAGES);
    }
    cp_async_commit();
    const unsigned char* sb = smem + (c % STAGES) * T::kStageBytes;
    const int kc_here = min(KC, (kend - kbeg - T::kCols * c) / 64);
#pragma unroll
    for (int kc = 0; kc < KC; ++kc) {
      if (kc >= kc_here) break;
      uint4 w[2 * WM];  // rows wrow + 16r and wrow + 16r + 8, bytes [16t, 16t+16) of chunk kc
#pragma unroll
      for (int r = 0; r < WM; ++r) {
        w[2 * r] = *reinterpret_cast<const uint4*>(sb + T::w_off(wrow + 16 * r, 4 * kc + t));
        w[2 * r + 1] = *reinterpret_cast<const uint4*>(sb + T::w_off(wrow + 16 * r + 8, 4 * kc + t));
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        uint4 xv[WN];  // token 8j + g, granule 8kc + 2t + h
#pragma unroll
        for (int j = 0; j < WN; ++j)
          xv[j] = *reinterpret_cast<const uint4*>(sb + T::x_off(8 * j + g, 8 * kc + 2 * t + h));
#pragma unroll
        for (int ss = 0; ss < 2; ++ss) {
          uint32_t a[WM][4];  // k-step 2h + ss
#pragma unroll
          for (int r = 0; r < WM; ++r) {
            const uint32_t ua = word_of(w[2 * r], 2 * h + ss) ^ 0x80808080u;
            const uint32_t ub = word_of(w[2 * r + 1], 2 * h + ss) ^ 0x80808080u;
            a[r][0] = u8x2_to_h2(ua, 0x5140);
            a[r][1] = u8x2_to_h2(ub, 0x5140);
            a[r][2] = u8x2_to_h2(ua, 0x5342);
            a[r][3] = u8x2_to_h2(ub, 0x5342);
          }
          // independent accumulators back to back (each is used once per k-step)
#pragma unroll
          for (int j = 0; j < WN; ++j)
#pragma unroll
            for (int r = 0; r < WM; ++r)
              mma16816(acc[r][j], a[r][0], a[r][1], a[r][2], a[r][3], word_of(xv[j], 2 * ss),
                       word_of(xv[j], 2 * ss + 1));
        }
      }
    }
  }
  cp_async_wait<0>();

  // C fragment: e = 0/1 row g, tokens 2t/2t+1; e = 2/3 row g + 8.
#pragma unroll
  for (int r = 0; r < WM; ++r)
#pragma unroll
    for (int j = 0; j < WN; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int n = rb + wrow + 16 * r + (e >= 2 ? 8 : 0);
        const int m = mb + 8 * j + 2 * t + (e & 1);
        if (n < N && m < M) emit_output(acc[r][j][e], m, n, M, N, ksplit, part, scale, bias, gelu, y, f32_out);
      }
  if (ksplit > 1) splitk_finish(part, counters, rb, T::kRows, mb, T::kToks, M, N, ksplit, scale, bias, gelu, y, f32_out);
}

template <int WM, int WN, int KC, int STAGES>
struct PipeKernel {
  using T = PipeTile<WM, WN, KC, STAGES>;
  static void prepare() {
    GLM_CUDA_CHECK(cudaFuncSetAttribute(int8_mma_pipe_kernel<WM, WN, KC, STAGES>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, T::kSmemBytes));
  }
  static int blocks_per_sm() {
    int n = 0;
    GLM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, int8_mma_pipe_kernel<WM, WN, KC, STAGES>,
                                                                 T::kThreads, T::kSmemBytes));
    return std::max(1, n);
  }
  static void launch(const __half* x, const int8_t* q, const __half* scale, void* y, bool f32_out,
                     const float* bias, bool gelu, int M, int K, int N, float* partials, size_t partial_floats,
                     int* counters, int counter_count, int num_sms, int occupancy, cudaStream_t stream) {
    const SplitGrid g = split_grid("int8_mma_pipe", M, N, K, T::kRows, T::kToks, T::kCols, STAGES, partial_floats,
                                   partials && counters, counter_count, (int64_t)occupancy * std::max(1, num_sms));
    launch_k("int8_mma_pipe", int8_mma_pipe_kernel<WM, WN, KC, STAGES>, g.grid, dim3(T::kThreads), T::kSmemBytes,
             stream, x, q, scale, partials, counters, y, bias, M, K, N, g.slice, g.ksplit, f32_out, gelu);
  }
};
// The tile shapes instantiated, by token count (rows x tokens per block, bytes
// of one row per stage, stages): 256 contiguous bytes of a weight row per stage
// up to 16 tokens, 128 above.
constexpr int kPipeShapes = 4;
using Pipe4M8 = PipeKernel<1, 1, 4, 3>;   // 128 x 8, 36 KB per stage
using Pipe4M16 = PipeKernel<1, 2, 4, 3>;  // 128 x 16, 40 KB
using Pipe4M32 = PipeKernel<1, 4, 2, 4>;  // 128 x 32, 24 KB
using Pipe4M64 = PipeKernel<1, 8, 2, 3>;  // 128 x 64, 32 KB (token tiles over grid.x)

// ------------------------------------------------------------- Hopper wgmma (variant 6)
// For 9..256 tokens on sm_90a: the int8 weight tile and the fp16 token tile are
// staged by the same cp.async pipeline (64 K columns per stage); all 256 threads
// then dequantize the stage's 128 x 64 weights (exactly, as above) into an fp16
// tile in shared memory, and each warpgroup (4 warps, 64 rows) multiplies it
// with the token tile by wgmma.mma_async m64nNk16 (N = 16, 32 or 64 tokens; fp32
// accumulators in registers), both operands read by the tensor cores straight
// from shared memory. Shared layouts are wgmma's K-major "core matrices" without
// swizzle: 8 rows x 16 bytes (8 fp16 along K) contiguous, the 8 K-granules of a
// row group 128 bytes apart (LBO), row groups 1024 bytes apart (SBO). The int8
// stage is stored [row][64 bytes] with its 16-byte granules XOR-ed by
// (row / 2) % 4, so that the dequantizing 8-byte reads are conflict-free.
// Split-K and the epilogue: as in the pipelined kernels (deterministic).
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GLM_HAVE_WGMMA 1
#endif

#ifdef GLM_HAVE_WGMMA
template <int N>
struct Wgmma;
template <>
struct Wgmma<16> {
  static constexpr int kRegs = 8;
  // d (+)= A[64x16] B[16x16]: A and B from shared memory (descriptors), both K-major.
  __device__ __forceinline__ static void mma(float (&d)[8], uint64_t a, uint64_t b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7}, %8, %9, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
        : "l"(a), "l"(b), "r"(accumulate));
  }
};
template <>
struct Wgmma<32> {
  static constexpr int kRegs = 16;
  // d (+)= A[64x16] B[16x32]: A and B from shared memory (descriptors), both K-major.
  __device__ __forceinline__ static void mma(float (&d)[16], uint64_t a, uint64_t b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "l"(a), "l"(b), "r"(accumulate));
  }
};
template <>
struct Wgmma<64> {
  static constexpr int kRegs = 32;
  // d (+)= A[64x16] B[16x64]: A and B from shared memory (descriptors), both K-major.
  __device__ __forceinline__ static void mma(float (&d)[32], uint64_t a, uint64_t b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(a), "l"(b), "r"(accumulate));
  }
};

__device__ __forceinline__ uint64_t wgmma_desc(uint32_t saddr, uint32_t lbo, uint32_t sbo) {
  // start address, leading (K) and stride (M/N) byte offsets, all >> 4; no swizzle
  return (uint64_t)((saddr & 0x3FFFF) >> 4) | ((uint64_t)((lbo & 0x3FFFF) >> 4) << 16) |
         ((uint64_t)((sbo & 0x3FFFF) >> 4) << 32);
}
#endif  // GLM_HAVE_WGMMA

template <int BMT, int STAGES>
struct WgTile {
  static constexpr int kThreads = 256;  // two warpgroups
  static constexpr int kRows = 128;     // weight rows per block, 64 per warpgroup
  static constexpr int kToks = BMT;
  static constexpr int kCols = 128;                 // K columns per stage
  static constexpr int kSbo = kCols / 8 * 128;      // bytes between row groups of a core-matrix tile
  static constexpr int kWBytes = kRows * kCols;     // int8 stage
  static constexpr int kXBytes = kToks * kCols * 2; // fp16 stage (core matrices)
  static constexpr int kStageBytes = kWBytes + kXBytes;
  static constexpr int kABytes = kRows * kCols * 2; // one dequantized fp16 tile (core matrices)
  static constexpr int kSmemBytes = 2 * kABytes + STAGES * kStageBytes;
  static_assert(kSbo * 8 == kCols * 128 && kSmemBytes <= 227 * 1024, "WgTile: shared memory layout");
  // core-matrix offset of (row, granule of 8 fp16) in a K-major tile of kCols columns
  __device__ static int core_off(int r, int c) { return (r >> 3) * kSbo + c * 128 + (r & 7) * 16; }
  // the int8 stage: 16-byte granule gr of row r (XOR-ed by row % 8: conflict-free 8-byte reads)
  __device__ static int w_off(int r, int gr) { return r * kCols + ((gr ^ (r & 7)) << 4); }
};

#ifdef GLM_HAVE_WGMMA
template <int R>
__device__ __forceinline__ void wgmma_fence_operands(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
#endif

template <int BMT, int STAGES>
__global__ void __launch_bounds__(256, 1)
    int8_wgmma_kernel(const __half* __restrict__ x, const int8_t* __restrict__ q, const __half* __restrict__ scale,
                      float* __restrict__ part, int* __restrict__ counters, void* __restrict__ y,
                      const float* __restrict__ bias, int M, int K, int N, int slice, int ksplit, bool f32_out,
                      bool gelu) {
#ifdef GLM_HAVE_WGMMA
  using T = WgTile<BMT, STAGES>;
  using MMA = Wgmma<BMT>;
  extern __shared__ __align__(128) unsigned char smem[];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int wg = warp >> 2;  // warpgroup: rows 64 wg .. 64 wg + 63 of the block
  const int rb = blockIdx.y * T::kRows, mb = blockIdx.x * T::kToks;
  const int kbeg = blockIdx.z * slice;
  const int kend = min(K, kbeg + slice);
  const int nc = (kend - kbeg + T::kCols - 1) / T::kCols;  // stages of work (the last may be partial)
  const uint32_t sa_addr = smem_addr(smem), st_addr = sa_addr + 2 * T::kABytes;

  // Stage c -> buffer st; rows past N, tokens past M, columns past kend zero-filled.
  auto load = [&](int c, int st) {
    const uint32_t sw = st_addr + st * T::kStageBytes, sx = sw + T::kWBytes;
    const int k0 = kbeg + T::kCols * c;
#pragma unroll
    for (int it = 0; it < T::kRows * (T::kCols / 16) / T::kThreads; ++it) {
      const int i = tid + it * T::kThreads;
      const int r = i / (T::kCols / 16), gr = i % (T::kCols / 16);
      const int k = k0 + gr * 16;
      const bool ok = rb + r < N && k < kend;
      cp_async16(sw + T::w_off(r, gr), q + (ok ? (int64_t)(rb + r) * K + k : 0), ok);
    }
    constexpr int kXG = T::kToks * (T::kCols / 8);
#pragma unroll
    for (int it = 0; it < (kXG + T::kThreads - 1) / T::kThreads; ++it) {
      const int i = tid + it * T::kThreads;
      if (i >= kXG) break;
      const int r = (i & 7) + ((i / (8 * (T::kCols / 8))) << 3), cg = (i >> 3) % (T::kCols / 8);
      const int k = k0 + cg * 8;
      const bool ok = mb + r < M && k < kend;
      cp_async16(sx + T::core_off(r, cg), x + (ok ? (int64_t)(mb + r) * K + k : 0), ok);
    }
  };
  // int8 stage -> fp16 tile: 8 lanes write one core matrix (128 contiguous bytes).
  auto dequant = [&](int st, int buf) {
    const unsigned char* sw = smem + 2 * T::kABytes + st * T::kStageBytes;
    unsigned char* sa = smem + buf * T::kABytes;
#pragma unroll
    for (int it = 0; it < T::kRows * (T::kCols / 8) / T::kThreads; ++it) {
      const int i = tid + it * T::kThreads;
      const int r = (i & 7) + ((i / (8 * (T::kCols / 8))) << 3), cg = (i >> 3) % (T::kCols / 8);
      const uint2 w8 = *reinterpret_cast<const uint2*>(sw + T::w_off(r, cg >> 1) + ((cg & 1) << 3));
      const uint32_t u0 = w8.x ^ 0x80808080u, u1 = w8.y ^ 0x80808080u;
      uint4 h;
      h.x = u8x2_to_h2(u0, 0x5140);
      h.y = u8x2_to_h2(u0, 0x5342);
      h.z = u8x2_to_h2(u1, 0x5140);
      h.w = u8x2_to_h2(u1, 0x5342);
      *reinterpret_cast<uint4*>(sa + T::core_off(r, cg)) = h;
    }
  };

  float acc[MMA::kRegs];
#pragma unroll
  for (int i = 0; i < MMA::kRegs; ++i) acc[i] = 0.f;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < nc) load(s, s);
    cp_async_commit();
  }
  cp_async_wait<STAGES - 2>();
  __syncthreads();
  if (nc > 0) dequant(0, 0);
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  __syncthreads();
  // Stage c: wgmma on tile c % 2 runs while stage c+1 is dequantized into the other tile.
  for (int c = 0; c < nc; ++c) {
    wgmma_fence_operands(acc);
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
    const uint32_t a0 = sa_addr + (c & 1) * T::kABytes + wg * 8 * T::kSbo;  // this warpgroup's 64 rows
    const uint32_t b0 = st_addr + (c % STAGES) * T::kStageBytes + T::kWBytes;
#pragma unroll
    for (int s = 0; s < T::kCols / 16; ++s)
      MMA::mma(acc, wgmma_desc(a0 + s * 256, 128, T::kSbo), wgmma_desc(b0 + s * 256, 128, T::kSbo), 1);
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
    wgmma_fence_operands(acc);
    // the buffer of stage c-1 is free (its wgmma was waited for at the end of the last iteration)
    if (c + STAGES - 1 < nc) load(c + STAGES - 1, (c + STAGES - 1) % STAGES);
    cp_async_commit();
    if (c + 1 < nc) {
      cp_async_wait<STAGES - 2>();
      __syncthreads();  // every thread's part of stage c+1 landed
      dequant((c + 1) % STAGES, (c + 1) & 1);
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
    wgmma_fence_operands(acc);
    __syncthreads();  // tile c+1 complete for both warpgroups; stage c and tile c no longer read
  }
  cp_async_wait<0>();

  // accumulators: n8 block j, e = 0/1 row g, tokens 8j + 2t (+1); e = 2/3 row g + 8
  const int row0 = rb + 64 * wg + 16 * (warp & 3) + g;
#pragma unroll
  for (int j = 0; j < BMT / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int n = row0 + (e >= 2 ? 8 : 0);
      const int m = mb + 8 * j + 2 * t + (e & 1);
      if (n < N && m < M) emit_output(acc[4 * j + e], m, n, M, N, ksplit, part, scale, bias, gelu, y, f32_out);
    }
  if (ksplit > 1) splitk_finish(part, counters, rb, T::kRows, mb, T::kToks, M, N, ksplit, scale, bias, gelu, y, f32_out);
#endif
}

template <int BMT, int STAGES>
struct WgKernel {
  using T = WgTile<BMT, STAGES>;
  static void prepare() {
    GLM_CUDA_CHECK(cudaFuncSetAttribute(int8_wgmma_kernel<BMT, STAGES>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        T::kSmemBytes));
  }
  static int blocks_per_sm() {
    int n = 0;
    GLM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, int8_wgmma_kernel<BMT, STAGES>, T::kThreads,
                                                                 T::kSmemBytes));
    return std::max(1, n);
  }
  static void launch(const __half* x, const int8_t* q, const __half* scale, void* y, bool f32_out,
                     const float* bias, bool gelu, int M, int K, int N, float* partials, size_t partial_floats,
                     int* counters, int counter_count, int num_sms, int occupancy, cudaStream_t stream) {
    const SplitGrid g = split_grid("int8_wgmma", M, N, K, T::kRows, T::kToks, T::kCols, STAGES, partial_floats,
                                   partials && counters, counter_count, (int64_t)occupancy * std::max(1, num_sms));
    int8_wgmma_kernel<BMT, STAGES><<<g.grid, T::kThreads, T::kSmemBytes, stream>>>(
        x, q, scale, partials, counters, y, bias, M, K, N, g.slice, g.ksplit, f32_out, gelu);
    GLM_CUDA_LAUNCH_CHECK("int8_wgmma");
  }
};
using Wg16 = WgKernel<16, 5>;  // 164 KB of shared memory
using Wg32 = WgKernel<32, 5>;  // 184 KB
using Wg64 = WgKernel<64, 4>;  // 192 KB

__global__ void bias_act_kernel(void* __restrict__ y, bool f32_out, const float* __restrict__ bias, bool gelu,
                                int M, int N) {
  const int64_t total = (int64_t)M * N;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    float v = f32_out ? static_cast<float*>(y)[i] : __half2float(static_cast<__half*>(y)[i]);
    if (bias) v += bias[i % N];
    if (gelu) v = gelu_tanh(v);
    store_out(y, f32_out, i, v);
  }
}

__global__ void dequantize_kernel(const int8_t* __restrict__ q, const __half* __restrict__ scale,
                                  __half* __restrict__ out, int64_t rows, int64_t cols) {
  const int64_t total = rows * cols;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = __float2half_rn(static_cast<float>(q[i]) * __half2float(scale[i / cols]));
}

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }

template <typename T>
__global__ void __launch_bounds__(256)
    quantize_rows_kernel(const T* __restrict__ w, int64_t cols, int8_t* __restrict__ q, __half* __restrict__ scale) {
  __shared__ float red[8];
  __shared__ float s_scale;
  const int64_t row = blockIdx.x;
  const T* wr = w + row * cols;
  float amax = 0.f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) amax = fmaxf(amax, fabsf(to_f32(wr[c])));
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = amax;
  __syncthreads();
  if (threadIdx.x == 0) {
    float m = red[0];
    for (int i = 1; i < (int)(blockDim.x >> 5); ++i) m = fmaxf(m, red[i]);
    __half sh = __float2half_rn(m / 127.0f);
    if (!(__half2float(sh) > 0.f)) sh = __float2half_rn(1.0f);
    scale[row] = sh;
    s_scale = __half2float(sh);
  }
  __syncthreads();
  const float sf = s_scale;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = fminf(127.f, fmaxf(-127.f, rintf(to_f32(wr[c]) / sf)));
    q[row * cols + c] = static_cast<int8_t>(v);
  }
}

int grid_for(int64_t total) { return static_cast<int>(std::min<int64_t>((total + 255) / 256, 65535)); }

void check_blas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("cuBLAS error in ") + what + ": " + cublasGetStatusString(s));
}

}  // namespace

// ------------------------------------------------------------- launchers
bool int8_gemv_supported(const void* x, const void* q, int M, int K) {
  return M >= 1 && M <= 8 && K > 0 && K % 16 == 0 && (uintptr_t)x % 16 == 0 && (uintptr_t)q % 16 == 0;
}

void int8_gemv(const __half* x, const int8_t* q, const __half* scale, void* y, bool f32_out, const float* bias,
               bool gelu, int M, int K, int N, cudaStream_t stream) {
  const char* k = "int8_gemv";
  check_arg(x && q && scale && y, k, "null tensor");
  check_arg(N > 0, k, "bad sizes");
  check_arg(int8_gemv_supported(x, q, M, K), k, "needs 1 <= M <= 8, K % 16 == 0, 16-byte aligned x and q");
  check_arg(!(f32_out && gelu), k, "GeLU only with fp16 output");
  switch (M) {
    case 1: gemv_launch_m<1>(x, q, scale, y, f32_out, bias, gelu, N, K, stream); break;
    case 2: gemv_launch_m<2>(x, q, scale, y, f32_out, bias, gelu, N, K, stream); break;
    case 3: gemv_launch_m<3>(x, q, scale, y, f32_out, bias, gelu, N, K, stream); break;
    case 4: gemv_launch_m<4>(x, q, scale, y, f32_out, bias, gelu, N, K, stream); break;
    case 5: gemv_launch_m<5>(x, q, scale, y, f32_out, bias, gelu, N, K, stream); break;
    case 6: gemv_launch_m<6>(x, q, scale, y, f32_out, bias, gelu, N, K, stream); break;
    case 7: gemv_launch_m<7>(x, q, scale, y, f32_out, bias, gelu, N, K, stream); break;
    default: gemv_launch_m<8>(x, q, scale, y, f32_out, bias, gelu, N, K, stream); break;
  }
  GLM_CUDA_LAUNCH_CHECK(k);
}

bool int8_mma_supported(const void* x, const void* q, int K) {
  return K > 0 && K % 64 == 0 && (uintptr_t)x % 16 == 0 && (uintptr_t)q % 16 == 0;
}

// Per device: the dynamic shared memory limit of every pipelined kernel is
// raised once (before any graph capture: Int8Gemm's constructor calls this),
// and the resident blocks per SM are measured for the split-K choice.
struct PipeOccupancy {
  int blocks[kPipeShapes] = {};
  int wg[3] = {};    // the wgmma kernels (16, 32, 64 tokens)
  bool wgmma = false;  // this build has sm_90a code for this device
};

static const PipeOccupancy& pipe_setup() {
  constexpr int kMaxDevices = 64;
  static std::mutex mu;
  static PipeOccupancy occ[kMaxDevices];
  static bool done[kMaxDevices] = {};
  int dev = 0;
  GLM_CUDA_CHECK(cudaGetDevice(&dev));
  check_arg(dev >= 0 && dev < kMaxDevices, "int8_mma_pipe", "device ordinal out of range");
  std::lock_guard<std::mutex> lock(mu);
  if (!done[dev]) {
    int i = 0;
    auto one = [&](auto kernel) {
      decltype(kernel)::prepare();
      occ[dev].blocks[i++] = decltype(kernel)::blocks_per_sm();
    };
    one(Pipe4M8{});
    one(Pipe4M16{});
    one(Pipe4M32{});
    one(Pipe4M64{});
    occ[dev].wgmma = int8_packed_available();  // the same test: sm_90a code running on this device
    if (occ[dev].wgmma) {
      Wg16::prepare();
      Wg32::prepare();
      Wg64::prepare();
      occ[dev].wg[0] = Wg16::blocks_per_sm();
      occ[dev].wg[1] = Wg32::blocks_per_sm();
      occ[dev].wg[2] = Wg64::blocks_per_sm();
    }
    done[dev] = true;
  }
  return occ[dev];
}

bool int8_wgmma_available() { return pipe_setup().wgmma; }

void int8_mma_pipe(const __half* x, const int8_t* q, const __half* scale, void* y, bool f32_out, const float* bias,
                   bool gelu, int M, int K, int N, float* partials, size_t partial_floats, int* counters,
                   int counter_count, int num_sms, cudaStream_t stream, int variant) {
  const char* k = "int8_mma_pipe";
  check_arg(x && q && scale && y, k, "null tensor");
  check_arg(M >= 1 && N >= 1, k, "bad sizes");
  check_arg(int8_mma_supported(x, q, K), k, "needs K % 64 == 0, 16-byte aligned x and q");
  check_arg(!(f32_out && gelu), k, "GeLU only with fp16 output");
  check_arg(variant == 4 || variant == 6, k, "variant must be 4 or 6");
  const PipeOccupancy& po = pipe_setup();
  if (variant == 6 && M > 8 && po.wgmma) {
    if (M <= 16)
      Wg16::launch(x, q, scale, y, f32_out, bias, gelu, M, K, N, partials, partial_floats, counters, counter_count,
                   num_sms, po.wg[0], stream);
    else if (M <= 32)
      Wg32::launch(x, q, scale, y, f32_out, bias, gelu, M, K, N, partials, partial_floats, counters, counter_count,
                   num_sms, po.wg[1], stream);
    else
      Wg64::launch(x, q, scale, y, f32_out, bias, gelu, M, K, N, partials, partial_floats, counters, counter_count,
                   num_sms, po.wg[2], stream);
    return;
  }
  if (variant == 6) variant = 4;  // up to 8 tokens, or no sm_90a code: the pipelined kernel
  const int* occ = po.blocks;
  const int shape = M <= 8 ? 0 : M <= 16 ? 1 : M <= 32 ? 2 : 3;
#define GLM_INT8_PIPE(KERNEL, I)                                                                                  \
  case I:                                                                                                         \
    KERNEL::launch(x, q, scale, y, f32_out, bias, gelu, M, K, N, partials, partial_floats, counters, counter_count, \
                   num_sms, occ[I], stream);                                                                      \
    break
  switch (shape) {
    GLM_INT8_PIPE(Pipe4M8, 0);
    GLM_INT8_PIPE(Pipe4M16, 1);
    GLM_INT8_PIPE(Pipe4M32, 2);
    default:
      GLM_INT8_PIPE(Pipe4M64, 3);
  }
#undef GLM_INT8_PIPE
}

void int8_dequantize(const int8_t* q, const __half* scale, __half* out, int64_t rows, int64_t cols,
                     cudaStream_t stream) {
  check_arg(q && scale && out, "int8_dequantize", "null tensor");
  check_arg(rows >= 0 && cols > 0, "int8_dequantize", "bad sizes");
  if (rows == 0) return;
  dequantize_kernel<<<grid_for(rows * cols), 256, 0, stream>>>(q, scale, out, rows, cols);
  GLM_CUDA_LAUNCH_CHECK("int8_dequantize");
}

template <typename T>
static void quantize_launch(const T* w, int64_t rows, int64_t cols, int8_t* q, __half* scale, cudaStream_t stream) {
  check_arg(w && q && scale, "int8_quantize_rows", "null tensor");
  check_arg(rows >= 0 && rows < (1ll << 31) && cols > 0, "int8_quantize_rows", "bad sizes");
  if (rows == 0) return;
  quantize_rows_kernel<T><<<static_cast<unsigned>(rows), 256, 0, stream>>>(w, cols, q, scale);
  GLM_CUDA_LAUNCH_CHECK("int8_quantize_rows");
}

void int8_quantize_rows(const float* w, int64_t rows, int64_t cols, int8_t* q, __half* scale, cudaStream_t stream) {
  quantize_launch(w, rows, cols, q, scale, stream);
}
void int8_quantize_rows(const __half* w, int64_t rows, int64_t cols, int8_t* q, __half* scale, cudaStream_t stream) {
  quantize_launch(w, rows, cols, q, scale, stream);
}

// ------------------------------------------------------------- Int8Gemm
Int8Gemm::Int8Gemm() {
  int dev = 0;
  GLM_CUDA_CHECK(cudaGetDevice(&dev));
  GLM_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, dev));
  if (const char* e = std::getenv("GLM_INT8_GEMV_MAX")) gemv_max_ = std::atoi(e);
  if (const char* e = std::getenv("GLM_INT8_MMA_MAX")) mma_max_ = std::atoi(e);
  if (const char* e = std::getenv("GLM_INT8_MMA_VARIANT")) set_mma_variant(std::atoi(e));
  pipe_setup();  // shared-memory limits of the pipelined kernels, before any graph capture
  int8_packed_available();  // and of the packed-layout kernels
  check_blas(cublasCreate(&handle_), "cublasCreate");
  try {
    workspace_bytes_ = 32u << 20;
    GLM_CUDA_CHECK(cudaMalloc(&workspace_, workspace_bytes_));
    check_blas(cublasSetWorkspace(handle_, workspace_, workspace_bytes_), "cublasSetWorkspace");
    // Split-K partials: at most (2 * SMs + grid) blocks of 256 rows x 64 tokens.
    partial_bytes_ = (size_t)4 * num_sms_ * kSplitTileOutputs * sizeof(float);
    GLM_CUDA_CHECK(cudaMalloc(&partials_, partial_bytes_));
    scratch_bytes_ = (size_t)32 << 21;  // 32M fp16
    GLM_CUDA_CHECK(cudaMalloc(&scratch_, scratch_bytes_));
    GLM_CUDA_CHECK(cudaMalloc(&counters_, kCounters * sizeof(int)));
    GLM_CUDA_CHECK(cudaMemset(counters_, 0, kCounters * sizeof(int)));
  } catch (...) {
    if (workspace_) cudaFree(workspace_);
    if (partials_) cudaFree(partials_);
    if (scratch_) cudaFree(scratch_);
    cublasDestroy(handle_);
    throw;
  }
}

Int8Gemm::~Int8Gemm() {
  if (handle_) cublasDestroy(handle_);
  if (workspace_) cudaFree(workspace_);
  if (partials_) cudaFree(partials_);
  if (scratch_) cudaFree(scratch_);
  if (counters_) cudaFree(counters_);
}

void Int8Gemm::set_mma_variant(int v) {
  check_arg(v == 4 || v == 6, "Int8Gemm", "tensor-core variant (GLM_INT8_MMA_VARIANT) must be 4 or 6");
  mma_variant_ = v;
}

int Int8Gemm::gemv_max_tokens() const { return gemv_max_ >= 0 ? gemv_max_ : (pdl_enabled() ? 1 : 2); }

void Int8Gemm::set_stream(cudaStream_t stream) {
  stream_ = stream;
  check_blas(cublasSetStream(handle_, stream), "cublasSetStream");
  check_blas(cublasSetWorkspace(handle_, workspace_, workspace_bytes_), "cublasSetWorkspace");
}

void Int8Gemm::linear(const __half* x, const Int8Weight& w, __half* y, int tokens, int in, int out, const float* bias,
                      bool gelu) {
  run(x, w, y, false, tokens, in, out, bias, gelu);
}

void Int8Gemm::linear_f32out(const __half* x, const Int8Weight& w, float* y, int tokens, int in, int out) {
  run(x, w, y, true, tokens, in, out, nullptr, false);
}

void Int8Gemm::run(const __half* x, const Int8Weight& w, void* y, bool f32_out, int tokens, int in, int out,
                   const float* bias, bool gelu) {
  const char* k = "int8 linear";
  check_arg(x && w.q && w.scale && y, k, "null tensor");
  check_arg(tokens >= 0 && in > 0 && out > 0, k, "bad sizes");
  check_arg(!(f32_out && gelu), k, "GeLU only with fp16 output");
  if (tokens == 0) return;
  if (w.packed) {
    run_packed(x, w, y, f32_out, tokens, in, out, bias, gelu);
    return;
  }
  if (tokens <= gemv_max_tokens() && int8_gemv_supported(x, w.q, tokens, in)) {
    int8_gemv(x, w.q, w.scale, y, f32_out, bias, gelu, tokens, in, out, stream_);
    return;
  }
  if (tokens <= mma_max_ && int8_mma_supported(x, w.q, in)) {
    int8_mma_pipe(x, w.q, w.scale, y, f32_out, bias, gelu, tokens, in, out, partials_,
                  partial_bytes_ / sizeof(float), counters_, kCounters, num_sms_, stream_, mma_variant_);
    return;
  }
  // Prefill: dequantize slices of rows into the scratch buffer, cuBLAS each.
  const int64_t cap = static_cast<int64_t>(scratch_bytes_ / sizeof(__half));
  check_arg(in <= cap, k, "input size larger than the dequantization scratch");
  const int64_t rows_per = std::max<int64_t>(1, cap / in);
  const float one = 1.f, zero = 0.f;
  for (int64_t n0 = 0; n0 < out; n0 += rows_per) {
    const int nc = static_cast<int>(std::min<int64_t>(rows_per, out - n0));
    int8_dequantize(w.q + n0 * in, w.scale + n0, scratch_, nc, in, stream_);
    void* yo = f32_out ? static_cast<void*>(static_cast<float*>(y) + n0) : static_cast<void*>(static_cast<__half*>(y) + n0);
    check_blas(cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, nc, tokens, in, &one, scratch_, CUDA_R_16F, in, x,
                            CUDA_R_16F, in, &zero, yo, f32_out ? CUDA_R_32F : CUDA_R_16F, out, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx (int8 dequantized)");
  }
  if (bias || gelu) {
    bias_act_kernel<<<grid_for((int64_t)tokens * out), 256, 0, stream_>>>(y, f32_out, bias, gelu, tokens, out);
    GLM_CUDA_LAUNCH_CHECK("int8 linear (bias/GeLU)");
  }
}

// The packed layout (int8_packed.cu): its GEMV, its wgmma kernel, or for
// prefill whole 128-row groups dequantized into the scratch buffer and cuBLAS.
void Int8Gemm::run_packed(const __half* x, const Int8Weight& w, void* y, bool f32_out, int tokens, int in, int out,
                          const float* bias, bool gelu) {
  const char* k = "int8 linear (packed weights)";
  check_arg(!f32_out, k, "fp16 output only");
  const uint8_t* qp = reinterpret_cast<const uint8_t*>(w.q);
  if (tokens <= mma_max_ && (uintptr_t)x % 16 == 0) {
    // packed: its GEMV up to 8 tokens unless GLM_INT8_GEMV_MAX / set_gemv_max_tokens says otherwise
    const int gemv_max = gemv_max_ >= 0 ? gemv_max_ : 8;
    int8_packed_linear(x, qp, w.scale, static_cast<__half*>(y), bias, gelu, tokens, in, out, gemv_max,
                       partials_, partial_bytes_ / sizeof(float), counters_, kCounters, num_sms_, stream_);
    return;
  }
  const int64_t cap = static_cast<int64_t>(scratch_bytes_ / sizeof(__half));
  const int64_t rows_per = cap / in / 128 * 128;
  check_arg(rows_per >= 128, k, "input size larger than the dequantization scratch");
  const float one = 1.f, zero = 0.f;
  for (int64_t n0 = 0; n0 < out; n0 += rows_per) {
    const int nc = static_cast<int>(std::min<int64_t>(rows_per, out - n0));
    int8_packed_dequantize(qp, w.scale, scratch_, static_cast<int>(n0), nc, in, stream_);
    check_blas(cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, nc, tokens, in, &one, scratch_, CUDA_R_16F, in, x,
                            CUDA_R_16F, in, &zero, static_cast<__half*>(y) + n0, CUDA_R_16F, out, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx (int8 dequantized)");
  }
  if (bias || gelu) {
    bias_act_kernel<<<grid_for((int64_t)tokens * out), 256, 0, stream_>>>(y, false, bias, gelu, tokens, out);
    GLM_CUDA_LAUNCH_CHECK("int8 linear (bias/GeLU)");
  }
}

}  // namespace cuda
}  // namespace glm
