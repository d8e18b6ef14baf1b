#include "gemm.h"

#include <cstdio>
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
  gelu_plans_.clear();
  if (lt_) cublasLtDestroy(lt_);
  if (handle_) cublasDestroy(handle_);
  if (workspace_) cudaFree(workspace_);
}

void Gemm::set_stream(cudaStream_t stream) {
  stream_ = stream;
  check_blas(cublasSetStream(handle_, stream), "cublasSetStream");
  check_blas(cublasSetWorkspace(handle_, workspace_, workspace_bytes_), "cublasSetWorkspace");
}

void Gemm::set_gelu_epilogue(bool on) {
  if (on && !lt_) check_lt(cublasLtCreate(&lt_), "cublasLtCreate");
  if (!on && lt_) {
    gelu_plans_.clear();
    cublasLtDestroy(lt_);
    lt_ = nullptr;
  }
}

const LtPlan* Gemm::gelu_plan(int tokens, int in, int out, const __half* bias_h) {
  const auto key = std::make_tuple(tokens, in, out);
  auto it = gelu_plans_.find(key);
  if (it != gelu_plans_.end()) return it->second.get();
  auto p = std::make_unique<LtPlan>();
  check_lt(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_GELU_BIAS;
  check_lt(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "TRANSA");
  check_lt(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "TRANSB");
  check_lt(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi), "EPILOGUE");
  // The heuristic reads the bias pointer's alignment (each call sets its own bias).
  check_lt(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_h, sizeof bias_h),
           "BIAS_POINTER");
  // Column-major view, as gemm(): Y^T [out, T] = W [out, in] (stored [in, out], op T) x X^T [in, T].
  check_lt(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16F, in, out, in), "layout A");
  check_lt(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16F, in, tokens, in), "layout B");
  check_lt(cublasLtMatrixLayoutCreate(&p->c, CUDA_R_16F, out, tokens, out), "layout C/D");
  const cublasStatus_t st = p->choose_algo(lt_, workspace_bytes_);
  if (st != CUBLAS_STATUS_SUCCESS) {
    std::fprintf(stderr, "[glm] gemm_gelu_epilogue: cuBLASLt has no GELU_BIAS kernel for tokens %d, in %d, out %d (%s); "
                 "that shape keeps the bias_gelu pass\n", tokens, in, out, cublasGetStatusString(st));
    p.reset();
  }
  return gelu_plans_.emplace(key, std::move(p)).first->second.get();
}

void Gemm::linear(const __half* x, const __half* w, __half* y, int tokens, int in, int out, const float* bias,
                  bool gelu, const __half* bias_h) {
  check_arg(!(bias && !gelu), "linear", "a bias is only fused together with GeLU");
  if (tokens <= gemv_max_ && gemv_supported(x, w, tokens, in)) {
    gemv(x, w, y, false, bias, gelu, tokens, in, out, stream_);
    return;
  }
  if (tokens <= gemv_mma_max_ && gemv_mma_supported(x, w, tokens, in)) {
    gemv_mma(x, w, y, false, bias, gelu, tokens, in, out, stream_);
    return;
  }
  if (gelu && lt_ && tokens > 0) {
    check_arg(bias_h != nullptr, "linear", "the GeLU epilogue needs the bias as fp16 (bias_h)");
    if (const LtPlan* p = gelu_plan(tokens, in, out, bias_h)) {
      check_arg(x && w && y, "linear", "null tensor");
      check_lt(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_h, sizeof bias_h),
               "BIAS_POINTER");
      const float one = 1.f, zero = 0.f;
      check_lt(cublasLtMatmul(lt_, p->op, &one, w, p->a, x, p->b, &zero, y, p->c, y, p->c, &p->algo, workspace_,
                              workspace_bytes_, stream_),
               "cublasLtMatmul (GELU_BIAS)");
      return;
    }
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
