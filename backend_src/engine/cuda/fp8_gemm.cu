// FP8 (E4M3) linears: see fp8_gemm.h for the contract, docs/int8.md "FP8" for
// the numbers.
#include "fp8_gemm.h"

#include <cuda_fp8.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "act_quant.cuh"
#include "cuda_check.h"
#include "quant_gemv.cuh"

namespace glm {
namespace cuda {
namespace {

__global__ void dequantize_rows_kernel(const uint8_t* __restrict__ q, const float* __restrict__ scale,
                                       float* __restrict__ out, int64_t rows, int64_t cols) {
  const int64_t total = rows * cols;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const __half h = __half(__nv_cvt_fp8_to_halfraw(q[i], __NV_E4M3));
    out[i] = __half2float(h) * scale[i / cols];
  }
}

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

}  // namespace

bool fp8_supported_device() {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) return false;
  return major * 10 + minor >= 89;
}

void fp8_quantize_rows(const __half* x, int64_t rows, int64_t cols, uint8_t* q, float* scale, cudaStream_t stream) {
  quantize_rows<__half, E4m3Code>(x, rows, cols, q, scale, stream, "fp8_quantize_rows");
}
void fp8_quantize_rows(const float* x, int64_t rows, int64_t cols, uint8_t* q, float* scale, cudaStream_t stream) {
  quantize_rows<float, E4m3Code>(x, rows, cols, q, scale, stream, "fp8_quantize_rows");
}

void fp8_dequantize_rows(const uint8_t* q, const float* scale, float* out, int64_t rows, int64_t cols,
                         cudaStream_t stream) {
  check_arg(q && scale && out, "fp8_dequantize_rows", "null tensor");
  if (rows * cols == 0) return;
  const int grid = static_cast<int>(std::min<int64_t>((rows * cols + 255) / 256, 65535));
  dequantize_rows_kernel<<<grid, 256, 0, stream>>>(q, scale, out, rows, cols);
  GLM_CUDA_LAUNCH_CHECK("fp8_dequantize_rows");
}

bool fp8_gemv_supported(const void* x, const void* q, int M, int K) { return quant_gemv::supported(x, q, M, K); }

void fp8_gemv(const __half* x, const uint8_t* q, const float* scale, __half* y, const float* bias, bool gelu, int M,
              int K, int N, cudaStream_t stream) {
  quant_gemv::gemv<quant_gemv::E4m3Codes>("fp8_gemv", x, q, scale, y, false, bias, gelu, M, K, N, stream);
}

Fp8Gemm::Fp8Gemm() {
  if (!fp8_supported_device())
    throw std::invalid_argument("fp8: this GPU has no FP8 tensor cores (compute capability 8.9 or newer needed)");
  check_lt(cublasLtCreate(&lt_), "cublasLtCreate");
  workspace_bytes_ = 32u << 20;
  scratch_bytes_ = 64u << 20;
  if (cudaMalloc(&workspace_, workspace_bytes_) != cudaSuccess || cudaMalloc(&scratch_, scratch_bytes_) != cudaSuccess) {
    if (workspace_) cudaFree(workspace_);
    cublasLtDestroy(lt_);
    throw std::runtime_error("fp8: out of GPU memory for the cuBLASLt workspace and scratch");
  }
}

Fp8Gemm::~Fp8Gemm() {
  plans_.clear();
  if (workspace_) cudaFree(workspace_);
  if (scratch_) cudaFree(scratch_);
  if (lt_) cublasLtDestroy(lt_);
}

void Fp8Gemm::linear(const __half* x, const Fp8Weight& w, __half* y, int tokens, int in, int out, const float* bias,
                     bool gelu) {
  const char* k = "fp8 linear";
  check_arg(x && w.q && w.scale && y, k, "null tensor");
  check_arg(tokens >= 0 && in > 0 && out > 0, k, "bad sizes");
  check_arg(in % 16 == 0 && out % 16 == 0 && (uintptr_t)x % 16 == 0 && (uintptr_t)w.q % 16 == 0, k,
            "in % 16 != 0, out % 16 != 0 (cuBLASLt's FP8 kernels) or x / weights not 16-byte aligned");
  if (tokens <= gemv_max_ && fp8_gemv_supported(x, w.q, tokens, in)) {
    fp8_gemv(x, w.q, w.scale, y, bias, gelu, tokens, in, out, stream_);
    return;
  }
  // Tokens in chunks whose codes take at most half the scratch (prefill of long batches).
  const int chunk = static_cast<int>(std::max<size_t>(1, scratch_bytes_ / 2 / in / 256 * 256));
  for (int m0 = 0; m0 < tokens; m0 += chunk) {
    const int mt = std::min(chunk, tokens - m0);
    linear_rows(x + (size_t)m0 * in, w, y + (size_t)m0 * out, mt, in, out, bias, gelu);
  }
}

void Fp8Gemm::linear_rows(const __half* x, const Fp8Weight& w, __half* y, int tokens, int in, int out,
                          const float* bias, bool gelu) {
  const char* k = "fp8 linear";
  char* base = static_cast<char*>(scratch_);
  const size_t codes = align256((size_t)tokens * in), scales = align256((size_t)tokens * sizeof(float));
  check_arg(codes + scales + (size_t)tokens * 16 * sizeof(float) <= scratch_bytes_, k,
            "tokens x in larger than the scratch buffer");
  uint8_t* qx = reinterpret_cast<uint8_t*>(base);
  float* sx = reinterpret_cast<float*>(base + codes);
  float* acc = reinterpret_cast<float*>(base + codes + scales);
  const size_t acc_floats = (scratch_bytes_ - codes - scales) / sizeof(float);
  const int64_t cols = std::min<int64_t>((int64_t)(acc_floats / tokens) / 16 * 16, ((int64_t)out + 15) / 16 * 16);
  fp8_quantize_rows(x, tokens, in, qx, sx, stream_);
  const float one = 1.f, zero = 0.f;
  for (int64_t n0 = 0; n0 < out; n0 += cols) {
    const int nc = static_cast<int>(std::min<int64_t>(cols, out - n0));
    const int ldc = (nc + 15) / 16 * 16;
    const auto key = std::make_tuple(tokens, nc, in, ldc);
    auto it = plans_.find(key);
    if (it == plans_.end()) {
      auto p = std::make_unique<LtPlan>();
      check_lt(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
      const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
      check_lt(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "TRANSA");
      check_lt(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "TRANSB");
      // Column-major view ("TN"): acc^T [nc, tokens] = (weight rows)^T' [nc, in] x qx^T [in, tokens].
      check_lt(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_8F_E4M3, in, nc, in), "layout A");
      check_lt(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_8F_E4M3, in, tokens, in), "layout B");
      check_lt(cublasLtMatrixLayoutCreate(&p->c, CUDA_R_32F, nc, tokens, ldc), "layout C/D");
      const cublasStatus_t st = p->choose_algo(lt_, workspace_bytes_);
      if (st != CUBLAS_STATUS_SUCCESS)
        throw std::runtime_error("fp8 linear: cuBLASLt has no FP8 kernel for tokens " + std::to_string(tokens) +
                                 ", out " + std::to_string(nc) + ", in " + std::to_string(in) + " (" +
                                 cublasGetStatusString(st) + ")");
      it = plans_.emplace(key, std::move(p)).first;
    }
    const LtPlan& p = *it->second;
    check_lt(cublasLtMatmul(lt_, p.op, &one, w.q + n0 * in, p.a, qx, p.b, &zero, acc, p.c, acc, p.c, &p.algo,
                            workspace_, workspace_bytes_, stream_),
             "cublasLtMatmul (fp8)");
    quant_epilogue(acc, ldc, sx, w.scale, bias, gelu, y, false, tokens, out, static_cast<int>(n0), nc, stream_,
                   "fp8 epilogue");
  }
}

}  // namespace cuda
}  // namespace glm
