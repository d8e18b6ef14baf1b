#!/bin/bash
# Device-side driver: use the locally built binary if its libraries resolve, else build here.
cd "$(dirname "$0")"
NVL=$(python3 -c "import nvidia,os;print(os.path.join(list(nvidia.__path__)[0],'cu13','lib'))" 2>/dev/null)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$NVL:$LD_LIBRARY_PATH
B=./mma_lab_bin
if [ ! -x $B ] || ldd $B | grep -q "not found"; then
  echo "building on the device"
  nvcc -std=c++17 -O3 -arch=sm_90a --expt-relaxed-constexpr -lcublas -o /tmp/mma_lab mma_lab.cu || exit 3
  B=/tmp/mma_lab
fi
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem --format=csv,noheader
if [ -n "$SASS" ]; then
  cuobjdump -sass -fun "$SASS" $B > /tmp/k.sass
  echo "SASS histogram of $SASS:"; grep -oE "^ +/\*[0-9a-f]{4}\*/ +(@!?U?P[0-9T] +)?[A-Z0-9_]+" /tmp/k.sass | awk '{print $NF}' | sort | uniq -c | sort -rn | head -25
fi
timeout ${TMO:-110} $B
