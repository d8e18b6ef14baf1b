#!/usr/bin/env bash
# One GPU call: the int8 kernel test + kernel timings (scripts/gpu_int8.sh kernels kbench) and the
# three lab programs (lab/README.md), built in parallel. Logs in $OUT (default /tmp/lab).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/lab}
mkdir -p "$OUT"
D=backend_src/engine/cuda
nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -lcublas \
  -o /tmp/wg_lab lab/wgmma/wg_lab.cu >/tmp/wg_build.log 2>&1 &
nvcc -std=c++17 -O3 -arch=sm_90a --expt-relaxed-constexpr -lcublas -o /tmp/mma_lab lab/mma/mma_lab.cu \
  >/tmp/mma_build.log 2>&1 &
nvcc -std=c++17 -O3 -arch=sm_90a -I$D lab/gemv/gemv_lab.cu $D/int8_gemm.cu $D/int8_packed.cu $D/gemv.cu $D/init.cu -lcublas \
  -o /tmp/gemv_lab >/tmp/gemv_build.log 2>&1 &
OUT=$OUT/int8 bash scripts/gpu_int8.sh kernels kbench >"$OUT/gpu_int8.log" 2>&1
echo "gpu_int8.sh kernels kbench: rc $?"
grep -E "PASSED|FAILED|FAIL " "$OUT/gpu_int8.log" | head -20
wait
for l in wg mma gemv; do
  [ -x /tmp/${l}_lab ] || { echo "$l lab did not build:"; tail -20 /tmp/${l}_build.log; continue; }
  timeout 150 /tmp/${l}_lab >"$OUT/${l}_lab.log" 2>&1
  echo "$l lab: rc $?"
done
