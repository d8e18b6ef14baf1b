// Standalone test of the INT8 weight-only kernels (int8_gemm.cu) against a
// plain C++ reference, on odd sizes: quantization (bit-exact), dequantization
// (bit-exact), and y = act(x W^T * scale + bias) through each of the three
// paths (GEMV, tensor-core GEMM with and without split-K, dequantize + cuBLAS),
// W8A8 (per-token int8 activations, w8a8.cu: codes and scales bit-exact, the
// linear against exact integer sums), FP8 E4M3 (fp8_gemm.cu: codes and scales
// bit-exact, the linear against the codes' values; on GPUs with FP8 tensor
// cores), and on sm_90a the packed layout (round trip, its GEMV, its wgmma kernel, prefill).
//   glm_cuda_int8_test [seed]      exit status 0 = all passed
//   glm_cuda_int8_test bench [--tokens N] [--no-pdl]
//                                  kernel timings of one ChatGLM-6B block's linears
//                                  (--tokens: that token count only, for a profiler;
//                                  --no-pdl: programmatic dependent launch off, as the
//                                  engine's option cuda.pdl=false)
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_check.h"
#include "fp8_gemm.h"
#include "gemm.h"
#include "int8_gemm.h"
#include "kernels.h"
#include "pdl.h"

using namespace glm::cuda;

namespace {

int g_fail = 0;

void report(bool ok, const std::string& what, double err) {
  std::printf("%s %s (err %.3g)\n", ok ? "ok  " : "FAIL", what.c_str(), err);
  if (!ok) ++g_fail;
}

template <typename T>
T* dev_copy(const std::vector<T>& h) {
  T* d = nullptr;
  GLM_CUDA_CHECK(cudaMalloc(&d, std::max<size_t>(1, h.size()) * sizeof(T)));
  if (!h.empty()) GLM_CUDA_CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

template <typename T>
std::vector<T> host_copy(const T* d, size_t n) {
  std::vector<T> h(n);
  GLM_CUDA_CHECK(cudaDeviceSynchronize());
  GLM_CUDA_CHECK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

float h2f(__half h) { return __half2float(h); }
uint16_t hbits(__half h) {
  uint16_t b;
  std::memcpy(&b, &h, 2);
  return b;
}

// The documented scheme (glmserve.convert.quantize_int8).
void ref_quantize(const std::vector<float>& w, int64_t rows, int64_t cols, std::vector<int8_t>* q,
                  std::vector<__half>* scale) {
  q->assign(rows * cols, 0);
  scale->assign(rows, __float2half_rn(1.f));
  for (int64_t r = 0; r < rows; ++r) {
    float amax = 0.f;
    for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(w[r * cols + c]));
    __half s = __float2half_rn(amax / 127.0f);
    if (!(h2f(s) > 0.f)) s = __float2half_rn(1.f);
    (*scale)[r] = s;
    const float sf = h2f(s);
    for (int64_t c = 0; c < cols; ++c) {
      const float v = std::nearbyint(w[r * cols + c] / sf);
      (*q)[r * cols + c] = static_cast<int8_t>(std::min(127.f, std::max(-127.f, v)));
    }
  }
}

double gelu(double x) { return 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x))); }

void test_quantize(std::mt19937& rng) {
  const int64_t rows = 37, cols = 203;
  std::uniform_real_distribution<float> u(-3.f, 3.f);
  std::vector<float> w(rows * cols);
  for (auto& v : w) v = u(rng);
  for (int64_t c = 0; c < cols; ++c) {
    w[5 * cols + c] = 0.f;             // zero row: scale 1
    w[6 * cols + c] = 1e-9f * u(rng);  // scale underflows fp16: scale 1
    w[7 * cols + c] = 0.5f * (c % 5 - 2) * 127.f / 127.f;  // exact multiples: half-way cases
  }
  // fp16 inputs: the fp16 values themselves are what gets quantized
  std::vector<__half> wh(w.size());
  std::vector<float> wf16(w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    wh[i] = __float2half_rn(w[i]);
    wf16[i] = h2f(wh[i]);
  }
  for (int src = 0; src < 2; ++src) {
    std::vector<int8_t> rq;
    std::vector<__half> rs;
    ref_quantize(src == 0 ? w : wf16, rows, cols, &rq, &rs);
    int8_t* dq = dev_copy(std::vector<int8_t>(rows * cols));
    __half* ds = dev_copy(std::vector<__half>(rows));
    if (src == 0) {
      float* dw = dev_copy(w);
      int8_quantize_rows(dw, rows, cols, dq, ds, nullptr);
      GLM_CUDA_CHECK(cudaDeviceSynchronize());
      cudaFree(dw);
    } else {
      __half* dw = dev_copy(wh);
      int8_quantize_rows(dw, rows, cols, dq, ds, nullptr);
      GLM_CUDA_CHECK(cudaDeviceSynchronize());
      cudaFree(dw);
    }
    auto gq = host_copy(dq, rows * cols);
    auto gs = host_copy(ds, rows);
    int bad = 0;
    for (int64_t i = 0; i < rows * cols; ++i) bad += gq[i] != rq[i];
    for (int64_t r = 0; r < rows; ++r) bad += hbits(gs[r]) != hbits(rs[r]);
    report(bad == 0, std::string("quantize rows (") + (src ? "fp16" : "fp32") + " input, 37x203), mismatches", bad);
    // dequantize: fp16(q * scale), bit-exact
    __half* dd = dev_copy(std::vector<__half>(rows * cols));
    int8_dequantize(dq, ds, dd, rows, cols, nullptr);
    auto gd = host_copy(dd, rows * cols);
    bad = 0;
    for (int64_t i = 0; i < rows * cols; ++i)
      bad += hbits(gd[i]) != hbits(__float2half_rn(static_cast<float>(rq[i]) * h2f(rs[i / cols])));
    report(bad == 0, "dequantize (37x203), mismatches", bad);
    cudaFree(dq);
    cudaFree(ds);
    cudaFree(dd);
  }
}

enum Path { kGemv, kMma, kMmaNoSplit, kCublas, kW8a8, kPackedGemv, kPackedWs, kPackedPrefill };
const char* path_name(Path p) {
  switch (p) {
    case kGemv: return "gemv";
    case kMma: return "mma";
    case kMmaNoSplit: return "mma (no split-K)";
    case kCublas: return "dequant+cuBLAS";
    case kW8a8: return "w8a8";
    case kPackedGemv: return "packed gemv";
    case kPackedWs: return "packed wgmma";
    default: return "packed dequant+cuBLAS";
  }
}
bool is_packed(Path p) { return p == kPackedGemv || p == kPackedWs || p == kPackedPrefill; }

// The packed layout round trip: int8_pack then int8_packed_dequantize (whole
// matrix and a slice of 128-row groups) equals the row-major dequantization bit
// for bit; bad shapes are refused.
void test_pack(std::mt19937& rng) {
  const int N = 768, K = 320;
  std::uniform_int_distribution<int> u(-127, 127);
  std::vector<int8_t> q((size_t)N * K);
  for (auto& v : q) v = static_cast<int8_t>(u(rng));
  std::vector<__half> s(N);
  for (int n = 0; n < N; ++n) s[n] = __float2half_rn(0.001f * (1 + n % 13));
  int8_t* dq = dev_copy(q);
  __half* ds = dev_copy(s);
  uint8_t* dp = nullptr;
  GLM_CUDA_CHECK(cudaMalloc(&dp, q.size()));
  int8_pack(dq, dp, N, K, nullptr);
  __half* dref = dev_copy(std::vector<__half>(q.size()));
  __half* dout = dev_copy(std::vector<__half>(q.size()));
  int8_dequantize(dq, ds, dref, N, K, nullptr);
  int8_packed_dequantize(dp, ds, dout, 0, N, K, nullptr);
  auto ref = host_copy(dref, q.size()), got = host_copy(dout, q.size());
  int bad = 0;
  for (size_t i = 0; i < q.size(); ++i) bad += hbits(ref[i]) != hbits(got[i]);
  report(bad == 0, "pack + packed dequantize (768x320) == row-major dequantize, mismatches", bad);
  GLM_CUDA_CHECK(cudaMemset(dout, 0, q.size() * 2));
  int8_packed_dequantize(dp, ds, dout, 256, 384, K, nullptr);
  got = host_copy(dout, (size_t)384 * K);
  bad = 0;
  for (size_t i = 0; i < (size_t)384 * K; ++i) bad += hbits(ref[(size_t)256 * K + i]) != hbits(got[i]);
  report(bad == 0, "packed dequantize of rows [256, 640), mismatches", bad);
  bool refused = false;
  try {
    int8_pack(dq, dp, 200, K, nullptr);  // not whole 256-row blocks
  } catch (const std::invalid_argument&) {
    refused = true;
  }
  report(refused, "int8_pack refuses N % 256 != 0", 0);
  cudaFree(dq);
  cudaFree(ds);
  cudaFree(dp);
  cudaFree(dref);
  cudaFree(dout);
}

// The documented per-token activation quantization (w8a8.cu, glmserve.w8a8).
void ref_quantize_tokens(const std::vector<__half>& x, int M, int K, std::vector<int8_t>* q, std::vector<float>* s) {
  q->assign((size_t)M * K, 0);
  s->assign(M, 1.f);
  for (int m = 0; m < M; ++m) {
    float amax = 0.f;
    for (int k = 0; k < K; ++k) amax = std::max(amax, std::fabs(h2f(x[(size_t)m * K + k])));
    float sc = amax / 127.f;
    if (!(sc > 0.f)) sc = 1.f;
    (*s)[m] = sc;
    for (int k = 0; k < K; ++k) {
      const float v = std::nearbyint(h2f(x[(size_t)m * K + k]) / sc);  // ties to even
      (*q)[(size_t)m * K + k] = static_cast<int8_t>(std::min(127.f, std::max(-127.f, v)));
    }
  }
}

// int8_quantize_tokens: codes and scales bit for bit, a zero row's scale is 1.
void test_quantize_tokens(std::mt19937& rng) {
  for (const auto& mk : {std::pair<int, int>{1, 16}, {7, 333}, {65, 4096}, {3, 16384}}) {
    const int M = mk.first, K = mk.second;
    std::normal_distribution<float> nd(0.f, 2.f);
    std::vector<__half> x((size_t)M * K);
    for (size_t i = 0; i < x.size(); ++i) x[i] = __float2half_rn(i / K == 1 ? 0.f : nd(rng));
    if (M > 2) x[(size_t)2 * K + K / 2] = __float2half_rn(-300.f);  // an outlier
    std::vector<int8_t> rq;
    std::vector<float> rs;
    ref_quantize_tokens(x, M, K, &rq, &rs);
    __half* dx = dev_copy(x);
    int8_t* dq = dev_copy(std::vector<int8_t>(x.size()));
    float* ds = dev_copy(std::vector<float>(M));
    int8_quantize_tokens(dx, M, K, dq, ds, nullptr);
    auto gq = host_copy(dq, x.size());
    auto gs = host_copy(ds, M);
    int bad = 0;
    for (size_t i = 0; i < x.size(); ++i) bad += gq[i] != rq[i];
    for (int m = 0; m < M; ++m) bad += std::memcmp(&gs[m], &rs[m], 4) != 0;
    char what[96];
    std::snprintf(what, sizeof what, "quantize tokens (%dx%d), mismatches", M, K);
    report(bad == 0 && (M < 2 || gs[1] == 1.f), what, bad);
    cudaFree(dx);
    cudaFree(dq);
    cudaFree(ds);
  }
}

// ---- FP8 E4M3 (glmserve.fp8's rule)
float e4m3_value(uint8_t c) {
  const int e = (c >> 3) & 0xF, m = c & 7;
  const float v = e == 0 ? m * std::ldexp(1.f, -9) : (1.f + m / 8.f) * std::ldexp(1.f, e - 7);
  return (c & 0x80) ? -v : v;
}
// Nearest value, ties to the even code, saturating at 448 (finite inputs).
uint8_t e4m3_encode(float x) {
  static const std::vector<float> pos = [] {
    std::vector<float> v(0x7F);
    for (int c = 0; c <= 0x7E; ++c) v[c] = e4m3_value((uint8_t)c);
    return v;
  }();
  const float a = std::min(std::fabs(x), 448.f);
  int best = 0;
  for (int c = 1; c <= 0x7E; ++c) {
    const float d = std::fabs(pos[c] - a), db = std::fabs(pos[best] - a);
    if (d < db || (d == db && c % 2 == 0)) best = c;
  }
  return static_cast<uint8_t>(best | (std::signbit(x) ? 0x80 : 0));
}
void ref_fp8_rows(const std::vector<float>& x, int rows, int cols, std::vector<uint8_t>* q, std::vector<float>* s) {
  q->assign((size_t)rows * cols, 0);
  s->assign(rows, 1.f);
  for (int r = 0; r < rows; ++r) {
    float amax = 0.f;
    for (int c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(x[(size_t)r * cols + c]));
    const float sc = amax > 0.f ? amax / 448.f : 1.f;
    (*s)[r] = sc;
    for (int c = 0; c < cols; ++c) (*q)[(size_t)r * cols + c] = e4m3_encode(x[(size_t)r * cols + c] / sc);
  }
}

// fp8_quantize_rows (fp16 and fp32 input): codes and scales bit for bit; a zero
// row's scale is 1; the dequantization gives value(code) * scale.
void test_fp8_quantize(std::mt19937& rng) {
  for (const auto& rc : {std::pair<int, int>{1, 1}, {5, 333}, {64, 4096}, {3, 16384}}) {
    const int R = rc.first, C = rc.second;
    std::normal_distribution<float> nd(0.f, 3.f);
    std::vector<float> xf((size_t)R * C);
    std::vector<__half> xh(xf.size());
    for (size_t i = 0; i < xf.size(); ++i) {
      xh[i] = __float2half_rn((R > 1 && i / C == 1) ? 0.f : nd(rng));  // row 1 all zero
      xf[i] = h2f(xh[i]);
    }
    std::vector<uint8_t> rq;
    std::vector<float> rs;
    ref_fp8_rows(xf, R, C, &rq, &rs);
    for (int half = 0; half < 2; ++half) {
      uint8_t* dq = dev_copy(std::vector<uint8_t>(xf.size()));
      float* ds = dev_copy(std::vector<float>(R));
      if (half) {
        __half* dx = dev_copy(xh);
        fp8_quantize_rows(dx, R, C, dq, ds, nullptr);
        cudaFree(dx);
      } else {
        float* dx = dev_copy(xf);
        fp8_quantize_rows(dx, R, C, dq, ds, nullptr);
        cudaFree(dx);
      }
      auto gq = host_copy(dq, xf.size());
      auto gs = host_copy(ds, R);
      int bad = 0;
      for (size_t i = 0; i < xf.size(); ++i) bad += gq[i] != rq[i];
      for (int r = 0; r < R; ++r) bad += std::memcmp(&gs[r], &rs[r], 4) != 0;
      float* dd = dev_copy(std::vector<float>(xf.size()));
      fp8_dequantize_rows(dq, ds, dd, R, C, nullptr);
      auto gd = host_copy(dd, xf.size());
      for (size_t i = 0; i < xf.size(); ++i) bad += gd[i] != e4m3_value(rq[i]) * rs[i / C];
      char what[96];
      std::snprintf(what, sizeof what, "fp8 quantize/dequantize rows %dx%d (%s), mismatches", R, C,
                    half ? "fp16" : "fp32");
      report(bad == 0 && (R < 2 || gs[1] == 1.f), what, bad);
      cudaFree(dq);
      cudaFree(ds);
      cudaFree(dd);
    }
  }
}

// fp16 outputs against double references: the largest error over max |ref|; infinity
// when an output is not finite (never written: the buffers start as NaN).
double rel_err_fp16(const std::vector<__half>& got, const std::vector<double>& ref, double rmax) {
  double err = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const float g = h2f(got[i]);
    if (!std::isfinite(g)) return INFINITY;
    err = std::max(err, std::fabs(g - ref[i]));
  }
  return err / std::max(rmax, 1e-6);
}

// Fp8Gemm::linear against the reference built from the same codes (double sums). With
// M <= gemv_max the linear is the weight-only GEMV: the reference keeps x's fp16 values.
void test_fp8_linear(std::mt19937& rng, Fp8Gemm& gemm, int M, int K, int N, int act, int gemv_max = 0) {
  const bool gemv = M <= gemv_max;
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<__half> x((size_t)M * K);
  std::vector<float> xf(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = __float2half_rn(u(rng));
    xf[i] = h2f(x[i]);
  }
  std::vector<float> w((size_t)N * K);
  for (size_t i = 0; i < w.size(); ++i) w[i] = u(rng) * (1.f + (i / K) % 5);
  std::vector<uint8_t> wq, xq;
  std::vector<float> ws, xs;
  ref_fp8_rows(w, N, K, &wq, &ws);
  ref_fp8_rows(xf, M, K, &xq, &xs);
  std::vector<float> bias(N);
  for (auto& v : bias) v = 0.1f * u(rng);
  const bool use_bias = act >= 1, use_gelu = act == 2;
  std::vector<double> ref((size_t)M * N);
  std::vector<float> xv(xq.size()), wv(wq.size());
  for (size_t i = 0; i < xq.size(); ++i) xv[i] = gemv ? xf[i] : e4m3_value(xq[i]);
  if (gemv) xs.assign(M, 1.f);
  for (size_t i = 0; i < wq.size(); ++i) wv[i] = e4m3_value(wq[i]);
  double rmax = 0;
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double acc = 0;
      for (int k = 0; k < K; ++k) acc += (double)xv[(size_t)m * K + k] * wv[(size_t)n * K + k];
      double v = acc * xs[m] * ws[n] + (use_bias ? bias[n] : 0.0);
      if (use_gelu) v = gelu(v);
      ref[(size_t)m * N + n] = v;
      rmax = std::max(rmax, std::fabs(v));
    }
  __half* dx = dev_copy(x);
  Fp8Weight dw;
  dw.q = dev_copy(wq);
  dw.scale = dev_copy(ws);
  float* db = dev_copy(bias);
  __half* dy = nullptr;
  GLM_CUDA_CHECK(cudaMalloc(&dy, (size_t)M * N * 2));
  GLM_CUDA_CHECK(cudaMemset(dy, 0xFF, (size_t)M * N * 2));  // NaN: every output must be written
  gemm.set_gemv_max_tokens(gemv_max);
  gemm.linear(dx, dw, dy, M, K, N, use_bias ? db : nullptr, use_gelu);
  gemm.set_gemv_max_tokens(0);
  auto got = host_copy(dy, (size_t)M * N);
  const double err = rel_err_fp16(got, ref, rmax);
  char what[128];
  std::snprintf(what, sizeof what, "fp8 linear%s M=%d K=%d N=%d %s", gemv ? " (GEMV)" : "", M, K, N,
                act == 0 ? "plain" : act == 1 ? "bias" : "bias+gelu");
  report(err <= 2e-3, what, err);
  cudaFree(dx);
  cudaFree(dw.q);
  cudaFree(dw.scale);
  cudaFree(db);
  cudaFree(dy);
}

// fp8_gemv (the launcher) on odd sizes: x fp16 as it is, E4M3 weight codes with per-row
// scales, against double sums; every output written (NaN-filled first), N any.
void test_fp8_gemv(std::mt19937& rng, int M, int K, int N, int act) {
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<__half> x((size_t)M * K);
  for (auto& v : x) v = __float2half_rn(u(rng));
  std::vector<float> w((size_t)N * K);
  for (size_t i = 0; i < w.size(); ++i) w[i] = u(rng) * (1.f + (i / K) % 7);
  std::vector<uint8_t> wq;
  std::vector<float> ws;
  ref_fp8_rows(w, N, K, &wq, &ws);
  std::vector<float> bias(N);
  for (auto& v : bias) v = 0.1f * u(rng);
  const bool use_bias = act >= 1, use_gelu = act == 2;
  std::vector<double> ref((size_t)M * N);
  double rmax = 0;
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double acc = 0;
      for (int k = 0; k < K; ++k) acc += (double)h2f(x[(size_t)m * K + k]) * e4m3_value(wq[(size_t)n * K + k]);
      double v = acc * ws[n] + (use_bias ? bias[n] : 0.0);
      if (use_gelu) v = gelu(v);
      ref[(size_t)m * N + n] = v;
      rmax = std::max(rmax, std::fabs(v));
    }
  __half* dx = dev_copy(x);
  uint8_t* dq = dev_copy(wq);
  float* ds = dev_copy(ws);
  float* db = dev_copy(bias);
  __half* dy = nullptr;
  GLM_CUDA_CHECK(cudaMalloc(&dy, (size_t)M * N * 2));
  GLM_CUDA_CHECK(cudaMemset(dy, 0xFF, (size_t)M * N * 2));
  fp8_gemv(dx, dq, ds, dy, use_bias ? db : nullptr, use_gelu, M, K, N, nullptr);
  auto got = host_copy(dy, (size_t)M * N);
  const double err = rel_err_fp16(got, ref, rmax);
  char what[128];
  std::snprintf(what, sizeof what, "fp8 gemv M=%d K=%d N=%d %s", M, K, N,
                act == 0 ? "plain" : act == 1 ? "bias" : "bias+gelu");
  report(err <= 2e-3, what, err);
  cudaFree(dx);
  cudaFree(dq);
  cudaFree(ds);
  cudaFree(db);
  cudaFree(dy);
}

// act: 0 none, 1 bias, 2 bias + GeLU, 3 fp32 output
void test_linear(std::mt19937& rng, Int8Gemm& gemm, Path path, int M, int K, int N, int act) {
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<__half> x(static_cast<size_t>(M) * K);
  for (auto& v : x) v = __float2half_rn(u(rng));
  std::vector<float> w(static_cast<size_t>(N) * K);
  for (size_t i = 0; i < w.size(); ++i) w[i] = u(rng) * (1.f + (i / K) % 7);  // row magnitudes differ
  std::vector<int8_t> q;
  std::vector<__half> s;
  ref_quantize(w, N, K, &q, &s);
  std::vector<float> bias(N);
  for (auto& v : bias) v = 0.1f * u(rng);
  const bool f32 = act == 3;
  const bool use_bias = act == 1 || act == 2, use_gelu = act == 2;
  std::vector<double> ref(static_cast<size_t>(M) * N);
  double rmax = 0;
  std::vector<int8_t> xq;  // W8A8: the activations' codes and scales
  std::vector<float> xs;
  if (path == kW8a8) ref_quantize_tokens(x, M, K, &xq, &xs);
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double v;
      if (path == kW8a8) {  // exact integer sum, then the documented fp32 epilogue
        int64_t acc = 0;
        for (int k = 0; k < K; ++k) acc += (int64_t)xq[(size_t)m * K + k] * q[(size_t)n * K + k];
        v = (static_cast<float>(acc) * xs[m]) * h2f(s[n]) + (use_bias ? bias[n] : 0.f);
      } else {
        double acc = 0;
        for (int k = 0; k < K; ++k) acc += (double)h2f(x[(size_t)m * K + k]) * q[(size_t)n * K + k];
        v = acc * h2f(s[n]) + (use_bias ? bias[n] : 0.0);
      }
      if (use_gelu) v = gelu(v);
      ref[(size_t)m * N + n] = v;
      rmax = std::max(rmax, std::fabs(v));
    }
  __half* dx = dev_copy(x);
  Int8Weight dw;
  dw.q = dev_copy(q);
  dw.scale = dev_copy(s);
  if (is_packed(path)) {
    uint8_t* qp = nullptr;
    GLM_CUDA_CHECK(cudaMalloc(&qp, q.size()));
    int8_pack(dw.q, qp, N, K, nullptr);
    GLM_CUDA_CHECK(cudaDeviceSynchronize());
    cudaFree(dw.q);
    dw.q = reinterpret_cast<int8_t*>(qp);
    dw.packed = true;
  }
  float* db = dev_copy(bias);
  void* dy = nullptr;
  const size_t ybytes = (size_t)M * N * (f32 ? 4 : 2);
  GLM_CUDA_CHECK(cudaMalloc(&dy, ybytes));
  GLM_CUDA_CHECK(cudaMemset(dy, 0xFF, ybytes));  // NaN: every output must be written
  auto run = [&]() {
    if (path == kMmaNoSplit) {
      int8_mma_pipe(dx, dw.q, dw.scale, dy, f32, use_bias ? db : nullptr, use_gelu, M, K, N, nullptr, 0, nullptr, 0,
                    1, nullptr);
      return;
    }
    gemm.set_w8a8_min_tokens(path == kW8a8 ? 1 : 0);
    gemm.set_gemv_max_tokens(path == kGemv || path == kPackedGemv ? 8 : 0);
    gemm.set_mma_max_tokens(path == kMma || path == kPackedGemv || path == kPackedWs ? 1 << 20 : 0);
    if (f32)
      gemm.linear_f32out(dx, dw, static_cast<float*>(dy), M, K, N);
    else
      gemm.linear(dx, dw, static_cast<__half*>(dy), M, K, N, use_bias ? db : nullptr, use_gelu);
  };
  run();
  std::vector<double> got(ref.size());
  std::vector<unsigned char> raw1(ybytes), raw2(ybytes);
  GLM_CUDA_CHECK(cudaDeviceSynchronize());
  GLM_CUDA_CHECK(cudaMemcpy(raw1.data(), dy, ybytes, cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < got.size(); ++i) {
    if (f32) {
      float v;
      std::memcpy(&v, raw1.data() + 4 * i, 4);
      got[i] = v;
    } else {
      __half v;
      std::memcpy(&v, raw1.data() + 2 * i, 2);
      got[i] = h2f(v);
    }
  }
  double err = 0;
  bool finite = true;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) finite = false;
    err = std::max(err, std::fabs(got[i] - ref[i]));
  }
  err /= std::max(rmax, 1e-6);
  // fp16 output: rounding (2^-11); fp32 output: fp32 accumulation only, except
  // the cuBLAS path whose weights are fp16(q * scale).
  const double tol = (!f32 || path == kCublas || path == kPackedPrefill) ? 2e-3 : 1e-4;
  char what[160];
  std::snprintf(what, sizeof what, "%s M=%d K=%d N=%d %s", path_name(path), M, K, N,
                act == 0 ? "plain" : act == 1 ? "bias" : act == 2 ? "bias+gelu" : "fp32 out");
  report(finite && err <= tol, what, err);
  // Same inputs, same bits (no atomics anywhere).
  run();
  GLM_CUDA_CHECK(cudaDeviceSynchronize());
  GLM_CUDA_CHECK(cudaMemcpy(raw2.data(), dy, ybytes, cudaMemcpyDeviceToHost));
  if (raw1 != raw2) report(false, std::string(what) + " deterministic", 1);
  cudaFree(dx);
  cudaFree(dw.q);
  cudaFree(dw.scale);
  cudaFree(db);
  cudaFree(dy);
}

// ---- stream-only ceiling: the GEMVs' access pattern (a warp streams two rows
// with 16-byte loads that skip L1, 4 per row in flight, 4 warps split K when
// rows <= 8192) with no arithmetic: the most a GEMV of that pattern can reach.
__global__ void stream_rows_kernel(const uint8_t* __restrict__ w, int rows, int row_bytes, int ks, int* sink) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int pair = blockIdx.x * (8 / ks) + warp / ks, part = warp % ks;
  const int n0 = min(2 * pair, rows - 1), n1 = min(2 * pair + 1, rows - 1);
  const int per = row_bytes / ks, beg = part * per + lane * 16, end = part * per + per;
  uint32_t acc = 0;
  for (int k = beg; k < end; k += 4 * 512) {
    uint4 v[8] = {};
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int kk = k + u * 512;
      if (kk >= end) break;
      asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                   : "=r"(v[u].x), "=r"(v[u].y), "=r"(v[u].z), "=r"(v[u].w)
                   : "l"(w + (int64_t)n0 * row_bytes + kk));
      asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                   : "=r"(v[4 + u].x), "=r"(v[4 + u].y), "=r"(v[4 + u].z), "=r"(v[4 + u].w)
                   : "l"(w + (int64_t)n1 * row_bytes + kk));
    }
#pragma unroll
    for (int u = 0; u < 8; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  if (acc == 0x9e3779b9u) *sink = 1;  // keeps the loads; practically never true
}

void stream_rows(const void* w, int rows, int row_bytes, int* sink) {
  const int ks = rows <= 8192 && row_bytes % 2048 == 0 ? 4 : 1;  // as both GEMVs split K
  const int blocks = ((rows + 1) / 2 + 8 / ks - 1) / (8 / ks);
  stream_rows_kernel<<<blocks, 256>>>(static_cast<const uint8_t*>(w), rows, row_bytes, ks, sink);
  GLM_CUDA_LAUNCH_CHECK("stream_rows");
}

// ---- timing (glm_cuda_int8_test bench): ChatGLM-6B's four linear layers of one
// block, for each token count, through the fp16 path the engine uses (Gemm:
// GEMV up to 4 tokens, cuBLAS above) and each int8 kernel. Not a test: numbers.
float time_us(const std::function<void()>& f, int reps) {
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
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return 1000.f * ms / reps;
}

// tokens > 0: that token count only (profiling); pdl: as the engine's option cuda.pdl.
int bench(int tokens, bool pdl) {
  struct Layer {
    const char* name;
    int N, K;
    bool gelu;
  };
  const Layer layers[] = {{"qkv", 12288, 4096, false}, {"dense", 4096, 4096, false},
                          {"h_to_4h", 16384, 4096, true}, {"4h_to_h", 4096, 16384, false}};
  // Programmatic dependent launch as the engine sets it (cuda_runner.cc).
  {
    int dev = 0;
    cudaDeviceProp prop{};
    GLM_CUDA_CHECK(cudaGetDevice(&dev));
    GLM_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    set_pdl(pdl && pdl_supported(dev));
    std::printf("%s, programmatic dependent launch %s\n", prop.name, pdl_enabled() ? "on" : "off");
  }
  Gemm fp16;
  Int8Gemm i8;
  fp16.set_stream(nullptr);
  i8.set_stream(nullptr);
  std::vector<__half*> wh;
  std::vector<Int8Weight> wq, wp;  // row-major, packed (sm_90a)
  const bool packed = int8_packed_available();
  std::vector<float*> bias;
  double int8_bytes = 0, fp16_bytes = 0;
  for (const Layer& l : layers) {
    __half* w = nullptr;
    GLM_CUDA_CHECK(cudaMalloc(&w, (size_t)l.N * l.K * sizeof(__half)));
    fill_uniform_half(w, (int64_t)l.N * l.K, 17 + wh.size(), 0.02f, nullptr);
    Int8Weight q;
    GLM_CUDA_CHECK(cudaMalloc(&q.q, (size_t)l.N * l.K));
    GLM_CUDA_CHECK(cudaMalloc(&q.scale, (size_t)l.N * sizeof(__half)));
    int8_quantize_rows(w, l.N, l.K, q.q, q.scale, nullptr);
    float* b = nullptr;
    GLM_CUDA_CHECK(cudaMalloc(&b, (size_t)l.N * sizeof(float)));
    fill_uniform_float(b, l.N, 99 + wh.size(), 0.01f, nullptr);
    if (packed) {
      Int8Weight p;
      GLM_CUDA_CHECK(cudaMalloc(&p.q, (size_t)l.N * l.K));
      p.scale = q.scale;
      p.packed = true;
      int8_pack(q.q, reinterpret_cast<uint8_t*>(p.q), l.N, l.K, nullptr);
      wp.push_back(p);
    }
    wh.push_back(w);
    wq.push_back(q);
    bias.push_back(b);
    int8_bytes += (double)l.N * l.K + 2.0 * l.N;
    fp16_bytes += 2.0 * l.N * l.K;
  }
  __half *x = nullptr, *y = nullptr;
  GLM_CUDA_CHECK(cudaMalloc(&x, (size_t)256 * 16384 * sizeof(__half)));
  GLM_CUDA_CHECK(cudaMalloc(&y, (size_t)256 * 16384 * sizeof(__half)));
  fill_uniform_half(x, (int64_t)256 * 16384, 5, 1.f, nullptr);
  GLM_CUDA_CHECK(cudaDeviceSynchronize());
  const int reps_ceiling = 20;
  std::printf("one block's 4 linear layers (qkv, dense, h_to_4h + bias + GeLU, 4h_to_h), us per block;\n"
              "fp16 = the engine's Gemm (GEMV <= 4 tokens, cuBLAS above); int8 weights %.1f MB, fp16 %.1f MB\n",
              int8_bytes / 1e6, fp16_bytes / 1e6);
  {
    int* sink = nullptr;
    GLM_CUDA_CHECK(cudaMalloc(&sink, sizeof(int)));
    const float s8 = time_us([&] { for (size_t i = 0; i < 4; ++i) stream_rows(wq[i].q, layers[i].N, layers[i].K, sink); }, reps_ceiling);
    const float s16 = time_us([&] { for (size_t i = 0; i < 4; ++i) stream_rows(wh[i], layers[i].N, 2 * layers[i].K, sink); }, reps_ceiling);
    std::printf("stream-only ceiling (the GEMVs' load pattern, no arithmetic): int8 bytes %.1f us (%.0f GB/s), fp16 bytes "
                "%.1f us (%.0f GB/s): at 1 token int8 can be at most %.2fx fp16 per block\n\n",
                s8, int8_bytes / (s8 * 1e3), s16, fp16_bytes / (s16 * 1e3), s16 / s8);
    cudaFree(sink);
  }
  std::printf("| tokens | fp16 us | int8 gemv us | int8 v4 us | packed gemv us | packed wgmma us | w8a8 us | "
              "best int8 / fp16 |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  auto layer_fp16 = [&](size_t i, int M) {
    return [&, i, M] {
      fp16.linear(x, wh[i], y, M, layers[i].K, layers[i].N, layers[i].gelu ? bias[i] : nullptr, layers[i].gelu);
    };
  };
  // pk: the packed weights; w8: W8A8 (row-major weights)
  auto layer_int8 = [&](size_t i, int M, int gemv_max, bool pk, bool w8 = false) {
    return [&, i, M, gemv_max, pk, w8] {
      i8.set_gemv_max_tokens(gemv_max);
      i8.set_w8a8_min_tokens(w8 ? 1 : 0);
      i8.linear(x, pk ? wp[i] : wq[i], y, M, layers[i].K, layers[i].N, layers[i].gelu ? bias[i] : nullptr,
                layers[i].gelu);
    };
  };
  const int reps = 20;
  enum Weights { kFp16, kRowMajor, kPacked, kW8a8Rows };
  auto block_time = [&](int M, int gemv_max, Weights wt) {
    return time_us(
        [&] {
          for (size_t i = 0; i < 4; ++i) {
            if (wt == kFp16)
              layer_fp16(i, M)();
            else
              layer_int8(i, M, gemv_max, wt == kPacked, wt == kW8a8Rows)();
          }
        },
        reps);
  };
  std::vector<int> sizes = {1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256};
  if (tokens > 0) sizes = {tokens};  // one size (profiling)
  for (int M : sizes) {
    const float t16 = block_time(M, 0, kFp16);
    const float tg = M <= 8 ? block_time(M, 8, kRowMajor) : 0.f;
    const float t4 = block_time(M, 0, kRowMajor);
    const float pg = packed && M <= 8 ? block_time(M, 8, kPacked) : 0.f;
    const float pw = packed ? block_time(M, 0, kPacked) : 0.f;
    const float w8 = block_time(M, 0, kW8a8Rows);
    float best = t4;
    for (float t : {tg, pg, pw, w8})
      if (t > 0) best = std::min(best, t);
    char gemv[32] = "-", pgs[32] = "-", pws[32] = "-";
    if (tg > 0) std::snprintf(gemv, sizeof gemv, "%.1f", tg);
    if (pg > 0) std::snprintf(pgs, sizeof pgs, "%.1f", pg);
    if (pw > 0) std::snprintf(pws, sizeof pws, "%.1f", pw);
    std::printf("| %d | %.1f | %s | %.1f | %s | %s | %.1f | %.2fx |\n", M, t16, gemv, t4, pgs, pws, w8, t16 / best);
  }
  std::printf("\nper layer, us (GB/s of weights in brackets)\n| tokens | layer | fp16 | int8 gemv | int8 v4 | packed |\n"
              "|---:|---|---:|---:|---:|---:|\n");
  if (tokens > 0)
    sizes.clear();
  else
    sizes = {1, 8, 16, 64, 128};
  for (int M : sizes) {
    for (size_t i = 0; i < 4; ++i) {
      const double wb = (double)layers[i].N * layers[i].K;
      const float a = time_us(layer_fp16(i, M), reps);
      const float d = time_us(layer_int8(i, M, 0, false), reps);
      const float f = packed ? time_us(layer_int8(i, M, 8, true), reps) : 0.f;
      const float gv = M <= 8 ? time_us(layer_int8(i, M, 8, false), reps) : 0.f;
      char gs[48] = "-";
      if (gv > 0) std::snprintf(gs, sizeof gs, "%.1f (%.0f)", gv, wb / (gv * 1e3));
      std::printf("| %d | %s | %.1f (%.0f) | %s | %.1f (%.0f) | %.1f (%.0f) |\n", M, layers[i].name, a,
                  2 * wb / (a * 1e3), gs, d, wb / (d * 1e3), f, f > 0 ? wb / (f * 1e3) : 0.0);
    }
  }
  i8.set_gemv_max_tokens(4);
  for (size_t i = 0; i < 4; ++i) {
    cudaFree(wh[i]);
    cudaFree(wq[i].q);
    cudaFree(wq[i].scale);
    if (packed) cudaFree(wp[i].q);
    cudaFree(bias[i]);
  }
  cudaFree(x);
  cudaFree(y);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "bench") == 0) {
    int tokens = 0;
    bool pdl = true;
    for (int i = 2; i < argc; ++i) {
      if (std::strcmp(argv[i], "--tokens") == 0 && i + 1 < argc && std::atoi(argv[i + 1]) >= 1) {
        tokens = std::atoi(argv[++i]);
      } else if (std::strcmp(argv[i], "--no-pdl") == 0) {
        pdl = false;
      } else {
        std::printf("usage: %s bench [--tokens N (>= 1)] [--no-pdl]\n", argv[0]);
        return 2;
      }
    }
    try {
      return bench(tokens, pdl);
    } catch (const std::exception& e) {
      std::printf("FAIL exception: %s\n", e.what());
      return 1;
    }
  }
  const unsigned seed = argc > 1 ? static_cast<unsigned>(std::strtoul(argv[1], nullptr, 10)) : 1234u;
  std::printf("int8 kernel test, seed %u\n", seed);
  std::mt19937 rng(seed);
  try {
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
      std::printf("no CUDA device\n");
      return 2;
    }
    test_quantize(rng);
    test_quantize_tokens(rng);
    Int8Gemm gemm;
    gemm.set_stream(nullptr);
    struct Case {
      Path p;
      int M, K, N;
    };
    const Case cases[] = {
        {kGemv, 1, 16, 1},      {kGemv, 1, 48, 7},       {kGemv, 2, 528, 257},    {kGemv, 3, 2048, 999},
        {kGemv, 4, 4096, 33},   {kGemv, 5, 1040, 301},   {kGemv, 8, 8192, 65},    {kGemv, 1, 4096, 8193},
        {kMma, 1, 64, 1},       {kMma, 5, 128, 7},       {kMma, 9, 192, 255},     {kMma, 16, 1024, 300},
        {kMma, 17, 4096, 77},   {kMma, 33, 640, 513},    {kMma, 64, 2048, 259},   {kMma, 100, 320, 1000},
        {kMma, 256, 256, 130},  {kMma, 8, 16384, 96},    {kMmaNoSplit, 3, 64, 5}, {kMmaNoSplit, 40, 448, 777},
        {kMmaNoSplit, 64, 1024, 300},   {kMma, 65, 1024, 1000},  {kMma, 129, 512, 515},  {kMma, 1, 4096, 1030},
        {kMma, 12, 2048, 600},  {kMma, 31, 16384, 40},                    {kCublas, 17, 48, 5},    {kCublas, 300, 100, 37},
        {kCublas, 9, 4096, 129},
        {kW8a8, 1, 16, 1},      {kW8a8, 3, 48, 7},       {kW8a8, 17, 4096, 77},   {kW8a8, 64, 1024, 515},
        {kW8a8, 129, 512, 1000}, {kW8a8, 256, 4096, 300}, {kW8a8, 300, 16384, 33}, {kW8a8, 31, 640, 4099},
    };
    std::printf("-- row-major layout\n");
    int i = 0;
    for (int round = 0; round < 2; ++round)  // each case twice, with other epilogues the second time
      for (const Case& c : cases) {
        test_linear(rng, gemm, c.p, c.M, c.K, c.N, i % 4);
        ++i;
      }
    if (int8_packed_available()) {
      std::printf("-- packed layout (sm_90a)\n");
      test_pack(rng);
      const Case packed[] = {
          {kPackedGemv, 1, 64, 256},    {kPackedGemv, 2, 320, 512},   {kPackedGemv, 3, 1088, 768},
          {kPackedGemv, 5, 4096, 256},  {kPackedGemv, 8, 576, 1280},  {kPackedGemv, 1, 16384, 512},
          {kPackedWs, 1, 64, 256},      {kPackedWs, 2, 320, 512},     {kPackedWs, 7, 1088, 768},
          {kPackedWs, 9, 4096, 256},    {kPackedWs, 16, 192, 1280},   {kPackedWs, 17, 576, 512},
          {kPackedWs, 33, 640, 768},    {kPackedWs, 64, 2048, 256},   {kPackedWs, 65, 1024, 512},
          {kPackedWs, 130, 448, 256},   {kPackedWs, 256, 256, 768},   {kPackedWs, 31, 16384, 256},
          {kPackedPrefill, 17, 320, 512}, {kPackedPrefill, 300, 128, 256},
      };
      int j = 0;
      for (const Case& c : packed) test_linear(rng, gemm, c.p, c.M, c.K, c.N, j++ % 3);  // fp16 output only
      for (int act = 0; act < 3; ++act) test_linear(rng, gemm, kPackedWs, 64, 4096, 512, act);
      bool refused = false;
      try {
        test_linear(rng, gemm, kPackedWs, 4, 64, 256, 3);
      } catch (const std::invalid_argument&) {
        refused = true;
      }
      report(refused, "packed weights refuse fp32 output", 0);
    } else {
      std::printf("-- packed layout: skipped (no sm_90a code for this device in this build)\n");
    }
    // all four epilogues on the paths the decoder uses most
    for (int act = 0; act < 4; ++act) {
      test_linear(rng, gemm, kGemv, 1, 4096, 515, act);
      test_linear(rng, gemm, kMma, 64, 1024, 515, act);
    }
    // the split-K capacity limit: a large N leaves no split
    test_linear(rng, gemm, kMma, 9, 64, 70001, 2);
    test_linear(rng, gemm, kMma, 9, 64, 70001, 3);
    if (fp8_supported_device()) {
      std::printf("-- fp8 (E4M3, cuBLASLt)\n");
      test_fp8_quantize(rng);
      Fp8Gemm f8;
      // out % 16 == 0 (cuBLASLt's FP8 kernels); 5000 x 16384 tokens take three scratch chunks
      const int shapes[][3] = {{1, 16, 16},      {3, 48, 32},      {17, 4096, 80},  {64, 1024, 528},
                               {129, 512, 1008}, {256, 4096, 304}, {300, 16384, 48}, {31, 640, 4112},
                               {300, 64, 70000}, {5000, 16384, 16}};
      int j = 0;
      for (const auto& sh : shapes) test_fp8_linear(rng, f8, sh[0], sh[1], sh[2], j++ % 3);
      bool refused = false;
      try {
        test_fp8_linear(rng, f8, 2, 64, 7, 0);
      } catch (const std::invalid_argument&) {
        refused = true;
      }
      report(refused, "fp8 linear refuses out % 16 != 0", 0);
      // the weight-only GEMV: every M it takes, K from one 16-byte load to past a 4 x 512 split,
      // odd N; then through Fp8Gemm::linear at its edges
      const int gemv_shapes[][3] = {{1, 16, 7},    {2, 48, 515},    {3, 4096, 4099}, {4, 2064, 33},
                                    {5, 16400, 9}, {6, 1024, 8193}, {7, 640, 515},   {8, 4096, 1000}};
      j = 0;
      for (const auto& sh : gemv_shapes) test_fp8_gemv(rng, sh[0], sh[1], sh[2], j++ % 3);
      test_fp8_linear(rng, f8, 1, 4096, 528, 2, 8);
      test_fp8_linear(rng, f8, 8, 1024, 80, 1, 8);
      test_fp8_linear(rng, f8, 9, 1024, 80, 1, 8);  // one over: cuBLASLt
      {
        __half* dx = dev_copy(std::vector<__half>(9 * 32));
        uint8_t* dq = dev_copy(std::vector<uint8_t>(8 * 32));
        float* ds = dev_copy(std::vector<float>(8, 1.f));
        __half* dy = dev_copy(std::vector<__half>(9 * 8));
        auto refuses = [&](int M, int K, const float* scale) {
          try {
            fp8_gemv(dx, dq, scale, dy, nullptr, false, M, K, 8, nullptr);
          } catch (const std::invalid_argument&) {
            return true;
          }
          return false;
        };
        report(refuses(1, 24, ds) && refuses(9, 32, ds) && refuses(1, 32, nullptr) && !refuses(1, 32, ds),
               "fp8 gemv refuses K % 16 != 0, M > 8 and a null scale", 0);
        GLM_CUDA_CHECK(cudaDeviceSynchronize());
        cudaFree(dx);
        cudaFree(dq);
        cudaFree(ds);
        cudaFree(dy);
      }
    } else {
      std::printf("-- fp8: skipped (this GPU has no FP8 tensor cores)\n");
    }
    // W8A8: output columns over several cuBLAS calls (the scratch's accumulator room)
    test_linear(rng, gemm, kW8a8, 300, 64, 70001, 3);
    {  // a shape it does not take is refused by the launcher (the dispatcher never sends it)
      __half* x = dev_copy(std::vector<__half>(2 * 24));
      int8_t* q = dev_copy(std::vector<int8_t>(8 * 24));
      __half* sc = dev_copy(std::vector<__half>(8));
      __half* y = dev_copy(std::vector<__half>(2 * 8));
      void* scratch = nullptr;
      GLM_CUDA_CHECK(cudaMalloc(&scratch, 1 << 20));
      bool refused = false;
      try {
        w8a8_linear(nullptr, x, q, sc, y, false, nullptr, false, 2, 24, 8, scratch, 1 << 20, nullptr);
      } catch (const std::invalid_argument&) {
        refused = true;
      }
      report(refused && !w8a8_supported(x, q, 24) && w8a8_supported(x, q, 32), "w8a8 refuses K % 16 != 0", 0);
      cudaFree(x);
      cudaFree(q);
      cudaFree(sc);
      cudaFree(y);
      cudaFree(scratch);
    }
  } catch (const std::exception& e) {
    std::printf("FAIL exception: %s\n", e.what());
    return 1;
  }
  std::printf("%s: %d failure(s)\n", g_fail ? "FAILED" : "PASSED", g_fail);
  return g_fail ? 1 : 0;
}
