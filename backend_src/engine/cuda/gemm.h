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
  void linear(const __half* x, const __half* w, __half* y, int tokens, int in, int out);
  void linear_f32out(const __half* x, const __half* w, float* y, int tokens, int in, int out);

 private:
  cublasHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
};

}  // namespace cuda
}  // namespace glm
