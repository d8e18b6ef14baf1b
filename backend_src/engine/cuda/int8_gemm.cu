// INT8 weight-only linear layers: see int8_gemm.h for the contract and
// docs/int8.md for the method and the numbers.
#include "int8_gemm.h"

#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "cuda_check.h"
#include "device_util.h"
#include "pdl.h"
#include "quant_gemv.cuh"

namespace glm {
namespace cuda {
namespace {

using quant_gemv::store_out;

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
bool int8_gemv_supported(const void* x, const void* q, int M, int K) { return quant_gemv::supported(x, q, M, K); }

void int8_gemv(const __half* x, const int8_t* q, const __half* scale, void* y, bool f32_out, const float* bias,
               bool gelu, int M, int K, int N, cudaStream_t stream) {
  quant_gemv::gemv<quant_gemv::Int8Codes>("int8_gemv", x, q, scale, y, f32_out, bias, gelu, M, K, N, stream);
}

bool int8_mma_supported(const void* x, const void* q, int K) {
  return K > 0 && K % 64 == 0 && (uintptr_t)x % 16 == 0 && (uintptr_t)q % 16 == 0;
}

// Per device: the dynamic shared memory limit of every pipelined kernel is
// raised once (before any graph capture: Int8Gemm's constructor calls this),
// and the resident blocks per SM are measured for the split-K choice.
struct PipeOccupancy {
  int blocks[kPipeShapes] = {};
};

static const PipeOccupancy& pipe_setup() {
  return once_per_device<PipeOccupancy>("int8_mma_pipe", [](int) {
    PipeOccupancy occ;
    int i = 0;
    auto one = [&](auto kernel) {
      decltype(kernel)::prepare();
      occ.blocks[i++] = decltype(kernel)::blocks_per_sm();
    };
    one(Pipe4M8{});
    one(Pipe4M16{});
    one(Pipe4M32{});
    one(Pipe4M64{});
    return occ;
  });
}

void int8_mma_pipe(const __half* x, const int8_t* q, const __half* scale, void* y, bool f32_out, const float* bias,
                   bool gelu, int M, int K, int N, float* partials, size_t partial_floats, int* counters,
                   int counter_count, int num_sms, cudaStream_t stream) {
  const char* k = "int8_mma_pipe";
  check_arg(x && q && scale && y, k, "null tensor");
  check_arg(M >= 1 && N >= 1, k, "bad sizes");
  check_arg(int8_mma_supported(x, q, K), k, "needs K % 64 == 0, 16-byte aligned x and q");
  check_arg(!(f32_out && gelu), k, "GeLU only with fp16 output");
  const int* occ = pipe_setup().blocks;
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
  if (w8a8_min_ > 0 && tokens >= w8a8_min_ && w8a8_supported(x, w.q, in) &&
      w8a8_scratch_need(tokens, in) <= scratch_bytes_) {
    w8a8_linear(handle_, x, w.q, w.scale, y, f32_out, bias, gelu, tokens, in, out, scratch_, scratch_bytes_, stream_);
    return;
  }
  if (tokens <= gemv_max_tokens() && int8_gemv_supported(x, w.q, tokens, in)) {
    int8_gemv(x, w.q, w.scale, y, f32_out, bias, gelu, tokens, in, out, stream_);
    return;
  }
  if (tokens <= mma_max_ && int8_mma_supported(x, w.q, in)) {
    int8_mma_pipe(x, w.q, w.scale, y, f32_out, bias, gelu, tokens, in, out, partials_,
                  partial_bytes_ / sizeof(float), counters_, kCounters, num_sms_, stream_);
    return;
  }
  dequantize_then_cublas(x, w, y, f32_out, tokens, in, out, bias, gelu);
}

// The packed layout (int8_packed.cu): its GEMV, its wgmma kernel, or for
// prefill whole 128-row groups dequantized into the scratch buffer and cuBLAS.
void Int8Gemm::run_packed(const __half* x, const Int8Weight& w, void* y, bool f32_out, int tokens, int in, int out,
                          const float* bias, bool gelu) {
  const char* k = "int8 linear (packed weights)";
  check_arg(!f32_out, k, "fp16 output only");
  const uint8_t* qp = reinterpret_cast<const uint8_t*>(w.q);
  if (tokens <= mma_max_ && (uintptr_t)x % 16 == 0) {
    // packed: its GEMV up to 8 tokens unless set_gemv_max_tokens says otherwise
    const int gemv_max = gemv_max_ >= 0 ? gemv_max_ : 8;
    int8_packed_linear(x, qp, w.scale, static_cast<__half*>(y), bias, gelu, tokens, in, out, gemv_max,
                       partials_, partial_bytes_ / sizeof(float), counters_, kCounters, num_sms_, stream_);
    return;
  }
  dequantize_then_cublas(x, w, y, false, tokens, in, out, bias, gelu);
}

// Prefill: slices of rows dequantized into the scratch buffer (whole 128-row
// groups for the packed layout), cuBLAS on each, then bias and GeLU.
void Int8Gemm::dequantize_then_cublas(const __half* x, const Int8Weight& w, void* y, bool f32_out, int tokens, int in,
                                      int out, const float* bias, bool gelu) {
  const int64_t cap = static_cast<int64_t>(scratch_bytes_ / sizeof(__half));
  const int64_t unit = w.packed ? 128 : 1;
  const int64_t rows_per = cap / in / unit * unit;
  check_arg(rows_per >= 1, "int8 linear", "input size larger than the dequantization scratch");
  const float one = 1.f, zero = 0.f;
  for (int64_t n0 = 0; n0 < out; n0 += rows_per) {
    const int nc = static_cast<int>(std::min<int64_t>(rows_per, out - n0));
    if (w.packed)
      int8_packed_dequantize(reinterpret_cast<const uint8_t*>(w.q), w.scale, scratch_, static_cast<int>(n0), nc, in,
                             stream_);
    else
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

}  // namespace cuda
}  // namespace glm
