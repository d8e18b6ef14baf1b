// Log-probabilities on the GPU, with the CPU's semantics (../sampling.h,
// compute_logprobs): log-softmax of a row of raw fp32 logits, max in float,
// sum of exp(double(x - max)) in double, lse = max + log(sum); the chosen id's
// log-probability and the top_n most likely ids (equal values: lower id first).
//
// copy_rows gathers the rows that want log-probabilities before the penalties
// change the logits in place; logprob_rows then runs one block per row: every
// thread keeps its own top_n (it visits ids in ascending order, so an equal
// value never displaces an earlier id), and top_n rounds of a block-wide
// argmax over the threads' heads merge them. Only these rows travel to the
// host, never a whole logits row.
#include <cub/block/block_reduce.cuh>

#include <cfloat>
#include <climits>

#include "cuda_check.h"
#include "kernels.h"

namespace glm {
namespace cuda {
namespace {

constexpr int kThreads = 512;

__global__ void copy_rows_kernel(const float* __restrict__ src, int vocab, const int32_t* __restrict__ rows,
                                 float* __restrict__ dst) {
  const float* s = src + (int64_t)rows[blockIdx.y] * vocab;
  float* d = dst + (int64_t)blockIdx.y * vocab;
  for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < vocab; j += gridDim.x * blockDim.x) d[j] = s[j];
}

struct Cand {
  float v;
  int id;
};

// a before b: larger value, then lower id.
__device__ __forceinline__ bool before(const Cand& a, const Cand& b) {
  return a.v > b.v || (a.v == b.v && a.id < b.id);
}

struct MaxF {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

struct Best {
  __device__ __forceinline__ Cand operator()(const Cand& a, const Cand& b) const { return before(b, a) ? b : a; }
};

__global__ void __launch_bounds__(kThreads)
    logprob_kernel(const float* __restrict__ rows_data, int vocab, const int32_t* __restrict__ rows,
                   const int32_t* __restrict__ chosen_by_row, int top_n, float* __restrict__ out_lp,
                   int32_t* __restrict__ out_ids, float* __restrict__ out_top) {
  using FloatReduce = cub::BlockReduce<float, kThreads>;
  using DoubleReduce = cub::BlockReduce<double, kThreads>;
  using CandReduce = cub::BlockReduce<Cand, kThreads>;
  __shared__ union {
    typename FloatReduce::TempStorage f;
    typename DoubleReduce::TempStorage d;
    typename CandReduce::TempStorage c;
  } tmp;
  __shared__ float s_max;
  __shared__ double s_sum;
  __shared__ Cand s_win;
  const int r = blockIdx.x;
  const float* x = rows_data + (int64_t)r * vocab;

  float mx = -FLT_MAX;
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) mx = fmaxf(mx, x[j]);
  mx = FloatReduce(tmp.f).Reduce(mx, MaxF());
  if (threadIdx.x == 0) s_max = mx;
  __syncthreads();
  mx = s_max;

  // This thread's top_n, best first, and its share of the sum.
  Cand mine[kMaxLogprobs];
  int have = 0;
  double part = 0.0;
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
    const float v = x[j];
    part += exp((double)v - (double)mx);
    if (top_n > 0 && (have < top_n || v > mine[have - 1].v)) {
      int at = have < top_n ? have++ : top_n - 1;
      while (at > 0 && v > mine[at - 1].v) {
        mine[at] = mine[at - 1];
        --at;
      }
      mine[at] = Cand{v, j};
    }
  }
  __syncthreads();
  const double sum = DoubleReduce(tmp.d).Sum(part);
  if (threadIdx.x == 0) s_sum = sum;
  __syncthreads();
  const double lse = (double)mx + log(s_sum);

  int head = 0;
  for (int k = 0; k < top_n; ++k) {
    const Cand c = head < have ? mine[head] : Cand{-FLT_MAX, INT_MAX};
    const Cand w = CandReduce(tmp.c).Reduce(c, Best());
    if (threadIdx.x == 0) s_win = w;
    __syncthreads();
    if (head < have && mine[head].id == s_win.id) ++head;
    if (threadIdx.x == 0) {
      out_ids[(int64_t)r * top_n + k] = s_win.id;
      out_top[(int64_t)r * top_n + k] = (float)((double)s_win.v - lse);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const int id = chosen_by_row[rows[r]];
    out_lp[r] = (id >= 0 && id < vocab) ? (float)((double)x[id] - lse) : -INFINITY;
  }
}

}  // namespace

void copy_rows(const float* logits, int vocab, const int32_t* rows, int n, float* dst, cudaStream_t stream) {
  const char* k = "copy_rows";
  check_arg(logits && rows && dst, k, "null tensor");
  check_arg(vocab > 0 && n >= 0 && n <= 65535, k, "bad sizes");
  if (n == 0) return;
  dim3 grid((vocab + 1023) / 1024 < 64 ? (vocab + 1023) / 1024 : 64, n);
  copy_rows_kernel<<<grid, 256, 0, stream>>>(logits, vocab, rows, dst);
  GLM_CUDA_LAUNCH_CHECK(k);
}

void logprob_rows(const float* rows_data, int vocab, const int32_t* rows, int n, const int32_t* chosen,
                  int top_n, float* out_lp, int32_t* out_ids, float* out_top, cudaStream_t stream) {
  const char* k = "logprob_rows";
  check_arg(rows_data && rows && chosen && out_lp, k, "null tensor");
  check_arg(vocab > 0 && n >= 0, k, "bad sizes");
  check_arg(top_n >= 0 && top_n <= kMaxLogprobs, k, "top_n must be in [0, 20]");
  check_arg(top_n == 0 || (out_ids && out_top), k, "null top tensors");
  if (n == 0) return;
  logprob_kernel<<<n, kThreads, 0, stream>>>(rows_data, vocab, rows, chosen, top_n, out_lp, out_ids, out_top);
  GLM_CUDA_LAUNCH_CHECK(k);
}

}  // namespace cuda
}  // namespace glm
