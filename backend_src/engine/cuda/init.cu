// Weight initialisation and conversions on the GPU (random weights for the
// full-size model are generated here, never on the host).

#include "../rng.h"
#include "cuda_check.h"
#include "kernels.h"
#include "pdl.h"

namespace glm {
namespace cuda {
namespace {

constexpr int kThreads = 256;

unsigned grid_for(int64_t n) {
  int64_t b = (n + kThreads - 1) / kThreads;
  return (unsigned)(b < 65536 ? (b > 0 ? b : 1) : 65536);
}

__global__ void fill_half_kernel(__half* x, int64_t n, uint64_t tseed, float amp) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    x[i] = __float2half_rn(amp * (2.0f * uniform01(tseed, (uint64_t)i) - 1.0f));
}

__global__ void fill_float_kernel(float* x, int64_t n, uint64_t tseed, float amp) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    x[i] = amp * (2.0f * uniform01(tseed, (uint64_t)i) - 1.0f);
}

__global__ void fill_const_kernel(float* x, int64_t n, float v) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    x[i] = v;
}

__global__ void f2h_kernel(const float* in, __half* out, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    out[i] = __float2half_rn(in[i]);
}

__global__ void h2f_kernel(const __half* in, float* out, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    out[i] = __half2float(in[i]);
}

bool g_pdl = false;

}  // namespace

void set_pdl(bool on) { g_pdl = on; }
bool pdl_enabled() { return g_pdl; }
bool pdl_supported(int device) {
  cudaDeviceProp prop{};
  GLM_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.major >= 9;
}

void fill_uniform_half(__half* x, int64_t n, uint64_t tseed, float amp, cudaStream_t stream) {
  check_arg(x != nullptr && n >= 0, "fill_uniform_half", "null tensor or n < 0");
  if (n == 0) return;
  fill_half_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, n, tseed, amp);
  GLM_CUDA_LAUNCH_CHECK("fill_uniform_half");
}

void fill_uniform_float(float* x, int64_t n, uint64_t tseed, float amp, cudaStream_t stream) {
  check_arg(x != nullptr && n >= 0, "fill_uniform_float", "null tensor or n < 0");
  if (n == 0) return;
  fill_float_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, n, tseed, amp);
  GLM_CUDA_LAUNCH_CHECK("fill_uniform_float");
}

void fill_const_float(float* x, int64_t n, float value, cudaStream_t stream) {
  check_arg(x != nullptr && n >= 0, "fill_const_float", "null tensor or n < 0");
  if (n == 0) return;
  fill_const_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, n, value);
  GLM_CUDA_LAUNCH_CHECK("fill_const_float");
}

void float_to_half(const float* in, __half* out, int64_t n, cudaStream_t stream) {
  check_arg(in && out && n >= 0, "float_to_half", "null tensor or n < 0");
  if (n == 0) return;
  f2h_kernel<<<grid_for(n), kThreads, 0, stream>>>(in, out, n);
  GLM_CUDA_LAUNCH_CHECK("float_to_half");
}

void half_to_float(const __half* in, float* out, int64_t n, cudaStream_t stream) {
  check_arg(in && out && n >= 0, "half_to_float", "null tensor or n < 0");
  if (n == 0) return;
  h2f_kernel<<<grid_for(n), kThreads, 0, stream>>>(in, out, n);
  GLM_CUDA_LAUNCH_CHECK("half_to_float");
}

}  // namespace cuda
}  // namespace glm
