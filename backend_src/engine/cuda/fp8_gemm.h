// FP8 (E4M3) block linears of the CUDA back-end (issue 19, docs/int8.md "FP8").
//
// Weights: E4M3 codes [out, in] with one fp32 scale per output channel; activations
// quantized per token on the fly; the codes multiplied on Hopper's FP8 tensor cores
// by cuBLASLt (fp32 accumulation, fp32 output), both scales, the bias and GeLU in
// an epilogue (act_quant.cuh). The rule, exactly glmserve.fp8.quantize_rows:
//   scale[r] = max_k |x[r, k]| / 448 (fp32; 1 for an all-zero row)
//   code[r, k] = E4M3(x[r, k] / scale[r]), nearest, ties to even, saturating at 448
//   y[m, n] = act((acc[m, n] * sx[m]) * sw[n] + bias[n]),  acc = sum_k E4M3 values
#pragma once

#include <cublasLt.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

#include "lt_plan.h"

namespace glm {
namespace cuda {

struct Fp8Weight {
  uint8_t* q = nullptr;   // [out, in] E4M3 codes
  float* scale = nullptr;  // [out]
};

// The current device has FP8 tensor cores (compute capability 8.9 or newer).
bool fp8_supported_device();

// Per-row quantization (the rule above) of fp16 or fp32 rows; launchers check
// their arguments (std::invalid_argument).
void fp8_quantize_rows(const __half* x, int64_t rows, int64_t cols, uint8_t* q, float* scale, cudaStream_t stream);
void fp8_quantize_rows(const float* x, int64_t rows, int64_t cols, uint8_t* q, float* scale, cudaStream_t stream);
// out[r, k] = value(q[r, k]) * scale[r] (fp32).
void fp8_dequantize_rows(const uint8_t* q, const float* scale, float* out, int64_t rows, int64_t cols,
                         cudaStream_t stream);

// Weight-only GEMV for 1-8 tokens (quant_gemv.cuh, the int8 GEMV's kernel over E4M3
// codes): y[m, n] = act(scale[n] * sum_k x[m, k] * value(q[n, k]) + bias[n]) with x
// fp16 as it is (not quantized), fp32 sums. Needs 1 <= M <= 8, K % 16 == 0, x and q
// 16-byte aligned; any N. The launcher checks its arguments (std::invalid_argument).
bool fp8_gemv_supported(const void* x, const void* q, int M, int K);
void fp8_gemv(const __half* x, const uint8_t* q, const float* scale, __half* y, const float* bias, bool gelu, int M,
              int K, int N, cudaStream_t stream);

// The linear: owns a cuBLASLt handle, a fixed workspace (graph capture) and the
// scratch for the activations' codes and the fp32 products; each matmul shape's
// descriptors and cuBLASLt's heuristic choice are made once and kept.
class Fp8Gemm {
 public:
  Fp8Gemm();
  ~Fp8Gemm();
  Fp8Gemm(const Fp8Gemm&) = delete;
  Fp8Gemm& operator=(const Fp8Gemm&) = delete;
  void set_stream(cudaStream_t stream) { stream_ = stream; }
  // Up to n tokens (0 = never; EngineOptions::cuda.fp8_gemv_max_tokens, at most 8) the
  // linear is fp8_gemv: the weights' bytes streamed once, the activations left fp16.
  void set_gemv_max_tokens(int n) { gemv_max_ = n; }
  int gemv_max_tokens() const { return gemv_max_; }
  // y[T, out] = act(x[T, in] W^T + bias); in % 16 == 0 and out % 16 == 0 (cuBLASLt's FP8
  // kernels have no other shapes), x 16-byte aligned; any token count (chunked).
  void linear(const __half* x, const Fp8Weight& w, __half* y, int tokens, int in, int out, const float* bias = nullptr,
              bool gelu = false);
  size_t device_bytes() const { return workspace_bytes_ + scratch_bytes_; }

 private:
  void linear_rows(const __half* x, const Fp8Weight& w, __half* y, int tokens, int in, int out, const float* bias,
                   bool gelu);  // tokens whose codes fit the scratch
  cublasLtHandle_t lt_ = nullptr;
  cudaStream_t stream_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
  int gemv_max_ = 0;
  std::map<std::tuple<int, int, int, int>, std::unique_ptr<LtPlan>> plans_;  // (tokens, cols, in, ldc)
};

}  // namespace cuda
}  // namespace glm
