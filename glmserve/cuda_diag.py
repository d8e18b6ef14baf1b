"""Diagnostics of the CUDA back-end against the CPU engine (``scripts/gpu.sh diag``).

    python -m glmserve.cuda_diag [--model models/chatglm-tiny] [--small] [--device cuda]

For a few random prompts of the tiny model, greedy ids of the CUDA engine (fp16) against
the CPU engine (fp32) in three configurations (defaults; 16 running sequences; 16 without
CUDA graphs): how many leading ids agree per prompt, and the largest per-row relative
error of the logits of one sequence fed in chunks (``debug_forward``). ``--small`` is the
short run used under compute-sanitizer. ``--device cpu`` runs the same steps with a second
CPU engine (a dry run without a GPU).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

CONFIGS: list[dict[str, Any]] = [
    {},
    {"max_running_seqs": 16},
    {"max_running_seqs": 16, "use_cuda_graphs": False},
]


def random_prompt(rng: np.random.Generator, n: int, gmask: int = 681, bos: int = 684) -> list[int]:
    """n ids: n - 2 random ordinary ids of the tiny vocabulary, then [gMASK] <sop>."""
    return [int(x) for x in rng.integers(5, 680, size=n - 2)] + [gmask, bos]


def agreement(want: list[list[int]], got: list[list[int]]) -> list[int]:
    """Per prompt, the number of leading ids that agree."""
    out = []
    for w, g in zip(want, got, strict=True):
        out.append(next((i for i, (a, b) in enumerate(zip(w, g, strict=False)) if a != b), len(w)))
    return out


def row_errors(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Relative L2 error of every row of `got` against `ref`."""
    return np.linalg.norm(ref - got, axis=1) / np.linalg.norm(ref, axis=1)


def run(model: str, small: bool, device: str = "cuda") -> None:
    from glmserve import _engine as E  # built by scripts/gpu.sh build (or make build)

    cpu = E.Engine(model, device="cpu", num_threads=8)
    rng = np.random.default_rng(1)
    prompts = [random_prompt(rng, n) for n in ((5, 18) if small else (5, 18, 40, 97))]
    max_tokens = 12 if small else 40
    want = cpu.generate(prompts, max_tokens=max_tokens, ignore_eos=True)
    dtype = {"dtype": "fp16"} if device == "cuda" else {}
    for kw in CONFIGS:
        g = E.Engine(model, device=device, **dtype, **kw)
        got = g.generate(prompts, max_tokens=max_tokens, ignore_eos=True)
        agree = agreement(want, got)
        print("engine", kw, "agreement with cpu per prompt:", agree, flush=True)
        if min(agree) < len(want[0]):
            worst = agree.index(min(agree))
            print("  cpu", want[worst])
            print("  gpu", got[worst])
        p = random_prompt(np.random.default_rng(2), 23)
        chunks = [p, [7], [11, 12, 13], [9]]
        a = np.asarray(cpu.debug_forward(chunks))
        b = np.asarray(g.debug_forward(chunks))
        print(
            "  debug rows max err",
            float(row_errors(a, b).max()),
            "nan" if np.isnan(b).any() else "",
        )
        del g


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", default="models/chatglm-tiny", help="checkpoint (the tiny demo model)"
    )
    p.add_argument(
        "--small", action="store_true", help="2 prompts, 12 tokens (for compute-sanitizer)"
    )
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="the engine checked")
    args = p.parse_args(argv)
    run(args.model, args.small, args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
