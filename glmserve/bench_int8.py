"""INT8 weight-only rows of the engine benchmark (``make bench INT8=1``, ``glmserve.bench --int8``).

The real ChatGLM-6B config with random fp16 weights made on the GPU; int8 = the
same fp16 weights quantized on the GPU at load (per output channel, the
converter's scheme). For every batch size the fp16 and the int8 engine run back
to back in the same process on the same card, so the ratio compares like with
like. Also: the logits relative error of int8 against fp16 (full-size model,
one prompt fed in chunks), the weight memory of both, and the KV cache blocks
each gets from the same free memory.

    python -m glmserve.bench_int8 [--batches 1,8,64,128,256] [--int8-lm-head] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import json
import os
import sys
import tempfile
from pathlib import Path

from glmserve.bench import REAL_CONFIG, make_prompts, run_engine, used_gpu_bytes


@contextlib.contextmanager
def lm_head_env(on: bool):
    """GLM_CUDA_INT8_LM_HEAD=1: the CUDA runner also quantizes lm_head (read at engine creation)."""
    old = os.environ.get("GLM_CUDA_INT8_LM_HEAD")
    os.environ["GLM_CUDA_INT8_LM_HEAD"] = "1" if on else "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("GLM_CUDA_INT8_LM_HEAD", None)
        else:
            os.environ["GLM_CUDA_INT8_LM_HEAD"] = old


def modes(args) -> list[tuple[str, bool, bool]]:
    """(name, int8, lm_head int8)."""
    m = [("fp16", False, False), ("int8", True, False)]
    if getattr(args, "int8_lm_head", False):
        m.append(("int8+lm_head", True, True))
    return m


def weight_bytes(cfg: dict, int8: bool, lm_head: bool) -> int:
    """Bytes of the weights on the GPU (matrices; vectors are fp32 and tiny, left out)."""
    h, i, v, n = cfg["hidden_size"], cfg["inner_hidden_size"], cfg["vocab_size"], cfg["num_layers"]
    per_layer = 3 * h * h + h * h + 2 * h * i
    rows = 3 * h + h + i + h
    layers = n * (per_layer + 2 * rows) if int8 else n * per_layer * 2
    head = (v * h + 2 * v) if lm_head else v * h * 2
    return layers + v * h * 2 + head


def logits_error(_engine, ckpt: str, args, lm_head: bool) -> dict:
    import numpy as np

    p = make_prompts(1, 20, args.seed + 999)[0]
    chunks = [p, [5000], [77, 1234]]
    kw = dict(
        device="cuda", dtype="fp16", random_weights=True, weights_seed=args.seed, num_kv_blocks=32
    )
    eng = _engine.Engine(ckpt, **kw)
    want = np.asarray(eng.debug_forward(chunks), dtype=np.float64)
    del eng
    gc.collect()
    with lm_head_env(lm_head):
        eng = _engine.Engine(ckpt, int8=True, **kw)
        got = np.asarray(eng.debug_forward(chunks), dtype=np.float64)
    del eng
    gc.collect()
    return {
        "rel_err": float(np.linalg.norm(got - want) / np.linalg.norm(want)),
        "max_abs_err": float(np.abs(got - want).max()),
        "argmax_agree": float((got.argmax(-1) == want.argmax(-1)).mean()),
        "rows": int(want.shape[0]),
    }


def memory(_engine, ckpt: str, args, torch, base_used: int, int8: bool, lm_head: bool) -> dict:
    """GPU memory of an engine with one KV block (weights + activations + workspaces), and the
    KV blocks it gets with the default sizing (90% of the memory left)."""
    with lm_head_env(lm_head):
        eng = _engine.Engine(
            ckpt,
            device="cuda",
            dtype="fp16",
            int8=int8,
            random_weights=True,
            weights_seed=args.seed,
            num_kv_blocks=1,
            max_running_seqs=1,
        )
        used = used_gpu_bytes(torch) - base_used
        del eng
        gc.collect()
        eng = _engine.Engine(
            ckpt,
            device="cuda",
            dtype="fp16",
            int8=int8,
            random_weights=True,
            weights_seed=args.seed,
        )
        blocks = eng.stats()["kv_blocks_total"]
        del eng
        gc.collect()
    h, n = REAL_CONFIG["hidden_size"], REAL_CONFIG["num_layers"]
    return {
        "weights_gib": weight_bytes(REAL_CONFIG, int8, lm_head) / 2**30,
        "engine_1block_gib": used / 2**30,
        "kv_blocks": blocks,
        "kv_gib": blocks * 2 * n * 16 * h * 2 / 2**30,
    }


def run(
    _engine, ckpt: str, batches: list[int], args, torch, base_used: int, run_engine_fn=run_engine
):
    """Rows per mode and the markdown (speed, accuracy, memory)."""
    ms = modes(args)
    rows: dict[str, list[dict]] = {name: [] for name, _, _ in ms}
    for b in batches:
        for name, int8, lm in ms:
            with lm_head_env(lm):
                r = run_engine_fn(_engine, ckpt, b, args, torch, base_used, int8=int8)
            prof = r.pop("profile", None)
            if prof:
                print(
                    f"--- kernel profile, {name} batch {b}, 20 decode steps ---\n{prof}", flush=True
                )
            rows[name].append(r)
            print(
                f"{name} batch {b}: {r['tokens_per_s']:,.0f} tok/s, {r['ms_per_step']:.2f} ms/step, "
                f"TTFT {r['ttft_ms']:.1f} ms",
                flush=True,
            )
    acc: dict = {}
    mem: dict = {}
    if getattr(args, "speed_only", False):
        return {"rows": rows}, table(rows, acc, mem)
    for name, _int8, lm in ms[1:]:
        acc[name] = logits_error(_engine, ckpt, args, lm)
        print(f"{name} logits vs fp16: {acc[name]}", flush=True)
    for name, int8, lm in ms:
        mem[name] = memory(_engine, ckpt, args, torch, base_used, int8, lm)
        print(f"{name} memory: {mem[name]}", flush=True)
    return {"rows": rows, "accuracy": acc, "memory": mem}, table(rows, acc, mem)


def table(rows: dict[str, list[dict]], acc: dict, mem: dict) -> str:
    names = list(rows)
    q = names[1:]
    head = "| batch | fp16 tokens/s | " + " | ".join(f"{n} tokens/s | {n} / fp16" for n in q)
    head += " | fp16 ms/step | " + " | ".join(f"{n} ms/step" for n in q) + " | fp16 TTFT ms | "
    head += " | ".join(f"{n} TTFT ms" for n in q) + " |"
    ncol = head.count("|") - 1
    lines = [head, "|" + "---:|" * ncol]
    for k, r16 in enumerate(rows["fp16"]):
        cells = [str(r16["batch"]), f"{r16['tokens_per_s']:,.0f}"]
        for n in q:
            r = rows[n][k]
            cells += [
                f"{r['tokens_per_s']:,.0f}",
                f"{r['tokens_per_s'] / r16['tokens_per_s']:.2f}x",
            ]
        cells.append(f"{r16['ms_per_step']:.2f}")
        cells += [f"{rows[n][k]['ms_per_step']:.2f}" for n in q]
        cells.append(f"{r16['ttft_ms']:.1f}")
        cells += [f"{rows[n][k]['ttft_ms']:.1f}" for n in q]
        lines.append("| " + " | ".join(cells) + " |")
    if not mem:
        return "\n".join(lines)
    lines.append("")
    lines.append(
        "| mode | logits rel. error vs fp16 | max abs error | argmax agreement | weights (GiB) "
        "| weights / fp16 | engine with 1 KV block (GiB) | KV blocks (default sizing) | KV cache (GiB) |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    w16 = mem["fp16"]["weights_gib"]
    for n in names:
        a = acc.get(n)
        m = mem[n]
        lines.append(
            f"| {n} | {a['rel_err']:.4f} | {a['max_abs_err']:.3f} | {a['argmax_agree']:.2f} "
            if a
            else f"| {n} | - | - | - "
        )
        lines[-1] += (
            f"| {m['weights_gib']:.2f} | {m['weights_gib'] / w16 * 100:.1f}% | {m['engine_1block_gib']:.2f} "
            f"| {m['kv_blocks']:,} | {m['kv_gib']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batches", default="1,8,64,128,256")
    p.add_argument("--tokens", type=int, default=150)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-graphs", action="store_true")
    p.add_argument("--int8-lm-head", action="store_true")
    p.add_argument("--profile-batches", default="", help="kernel-time tables for these batches")
    p.add_argument("--speed-only", action="store_true", help="tokens/s rows only")
    p.add_argument("--out")
    args = p.parse_args(argv)
    args.profile_batches = [int(x) for x in args.profile_batches.split(",") if x]
    args.profile = bool(args.profile_batches)
    import torch

    if not torch.cuda.is_available():
        print("bench_int8: no CUDA device", file=sys.stderr)
        return 2
    from glmserve import _engine

    dev = torch.cuda.get_device_name()
    print(f"device: {dev}", flush=True)
    base_used = used_gpu_bytes(torch)
    batches = [int(x) for x in args.batches.split(",") if x]
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "config.json").write_text(json.dumps(REAL_CONFIG))
        data, md = run(_engine, d, batches, args, torch, base_used)
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "python -m glmserve.bench_int8 " + " ".join(argv if argv is not None else sys.argv[1:])
    header = f"Card: {dev}; {when}; command: `{cmd.strip()}`\n\n"
    kernels = sorted({r.get("backend", "") for rs in data["rows"].values() for r in rs} - {""})
    if kernels:
        header += "Engine back-end: " + "; ".join(kernels) + "\n\n"
    print("\n" + header + md)
    if args.out:
        Path(args.out).write_text(
            header
            + md
            + "\n\n```json\n"
            + json.dumps({"device": dev, "date": when, **data}, indent=1)
            + "\n```\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
