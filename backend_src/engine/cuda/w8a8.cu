// W8A8 int8 linears (issue 19, docs/int8.md "W8A8 at large batch"): the int8
// weights as they are (row-major, one fp16 scale per output channel), the fp16
// activations quantized per token on the fly, int8 tensor cores (cuBLAS, int32
// accumulation, exact), both scales and the bias / GeLU in an epilogue:
//   sx[m] = max_k |x[m, k]| / 127 (fp32; 1 when that is not > 0)
//   qx[m, k] = round_half_even(x[m, k] / sx[m]) clamped to [-127, 127]
//   y[m, n] = act((float(sum_k qx[m, k] q[n, k]) * sx[m]) * float(scale[n]) + bias[n])
// glmserve.w8a8 is the same math in Python (the CPU reference).
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "act_quant.cuh"
#include "cuda_check.h"
#include "int8_gemm.h"

namespace glm {
namespace cuda {

bool w8a8_supported(const void* x, const void* q, int K) {
  return K > 0 && K % 16 == 0 && (uintptr_t)x % 16 == 0 && (uintptr_t)q % 16 == 0;
}

void int8_quantize_tokens(const __half* x, int M, int K, int8_t* qx, float* sx, cudaStream_t stream) {
  quantize_rows<__half, Int8Code>(x, M, K, qx, sx, stream, "int8_quantize_tokens");
}

size_t w8a8_scratch_need(int M, int K) {
  const size_t a = ((size_t)M * K + 255) / 256 * 256;      // codes
  const size_t s = ((size_t)M * sizeof(float) + 255) / 256 * 256;  // token scales
  return a + s + (size_t)M * 16 * sizeof(int32_t);          // and at least 16 accumulator columns
}

void w8a8_linear(cublasHandle_t handle, const __half* x, const int8_t* q, const __half* scale, void* y, bool f32_out,
                 const float* bias, bool gelu, int M, int K, int N, void* scratch, size_t scratch_bytes,
                 cudaStream_t stream) {
  const char* k = "w8a8_linear";
  check_arg(x && q && scale && y && scratch, k, "null tensor");
  check_arg(M >= 0 && K > 0 && N > 0, k, "bad sizes");
  check_arg(!(f32_out && gelu), k, "GeLU only with fp16 output");
  check_arg(w8a8_supported(x, q, K), k, "K % 16 != 0 or x / q not 16-byte aligned");
  check_arg((uintptr_t)scratch % 256 == 0, k, "scratch not 256-byte aligned");
  check_arg(w8a8_scratch_need(M, K) <= scratch_bytes, k, "tokens x in larger than the scratch buffer");
  if (M == 0) return;
  char* base = static_cast<char*>(scratch);
  int8_t* qx = reinterpret_cast<int8_t*>(base);
  const size_t a = ((size_t)M * K + 255) / 256 * 256;
  float* sx = reinterpret_cast<float*>(base + a);
  int32_t* acc = reinterpret_cast<int32_t*>(base + a + ((size_t)M * sizeof(float) + 255) / 256 * 256);
  const size_t acc_bytes = scratch_bytes - static_cast<size_t>(reinterpret_cast<char*>(acc) - base);
  // Output columns per cuBLAS call: a multiple of 16 (the accumulators' row stride).
  const int64_t cols = std::min<int64_t>((int64_t)(acc_bytes / sizeof(int32_t) / M) / 16 * 16,
                                         ((int64_t)N + 15) / 16 * 16);
  int8_quantize_tokens(x, M, K, qx, sx, stream);
  const int32_t one = 1, zero = 0;
  for (int64_t n0 = 0; n0 < N; n0 += cols) {
    const int nc = static_cast<int>(std::min<int64_t>(cols, N - n0));
    const int ldc = (nc + 15) / 16 * 16;
    // Column-major view: acc^T [nc, M] = (q rows n0..)^T' [nc, K] x qx^T [K, M] ("TN").
    const cublasStatus_t st = cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, nc, M, K, &one, q + n0 * K, CUDA_R_8I, K,
                                           qx, CUDA_R_8I, K, &zero, acc, CUDA_R_32I, ldc, CUBLAS_COMPUTE_32I,
                                           CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS)
      throw std::runtime_error(std::string("cuBLAS error in cublasGemmEx (W8A8 int8): ") + cublasGetStatusString(st));
    quant_epilogue(acc, ldc, sx, scale, bias, gelu, y, f32_out, M, N, static_cast<int>(n0), nc, stream,
                   "w8a8 epilogue");
  }
}

}  // namespace cuda
}  // namespace glm
