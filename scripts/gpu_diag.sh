#!/usr/bin/env bash
# Diagnostics for the CUDA back-end on the GPU machine (after scripts/gpu_check.sh build):
# per-row logits error of the tiny model vs the CPU engine for several chunkings,
# graph vs eager decode, optionally under compute-sanitizer (SANITIZE=1).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
cat > /tmp/glm_diag.py <<'PY'
import os
import numpy as np
from glmserve import _engine as E
d = "models/chatglm-tiny"
small = os.environ.get("DIAG_SMALL") == "1"
def prompt(rng, n):
    return [int(x) for x in rng.integers(5, 680, size=n - 2)] + [681, 684]
cpu = E.Engine(d, device="cpu", num_threads=8)
rng = np.random.default_rng(1)
prompts = [prompt(rng, n) for n in ((5, 18) if small else (5, 18, 40, 97))]
want = cpu.generate(prompts, max_tokens=12 if small else 40, ignore_eos=True)
for kw in ({}, {"max_running_seqs": 16}, {"max_running_seqs": 16, "use_cuda_graphs": False}):
    g = E.Engine(d, device="cuda", dtype="fp16", **kw)
    got = g.generate(prompts, max_tokens=12 if small else 40, ignore_eos=True)
    agree = [next((i for i, (a, b) in enumerate(zip(w, x)) if a != b), len(w)) for w, x in zip(want, got)]
    print("engine", kw, "agreement with cpu per prompt:", agree, flush=True)
    if min(agree) < len(want[0]):
        print("  cpu", want[agree.index(min(agree))]); print("  gpu", got[agree.index(min(agree))])
    rng2 = np.random.default_rng(2)
    p = prompt(rng2, 23)
    for chunks in ([p, [7], [11, 12, 13], [9]],):
        a = np.asarray(cpu.debug_forward(chunks)); b = np.asarray(g.debug_forward(chunks))
        rows = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
        print("  debug rows max err", float(rows.max()), "nan" if np.isnan(b).any() else "")
    del g
PY
if [ "${SANITIZE:-0}" = 1 ]; then
  DIAG_SMALL=1 compute-sanitizer --tool "${SANITIZE_TOOL:-initcheck}" --print-limit 10 python3 /tmp/glm_diag.py 2>&1 | tail -60
else
  python3 /tmp/glm_diag.py
fi
