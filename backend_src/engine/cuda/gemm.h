// cuBLAS GEMMs of the CUDA back-end: y[T, out] = x[T, in] @ W[out, in]^T,
// fp16 operands, fp32 accumulation (CUBLAS_COMPUTE_32F), fp16 or fp32 output.
#pragma once

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

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
  // kGemvMmaMaxTokens) to its tensor-core variant; more go to cuBLAS.
  void linear(const __half* x, const __half* w, __half* y, int tokens, int in, int out,
              const float* bias = nullptr, bool gelu = false);
  void linear_f32out(const __half* x, const __half* w, float* y, int tokens, int in, int out);
  // GEMV for 1..max_tokens tokens (0 = never), at most kGemvMaxTokens.
  void set_gemv_max_tokens(int n) { gemv_max_ = n; }
  // Tensor-core GEMV for gemv_max + 1 .. n tokens (0 = never), at most kGemvMmaMaxTokens.
  void set_gemv_mma_max_tokens(int n) { gemv_mma_max_ = n; }

 private:
  cublasHandle_t handle_ = nullptr;
  cudaStream_t stream_ = nullptr;
  int gemv_max_ = 4;
  int gemv_mma_max_ = 0;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
};

}  // namespace cuda
}  // namespace glm
