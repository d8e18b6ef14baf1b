// Standalone test of the INT8 weight-only kernels (int8_gemm.cu) against a
// plain C++ reference, on odd sizes: quantization (bit-exact), dequantization
// (bit-exact), and y = act(x W^T * scale + bias) through each of the three
// paths (GEMV, tensor-core GEMM with and without split-K, dequantize + cuBLAS).
//   glm_cuda_int8_test [seed]      exit status 0 = all passed
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda_check.h"
#include "int8_gemm.h"

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

enum Path { kGemv, kMma, kMmaNoSplit, kCublas };
const char* path_name(Path p) {
  return p == kGemv ? "gemv" : p == kMma ? "mma" : p == kMmaNoSplit ? "mma (no split-K)" : "dequant+cuBLAS";
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
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double acc = 0;
      for (int k = 0; k < K; ++k) acc += (double)h2f(x[(size_t)m * K + k]) * q[(size_t)n * K + k];
      double v = acc * h2f(s[n]) + (use_bias ? bias[n] : 0.0);
      if (use_gelu) v = gelu(v);
      ref[(size_t)m * N + n] = v;
      rmax = std::max(rmax, std::fabs(v));
    }
  __half* dx = dev_copy(x);
  Int8Weight dw;
  dw.q = dev_copy(q);
  dw.scale = dev_copy(s);
  float* db = dev_copy(bias);
  void* dy = nullptr;
  const size_t ybytes = (size_t)M * N * (f32 ? 4 : 2);
  GLM_CUDA_CHECK(cudaMalloc(&dy, ybytes));
  GLM_CUDA_CHECK(cudaMemset(dy, 0xFF, ybytes));  // NaN: every output must be written
  auto run = [&]() {
    if (path == kMmaNoSplit) {
      int8_mma(dx, dw.q, dw.scale, dy, f32, use_bias ? db : nullptr, use_gelu, M, K, N, nullptr, 0, nullptr, 0, 1,
               nullptr);
      return;
    }
    gemm.set_gemv_max_tokens(path == kGemv ? 8 : 0);
    gemm.set_mma_max_tokens(path == kMma ? 1 << 20 : 0);
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
  const double tol = (!f32 || path == kCublas) ? 2e-3 : 1e-4;
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

}  // namespace

int main(int argc, char** argv) {
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
        {kMmaNoSplit, 64, 1024, 300},                    {kCublas, 17, 48, 5},    {kCublas, 300, 100, 37},
        {kCublas, 9, 4096, 129},
    };
    int i = 0;
    for (int variant : {2, 3, 1}) {
      std::printf("-- tensor-core kernel variant %d\n", variant);
      gemm.set_mma_variant(variant);
      for (const Case& c : cases) {
        test_linear(rng, gemm, c.p, c.M, c.K, c.N, i % 4);
        ++i;
      }
    }
    gemm.set_mma_variant(1);
    // all four epilogues on the paths the decoder uses most
    for (int act = 0; act < 4; ++act) {
      test_linear(rng, gemm, kGemv, 1, 4096, 515, act);
      test_linear(rng, gemm, kMma, 64, 1024, 515, act);
    }
    // the split-K capacity limit: a large N leaves no split (mode 1/2 through Int8Gemm)
    test_linear(rng, gemm, kMma, 9, 64, 70001, 2);
    test_linear(rng, gemm, kMma, 9, 64, 70001, 3);
  } catch (const std::exception& e) {
    std::printf("FAIL exception: %s\n", e.what());
    return 1;
  }
  std::printf("%s: %d failure(s)\n", g_fail ? "FAILED" : "PASSED", g_fail);
  return g_fail ? 1 : 0;
}
