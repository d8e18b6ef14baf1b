// Programmatic dependent launch (Hopper, sm_90): a kernel launched with
// launch_k() while PDL is on may start while the previous kernel in the stream
// drains; it must call pdl_wait() before reading anything that kernel wrote
// (work that does not depend on it, such as streaming weights, may come first),
// then pdl_launch_dependents() to let the next kernel launch in turn. Captured
// into CUDA graphs as programmatic edges. Off: plain launches.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "cuda_check.h"

namespace glm {
namespace cuda {

void set_pdl(bool on);
bool pdl_enabled();
// Whether `device` can use it (sm_90 and newer). The engine turns it on there
// unless its option cuda.pdl is false.
bool pdl_supported(int device);

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Always through cudaLaunchKernelEx (with the attribute only while PDL is on),
// so that this header also compiles in host-only sources.
template <typename... KArgs, typename... Args>
void launch_k(const char* name, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
              Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  GLM_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
  GLM_CUDA_LAUNCH_CHECK(name);
}

}  // namespace cuda
}  // namespace glm
