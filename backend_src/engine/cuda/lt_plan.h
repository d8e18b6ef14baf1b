// One cuBLASLt matmul shape: its descriptors and the algorithm cuBLASLt's heuristic
// chose, made once and kept, so that graph replays do no host work (the fp16 GELU_BIAS
// linears of gemm.cc and the FP8 linears of fp8_gemm.cu).
#pragma once

#include <cublasLt.h>

#include <cstddef>

namespace glm {
namespace cuda {

// Throws std::runtime_error naming `what` and cuBLAS's status unless s is success.
void check_lt(cublasStatus_t s, const char* what);

struct LtPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;  // c describes C and D
  cublasLtMatmulAlgo_t algo{};
  LtPlan() = default;
  LtPlan(const LtPlan&) = delete;
  LtPlan& operator=(const LtPlan&) = delete;
  ~LtPlan();
  // Sets algo to cuBLASLt's first choice for op, a, b, c within workspace_bytes. Returns
  // the status; not success (or CUBLAS_STATUS_NOT_SUPPORTED when the heuristic found
  // nothing) means there is no such kernel.
  cublasStatus_t choose_algo(cublasLtHandle_t lt, size_t workspace_bytes);
};

}  // namespace cuda
}  // namespace glm
