// cuBLAS GEMMs of the CUDA back-end: y[T, out] = x[T, in] @ W[out, in]^T,
// fp16 operands, fp32 accumulation (CUBLAS_COMPUTE_32F), fp16 or fp32 output.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <tuple>

#include "lt_plan.h"

namespace glm {
namespace cuda {

class Gemm {
 public:
  Gemm();
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;
  // Binds the handle to `stream` and gives cuBLAS a fixed workspace, so that
  // calls can be captured into CUDA graphs.
  void set_stream(cudaStream_t stream);
  // With gelu: y = gelu_tanh(x W^T + bias) (bias may be null only without gelu).
  // Up to set_gemv_max_tokens() tokens (at most kGemvMaxTokens) go to the
  // weight-streaming GEMV (gemv.cu), then up to set_gemv_mma_max_tokens() (at most
  // kGemvMmaMaxTokens) to its tensor-core variant; more go to cuBLAS. There, with
  // set_gelu_epilogue(true), the bias and GeLU run in cuBLASLt's GELU_BIAS epilogue on
  // the fp32 sums and need bias_h, the bias as fp16 (cuBLASLt's bias type for fp16
  // output); otherwise a bias_gelu pass follows over the fp16 product.
  void linear(const __half* x, const __half* w, __half* y, int tokens, int in, int out,
              const float* bias = nullptr, bool gelu = false, const __half* bias_h = nullptr);
  void linear_f32out(const __half* x, const __half* w, float* y, int tokens, int in, int out);
  // GEMV for 1..max_tokens tokens (0 = never), at most kGemvMaxTokens.
  void set_gemv_max_tokens(int n) { gemv_max_ = n; }
  // Tensor-core GEMV for gemv_max + 1 .. n tokens (0 = never), at most kGemvMmaMaxTokens.
  void set_gemv_mma_max_tokens(int n) { gemv_mma_max_ = n; }
  // Bias + GeLU in cuBLASLt's epilogue for the linears cuBLAS runs (tuning
  // gemm_gelu_epilogue). A shape cuBLASLt has no such kernel for keeps the bias_gelu
  // pass and says so on stderr.
  void set_gelu_epilogue(bool on);
  bool gelu_epilogue() const { return lt_ != nullptr; }

 private:
  // The GELU_BIAS matmul of one shape, planned on first use; null when cuBLASLt has none.
  const LtPlan* gelu_plan(int tokens, int in, int out, const __half* bias_h);
  cublasHandle_t handle_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  std::map<std::tuple<int, int, int>, std::unique_ptr<LtPlan>> gelu_plans_;  // null: no such kernel
  cudaStream_t stream_ = nullptr;
  int gemv_max_ = 4;
  int gemv_mma_max_ = 0;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
};

}  // namespace cuda
}  // namespace glm
