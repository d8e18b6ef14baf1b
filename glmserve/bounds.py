"""The bound each batch size of the decode benchmark is measured against (issue 18):

- memory: one decode step reads every weight once, so it takes at least
  weight bytes / copy bandwidth (the binding limit at batch 1);
- compute: one decode step of B sequences runs every linear layer's GEMM with M = B
  tokens, so it takes at least those GEMMs' FLOPs at the FLOP rate cuBLAS reaches on the
  same shapes at M = max(B, 256) tokens, measured on the same card in the same run (the
  binding limit at large batches; ``compute_seconds``). Below 256 tokens cuBLAS's own time
  is bound by reading the weights, which is the memory limit's business: timed at M = 1 it
  is slower than the engine's GEMV, and a "bound" the engine beats is none (H100,
  2026-12-07: 167 tokens/s against the engine's 215 at batch 1).

A batch's bound in tokens/s is B / max(memory time, compute time); ``glmserve.bench``
reports each row's decode tokens/s as a share of it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LinearShape:
    """One linear layer: y[M, out] = x[M, in] W^T, run `count` times per decode step."""

    name: str
    out: int
    inp: int
    count: int


def linear_shapes(cfg: dict) -> list[LinearShape]:
    """The GEMMs of one decode step of ChatGLM-6B's shapes (config.json keys)."""
    h, i, v, n = cfg["hidden_size"], cfg["inner_hidden_size"], cfg["vocab_size"], cfg["num_layers"]
    return [
        LinearShape("qkv", 3 * h, h, n),
        LinearShape("dense", h, h, n),
        LinearShape("h_to_4h", i, h, n),
        LinearShape("4h_to_h", h, i, n),
        LinearShape("lm_head", v, h, 1),
    ]


def gemm_seconds(torch, cfg: dict, tokens: int, device: str = "cuda", reps: int = 10) -> float:
    """Seconds of the step's GEMMs at M = tokens (gemm_seconds_each for one count)."""
    return gemm_seconds_each(torch, cfg, [tokens], device, reps)[tokens]


def gemm_seconds_each(
    torch, cfg: dict, token_counts: list[int], device: str = "cuda", reps: int = 10
) -> dict[int, float]:
    """Seconds of the step's GEMMs at each M in `token_counts`, fp16 on CUDA (fp32
    elsewhere): each distinct shape's weight made once, timed alone at every M (warm,
    `reps` runs averaged), times its count."""
    dtype = torch.float16 if device == "cuda" else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    total = dict.fromkeys(token_counts, 0.0)
    for s in linear_shapes(cfg):
        w = torch.randn(s.out, s.inp, device=device, dtype=dtype, generator=gen) * 0.02
        for m in token_counts:
            x = torch.randn(m, s.inp, device=device, dtype=dtype, generator=gen)
            for _ in range(2):
                torch.nn.functional.linear(x, w)
            total[m] += s.count * _time(
                torch, device, lambda x=x, w=w: torch.nn.functional.linear(x, w), reps
            )
            del x
        del w
    return total


def compute_seconds(
    torch,
    cfg: dict,
    batches: list[int],
    device: str = "cuda",
    reps: int = 10,
    ref_tokens: int = 256,
) -> dict[int, float]:
    """The compute time of a decode step of each batch B: the GEMMs timed at M = max(B,
    ref_tokens), scaled by B / M (the same FLOP rate, B tokens' FLOPs)."""
    ref = {b: max(b, ref_tokens) for b in batches}
    timed = gemm_seconds_each(torch, cfg, sorted(set(ref.values())), device, reps)
    return {b: timed[ref[b]] * b / ref[b] for b in batches}


def _time(torch, device: str, fn, reps: int) -> float:
    if device == "cuda":
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        b.synchronize()
        return a.elapsed_time(b) / 1e3 / reps
    import time

    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def bound_tokens_per_s(
    batch: int, weight_bytes: float, bandwidth: float, gemm_s: float
) -> tuple[float, str]:
    """(tokens/s bound, which limit binds: "memory" or "GEMM") of one decode step;
    gemm_s is its compute time (compute_seconds)."""
    mem_s = weight_bytes / bandwidth
    if gemm_s > mem_s:
        return batch / gemm_s, "GEMM"
    return batch / mem_s, "memory"
