#include "gemm.h"

#include <stdexcept>
#include <string>

#include "cuda_check.h"
#include "kernels.h"

namespace glm {
namespace cuda {
namespace {

void check_blas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("cuBLAS error in ") + what + ": " + cublasGetStatusString(s));
}

void gemm(cublasHandle_t h, const __half* x, const __half* w, void* y, cudaDataType_t ytype,
          int tokens, int in, int out) {
  check_arg(x && w && y, "linear", "null tensor");
  check_arg(tokens >= 0 && in > 0 && out > 0, "linear", "bad sizes");
  if (tokens == 0) return;
  const float one = 1.f, zero = 0.f;
  // Column-major view: Y^T [out, T] = W [out, in] (stored as [in, out] col-major, so op T) x X^T [in, T].
  check_blas(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, out, tokens, in, &one, w, CUDA_R_16F, in, x,
                          CUDA_R_16F, in, &zero, y, ytype, out, CUBLAS_COMPUTE_32F,
                          CUBLAS_GEMM_DEFAULT),
             "cublasGemmEx");
}

}  // namespace

Gemm::Gemm() {
  check_blas(cublasCreate(&handle_), "cublasCreate");
  workspace_bytes_ = 32u << 20;
  GLM_CUDA_CHECK(cudaMalloc(&workspace_, workspace_bytes_));
  check_blas(cublasSetWorkspace(handle_, workspace_, workspace_bytes_), "cublasSetWorkspace");
  check_blas(cublasSetMathMode(handle_, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
}

Gemm::~Gemm() {
  if (handle_) cublasDestroy(handle_);
  if (workspace_) cudaFree(workspace_);
}

void Gemm::set_stream(cudaStream_t stream) {
  stream_ = stream;
  check_blas(cublasSetStream(handle_, stream), "cublasSetStream");
  check_blas(cublasSetWorkspace(handle_, workspace_, workspace_bytes_), "cublasSetWorkspace");
}

void Gemm::linear(const __half* x, const __half* w, __half* y, int tokens, int in, int out, const float* bias,
                  bool gelu) {
  check_arg(!(bias && !gelu), "linear", "a bias is only fused together with GeLU");
  if (tokens <= gemv_max_ && gemv_supported(x, w, tokens, in)) {
    gemv(x, w, y, false, bias, gelu, tokens, in, out, stream_);
    return;
  }
  if (tokens <= gemv_mma_max_ && gemv_mma_supported(x, w, tokens, in)) {
    gemv_mma(x, w, y, false, bias, gelu, tokens, in, out, stream_);
    return;
  }
  gemm(handle_, x, w, y, CUDA_R_16F, tokens, in, out);
  if (gelu) bias_gelu(y, bias, tokens, out, stream_);
}

void Gemm::linear_f32out(const __half* x, const __half* w, float* y, int tokens, int in, int out) {
  if (tokens <= gemv_max_ && gemv_supported(x, w, tokens, in)) {
    gemv(x, w, y, true, nullptr, false, tokens, in, out, stream_);
    return;
  }
  if (tokens <= gemv_mma_max_ && gemv_mma_supported(x, w, tokens, in)) {
    gemv_mma(x, w, y, true, nullptr, false, tokens, in, out, stream_);
    return;
  }
  gemm(handle_, x, w, y, CUDA_R_32F, tokens, in, out);
}

}  // namespace cuda
}  // namespace glm
