// QKV bias + ChatGLM's 2D rotary embedding + paged KV-cache write, one pass.
#include "cuda_check.h"
#include "kernels.h"
#include "pdl.h"

namespace glm {
namespace cuda {
namespace {

// One thread per rotary pair. Per head there are head_dim/2 pairs: pair j of
// half `hf` (0: position, 1: block position) at index i = j % (R/2) rotates
// elements a = hf*R + i and b = a + R/2 (R = head_dim/2), angle pos*inv_freq[i].
__global__ void qkv_rotary_kernel(const __half* __restrict__ qkv, const float* __restrict__ bias,
                                  const int32_t* __restrict__ pos, const int32_t* __restrict__ bpos,
                                  const int32_t* __restrict__ slot, RotaryParams p,
                                  __half* __restrict__ q_out, __half* __restrict__ k_cache,
                                  __half* __restrict__ v_cache) {
  pdl_wait();
  pdl_launch_dependents();
  const int t = blockIdx.x;
  const int pairs_per_head = p.head_dim >> 1;
  const int pair = blockIdx.y * blockDim.x + threadIdx.x;
  if (pair >= p.heads * pairs_per_head) return;
  const int h = pair / pairs_per_head;
  const int j = pair - h * pairs_per_head;
  const int R = p.head_dim >> 1;
  const int quarter = R >> 1;
  const int hf = j / quarter;
  const int i = j - hf * quarter;
  const int a = hf * R + i;
  const int b = a + quarter;

  const int64_t row = (int64_t)t * p.heads * 3 * p.head_dim;
  const int qoff = h * 3 * p.head_dim;
  const int koff = qoff + p.head_dim;
  const int voff = koff + p.head_dim;
  auto ld = [&](int off) {
    float v = __half2float(qkv[row + off]);
    if (bias) v += bias[off];
    return v;
  };
  const float qa = ld(qoff + a), qb = ld(qoff + b);
  const float ka = ld(koff + a), kb = ld(koff + b);
  const int position = hf == 0 ? pos[t] : bpos[t];

  __half qa_o, qb_o, ka_o, kb_o;
  if (!p.fp16_angles) {
    const float ang = (float)position * p.inv_freq[i];
    float sn, cs;
    sincosf(ang, &sn, &cs);
    qa_o = __float2half_rn(qa * cs - qb * sn);
    qb_o = __float2half_rn(qb * cs + qa * sn);
    ka_o = __float2half_rn(ka * cs - kb * sn);
    kb_o = __float2half_rn(kb * cs + ka * sn);
  } else {
    // THUDM's fp16 run: angle = half(pos) * half(inv_freq) rounded to fp16,
    // cos/sin kept in fp16, and q*cos + rotate_half(q)*sin evaluated in fp16.
    const __half ang = __hmul(__float2half_rn((float)position), __float2half_rn(p.inv_freq[i]));
    float sn, cs;
    sincosf(__half2float(ang), &sn, &cs);
    const __half c = __float2half_rn(cs), s = __float2half_rn(sn);
    const __half hqa = __float2half_rn(qa), hqb = __float2half_rn(qb);
    const __half hka = __float2half_rn(ka), hkb = __float2half_rn(kb);
    qa_o = __hadd(__hmul(hqa, c), __hmul(__hneg(hqb), s));
    qb_o = __hadd(__hmul(hqb, c), __hmul(hqa, s));
    ka_o = __hadd(__hmul(hka, c), __hmul(__hneg(hkb), s));
    kb_o = __hadd(__hmul(hkb, c), __hmul(hka, s));
  }
  __half* qdst = q_out + ((int64_t)t * p.heads + h) * p.head_dim;
  qdst[a] = qa_o;
  qdst[b] = qb_o;
  const int s = slot[t];
  if (s >= 0) {
    const int64_t blk = s / p.block_size, off = s % p.block_size;
    const int64_t base = p.stage_rows ? ((int64_t)t * p.heads + h) * p.head_dim
                                      : ((blk * p.heads + h) * p.block_size + off) * p.head_dim;
    k_cache[base + a] = ka_o;
    k_cache[base + b] = kb_o;
    v_cache[base + a] = __float2half_rn(ld(voff + a));
    v_cache[base + b] = __float2half_rn(ld(voff + b));
  }
}

}  // namespace

void qkv_rotary_kv_write(const __half* qkv, const float* bias, const int32_t* pos,
                         const int32_t* block_pos, const int32_t* slot, const RotaryParams& p,
                         __half* q_out, __half* k_cache, __half* v_cache, int tokens,
                         cudaStream_t stream) {
  const char* k = "qkv_rotary_kv_write";
  check_arg(qkv && pos && block_pos && slot && q_out && k_cache && v_cache && p.inv_freq, k,
            "null tensor");
  check_arg(p.heads > 0 && p.block_size > 0, k, "heads and block_size must be > 0");
  check_arg(p.head_dim >= 4 && p.head_dim <= 256 && (p.head_dim & (p.head_dim - 1)) == 0, k,
            "head_dim must be a power of two in [4, 256]");
  check_arg(tokens >= 0, k, "tokens < 0");
  if (tokens == 0) return;
  const int pairs = p.heads * p.head_dim / 2;
  const int threads = pairs < 256 ? ((pairs + 31) / 32) * 32 : 256;
  dim3 grid(tokens, (pairs + threads - 1) / threads);
  launch_k(k, qkv_rotary_kernel, grid, dim3(threads), 0, stream, qkv, bias, pos, block_pos, slot, p, q_out, k_cache,
           v_cache);
  GLM_CUDA_LAUNCH_CHECK(k);
}

}  // namespace cuda
}  // namespace glm
