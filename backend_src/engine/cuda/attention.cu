// Paged attention (decode, prefill and mixed batches): one block per
// (head, query token), or per (head, query token, key chunk) with split-KV (then a
// combining kernel); keys and values read from the paged cache. Two block kernels:
// scores, softmax, then V (the default), or one pass with an online softmax
// (AttentionParams::one_pass); and a warp-per-pair kernel for many pairs (warp_per_pair).
#include <cuda_fp8.h>

#include <cfloat>
#include <type_traits>

#include "cuda_check.h"
#include "kernels.h"
#include "pdl.h"

namespace glm {
namespace cuda {
namespace {

constexpr int kAttnThreads = 128;
constexpr int kAttnWarps = kAttnThreads / 32;
constexpr int kUnroll = 4;
constexpr int kWarpAttnMinPairs = 2048;  // (token, head) pairs from which the warp kernel is used

template <int VEC>
struct HalfVec;
template <>
struct HalfVec<8> {
  using T = uint4;
};
template <>
struct HalfVec<4> {
  using T = uint2;
};

template <int VEC>
__device__ __forceinline__ void load_vec(const __half* p, float (&out)[VEC]) {
  typename HalfVec<VEC>::T raw = *reinterpret_cast<const typename HalfVec<VEC>::T*>(p);
  const __half2* h2 = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
  for (int k = 0; k < VEC / 2; ++k) {
    const float2 f = __half22float2(h2[k]);
    out[2 * k] = f.x;
    out[2 * k + 1] = f.y;
  }
}

// VEC E4M3 codes (VEC bytes, aligned) -> floats, times the row's scale.
template <int VEC>
__device__ __forceinline__ void load_vec_fp8(const uint8_t* p, float scale, float (&out)[VEC]) {
  uint8_t raw[VEC];
  if constexpr (VEC == 8)
    *reinterpret_cast<uint2*>(raw) = *reinterpret_cast<const uint2*>(p);
  else
    *reinterpret_cast<uint32_t*>(raw) = *reinterpret_cast<const uint32_t*>(p);
#pragma unroll
  for (int k = 0; k < VEC / 2; ++k) {
    const __nv_fp8x2_storage_t two = static_cast<__nv_fp8x2_storage_t>(raw[2 * k] | (raw[2 * k + 1] << 8));
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(two, __NV_E4M3);
    const float2 f = __half22float2(__half2(h));
    out[2 * k] = f.x * scale;
    out[2 * k + 1] = f.y * scale;
  }
}

// The KV cache as the kernel reads it: fp16, or E4M3 codes with a float scale per
// (block, head, offset) row (k_scale / v_scale non-null).
struct KvRead {
  const void* k;
  const void* v;
  const float* k_scale;
  const float* v_scale;
};

template <int VEC, bool FP8>
__device__ __forceinline__ void load_kv(const void* base, const float* scales, int64_t elem, int64_t row,
                                        float (&out)[VEC]) {
  if constexpr (FP8)
    load_vec_fp8<VEC>(static_cast<const uint8_t*>(base) + elem, scales[row], out);
  else
    load_vec<VEC>(static_cast<const __half*>(base) + elem, out);
}

// The scores one block keeps in shared memory: all max_keys, or with split-KV one chunk's
// keys at most (a chunk is max(ceil(n / splits), kAttnSplitMinChunk) for n <= max_keys).
// The launcher sizes the shared memory and the kernel places its buffers by this one value.
__host__ __device__ __forceinline__ int attention_score_slots(int max_keys, int splits) {
  if (splits <= 1) return max_keys;
  const int chunk = (max_keys + splits - 1) / splits;
  const int c = chunk > kAttnSplitMinChunk ? chunk : kAttnSplitMinChunk;
  return c < max_keys ? c : max_keys;
}

__device__ __forceinline__ float block_reduce(float v, float* red, bool is_max) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, w) : v + w;
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float r = red[0];
  for (int i = 1; i < kAttnWarps; ++i) r = is_max ? fmaxf(r, red[i]) : r + red[i];
  return r;
}

// The keys block (h = blockIdx.x, t = blockIdx.y[, chunk blockIdx.z]) covers and where its
// result goes. SPLIT: keys [k0, k0 + n) of chunk z (AttentionParams::splits), the result
// (max, sum, unnormalized output) in p.split_scratch; otherwise all of token t's keys and
// its output row. An empty range writes its result here ((-FLT_MAX, 0, 0), or a zero row)
// and leaves n = 0, so the kernel returns. Also the query row, times p.scale.
template <int HD, int VEC, bool SPLIT>
struct BlockKeys {
  int k0 = 0, n = 0;
  __half* orow = nullptr;
  float* part = nullptr;  // SPLIT: [max, sum, acc[HD]]
  const int32_t* table = nullptr;
  float qv[VEC];

  __device__ __forceinline__ BlockKeys(const __half* q, const int32_t* tok_seq, const int32_t* n_keys,
                                       const int32_t* block_tables, const AttentionParams& p, __half* out, int li) {
    const int h = blockIdx.x, t = blockIdx.y;
    const int n_all = n_keys[t];
    orow = out + ((int64_t)t * p.heads + h) * HD;
    n = n_all;
    if constexpr (SPLIT) {
      part = p.split_scratch + (((int64_t)t * p.heads + h) * p.splits + blockIdx.z) * (HD + 2);
      const int chunk = max((n_all + p.splits - 1) / p.splits, kAttnSplitMinChunk);
      k0 = (int)blockIdx.z * chunk;
      n = max(0, min(n_all - k0, chunk));
      if (n <= 0) {
        for (int d = threadIdx.x; d < HD + 2; d += blockDim.x) part[d] = d == 0 ? -FLT_MAX : 0.f;
        n = 0;
        return;
      }
    } else if (n <= 0) {
      for (int d = threadIdx.x; d < HD; d += blockDim.x) orow[d] = __float2half(0.f);
      n = 0;
      return;
    }
    table = block_tables + (int64_t)tok_seq[t] * p.max_blocks_per_seq;
    load_vec<VEC>(q + ((int64_t)t * p.heads + h) * HD + li * VEC, qv);
#pragma unroll
    for (int k = 0; k < VEC; ++k) qv[k] *= p.scale;
  }
  // The (block, head, offset) row of key s of the range: the scale's index; times HD the code's.
  __device__ __forceinline__ int64_t row(int s, const AttentionParams& p) const {
    const int key = k0 + s;
    return ((int64_t)table[key / p.block_size] * p.heads + blockIdx.x) * p.block_size + key % p.block_size;
  }
};

// SPLIT: block (h, t, z) covers keys [k0, k1) of chunk z (AttentionParams::splits) and
// writes (max, sum, unnormalized output) to p.split_scratch; an empty chunk writes
// (-FLT_MAX, 0, 0). Otherwise one block covers all n keys and writes the output row.
template <int HD, bool FP8, bool SPLIT>
__global__ void __launch_bounds__(kAttnThreads)
    paged_attention_kernel(const __half* __restrict__ q, KvRead kv, const int32_t* __restrict__ tok_seq,
                           const int32_t* __restrict__ n_keys,
                           const int32_t* __restrict__ block_tables, AttentionParams p,
                           __half* __restrict__ out) {
  constexpr int VEC = HD >= 8 ? 8 : HD;
  constexpr int LPT = HD / VEC;    // lanes per key
  constexpr int TPW = 32 / LPT;    // keys per warp per pass
  constexpr int STRIDE = kAttnWarps * TPW;
  extern __shared__ float smem[];
  float* scores = smem;  // [attention_score_slots]: max_keys, or one chunk's with SPLIT
  float* accs = smem + (SPLIT ? attention_score_slots(p.max_keys, p.splits) : p.max_keys);  // [kAttnWarps * HD]
  float* red = accs + kAttnWarps * HD;    // [32]

  pdl_wait();
  pdl_launch_dependents();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane / LPT, li = lane % LPT;
  const BlockKeys<HD, VEC, SPLIT> bk(q, tok_seq, n_keys, block_tables, p, out, li);
  const int n = bk.n;
  if (n == 0) return;  // its result is written
  const bool lane_active = g < TPW;  // always true; kept for clarity when LPT does not divide 32
  const float(&qv)[VEC] = bk.qv;

  // 1. scores
  for (int base = warp * TPW; base < n; base += STRIDE * kUnroll) {
    float kvals[kUnroll][VEC];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int s = base + u * STRIDE + g;
      if (lane_active && s < n) {
        const int64_t r = bk.row(s, p);
        load_kv<VEC, FP8>(kv.k, kv.k_scale, r * HD + li * VEC, r, kvals[u]);
      } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) kvals[u][k] = 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float d = 0.f;
#pragma unroll
      for (int k = 0; k < VEC; ++k) d += qv[k] * kvals[u][k];
#pragma unroll
      for (int o = LPT / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
      const int s = base + u * STRIDE + g;
      if (lane_active && li == 0 && s < n) scores[s] = d;
    }
  }
  __syncthreads();

  // 2. softmax (fp32)
  float m = -FLT_MAX;
  for (int i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, scores[i]);
  m = block_reduce(m, red, true);
  float sum = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float e = expf(scores[i] - m);
    scores[i] = e;
    sum += e;
  }
  sum = block_reduce(sum, red, false);  // its barriers also publish the exp'd scores
  const float inv = 1.f / sum;

  // 3. probabilities . V
  float acc[VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) acc[k] = 0.f;
  for (int base = warp * TPW; base < n; base += STRIDE * kUnroll) {
    float vv[kUnroll][VEC];
    float pr[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int s = base + u * STRIDE + g;
      if (lane_active && s < n) {
        const int64_t r = bk.row(s, p);
        load_kv<VEC, FP8>(kv.v, kv.v_scale, r * HD + li * VEC, r, vv[u]);
        pr[u] = scores[s];
      } else {
        pr[u] = 0.f;
#pragma unroll
        for (int k = 0; k < VEC; ++k) vv[u][k] = 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc[k] += pr[u] * vv[u][k];
  }
#pragma unroll
  for (int o = LPT; o < 32; o <<= 1)
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] += __shfl_xor_sync(0xffffffffu, acc[k], o);
  if (g == 0) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) accs[warp * HD + li * VEC + k] = acc[k];
  }
  __syncthreads();
  for (int d = threadIdx.x; d < HD; d += blockDim.x) {
    float r = 0.f;
#pragma unroll
    for (int w = 0; w < kAttnWarps; ++w) r += accs[w * HD + d];
    if constexpr (SPLIT)
      bk.part[2 + d] = r;
    else
      bk.orow[d] = __float2half_rn(r * inv);
  }
  if constexpr (SPLIT) {
    if (threadIdx.x == 0) {
      bk.part[0] = m;
      bk.part[1] = sum;
    }
  }
}

// One pass over the keys (tuning attention_one_pass): the same lane groups as the block
// kernel above (LPT lanes per key, VEC dims per lane), but each group loads a key's K and
// V row in the same round and keeps an online softmax (running max m, sum l, unnormalized
// output) in registers, so a round trip to memory covers K and V of GROUPS x U keys and
// there is no scores array, no block reduction between the phases and no shared memory
// sized by the context. At the end the groups' (m, l, acc) are combined through shared
// memory in a fixed order. SPLIT: the block covers one chunk and writes that combination
// as the chunk's (max, sum, unnormalized output), as the block kernel does. U: keys per
// lane group per round (AttentionParams::one_pass: 2, 4 or 8).
template <int HD, bool FP8, bool SPLIT, int U>
__global__ void __launch_bounds__(kAttnThreads)
    paged_attention_one_pass_kernel(const __half* __restrict__ q, KvRead kv, const int32_t* __restrict__ tok_seq,
                                    const int32_t* __restrict__ n_keys, const int32_t* __restrict__ block_tables,
                                    AttentionParams p, __half* __restrict__ out) {
  constexpr int VEC = HD >= 8 ? 8 : HD;
  constexpr int LPT = HD / VEC;  // lanes per key
  constexpr int TPW = 32 / LPT;  // lane groups (keys in flight per round and unroll step) per warp
  constexpr int GROUPS = kAttnWarps * TPW;
  __shared__ float group_acc[GROUPS * HD];  // 128 x VEC floats: at most 4 KB
  __shared__ float group_ml[2 * GROUPS];

  pdl_wait();
  pdl_launch_dependents();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane / LPT, li = lane % LPT;
  const BlockKeys<HD, VEC, SPLIT> bk(q, tok_seq, n_keys, block_tables, p, out, li);
  const int n = bk.n;
  if (n == 0) return;  // its result is written
  const int grp = warp * TPW + g;
  const float(&qv)[VEC] = bk.qv;

  float m = -FLT_MAX, l = 0.f, acc[VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) acc[k] = 0.f;
  // The loop bound is the block's, so every lane runs every round (the shuffles need all).
  for (int base = 0; base < n; base += GROUPS * U) {
    float kx[U][VEC], vx[U][VEC];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int s = base + u * GROUPS + grp;
      if (s < n) {
        const int64_t r = bk.row(s, p);
        load_kv<VEC, FP8>(kv.k, kv.k_scale, r * HD + li * VEC, r, kx[u]);
        load_kv<VEC, FP8>(kv.v, kv.v_scale, r * HD + li * VEC, r, vx[u]);
      } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) kx[u][k] = vx[u][k] = 0.f;
      }
    }
    float sc[U];
    float cm = -FLT_MAX;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float d = 0.f;
#pragma unroll
      for (int k = 0; k < VEC; ++k) d += qv[k] * kx[u][k];
#pragma unroll
      for (int o = LPT / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
      sc[u] = d;
      if (base + u * GROUPS + grp < n) cm = fmaxf(cm, d);
    }
    const float mn = fmaxf(m, cm);
    const float corr = expf(m - mn);  // 0 after an empty start (m = -FLT_MAX), 1 if still empty
    l *= corr;
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] *= corr;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (base + u * GROUPS + grp < n) {
        const float e = expf(sc[u] - mn);
        l += e;
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[k] += e * vx[u][k];
      }
    }
    m = mn;
  }
  if (li == 0) {
    group_ml[2 * grp] = m;
    group_ml[2 * grp + 1] = l;
  }
#pragma unroll
  for (int k = 0; k < VEC; ++k) group_acc[grp * HD + li * VEC + k] = acc[k];
  __syncthreads();
  for (int d = threadIdx.x; d < HD; d += blockDim.x) {
    float M = -FLT_MAX;
    for (int i = 0; i < GROUPS; ++i)
      if (group_ml[2 * i + 1] > 0.f) M = fmaxf(M, group_ml[2 * i]);
    float L = 0.f, o = 0.f;
    for (int i = 0; i < GROUPS; ++i) {
      if (!(group_ml[2 * i + 1] > 0.f)) continue;  // a group that got no key
      const float w = expf(group_ml[2 * i] - M);
      L += group_ml[2 * i + 1] * w;
      o += group_acc[i * HD + d] * w;
    }
    if constexpr (SPLIT) {
      bk.part[2 + d] = o;
      if (d == 0) {
        bk.part[0] = M;
        bk.part[1] = L;
      }
    } else {
      bk.orow[d] = __float2half_rn(o / L);  // n >= 1 key: some group has l >= 1
    }
  }
}

// Split-KV's second pass: one block of HD threads per (token, head) pair combines its
// chunks' (max, sum, unnormalized output): out = sum_z acc_z e^(m_z - M) / sum_z l_z e^(m_z - M).
// A row whose chunks are all empty (no keys: padding) gets zeros.
template <int HD>
__global__ void attention_split_combine_kernel(const float* __restrict__ scratch, int splits,
                                               __half* __restrict__ out) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t pair = blockIdx.x;
  const float* part = scratch + pair * splits * (HD + 2);
  float M = -FLT_MAX;
  for (int z = 0; z < splits; ++z)
    if (part[z * (HD + 2) + 1] > 0.f) M = fmaxf(M, part[z * (HD + 2)]);
  float L = 0.f, o = 0.f;
  const int d = threadIdx.x;
  for (int z = 0; z < splits; ++z) {
    const float* pz = part + z * (HD + 2);
    if (!(pz[1] > 0.f)) continue;
    const float w = expf(pz[0] - M);
    L += pz[1] * w;
    o += pz[2 + d] * w;
  }
  out[pair * HD + d] = __float2half_rn(L > 0.f ? o / L : 0.f);
}

// Decode-friendly variant: one warp per (token, head), online softmax in
// registers, no shared memory or block barriers; each lane holds HD/32 dims and
// keeps 8 keys' K and V loads in flight. Used when there are many (token, head)
// pairs (large decode batches), where per-block overhead dominated.
constexpr int kWarpAttnWarps = 4;
constexpr int kWarpChunk = 8;

template <int DPL>
struct HalfVecN;
template <>
struct HalfVecN<4> {
  using T = uint2;
};
template <>
struct HalfVecN<2> {
  using T = uint32_t;
};

template <int HD>
__global__ void __launch_bounds__(kWarpAttnWarps * 32)
    paged_attention_warp_kernel(const __half* __restrict__ q, const __half* __restrict__ kc,
                                const __half* __restrict__ vc, const int32_t* __restrict__ tok_seq,
                                const int32_t* __restrict__ n_keys, const int32_t* __restrict__ block_tables,
                                AttentionParams p, int tokens, __half* __restrict__ out) {
  constexpr int DPL = HD / 32;
  using V = typename HalfVecN<DPL>::T;
  pdl_wait();
  pdl_launch_dependents();
  const int lane = threadIdx.x & 31;
  const int pair = blockIdx.x * kWarpAttnWarps + (threadIdx.x >> 5);
  if (pair >= tokens * p.heads) return;
  const int t = pair / p.heads, h = pair - t * p.heads;
  const int n = n_keys[t];
  __half* orow = out + ((int64_t)t * p.heads + h) * HD + lane * DPL;
  auto unpack = [](const V& raw, float (&f)[DPL]) {
    const __half2* h2 = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
    for (int k = 0; k < DPL / 2; ++k) {
      const float2 x = __half22float2(h2[k]);
      f[2 * k] = x.x;
      f[2 * k + 1] = x.y;
    }
  };
  if (n <= 0) {
#pragma unroll
    for (int k = 0; k < DPL; ++k) orow[k] = __float2half(0.f);
    return;
  }
  const int32_t* table = block_tables + (int64_t)tok_seq[t] * p.max_blocks_per_seq;
  float qv[DPL];
  unpack(*reinterpret_cast<const V*>(q + ((int64_t)t * p.heads + h) * HD + lane * DPL), qv);
#pragma unroll
  for (int k = 0; k < DPL; ++k) qv[k] *= p.scale;
  float m = -FLT_MAX, l = 0.f, acc[DPL];
#pragma unroll
  for (int k = 0; k < DPL; ++k) acc[k] = 0.f;
  for (int base = 0; base < n; base += kWarpChunk) {
    V kr[kWarpChunk], vr[kWarpChunk];
#pragma unroll
    for (int u = 0; u < kWarpChunk; ++u) {
      const int s = base + u;
      if (s < n) {
        const int64_t off =
            (((int64_t)table[s / p.block_size] * p.heads + h) * p.block_size + s % p.block_size) * HD + lane * DPL;
        kr[u] = *reinterpret_cast<const V*>(kc + off);
        vr[u] = *reinterpret_cast<const V*>(vc + off);
      }
    }
    float sc[kWarpChunk];
    float cm = -FLT_MAX;
#pragma unroll
    for (int u = 0; u < kWarpChunk; ++u) {
      float d = 0.f;
      if (base + u < n) {
        float kf[DPL];
        unpack(kr[u], kf);
#pragma unroll
        for (int k = 0; k < DPL; ++k) d += qv[k] * kf[k];
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
      sc[u] = d;
      if (base + u < n) cm = fmaxf(cm, d);
    }
    const float m_new = fmaxf(m, cm);
    const float corr = expf(m - m_new);
    l *= corr;
#pragma unroll
    for (int k = 0; k < DPL; ++k) acc[k] *= corr;
#pragma unroll
    for (int u = 0; u < kWarpChunk; ++u) {
      if (base + u < n) {
        const float e = expf(sc[u] - m_new);
        l += e;
        float vf[DPL];
        unpack(vr[u], vf);
#pragma unroll
        for (int k = 0; k < DPL; ++k) acc[k] += e * vf[k];
      }
    }
    m = m_new;
  }
  const float inv = 1.f / l;
#pragma unroll
  for (int k = 0; k < DPL; ++k) orow[k] = __float2half_rn(acc[k] * inv);
}

template <int HD, bool FP8>
void launch(const __half* q, const KvRead& kv, const int32_t* tok_seq, const int32_t* n_keys, const int32_t* bt,
            const AttentionParams& p, __half* out, int tokens, cudaStream_t stream) {
  const bool split = p.splits > 1;
  dim3 grid(p.heads, tokens, split ? p.splits : 1);
  if (p.one_pass) {
    auto pick = [&](auto u) {
      constexpr int U = decltype(u)::value;
      return split ? paged_attention_one_pass_kernel<HD, FP8, true, U>
                   : paged_attention_one_pass_kernel<HD, FP8, false, U>;
    };
    auto kernel = p.one_pass == 2   ? pick(std::integral_constant<int, 2>())
                  : p.one_pass == 4 ? pick(std::integral_constant<int, 4>())
                                    : pick(std::integral_constant<int, 8>());
    launch_k("paged_attention (one pass)", kernel, grid, dim3(kAttnThreads), 0, stream, q, kv, tok_seq, n_keys, bt, p,
             out);
  } else {
    const int keys = attention_score_slots(p.max_keys, p.splits);
    const size_t smem = (size_t)(keys + kAttnWarps * HD + 32) * sizeof(float);
    auto kernel = split ? paged_attention_kernel<HD, FP8, true> : paged_attention_kernel<HD, FP8, false>;
    if (smem > 48 * 1024)
      GLM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    launch_k("paged_attention", kernel, grid, dim3(kAttnThreads), smem, stream, q, kv, tok_seq, n_keys, bt, p, out);
  }
  if (split)
    launch_k("paged_attention (split-KV combine)", attention_split_combine_kernel<HD>,
             dim3((unsigned)tokens * p.heads), dim3(HD), 0, stream, (const float*)p.split_scratch, p.splits, out);
}

template <bool FP8>
void launch_block_kernel(const char* k, const __half* q, const KvRead& kv, const int32_t* tok_seq,
                         const int32_t* n_keys, const int32_t* bt, const AttentionParams& p, __half* out, int tokens,
                         cudaStream_t stream) {
  switch (p.head_dim) {
    case 4: launch<4, FP8>(q, kv, tok_seq, n_keys, bt, p, out, tokens, stream); break;
    case 8: launch<8, FP8>(q, kv, tok_seq, n_keys, bt, p, out, tokens, stream); break;
    case 16: launch<16, FP8>(q, kv, tok_seq, n_keys, bt, p, out, tokens, stream); break;
    case 32: launch<32, FP8>(q, kv, tok_seq, n_keys, bt, p, out, tokens, stream); break;
    case 64: launch<64, FP8>(q, kv, tok_seq, n_keys, bt, p, out, tokens, stream); break;
    case 128: launch<128, FP8>(q, kv, tok_seq, n_keys, bt, p, out, tokens, stream); break;
    default: check_arg(false, k, "head_dim must be 4, 8, 16, 32, 64 or 128");
  }
  GLM_CUDA_LAUNCH_CHECK(k);
}

void check_attention_args(const char* k, const AttentionParams& p, int tokens) {
  check_arg(p.heads > 0 && p.heads <= 65535, k, "heads must be in [1, 65535]");
  check_arg(p.splits >= 1 && p.splits <= kAttnMaxSplits, k, "splits must be in [1, kAttnMaxSplits]");
  check_arg(p.one_pass == 0 || p.one_pass == 2 || p.one_pass == 4 || p.one_pass == 8, k,
            "one_pass must be 0, 2, 4 or 8");
  check_arg(p.splits == 1 || (p.split_scratch && p.split_scratch_floats >= (size_t)tokens * p.heads * p.splits *
                                                                              (p.head_dim + 2)),
            k, "split-KV needs a scratch of tokens x heads x splits x (head_dim + 2) floats");
  check_arg(p.block_size > 0 && p.max_blocks_per_seq > 0, k, "block_size/max_blocks_per_seq <= 0");
  check_arg(p.max_keys > 0 && p.max_keys <= 32768, k, "max_keys must be in [1, 32768]");
  check_arg(tokens >= 0 && tokens <= 65535, k, "tokens must be in [0, 65535]");
}

}  // namespace

void paged_attention(const __half* q, const __half* k_cache, const __half* v_cache,
                     const int32_t* tok_seq, const int32_t* n_keys, const int32_t* block_tables,
                     const AttentionParams& p, __half* out, int tokens, cudaStream_t stream) {
  const char* k = "paged_attention";
  check_arg(q && k_cache && v_cache && tok_seq && n_keys && block_tables && out, k, "null tensor");
  check_attention_args(k, p, tokens);
  if (tokens == 0) return;
  // Many (token, head) pairs: the warp-per-pair kernel (head_dim 64 or 128), when
  // p.warp_per_pair (tuning attention_warp). Off by default: v5 measured it no faster
  // than the block kernel (docs/cuda_notes.md; the later same-run A/B most likely ran
  // the block kernel in its "warp" rows, see "Tuning options" there).
  if (p.splits == 1 && p.warp_per_pair && !p.one_pass && tokens * p.heads >= kWarpAttnMinPairs &&
      (p.head_dim == 128 || p.head_dim == 64)) {
    const int pairs = tokens * p.heads;
    const int blocks = (pairs + kWarpAttnWarps - 1) / kWarpAttnWarps;
    if (p.head_dim == 128)
      launch_k(k, paged_attention_warp_kernel<128>, dim3(blocks), dim3(kWarpAttnWarps * 32), 0, stream, q, k_cache,
               v_cache, tok_seq, n_keys, block_tables, p, tokens, out);
    else
      launch_k(k, paged_attention_warp_kernel<64>, dim3(blocks), dim3(kWarpAttnWarps * 32), 0, stream, q, k_cache,
               v_cache, tok_seq, n_keys, block_tables, p, tokens, out);
    GLM_CUDA_LAUNCH_CHECK(k);
    return;
  }
  launch_block_kernel<false>(k, q, KvRead{k_cache, v_cache, nullptr, nullptr}, tok_seq, n_keys, block_tables, p,
                             out, tokens, stream);
}

void paged_attention_fp8(const __half* q, const uint8_t* k_cache, const uint8_t* v_cache, const float* k_scale,
                         const float* v_scale, const int32_t* tok_seq, const int32_t* n_keys,
                         const int32_t* block_tables, const AttentionParams& p, __half* out, int tokens,
                         cudaStream_t stream) {
  const char* k = "paged_attention_fp8";
  check_arg(q && k_cache && v_cache && k_scale && v_scale && tok_seq && n_keys && block_tables && out, k,
            "null tensor");
  check_attention_args(k, p, tokens);
  if (tokens == 0) return;
  // The block kernel only (the warp-per-pair one reads fp16).
  launch_block_kernel<true>(k, q, KvRead{k_cache, v_cache, k_scale, v_scale}, tok_seq, n_keys, block_tables, p, out,
                            tokens, stream);
}

}  // namespace cuda
}  // namespace glm
