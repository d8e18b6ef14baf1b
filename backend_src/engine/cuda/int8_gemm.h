// INT8 weight-only linear layers of the CUDA back-end (docs/int8.md).
//
// Weights are the checkpoint's int8 format: q [out, in] int8 and scale [out]
// fp16, symmetric per output channel, w = q * scale. Activations stay fp16;
// every product is accumulated in fp32 and the scale is applied per output
// channel in the epilogue (with the bias and GeLU when asked):
//   y[m, n] = act(scale[n] * sum_k x[m, k] q[n, k] + bias[n])
//
// Three kernels, picked by the token count M (Int8Gemm::linear), over the
// checkpoint's row-major layout (the packed layout below has its own):
//   M <= gemv_max (1*) int8_gemv: weight-streaming GEMV, 16-byte int8 loads,
//                       int8 -> fp32 by byte permutation + one add, fp32 FMAs.
//   M <= mma_max (256)  int8_mma_pipe: tensor-core mma.m16n8k16 (fp16 in, fp32
//                       acc), weight and activation tiles staged in shared memory
//                       by a cp.async pipeline, weights dequantized in registers
//                       (exact: |q| <= 127), split over K across blocks when the
//                       grid is small, the splits summed in a fixed order
//                       (deterministic). ("Variant 4"; the others, 1, 2, 3, 5
//                       and the first Hopper wgmma one, 6, were removed: docs/int8.md.)
//   larger (prefill)    the weight dequantized slice by slice into a fp16
//                       scratch buffer, then cuBLAS (compute-bound anyway).
// From w8a8_min tokens on (0 = never; EngineOptions::cuda.int8_w8a8_min_tokens),
// W8A8 (below) takes over on row-major weights: int8 tensor cores.
#pragma once

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace glm {
namespace cuda {

struct Int8Weight {
  int8_t* q = nullptr;      // [out, in], or the packed layout when `packed` (int8_pack)
  __half* scale = nullptr;  // [out]
  bool packed = false;
};

// ---- kernels (launchers check their arguments, throw std::invalid_argument)
// The GEMV: 1 <= M <= 8, K % 16 == 0, x and q 16-byte aligned.
bool int8_gemv_supported(const void* x, const void* q, int M, int K);
void int8_gemv(const __half* x, const int8_t* q, const __half* scale, void* y, bool f32_out, const float* bias,
               bool gelu, int M, int K, int N, cudaStream_t stream);

// The tensor-core GEMM: K % 64 == 0, x and q 16-byte aligned, any M >= 1, N >= 1.
// The weight and activation tiles are staged in shared memory by a multi-stage
// cp.async pipeline (sm_80 and newer). `partials` (fp32, `partial_floats` of
// them) holds the split-K partial sums and `counters` (counter_count ints, zero,
// left zero) counts finished splits per tile; the split is chosen so they fit
// (no split when either is null). mma.sync, "variant 4" in docs/int8.md.
bool int8_mma_supported(const void* x, const void* q, int K);
void int8_mma_pipe(const __half* x, const int8_t* q, const __half* scale, void* y, bool f32_out, const float* bias,
                   bool gelu, int M, int K, int N, float* partials, size_t partial_floats, int* counters,
                   int counter_count, int num_sms, cudaStream_t stream);

// out[r, c] = fp16(q[r, c] * scale[r]) for rows [0, rows).
void int8_dequantize(const int8_t* q, const __half* scale, __half* out, int64_t rows, int64_t cols,
                     cudaStream_t stream);

// Symmetric per-row quantization, exactly glmserve.convert.quantize_int8 (and
// glm::quantize_int8_rows): scale = fp16(max|w_row| / 127) (1 when that is not
// > 0), q = round_half_even(w / scale) clamped to [-127, 127], in fp32.
void int8_quantize_rows(const float* w, int64_t rows, int64_t cols, int8_t* q, __half* scale, cudaStream_t stream);
void int8_quantize_rows(const __half* w, int64_t rows, int64_t cols, int8_t* q, __half* scale, cudaStream_t stream);

// ---- the packed layout (Hopper, sm_90a; int8_packed.cu)
// [out/128][in/64][8 m16 tiles][2][32 lanes][16 bytes], bytes q + 128: every
// lane's 16 bytes are its register A fragments of two k16 steps for rows g and
// g+8 of an m16 tile, and a 128-row x 64-column chunk is 8 KB contiguous. The
// engine packs the block linears at load time when int8_packed_available() and
// the shape allows it (int8_packed_shape_ok; not the lm_head, 130528 rows).
// Kernels over it: a GEMV (1-8 tokens, gemv_max: the records streamed from memory
// straight into mma.sync, no shared-memory staging), above that a warp-specialized
// kernel (producer warp group with cp.async.bulk + mbarrier ring, two consumer
// warp groups doing register-A wgmma on the dequantized weights, split K over a
// thread-block cluster reduced in a fixed order through distributed shared
// memory), fp16 output only; prefill dequantizes whole 128-row groups.
bool int8_packed_available();  // this build has sm_90a code and the device is sm_90
bool int8_packed_shape_ok(int64_t out, int64_t in);  // out % 256 == 0, in % 64 == 0
void int8_pack(const int8_t* q, uint8_t* qp, int N, int K, cudaStream_t stream);
// out[n - row0, k] = fp16(q[n, k] * scale[n]) for n in [row0, row0 + rows), both multiples of 128.
void int8_packed_dequantize(const uint8_t* qp, const __half* scale, __half* out, int row0, int rows, int K,
                            cudaStream_t stream);
// M <= gemv_max (and <= 8): the GEMV, split K over blocks with `partials` (fp32)
// and `counters` (zero, left zero) as int8_mma_pipe; above: the wgmma kernel.
void int8_packed_linear(const __half* x, const uint8_t* qp, const __half* scale, __half* y, const float* bias, bool gelu,
                        int M, int K, int N, int gemv_max, float* partials, size_t partial_floats, int* counters,
                        int counter_count, int num_sms, cudaStream_t stream);

// ---- W8A8 (w8a8.cu): activations quantized per token on the fly, int8 tensor
// cores through cuBLAS (int32 accumulation), both scales in the epilogue:
//   sx[m] = max_k |x[m, k]| / 127 (fp32, 1 when not > 0), qx = rint(x / sx) in [-127, 127],
//   y[m, n] = act((float(sum_k qx[m, k] q[n, k]) * sx[m]) * scale[n] + bias[n]).
// Row-major weights only; K % 16 == 0 and x, q 16-byte aligned.
bool w8a8_supported(const void* x, const void* q, int K);
void int8_quantize_tokens(const __half* x, int M, int K, int8_t* qx, float* sx, cudaStream_t stream);
// Scratch bytes w8a8_linear needs at the least for M tokens of K inputs (more
// scratch = fewer cuBLAS calls over the output columns).
size_t w8a8_scratch_need(int M, int K);
void w8a8_linear(cublasHandle_t handle, const __half* x, const int8_t* q, const __half* scale, void* y, bool f32_out,
                 const float* bias, bool gelu, int M, int K, int N, void* scratch, size_t scratch_bytes,
                 cudaStream_t stream);

// ---- the dispatcher: owns the split-K partials, the dequantization scratch
// and a cuBLAS handle of its own (fixed workspace, so calls can be captured
// into CUDA graphs).
class Int8Gemm {
 public:
  Int8Gemm();
  ~Int8Gemm();
  Int8Gemm(const Int8Gemm&) = delete;
  Int8Gemm& operator=(const Int8Gemm&) = delete;
  void set_stream(cudaStream_t stream);
  // y[T, out] = act(x[T, in] W^T * scale + bias); bias may be null; gelu only with fp16 output.
  void linear(const __half* x, const Int8Weight& w, __half* y, int tokens, int in, int out,
              const float* bias = nullptr, bool gelu = false);
  void linear_f32out(const __half* x, const Int8Weight& w, float* y, int tokens, int in, int out);
  // Token-count limits of the GEMV and the tensor-core kernel (0 = never); the
  // engine sets them from its options (EngineOptions::cuda, int8_gemv_max_tokens
  // and int8_mma_max_tokens). The GEMV's default (negative = automatic) is 1 token
  // while programmatic dependent launch is on (the pipelined kernel is faster at
  // 2 tokens then) and 2 without it (docs/int8.md, kernel timing tables); the
  // packed layout's GEMV takes up to 8 tokens then.
  void set_gemv_max_tokens(int n) { gemv_max_ = n; }
  void set_mma_max_tokens(int n) { mma_max_ = n; }
  // W8A8 (w8a8_linear) from this many tokens on, on row-major weights (0 = never).
  void set_w8a8_min_tokens(int n) { w8a8_min_ = n; }
  int gemv_max_tokens() const;
  int mma_max_tokens() const { return mma_max_; }
  int w8a8_min_tokens() const { return w8a8_min_; }
  size_t device_bytes() const { return partial_bytes_ + scratch_bytes_ + workspace_bytes_; }

 private:
  void run(const __half* x, const Int8Weight& w, void* y, bool f32_out, int tokens, int in, int out,
           const float* bias, bool gelu);
  void run_packed(const __half* x, const Int8Weight& w, void* y, bool f32_out, int tokens, int in, int out,
                  const float* bias, bool gelu);
  void dequantize_then_cublas(const __half* x, const Int8Weight& w, void* y, bool f32_out, int tokens, int in,
                              int out, const float* bias, bool gelu);
  cublasHandle_t handle_ = nullptr;
  cudaStream_t stream_ = nullptr;
  static constexpr int kCounters = 4096;
  // The fastest measured on the H200 (docs/int8.md, kernel timing tables): the
  // GEMV for 1 token (2 without PDL), the pipelined tensor-core kernel (variant 4) above.
  int gemv_max_ = -1, mma_max_ = 256, w8a8_min_ = 0, num_sms_ = 1;
  int* counters_ = nullptr;
  float* partials_ = nullptr;
  size_t partial_bytes_ = 0;
  __half* scratch_ = nullptr;  // dequantized weight slices for cuBLAS
  size_t scratch_bytes_ = 0;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
};

}  // namespace cuda
}  // namespace glm
