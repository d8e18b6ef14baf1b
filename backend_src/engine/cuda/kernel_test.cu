// Standalone check of every CUDA kernel against a plain C++ reference, on odd
// sizes, fresh random inputs, outputs poisoned before each run.
// Exit code 0 only when every check passes. Usage: glm_cuda_kernel_test [seed]
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "../e4m3.h"
#include "../rng.h"
#include "../sampling.h"
#include "cuda_check.h"
#include "gemm.h"
#include "kernels.h"

using namespace glm::cuda;

namespace {

int g_failures = 0;
std::mt19937_64 g_rng(12345);

void report(const std::string& name, bool ok, const std::string& detail) {
  std::printf("%-58s %s  %s\n", name.c_str(), ok ? "PASS" : "FAIL", detail.c_str());
  if (!ok) ++g_failures;
}

std::vector<float> randn(size_t n, float scale = 1.f) {
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g_rng);
  return v;
}

float h2f(__half h) { return __half2float(h); }
float rh(float x) { return __half2float(__float2half_rn(x)); }  // round through fp16

template <typename T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  explicit Dev(size_t count) : n(count) { GLM_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T))); }
  Dev(const std::vector<T>& h) : Dev(h.size()) { up(h); }
  ~Dev() { cudaFree(p); }
  void up(const std::vector<T>& h) { GLM_CUDA_CHECK(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice)); }
  std::vector<T> down() const {
    std::vector<T> h(n);
    GLM_CUDA_CHECK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  void poison() { GLM_CUDA_CHECK(cudaMemset(p, 0xFF, n * sizeof(T))); }  // fp16 0xFFFF = NaN
};

std::vector<__half> to_half(const std::vector<float>& v) {
  std::vector<__half> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = __float2half_rn(v[i]);
  return h;
}
std::vector<float> from_half(const std::vector<__half>& v) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i) f[i] = h2f(v[i]);
  return f;
}

// ||a - b|| / ||b||, NaN -> inf
double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (double)(a[i] - b[i]) * (a[i] - b[i]);
    den += (double)b[i] * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

std::string fmt(double x) {
  char b[64];
  std::snprintf(b, sizeof b, "rel_err %.3g", x);
  return b;
}

// ---------------------------------------------------------------- layernorm
void test_layernorm(int rows, int hidden, bool with_resid, bool gather) {
  const float alpha = 7.483315f, eps = 1e-5f;
  const int src_rows = gather ? 37 : rows;
  auto r = to_half(randn((size_t)src_rows * hidden));
  auto y = to_half(randn((size_t)src_rows * hidden, 3.f));
  auto bias = randn(hidden, 0.1f), gamma = randn(hidden, 0.5f), beta = randn(hidden, 0.2f);
  std::vector<int32_t> idx(rows);
  for (int i = 0; i < rows; ++i) idx[i] = gather ? (int)(g_rng() % src_rows) : i;
  Dev<__half> dr(r), dy(y), dout((size_t)rows * hidden);
  Dev<float> db(bias), dg(gamma), dbe(beta);
  Dev<int32_t> di(idx);
  dout.poison();
  add_layernorm(with_resid ? dr.p : nullptr, alpha, dy.p, with_resid ? db.p : nullptr,
                gather ? di.p : nullptr, dg.p, dbe.p, eps, dout.p, rows, hidden, 0);
  GLM_CUDA_CHECK(cudaDeviceSynchronize());
  auto got = from_half(dout.down());
  std::vector<float> ref((size_t)rows * hidden);
  for (int i = 0; i < rows; ++i) {
    const int s = idx[i];
    std::vector<double> x(hidden);
    double mean = 0;
    for (int j = 0; j < hidden; ++j) {
      x[j] = h2f(y[(size_t)s * hidden + j]);
      if (with_resid) x[j] += alpha * (double)h2f(r[(size_t)s * hidden + j]) + bias[j];
      mean += x[j];
    }
    mean /= hidden;
    double var = 0;
    for (int j = 0; j < hidden; ++j) var += (x[j] - mean) * (x[j] - mean);
    var /= hidden;
    for (int j = 0; j < hidden; ++j)
      ref[(size_t)i * hidden + j] = (float)((x[j] - mean) / std::sqrt(var + eps) * gamma[j] + beta[j]);
  }
  const double e = rel_err(got, ref);
  report("add_layernorm rows=" + std::to_string(rows) + " hidden=" + std::to_string(hidden) +
             (with_resid ? " resid" : "") + (gather ? " gather" : ""),
         e < 2e-3, fmt(e));
}

void test_bias_gelu(int rows, int cols) {
  auto x = to_half(randn((size_t)rows * cols, 2.f));
  auto b = randn(cols, 0.5f);
  Dev<__half> dx(x);
  Dev<float> db(b);
  bias_gelu(dx.p, db.p, rows, cols, 0);
  GLM_CUDA_CHECK(cudaDeviceSynchronize());
  auto got = from_half(dx.down());
  std::vector<float> ref(got.size());
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j) {
      const double v = (double)h2f(x[(size_t)i * cols + j]) + b[j];
      ref[(size_t)i * cols + j] =
          (float)(0.5 * v * (1 + std::tanh(0.7978845608028654 * v * (1 + 0.044715 * v * v))));
    }
  const double e = rel_err(got, ref);
  report("bias_gelu rows=" + std::to_string(rows) + " cols=" + std::to_string(cols), e < 2e-3, fmt(e));
}

// ------------------------------------------------------------------ gemm
void test_gemm(int tokens, int in, int out) {
  auto x = to_half(randn((size_t)tokens * in));
  auto w = to_half(randn((size_t)out * in, 0.05f));
  Dev<__half> dx(x), dw(w), dy((size_t)tokens * out);
  Dev<float> dyf((size_t)tokens * out);
  dy.poison();
  dyf.poison();
  Gemm g;
  g.set_stream(0);
  g.linear(dx.p, dw.p, dy.p, tokens, in, out);
  g.linear_f32out(dx.p, dw.p, dyf.p, tokens, in, out);
  GLM_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<float> ref((size_t)tokens * out);
  for (int t = 0; t < tokens; ++t)
    for (int o = 0; o < out; ++o) {
      double s = 0;
      for (int i = 0; i < in; ++i) s += (double)h2f(x[(size_t)t * in + i]) * h2f(w[(size_t)o * in + i]);
      ref[(size_t)t * out + o] = (float)s;
    }
  const double e1 = rel_err(from_half(dy.down()), ref), e2 = rel_err(dyf.down(), ref);
  const std::string sz = std::to_string(tokens) + "x" + std::to_string(in) + "->" + std::to_string(out);
  report("gemm fp16 out " + sz, e1 < 2e-3, fmt(e1));
  report("gemm fp32 out " + sz, e2 < 1e-4, fmt(e2));
}

// mma: the tensor-core GEMV (gemv_mma) instead of the CUDA-core one.
void test_gemv(int M, int K, int N, bool f32_out, bool gelu, bool mma = false) {
  auto x = to_half(randn((size_t)M * K));
  auto w = to_half(randn((size_t)N * K, 0.05f));
  auto b = randn(N, 0.5f);
  Dev<__half> dx(x), dw(w), dy((size_t)M * N);
  Dev<float> dyf((size_t)M * N), db(b);
  dy.poison();
  dyf.poison();
  auto run = mma ? gemv_mma : gemv;
  if (f32_out)
    run(dx.p, dw.p, dyf.p, true, nullptr, false, M, K, N, 0);
  else
    run(dx.p, dw.p, dy.p, false, gelu ? db.p : nullptr, gelu, M, K, N, 0);
  GLM_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<float> ref((size_t)M * N);
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double s = 0;
      for (int k = 0; k < K; ++k) s += (double)h2f(x[(size_t)m * K + k]) * h2f(w[(size_t)n * K + k]);
      if (gelu) {
        s += b[n];
        s = 0.5 * s * (1 + std::tanh(0.7978845608028654 * s * (1 + 0.044715 * s * s)));
      }
      ref[(size_t)m * N + n] = (float)s;
    }
  const double e = rel_err(f32_out ? dyf.down() : from_half(dy.down()), ref);
  char nm[128];
  std::snprintf(nm, sizeof nm, "%s M=%d K=%d N=%d%s%s", mma ? "gemv_mma" : "gemv", M, K, N, f32_out ? " f32out" : "",
                gelu ? " bias+gelu" : "");
  // fp32 output: tensor cores accumulate in fp32 too, with the looser bound of the cuBLAS
  // GEMM test above (their adds need not round to nearest)
  report(nm, e < (f32_out ? (mma ? 1e-4 : 1e-5) : 2e-3), fmt(e));
}

// ------------------------------------------------------------ rotary + kv
std::vector<float> inv_freq_table(int head_dim) {
  const int R = head_dim / 2;
  std::vector<float> f(R / 2);
  for (int j = 0; j < R / 2; ++j) f[j] = rh((float)(1.0 / std::pow(10000.0, (2.0 * j) / R)));
  return f;
}

void test_rotary(int tokens, int heads, int head_dim, int block_size, bool fp16_angles) {
  const int W = heads * 3 * head_dim;
  auto qkv = to_half(randn((size_t)tokens * W));
  auto bias = randn(W, 0.3f);
  const int num_blocks = (tokens + block_size - 1) / block_size + 3;
  std::vector<int32_t> pos(tokens), bpos(tokens), slot(tokens);
  std::vector<int32_t> perm(num_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), g_rng);
  for (int t = 0; t < tokens; ++t) {
    pos[t] = (int)(g_rng() % 2048);
    bpos[t] = (int)(g_rng() % 2048);
    slot[t] = (t % 5 == 3) ? -1 : perm[t / block_size] * block_size + t % block_size;
  }
  auto invf = inv_freq_table(head_dim);
  Dev<__half> dqkv(qkv), dq((size_t)tokens * heads * head_dim);
  const size_t cache_n = (size_t)num_blocks * heads * block_size * head_dim;
  Dev<__half> dk(cache_n), dv(cache_n);
  Dev<float> db(bias), dinv(invf);
  Dev<int32_t> dpos(pos), dbpos(bpos), dslot(slot);
  dq.poison();
  dk.poison();
  dv.poison();
  RotaryParams p;
  p.heads = heads;
  p.head_dim = head_dim;
  p.block_size = block_size;
  p.inv_freq = dinv.p;
  p.fp16_angles = fp16_angles;
  qkv_rotary_kv_write(dqkv.p, db.p, dpos.p, dbpos.p, dslot.p, p, dq.p, dk.p, dv.p, tokens, 0);
  GLM_CUDA_CHECK(cudaDeviceSynchronize());
  auto gq = from_half(dq.down()), gk = from_half(dk.down()), gv = from_half(dv.down());
  std::vector<float> rq, rk, qg, kg, vg, rv;
  const int R = head_dim / 2, Q = R / 2;
  for (int t = 0; t < tokens; ++t)
    for (int h = 0; h < heads; ++h) {
      for (int part = 0; part < 2; ++part) {  // q, k
        std::vector<double> x(head_dim), o(head_dim);
        for (int d = 0; d < head_dim; ++d)
          x[d] = (double)h2f(qkv[(size_t)t * W + h * 3 * head_dim + part * head_dim + d]) +
                 bias[h * 3 * head_dim + part * head_dim + d];
        for (int hf = 0; hf < 2; ++hf)
          for (int i = 0; i < Q; ++i) {
            const int a = hf * R + i, b = a + Q;
            const int ps = hf == 0 ? pos[t] : bpos[t];
            double c, s;
            if (!fp16_angles) {
              const float ang = (float)ps * invf[i];
              c = std::cos((double)ang);
              s = std::sin((double)ang);
            } else {
              const float ang = rh((float)ps * invf[i]);
              c = rh((float)std::cos((double)ang));
              s = rh((float)std::sin((double)ang));
            }
            o[a] = x[a] * c - x[b] * s;
            o[b] = x[b] * c + x[a] * s;
          }
        for (int d = 0; d < head_dim; ++d) {
          const float got = part == 0 ? gq[((size_t)t * heads + h) * head_dim + d] : 0.f;
          if (part == 0) {
            rq.push_back((float)o[d]);
            qg.push_back(got);
          } else if (slot[t] >= 0) {
            const size_t blk = slot[t] / block_size, off = slot[t] % block_size;
            const size_t base = ((blk * heads + h) * block_size + off) * head_dim;
            rk.push_back((float)o[d]);
            kg.push_back(gk[base + d]);
            rv.push_back(h2f(qkv[(size_t)t * W + h * 3 * head_dim + 2 * head_dim + d]) +
                         bias[h * 3 * head_dim + 2 * head_dim + d]);
            vg.push_back(gv[base + d]);
          }
        }
      }
    }
  const double tol = fp16_angles ? 3e-3 : 1e-3;
  const double eq = rel_err(qg, rq), ek = rel_err(kg, rk), ev = rel_err(vg, rv);
  const std::string nm = "qkv_rotary_kv_write T=" + std::to_string(tokens) + " heads=" + std::to_string(heads) +
                         " hd=" + std::to_string(head_dim) + " bs=" + std::to_string(block_size) +
                         (fp16_angles ? " fp16-angles" : "");
  char d[128];
  std::snprintf(d, sizeof d, "q %.2g k %.2g v %.2g", eq, ek, ev);
  report(nm, eq < tol && ek < tol && ev < 1e-3, d);
}

// -------------------------------------------------------------- attention
// fp8: the cache as E4M3 codes + a scale per row (quantize_e4m3_row), read by
// paged_attention_fp8; the reference uses the codes' values times the scales.
void test_attention(int heads, int head_dim, int block_size, const std::vector<int>& seq_lens,
                    int queries_last, bool fp8 = false, int splits = 1, int one_pass = 0) {
  // Each sequence: keys 0..len-1 in the cache; the last `queries_last` tokens
  // (at most len) are queries, with the ChatGLM rule for context c = len/2.
  const int nseq = (int)seq_lens.size();
  int max_len = 0;
  for (int l : seq_lens) max_len = std::max(max_len, l);
  const int mbps = (max_len + block_size - 1) / block_size;
  const int num_blocks = nseq * mbps + 5;
  std::vector<int32_t> perm(num_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), g_rng);
  std::vector<int32_t> table((size_t)nseq * mbps, -1);
  for (int s = 0, k = 0; s < nseq; ++s)
    for (int b = 0; b < (seq_lens[s] + block_size - 1) / block_size; ++b) table[(size_t)s * mbps + b] = perm[k++];
  const size_t cache_n = (size_t)num_blocks * heads * block_size * head_dim;
  auto kc = to_half(randn(cache_n)), vc = to_half(randn(cache_n));
  const size_t rows = cache_n / head_dim;
  std::vector<uint8_t> k8(cache_n), v8(cache_n);
  std::vector<float> ks(rows), vs(rows);
  if (fp8) {  // quantize every row, then keep its dequantized values as the reference's cache
    std::vector<float> row(head_dim);
    for (int kv = 0; kv < 2; ++kv) {
      auto& c = kv ? vc : kc;
      auto& codes = kv ? v8 : k8;
      auto& sc = kv ? vs : ks;
      for (size_t r = 0; r < rows; ++r) {
        for (int e = 0; e < head_dim; ++e) row[e] = h2f(c[r * head_dim + e]);
        sc[r] = glm::quantize_e4m3_row(row.data(), head_dim, &codes[r * head_dim]);
      }
    }
  }
  // The values the kernel sees (fp16, or the fp8 codes' values times the scales).
  auto kval = [&](size_t i) { return fp8 ? glm::e4m3_to_f32(k8[i]) * ks[i / head_dim] : h2f(kc[i]); };
  auto vval = [&](size_t i) { return fp8 ? glm::e4m3_to_f32(v8[i]) * vs[i / head_dim] : h2f(vc[i]); };
  std::vector<int32_t> tok_seq, n_keys, qpos;
  for (int s = 0; s < nseq; ++s) {
    const int len = seq_lens[s], c = len / 2;
    for (int t = std::max(0, len - queries_last); t < len; ++t) {
      tok_seq.push_back(s);
      n_keys.push_back(std::min(len, std::max(c, t + 1)));
      qpos.push_back(t);
    }
  }
  tok_seq.push_back(0);  // one padding row
  n_keys.push_back(0);
  const int T = (int)tok_seq.size();
  auto q = to_half(randn((size_t)T * heads * head_dim));
  Dev<__half> dq(q), dk(kc), dv(vc), dout((size_t)T * heads * head_dim);
  Dev<int32_t> dts(tok_seq), dnk(n_keys), dbt(table);
  dout.poison();
  AttentionParams p;
  p.heads = heads;
  p.head_dim = head_dim;
  p.block_size = block_size;
  p.max_blocks_per_seq = mbps;
  p.max_keys = max_len;
  p.scale = 1.f / std::sqrt((float)head_dim);
  // The warp-per-(token, head) kernel is opt-in in the runner; on here, so that
  // the cases with >= 2048 (token, head) pairs test it (the others take the block kernel).
  p.warp_per_pair = true;
  p.one_pass = one_pass;  // > 0: the one-pass block kernel, keys per lane group per round (before the warp kernel)
  p.splits = splits;  // > 1: split-KV (chunks of at least kAttnSplitMinChunk keys, then the combine)
  const size_t scratch_n = (size_t)T * heads * splits * (head_dim + 2);
  Dev<float> dscratch(std::vector<float>(splits > 1 ? scratch_n : 1));
  dscratch.poison();  // every chunk must write its partial result, empty ones included
  if (splits > 1) {
    p.split_scratch = dscratch.p;
    p.split_scratch_floats = scratch_n;
  }
  if (fp8) {
    Dev<uint8_t> dk8(k8), dv8(v8);
    Dev<float> dks(ks), dvs(vs);
    paged_attention_fp8(dq.p, dk8.p, dv8.p, dks.p, dvs.p, dts.p, dnk.p, dbt.p, p, dout.p, T, 0);
    GLM_CUDA_CHECK(cudaDeviceSynchronize());
  } else {
    paged_attention(dq.p, dk.p, dv.p, dts.p, dnk.p, dbt.p, p, dout.p, T, 0);
  }
  GLM_CUDA_CHECK(cudaDeviceSynchronize());
  auto got = from_half(dout.down());
  std::vector<float> ref(got.size(), 0.f);
  for (int t = 0; t < T; ++t) {
    const int n = n_keys[t];
    if (n == 0) continue;
    const int32_t* tb = &table[(size_t)tok_seq[t] * mbps];
    for (int h = 0; h < heads; ++h) {
      std::vector<double> sc(n);
      double mx = -1e300;
      auto at = [&](int s) {
        return (((size_t)tb[s / block_size] * heads + h) * block_size + s % block_size) * head_dim;
      };
      for (int s = 0; s < n; ++s) {
        double d = 0;
        for (int e = 0; e < head_dim; ++e)
          d += (double)h2f(q[((size_t)t * heads + h) * head_dim + e]) * kval(at(s) + e);
        sc[s] = d * p.scale;
        mx = std::max(mx, sc[s]);
      }
      double sum = 0;
      for (double& x : sc) sum += (x = std::exp(x - mx));
      for (int e = 0; e < head_dim; ++e) {
        double o = 0;
        for (int s = 0; s < n; ++s) o += sc[s] * vval(at(s) + e);
        ref[((size_t)t * heads + h) * head_dim + e] = (float)(o / sum);
      }
    }
  }
  bool pad_zero = true;
  for (int e = 0; e < heads * head_dim; ++e) pad_zero &= got[(size_t)(T - 1) * heads * head_dim + e] == 0.f;
  const double e = rel_err(got, ref);
  std::string lens;
  for (int l : seq_lens) lens += std::to_string(l) + ",";
  report(std::string(fp8 ? "paged_attention_fp8" : "paged_attention") + " hd=" + std::to_string(head_dim) + " heads=" + std::to_string(heads) +
             " bs=" + std::to_string(block_size) + " lens=" + lens + " q/seq=" + std::to_string(queries_last) +
             (splits > 1 ? " split-KV " + std::to_string(splits) : std::string()) + (one_pass ? " one-pass " + std::to_string(one_pass) : std::string()),
         e < 2e-3 && pad_zero, fmt(e) + (pad_zero ? "" : " padding row not zero"));
}

// paged_attention throws std::invalid_argument for a small valid call that `change` breaks.
template <typename Change>
void test_attention_refused(const std::string& what, Change change) {
  bool refused = false;
  try {
    AttentionParams p;
    p.heads = 2;
    p.head_dim = 8;
    p.block_size = 4;
    p.max_blocks_per_seq = 1;
    p.max_keys = 4;
    change(p);
    Dev<__half> x(std::vector<__half>(16));
    Dev<int32_t> i(std::vector<int32_t>(4));
    paged_attention(x.p, x.p, x.p, i.p, i.p, i.p, p, x.p, 1, 0);
  } catch (const std::invalid_argument&) {
    refused = true;
  }
  report("paged_attention refuses " + what, refused, "");
}

// -------------------------------------------------------------- fp8 KV write
// kv_fp8_write: codes and scales bit for bit against glm::quantize_e4m3_row of the
// same fp16 rows, at each token's slot; skipped slots (-1) and other rows untouched.
void test_kv_fp8_write(int tokens, int heads, int head_dim, int block_size) {
  const int num_blocks = (tokens + block_size - 1) / block_size + 3;
  const int slots = num_blocks * block_size;
  std::vector<int32_t> perm(slots);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), g_rng);
  std::vector<int32_t> slot(perm.begin(), perm.begin() + tokens);
  slot[tokens / 2] = -1;
  const size_t n = (size_t)tokens * heads * head_dim;
  auto k = to_half(randn(n, 3.f)), v = to_half(randn(n, 0.5f));
  for (int e = 0; e < head_dim; ++e) k[e] = __float2half(0.f);  // token 0, head 0: an all-zero row
  Dev<__half> dk(k), dv(v);
  Dev<int32_t> ds(slot);
  const size_t cn = (size_t)slots * heads * head_dim, rn = (size_t)slots * heads;
  Dev<uint8_t> kc(cn), vc(cn);
  Dev<float> ksc(rn), vsc(rn);
  kc.poison();
  vc.poison();
  ksc.poison();
  vsc.poison();
  kv_fp8_write(dk.p, dv.p, ds.p, heads, head_dim, block_size, kc.p, ksc.p, vc.p, vsc.p, tokens, 0);
  GLM_CUDA_CHECK(cudaDeviceSynchronize());
  auto gk = kc.down(), gv = vc.down();
  auto gks = ksc.down(), gvs = vsc.down();
  std::vector<bool> written(rn, false);
  int bad = 0;
  std::vector<float> row(head_dim);
  std::vector<uint8_t> codes(head_dim);
  for (int t = 0; t < tokens; ++t) {
    if (slot[t] < 0) continue;
    for (int h = 0; h < heads; ++h) {
      const size_t r = ((size_t)(slot[t] / block_size) * heads + h) * block_size + slot[t] % block_size;
      written[r] = true;
      for (int kvi = 0; kvi < 2; ++kvi) {
        const auto& src = kvi ? v : k;
        for (int e = 0; e < head_dim; ++e) row[e] = h2f(src[((size_t)t * heads + h) * head_dim + e]);
        const float sc = glm::quantize_e4m3_row(row.data(), head_dim, codes.data());
        const float got_sc = kvi ? gvs[r] : gks[r];
        bad += std::memcmp(&sc, &got_sc, 4) != 0;
        for (int e = 0; e < head_dim; ++e) bad += (kvi ? gv : gk)[r * head_dim + e] != codes[e];
      }
    }
  }
  for (size_t r = 0; r < rn; ++r)  // every other row keeps its poison
    if (!written[r]) bad += gk[r * head_dim] != 0xFF || gv[r * head_dim] != 0xFF;
  const bool zero_scale_one = slot[0] < 0 || gks[(size_t)(slot[0] / block_size) * heads * block_size + slot[0] % block_size] == 1.f;
  report("kv_fp8_write T=" + std::to_string(tokens) + " heads=" + std::to_string(heads) + " hd=" +
             std::to_string(head_dim) + " bs=" + std::to_string(block_size),
         bad == 0 && zero_scale_one, "mismatches " + std::to_string(bad));
}

// --------------------------------------------------------------- sampling
void test_sampling(int vocab, int rows) {
  std::vector<float> logits((size_t)rows * vocab);
  for (auto& x : logits) x = std::normal_distribution<float>(0.f, 2.5f)(g_rng);
  // Exact ties and the value 0 to check the ordering rules.
  for (int r = 0; r < rows; ++r) {
    logits[(size_t)r * vocab + 7] = logits[(size_t)r * vocab + 3];
    logits[(size_t)r * vocab + 11] = 0.f;
  }
  struct Case { float t; int k; float p; float pen; };
  const Case cases[] = {{0.f, 0, 1.f, 1.f}, {0.f, 0, 1.f, 1.3f}, {0.7f, 0, 1.f, 1.f}, {1.f, 40, 1.f, 1.f},
                        {0.9f, 0, 0.8f, 1.f}, {1.3f, 100, 0.5f, 1.2f}, {0.05f, 0, 0.95f, 1.f}, {2.f, 1, 1.f, 1.f}};
  std::vector<int32_t> hist;
  for (int i = 0; i < 200; ++i) hist.push_back((int)(g_rng() % std::min(vocab, 500)));
  hist.push_back(3);
  hist.push_back(3);
  for (const Case& c : cases) {
    // rows x draws: each row gets a different rng offset
    const int draws = 6;
    const int n = rows * draws;
    std::vector<float> lg((size_t)n * vocab);
    for (int i = 0; i < n; ++i) std::memcpy(&lg[(size_t)i * vocab], &logits[(size_t)(i % rows) * vocab], vocab * 4);
    Dev<float> dl(lg);
    std::vector<int32_t> rows_idx(n), hoff(n + 1), hcat;
    std::vector<float> pen(n, c.pen);
    std::vector<SampleRowParams> sp(n);
    for (int i = 0; i < n; ++i) {
      rows_idx[i] = i;
      hoff[i] = (int)hcat.size();
      hcat.insert(hcat.end(), hist.begin(), hist.begin() + 50 + (i % 150));
      sp[i] = SampleRowParams{c.t, c.k, c.p, 1000u + (uint64_t)(i % rows), (uint64_t)(i / rows) * 7};
    }
    hoff[n] = (int)hcat.size();
    Dev<int32_t> dri(rows_idx), dho(hoff), dh(hcat), dout(n);
    Dev<float> dpen(pen);
    Dev<SampleRowParams> dsp(sp);
    dout.poison();
    if (c.pen != 1.f) repetition_penalty(dl.p, vocab, dri.p, dpen.p, dh.p, dho.p, n, 0);
    if (c.t == 0.f) {
      Dev<unsigned long long> scratch(n);
      argmax_rows(dl.p, vocab, n, dout.p, scratch.p, 0);
    } else {
      const size_t wb = sample_workspace_bytes(n, vocab);
      Dev<char> ws(wb);
      sample_rows(dl.p, vocab, dri.p, dsp.p, n, ws.p, wb, dout.p, 0);
      GLM_CUDA_CHECK(cudaDeviceSynchronize());
    }
    GLM_CUDA_CHECK(cudaDeviceSynchronize());
    auto got = dout.down();
    int mism = 0;
    for (int i = 0; i < n; ++i) {
      glm::SamplingParams P;
      P.temperature = c.t;
      P.top_k = c.k;
      P.top_p = c.p;
      P.repetition_penalty = c.pen;
      P.seed = sp[i].seed;
      const int32_t want = glm::sample_token(&lg[(size_t)i * vocab], vocab, P, sp[i].rng_offset,
                                             &hcat[hoff[i]], hoff[i + 1] - hoff[i]);
      if (want != got[i]) ++mism;
    }
    char nm[160];
    std::snprintf(nm, sizeof nm, "sampling vocab=%d T=%.2g k=%d p=%.2g pen=%.2g", vocab, c.t, c.k, c.p, c.pen);
    report(nm, mism == 0, std::to_string(mism) + "/" + std::to_string(n) + " differ from the CPU sampler");
  }
}

// Overlapped stepping's device-side feed of the previous step's ids.
void test_feed_prev(int n, int prev_rows) {
  std::vector<int32_t> tokens(2 * n + 3), rows(n), prev(n), ids(prev_rows);
  for (auto& t : tokens) t = (int32_t)(g_rng() % 1000);
  for (int i = 0; i < n; ++i) {
    rows[i] = 2 * i + 1;
    prev[i] = (i % 3 == 1) ? -1 : (int32_t)(g_rng() % prev_rows);
  }
  for (auto& x : ids) x = 5000 + (int32_t)(g_rng() % 100000);
  std::vector<int32_t> want = tokens;
  for (int i = 0; i < n; ++i)
    if (prev[i] >= 0) want[rows[i]] = ids[prev[i]];
  Dev<int32_t> dt(tokens), dr(rows), dp(prev), di(ids);
  feed_prev_tokens(dt.p, dr.p, dp.p, n, di.p, 0);
  GLM_CUDA_CHECK(cudaDeviceSynchronize());
  const auto got = dt.down();
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) bad += got[i] != want[i];
  report("feed_prev_tokens n=" + std::to_string(n) + " prev_rows=" + std::to_string(prev_rows), bad == 0,
         std::to_string(bad) + " tokens differ");
}

void test_fill() {
  const int64_t n = 100003;
  Dev<__half> dh(n);
  Dev<float> df(n);
  const uint64_t tseed = glm::splitmix64(77u ^ (5u * 0x9E3779B97F4A7C15ull));
  fill_uniform_half(dh.p, n, tseed, 0.015625f, 0);
  fill_uniform_float(df.p, n, tseed, 0.02f, 0);
  GLM_CUDA_CHECK(cudaDeviceSynchronize());
  auto h = dh.down();
  auto f = df.down();
  int bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float v = 2.0f * glm::uniform01(tseed, (uint64_t)i) - 1.0f;
    if (h2f(h[i]) != rh(0.015625f * v)) ++bad;
    if (f[i] != 0.02f * v) ++bad;
  }
  report("fill_uniform (same values as the CPU random_weights)", bad == 0, std::to_string(bad) + " differ");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) g_rng.seed(std::strtoull(argv[1], nullptr, 10));
  int dev = 0;
  cudaDeviceProp prop{};
  GLM_CUDA_CHECK(cudaGetDevice(&dev));
  GLM_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  std::printf("device: %s (sm_%d%d, %d SMs)\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount);
  try {
    test_fill();
    test_layernorm(7, 4096, true, false);
    test_layernorm(13, 4096, false, true);
    test_layernorm(3, 32, true, true);
    test_layernorm(5, 98, true, false);
    test_bias_gelu(7, 16384);
    test_bias_gelu(3, 130);
    test_gemm(1, 4096, 1000);
    test_gemm(7, 96, 136);
    test_gemm(33, 4096, 12288);
    test_gemv(1, 4096, 12288, false, false);
    test_gemv(3, 4096, 1001, true, false);
    test_gemv(8, 16384, 4096, false, false);
    test_gemv(5, 4096, 16384, false, true);
    test_gemv(2, 128, 515, false, true);
    test_gemv(7, 520, 33, true, false);
    // tensor-core GEMV: 1, 2 token tiles (M <= 8, > 8), each K split (8: <= 512 row
    // tiles, K % 512 == 0; 4: <= 2048 tiles, K % 256 == 0; 1: the rest), rows past N in
    // the last tile, odd M, chunks per warp under and over the 4 in flight
    test_gemv(8, 16384, 4096, false, false, true);
    test_gemv(5, 4096, 12288, false, false, true);
    test_gemv(16, 4096, 16384, false, true, true);
    test_gemv(13, 4096, 130528 / 16 + 3, true, false, true);
    test_gemv(9, 576, 1001, false, true, true);
    test_gemv(1, 64, 37, true, false, true);
    test_gemv(3, 512, 8195, false, false, true);
    test_gemv(11, 1280, 33, false, true, true);
    test_layernorm(3, 768, true, true);
    test_rotary(13, 32, 128, 16, false);
    test_rotary(13, 32, 128, 16, true);
    test_rotary(9, 8, 4, 5, false);
    test_rotary(21, 4, 16, 7, false);
    test_attention(32, 128, 16, {1, 17, 333, 40}, 1);
    test_attention(32, 128, 16, {19, 45}, 19);
    test_attention(8, 4, 5, {3, 11, 2}, 3);
    test_attention(4, 16, 7, {29, 1}, 29);
    test_attention(6, 64, 16, {2047}, 2);
    test_attention(4, 32, 16, {23, 40, 7}, 5);
    {  // the warp-per-(token, head) kernel: >= 2048 (token, head) pairs
      std::vector<int> lens;
      for (int i = 0; i < 70; ++i) lens.push_back(1 + (i * 37) % 190);
      test_attention(32, 128, 16, lens, 1);
      test_attention(32, 64, 16, {150, 9}, 80);
    }
    test_kv_fp8_write(1, 1, 4, 1);
    test_kv_fp8_write(37, 32, 128, 16);
    test_kv_fp8_write(9, 5, 64, 7);
    test_kv_fp8_write(300, 2, 8, 16);
    test_attention(32, 128, 16, {1, 17, 333, 40}, 1, true);
    test_attention(32, 128, 16, {19, 45}, 19, true);
    test_attention(8, 4, 5, {3, 11, 2}, 3, true);
    test_attention(4, 16, 7, {29, 1}, 29, true);
    test_attention(6, 64, 16, {2047}, 2, true);
    test_attention(4, 32, 16, {23, 40, 7}, 5, true);
    // split-KV: chunks of ceil(n / splits) but at least 64 keys, empty chunks, a context
    // shorter than one chunk, the padding row (all chunks empty), fp16 and fp8 caches
    test_attention(32, 128, 16, {2047}, 1, false, 16);
    test_attention(32, 128, 16, {1, 17, 333, 40}, 1, false, 4);
    test_attention(8, 4, 5, {3, 11, 2}, 3, false, 3);
    test_attention(6, 64, 16, {1500, 130}, 2, false, 7);
    test_attention(32, 128, 16, {2047}, 1, true, 16);
    test_attention(4, 32, 16, {700, 40, 7}, 5, true, 5);
    // the one-pass kernel (online softmax) with 2, 4 and 8 keys per lane group per round:
    // every head size, contexts shorter than one round (32 keys at head_dim 128 and 4) and
    // many rounds, lane groups that get no key, prefill queries, the padding row, fp16 and
    // fp8 caches, with and without split-KV; 2,336 (token, head) pairs (where the warp
    // kernel would otherwise run)
    test_attention(32, 128, 16, {1, 17, 333, 40}, 1, false, 1, 4);
    test_attention(32, 128, 16, {19, 45}, 19, false, 1, 4);
    test_attention(8, 4, 5, {3, 11, 2}, 3, false, 1, 4);
    test_attention(4, 16, 7, {29, 1}, 29, false, 1, 2);
    test_attention(6, 64, 16, {2047}, 2, false, 1, 8);
    test_attention(4, 32, 16, {23, 40, 7}, 5, false, 1, 2);
    test_attention(2, 8, 3, {130, 5}, 4, false, 1, 8);
    test_attention(32, 128, 16, {93, 168, 18, 61, 33, 97, 120, 150}, 9, false, 1, 4);
    test_attention(32, 128, 16, {93, 168, 18, 61, 33, 97, 120, 150}, 9, false, 1, 2);
    test_attention(32, 128, 16, {93, 168, 18, 61, 33, 97, 120, 150}, 9, false, 1, 8);
    test_attention(32, 128, 16, {1, 17, 333, 40}, 1, true, 1, 4);
    test_attention(4, 16, 7, {29, 1}, 29, true, 1, 8);
    test_attention(6, 64, 16, {2047}, 2, true, 1, 2);
    test_attention(32, 128, 16, {2047}, 1, false, 16, 4);
    test_attention(8, 4, 5, {3, 11, 2}, 3, false, 3, 2);
    test_attention(6, 64, 16, {1500, 130}, 2, false, 7, 8);
    test_attention(4, 32, 16, {700, 40, 7}, 5, true, 5, 4);
    // the launcher refuses a one-pass round size it has no kernel for, and a split without
    // (enough) scratch
    test_attention_refused("one_pass = 3", [](AttentionParams& p) { p.one_pass = 3; });
    test_attention_refused("split-KV without scratch", [](AttentionParams& p) { p.splits = 2; });
    test_feed_prev(1, 1);
    test_feed_prev(257, 131);
    test_feed_prev(37, 300);
    test_sampling(1001, 5);
    test_sampling(130528, 3);
  } catch (const std::exception& e) {
    std::printf("EXCEPTION: %s\n", e.what());
    return 2;
  }
  std::printf("%s: %d failure(s)\n", g_failures ? "FAILED" : "ALL PASSED", g_failures);
  return g_failures ? 1 : 0;
}
