#!/bin/bash
# one device call: ws diagnostics at M=64 qkv (profile mode, PDL off and on), the final full run, a PDL-off run
cd "$(dirname "$0")"
nvidia-smi --query-gpu=name --format=csv,noheader
if [ ! -x ./wbin ] || ldd ./wbin | grep -q 'not found'; then
  echo REBUILD; nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -lcublas -o wbin wg_lab.cu || exit 3
fi
for p in 0 1; do
  WG_PROF=1 WG_DIAG=1 WG_PDL=$p timeout 60 ./wbin > $OUT/diag_pdl$p.txt 2>&1; echo "rc_diag_pdl$p=$?"
  grep -E '^(prof|diag)' $OUT/diag_pdl$p.txt | sed "s/^/pdl$p /"
done
timeout 100 ./wbin > $OUT/run_ws.txt 2>&1; echo "rc_final=$?"
WG_PDL=0 timeout 100 ./wbin > $OUT/run_ws_nopdl.txt 2>&1; echo "rc_nopdl=$?"
grep -A6 '^| M | fp16' $OUT/run_ws_nopdl.txt
