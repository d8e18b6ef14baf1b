// GPU sampling with the CPU sampler's semantics (../sampling.h):
//   repetition penalty over distinct history ids -> argmax (temperature 0) or
//   logits * (1/T) -> descending order (lower id first on ties) -> top-k ->
//   probabilities exp(double(x - max)) -> top-p prefix (cum >= top_p * total)
//   -> inverse CDF with u = uniform01(seed, rng_offset): first cum > u * total.
// The order comes from one device radix sort of (row, descending value) keys
// with ids as values (stable, so equal values keep ascending ids).
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>

#include <cfloat>

#include "../rng.h"
#include "cuda_check.h"
#include "kernels.h"

namespace glm {
namespace cuda {
namespace {

constexpr int kSortRows = 64;  // rows per radix sort (bounds the workspace)
constexpr int kRowBits = 6;    // log2(kSortRows)
constexpr int kThreads = 1024;

__global__ void penalty_kernel(float* __restrict__ logits, int vocab,
                               const int32_t* __restrict__ rows_idx, const float* __restrict__ penalty,
                               const int32_t* __restrict__ hist, const int32_t* __restrict__ hist_off) {
  extern __shared__ uint32_t bitmap[];
  const int i = blockIdx.x;
  const int words = (vocab + 31) / 32;
  for (int w = threadIdx.x; w < words; w += blockDim.x) bitmap[w] = 0u;
  __syncthreads();
  for (int j = hist_off[i] + threadIdx.x; j < hist_off[i + 1]; j += blockDim.x) {
    const int id = hist[j];
    if (id >= 0 && id < vocab) atomicOr(&bitmap[id >> 5], 1u << (id & 31));
  }
  __syncthreads();
  const float p = penalty[i];
  float* row = logits + (int64_t)rows_idx[i] * vocab;
  for (int w = threadIdx.x; w < words; w += blockDim.x) {
    uint32_t bits = bitmap[w];
    while (bits) {
      const int b = __ffs(bits) - 1;
      bits &= bits - 1;
      const int id = w * 32 + b;
      const float l = row[id];
      row[id] = l < 0.f ? l * p : l / p;
    }
  }
}

__global__ void presence_frequency_kernel(float* __restrict__ logits, int vocab,
                                          const int32_t* __restrict__ rows_idx,
                                          const float* __restrict__ presence,
                                          const float* __restrict__ frequency,
                                          const int32_t* __restrict__ ids,
                                          const int32_t* __restrict__ counts,
                                          const int32_t* __restrict__ off) {
  const int i = blockIdx.x;
  float* row = logits + (int64_t)rows_idx[i] * vocab;
  const float p = presence[i], f = frequency[i];
  for (int j = off[i] + threadIdx.x; j < off[i + 1]; j += blockDim.x) {
    const int id = ids[j];
    if (id >= 0 && id < vocab) row[id] -= (float)counts[j] * f + p;  // as the CPU sampler
  }
}

// Argmax in two launches: blocks of a row reduce chunks to a 64-bit key
// (orderable value << 32 | ~id), combined with atomicMax; then key -> id.
constexpr int kArgmaxChunk = 4096;

__device__ __forceinline__ uint32_t order_bits_any(float x) {
  if (x == 0.f) x = 0.f;
  const uint32_t b = __float_as_uint(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__global__ void argmax_partial_kernel(const float* __restrict__ logits, int vocab,
                                      unsigned long long* __restrict__ keys) {
  const int row = blockIdx.y;
  const float* r = logits + (int64_t)row * vocab;
  const int begin = blockIdx.x * kArgmaxChunk;
  const int end = min(vocab, begin + kArgmaxChunk);
  unsigned long long best = 0ull;
  for (int i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const float v = r[i];
    if (v != v) continue;  // NaN never wins
    const unsigned long long key = ((unsigned long long)order_bits_any(v) << 32) | (0xFFFFFFFFu - (uint32_t)i);
    best = key > best ? key : best;
  }
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long other = __shfl_xor_sync(0xffffffffu, best, o);
    best = other > best ? other : best;
  }
  if ((threadIdx.x & 31) == 0 && best) atomicMax(&keys[row], best);
}

__global__ void argmax_finish_kernel(const unsigned long long* __restrict__ keys, int rows,
                                     int32_t* __restrict__ out) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const unsigned long long k = keys[r];
  out[r] = k ? (int32_t)(0xFFFFFFFFu - (uint32_t)(k & 0xFFFFFFFFull)) : 0;
}

// Monotone float -> uint32 (ascending); -0 is treated as +0, as `>` does.
__device__ __forceinline__ uint32_t order_bits(float x) {
  if (x == 0.f) x = 0.f;
  const uint32_t b = __float_as_uint(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__global__ void build_keys_kernel(const float* __restrict__ logits, int vocab,
                                  const int32_t* __restrict__ rows_idx,
                                  const SampleRowParams* __restrict__ params, int first, int count,
                                  uint64_t* __restrict__ keys, int32_t* __restrict__ vals) {
  const int64_t total = (int64_t)count * vocab;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int r = (int)(e / vocab);
    const int j = (int)(e - (int64_t)r * vocab);
    const float inv_t = 1.0f / params[first + r].temperature;
    const float x = logits[(int64_t)rows_idx[first + r] * vocab + j] * inv_t;
    // Ascending sort of the key = descending value within each row.
    keys[e] = ((uint64_t)r << 32) | (uint64_t)(~order_bits(x));
    vals[e] = j;
  }
}

using Scan = cub::BlockScan<double, kThreads>;
using Reduce = cub::BlockReduce<double, kThreads>;

__global__ void __launch_bounds__(kThreads)
    draw_kernel(const float* __restrict__ logits, int vocab, const int32_t* __restrict__ rows_idx,
                const SampleRowParams* __restrict__ params, int first,
                const int32_t* __restrict__ sorted_ids, int32_t* __restrict__ out) {
  __shared__ union {
    typename Scan::TempStorage scan;
    typename Reduce::TempStorage reduce;
  } tmp;
  __shared__ double s_total;
  __shared__ int s_found;
  const int r = blockIdx.x;
  const SampleRowParams p = params[first + r];
  const int row = rows_idx[first + r];
  const float* lrow = logits + (int64_t)row * vocab;
  const int32_t* ids = sorted_ids + (int64_t)r * vocab;
  const float inv_t = 1.0f / p.temperature;
  const float mx = lrow[ids[0]] * inv_t;
  auto prob = [&](int k) -> double { return exp((double)(lrow[ids[k]] * inv_t - mx)); };

  int kept = (p.top_k > 0 && p.top_k < vocab) ? p.top_k : vocab;
  // Total mass of the kept tokens.
  double part = 0.0;
  for (int k = threadIdx.x; k < kept; k += blockDim.x) part += prob(k);
  double total = Reduce(tmp.reduce).Sum(part);
  if (threadIdx.x == 0) s_total = total;
  __syncthreads();
  total = s_total;

  // Finds the first k < kept whose inclusive prefix sum passes `target`
  // (>= when ge, else >); returns kept when none does. Also returns that prefix sum.
  auto first_crossing = [&](double target, bool ge, double* cum_at) -> int {
    double running = 0.0;
    if (threadIdx.x == 0) s_found = kept;
    __syncthreads();
    for (int base = 0; base < kept; base += blockDim.x) {
      const int k = base + threadIdx.x;
      const double v = k < kept ? prob(k) : 0.0;
      double incl, chunk;
      Scan(tmp.scan).InclusiveSum(v, incl, chunk);
      const double cum = running + incl;
      const bool hit = k < kept && (ge ? cum >= target : cum > target);
      if (hit) atomicMin(&s_found, k);
      __syncthreads();
      const int f = s_found;
      if (f < kept) {
        if (k == f) s_total = cum;
        __syncthreads();
        *cum_at = s_total;
        return f;
      }
      running += chunk;
      __syncthreads();  // tmp reuse
    }
    *cum_at = running;
    return kept;
  };

  if (p.top_p < 1.0f) {
    double cum;
    const int f = first_crossing((double)p.top_p * total, true, &cum);
    if (f < kept) {
      kept = f + 1;
      total = cum;
    }
    // f == kept: every kept token is needed (rounding); keep all, total unchanged
  }
  const double u = (double)uniform01(p.seed, p.rng_offset);
  double cum;
  const int f = first_crossing(u * total, false, &cum);
  if (threadIdx.x == 0) out[row] = ids[f < kept ? f : kept - 1];
}

size_t cub_temp_bytes(int rows, int vocab) {
  size_t bytes = 0;
  const int n = rows * vocab;
  GLM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, (const uint64_t*)nullptr,
                                                 (uint64_t*)nullptr, (const int32_t*)nullptr,
                                                 (int32_t*)nullptr, n, 0, 32 + kRowBits));
  return bytes;
}

size_t align256(size_t x) { return (x + 255) & ~size_t(255); }

__global__ void feed_prev_kernel(int32_t* __restrict__ tokens, const int32_t* __restrict__ rows,
                                 const int32_t* __restrict__ prev, int n, const int32_t* __restrict__ prev_ids) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n && prev[i] >= 0) tokens[rows[i]] = prev_ids[prev[i]];
}

}  // namespace

void feed_prev_tokens(int32_t* tokens, const int32_t* rows, const int32_t* prev, int n, const int32_t* prev_ids,
                      cudaStream_t stream) {
  const char* k = "feed_prev_tokens";
  check_arg(tokens && rows && prev && prev_ids, k, "null tensor");
  check_arg(n >= 0, k, "n < 0");
  if (n == 0) return;
  feed_prev_kernel<<<(n + 255) / 256, 256, 0, stream>>>(tokens, rows, prev, n, prev_ids);
  GLM_CUDA_LAUNCH_CHECK(k);
}

void repetition_penalty(float* logits, int vocab, const int32_t* rows_idx, const float* penalty,
                        const int32_t* hist, const int32_t* hist_off, int n, cudaStream_t stream) {
  const char* k = "repetition_penalty";
  check_arg(logits && rows_idx && penalty && hist_off, k, "null tensor");
  check_arg(vocab > 0 && vocab <= 32 * 12288, k, "vocab must be in [1, 393216]");
  check_arg(n >= 0, k, "n < 0");
  if (n == 0) return;
  check_arg(hist != nullptr, k, "null history");
  const size_t smem = (size_t)((vocab + 31) / 32) * sizeof(uint32_t);
  if (smem > 48 * 1024)
    GLM_CUDA_CHECK(cudaFuncSetAttribute(penalty_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)smem));
  penalty_kernel<<<n, 512, smem, stream>>>(logits, vocab, rows_idx, penalty, hist, hist_off);
  GLM_CUDA_LAUNCH_CHECK(k);
}

void presence_frequency_penalty(float* logits, int vocab, const int32_t* rows_idx, const float* presence,
                                const float* frequency, const int32_t* ids, const int32_t* counts,
                                const int32_t* off, int n, cudaStream_t stream) {
  const char* k = "presence_frequency_penalty";
  check_arg(logits && rows_idx && presence && frequency && off, k, "null tensor");
  check_arg(vocab > 0 && n >= 0 && n <= 65535, k, "bad sizes");
  if (n == 0) return;
  check_arg(ids && counts, k, "null ids");
  presence_frequency_kernel<<<n, 256, 0, stream>>>(logits, vocab, rows_idx, presence, frequency, ids, counts,
                                                   off);
  GLM_CUDA_LAUNCH_CHECK(k);
}

void argmax_rows(const float* logits, int vocab, int rows, int32_t* out, unsigned long long* scratch,
                 cudaStream_t stream) {
  const char* k = "argmax_rows";
  check_arg(logits && out && scratch, k, "null tensor");
  check_arg(vocab > 0 && rows >= 0 && rows <= 65535, k, "bad sizes");
  if (rows == 0) return;
  GLM_CUDA_CHECK(cudaMemsetAsync(scratch, 0, sizeof(unsigned long long) * rows, stream));
  dim3 grid((vocab + kArgmaxChunk - 1) / kArgmaxChunk, rows);
  argmax_partial_kernel<<<grid, 256, 0, stream>>>(logits, vocab, scratch);
  GLM_CUDA_LAUNCH_CHECK(k);
  argmax_finish_kernel<<<(rows + 255) / 256, 256, 0, stream>>>(scratch, rows, out);
  GLM_CUDA_LAUNCH_CHECK(k);
}

size_t sample_workspace_bytes(int n, int vocab) {
  const int rows = n < kSortRows ? n : kSortRows;
  if (rows <= 0 || vocab <= 0) return 0;
  const size_t e = (size_t)rows * vocab;
  return align256(e * 8) * 2 + align256(e * 4) * 2 + align256(cub_temp_bytes(rows, vocab));
}

void sample_rows(const float* logits, int vocab, const int32_t* rows_idx,
                 const SampleRowParams* params, int n, void* workspace, size_t workspace_bytes,
                 int32_t* out, cudaStream_t stream) {
  const char* k = "sample_rows";
  check_arg(logits && rows_idx && params && out, k, "null tensor");
  check_arg(vocab > 0 && n >= 0, k, "bad sizes");
  check_arg((int64_t)kSortRows * vocab < (1LL << 31), k, "vocab too large");
  if (n == 0) return;
  check_arg(workspace != nullptr && workspace_bytes >= sample_workspace_bytes(n, vocab), k,
            "workspace too small (see sample_workspace_bytes)");
  const int rows_max = n < kSortRows ? n : kSortRows;
  const size_t e = (size_t)rows_max * vocab;
  char* w = static_cast<char*>(workspace);
  uint64_t* keys_in = reinterpret_cast<uint64_t*>(w);
  uint64_t* keys_out = reinterpret_cast<uint64_t*>(w + align256(e * 8));
  int32_t* vals_in = reinterpret_cast<int32_t*>(w + 2 * align256(e * 8));
  int32_t* vals_out = reinterpret_cast<int32_t*>(w + 2 * align256(e * 8) + align256(e * 4));
  void* temp = w + 2 * align256(e * 8) + 2 * align256(e * 4);
  size_t temp_bytes = workspace_bytes - (2 * align256(e * 8) + 2 * align256(e * 4));
  for (int first = 0; first < n; first += kSortRows) {
    const int count = n - first < kSortRows ? n - first : kSortRows;
    const int64_t total = (int64_t)count * vocab;
    const int blocks = (int)((total + 255) / 256 < 8192 ? (total + 255) / 256 : 8192);
    build_keys_kernel<<<blocks, 256, 0, stream>>>(logits, vocab, rows_idx, params, first, count,
                                                  keys_in, vals_in);
    GLM_CUDA_LAUNCH_CHECK("sample_rows/build_keys");
    size_t tb = temp_bytes;
    GLM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, tb, keys_in, keys_out, vals_in, vals_out,
                                                   (int)total, 0, 32 + kRowBits, stream));
    draw_kernel<<<count, kThreads, 0, stream>>>(logits, vocab, rows_idx, params, first, vals_out, out);
    GLM_CUDA_LAUNCH_CHECK("sample_rows/draw");
  }
}

}  // namespace cuda
}  // namespace glm
