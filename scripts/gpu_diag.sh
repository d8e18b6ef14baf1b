#!/usr/bin/env bash
# Diagnostics for the CUDA back-end on the GPU machine (after scripts/gpu_check.sh build):
# per-row logits error of the tiny model vs the CPU engine for several chunkings,
# graph vs eager decode, optionally under compute-sanitizer (SANITIZE=1).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
cat > /tmp/glm_diag.py <<'PY'
import os, sys
import numpy as np
from glmserve import _engine as E
d = "models/chatglm-tiny"
rng = np.random.default_rng(2)
p = [int(x) for x in rng.integers(5, 680, 21)] + [681, 684]
small = os.environ.get("DIAG_SMALL") == "1"
cpu = E.Engine(d, device="cpu", num_threads=8)
gpu = E.Engine(d, device="cuda", dtype="fp16", num_kv_blocks=64)
cases = [[p[:10] + [681, 684]], [p[:10] + [681, 684], [7]], [p], [p, [7]], [p, [7], [11, 12, 13], [9]], [p + [7, 11, 12, 13, 9]]]
if small:
    cases = cases[3:5]
for chunks in cases:
    a = np.asarray(cpu.debug_forward(chunks)); b = np.asarray(gpu.debug_forward(chunks))
    rows = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
    print("chunks", [len(c) for c in chunks], "row errs", np.array2string(rows, precision=3, max_line_width=200))
if not small:
    prompts = [p[:7], p, p + [5, 6, 7, 8, 9, 10, 11, 12, 13, 14] + [681, 684]]
    prompts[0] = prompts[0][:5] + [681, 684]
    g1 = E.Engine(d, device="cuda", dtype="fp16", max_running_seqs=16)
    g0 = E.Engine(d, device="cuda", dtype="fp16", max_running_seqs=16, use_cuda_graphs=False)
    c = cpu.generate(prompts, max_tokens=24, ignore_eos=True)
    a = g1.generate(prompts, max_tokens=24, ignore_eos=True)
    b = g0.generate(prompts, max_tokens=24, ignore_eos=True)
    for x, y, z in zip(c, a, b):
        print("cpu  ", x); print("graph", y); print("eager", z)
PY
if [ "${SANITIZE:-0}" = 1 ]; then
  DIAG_SMALL=1 compute-sanitizer --tool memcheck --print-limit 20 python3 /tmp/glm_diag.py 2>&1 | tail -40
else
  python3 /tmp/glm_diag.py
fi
