"""What the engine benchmarks share (``glmserve.bench``: fp16 rows and the PyTorch
baseline; ``glmserve.bench_int8``: fp16 against INT8 weight-only). Both import this
module and neither imports the other.

Everything runs ChatGLM-6B's shapes (``glmserve.config.REAL_CONFIG``) with random fp16
weights made on the GPU: prompts, one engine run per batch size (tokens/s, decode ms per
step, time to first token, GPU memory, optional kernel profile), the weight bytes a
decode step reads, and the INT8 rows (speed, logits error and memory against fp16).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from glmserve import cuda_tuning
from glmserve.config import REAL_CONFIG

# ------------------------------------------------------------------ set-up


def write_real_config(directory: str | Path) -> None:
    """A checkpoint directory for ``random_weights=True`` engines: config.json only."""
    (Path(directory) / "config.json").write_text(json.dumps(REAL_CONFIG))


def make_prompts(batch: int, prompt_len: int, seed: int) -> list[list[int]]:
    import random

    rng = random.Random(seed)
    g, bos = REAL_CONFIG["gmask_token_id"], REAL_CONFIG["bos_token_id"]
    return [[rng.randrange(5, 130000) for _ in range(prompt_len)] + [g, bos] for _ in range(batch)]


def used_gpu_bytes(torch) -> int:
    free, total = torch.cuda.mem_get_info()
    return total - free


def engine_kwargs(args, **over) -> dict:
    """Keywords of every benchmarked ``_engine.Engine``: the CUDA tuning flags given on the
    command line (``--cuda-<name>``), then `over` (a mode's or an A/B variant's own)."""
    return {**cuda_tuning.kwargs(args), **over}


def report_header(device: str, module: str, argv: list[str] | None) -> tuple[str, str]:
    """(date, "Card: ...; date; command: `python -m <module> ...`" + blank line)."""
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = f"python -m {module} " + " ".join(argv if argv is not None else sys.argv[1:])
    return when, f"Card: {device}; {when}; command: `{cmd.strip()}`\n\n"


# ------------------------------------------------------------------ weight bytes


def weight_bytes_per_step(cfg: dict, bytes_per_weight: float = 2.0) -> float:
    """Bytes of weights one decode step reads: every layer's four matrices + lm_head."""
    h, i, v, n = cfg["hidden_size"], cfg["inner_hidden_size"], cfg["vocab_size"], cfg["num_layers"]
    per_layer = 3 * h * h + h * h + 2 * h * i
    return (n * per_layer + v * h) * bytes_per_weight


def weight_bytes(cfg: dict, weights: str = "fp16") -> int:
    """Bytes of the weights on the GPU (matrices and their scales; the fp32 vectors are tiny
    and left out). `weights`: fp16, int8 (block linears int8 + fp16 scales), int8+lm_head
    (the lm_head too), fp8 (block linears E4M3 + fp32 scales), fp8+lm_head (and the lm_head
    int8 + fp16 scales: fp8 mode with cuda_int8_lm_head)."""
    # bytes of scale per output row of the block linears, by format (the formats known)
    scale_of = {"fp16": 0, "int8": 2, "int8+lm_head": 2, "fp8": 4, "fp8+lm_head": 4}
    if weights not in scale_of:
        raise ValueError(f"weight format {weights!r}: one of {', '.join(scale_of)}")
    h, i, v, n = cfg["hidden_size"], cfg["inner_hidden_size"], cfg["vocab_size"], cfg["num_layers"]
    per_layer = 3 * h * h + h * h + 2 * h * i
    rows = 3 * h + h + i + h
    scale_bytes = scale_of[weights]
    layers = n * per_layer * 2 if weights == "fp16" else n * (per_layer + scale_bytes * rows)
    head = (v * h + 2 * v) if weights.endswith("+lm_head") else v * h * 2
    return layers + v * h * 2 + head


# ------------------------------------------------------------------ one engine run


def run_engine(
    _engine,
    ckpt: str,
    batch: int,
    args,
    torch,
    base_used: int,
    tuning: dict | None = None,
    sampling: dict | None = None,
    options: dict | None = None,
    prefix_len: int = 0,
) -> dict:
    """One batch size on a fresh engine. `tuning`: extra ``cuda_<name>`` keywords (over
    the command line's); `sampling`: request keywords for every request (e.g. logprobs,
    adapter); `options`: more engine options (e.g. adapters_dir); `prefix_len`: the adapter
    prefix's length (sizes the KV cache)."""
    seq_len = args.prompt_len + 2 + args.tokens
    # Room for every sequence (after an adapter prefix of prefix_len tokens, whose own
    # blocks the engine holds once) at once.
    blocks = batch * math.ceil((prefix_len + seq_len) / 16) + math.ceil(prefix_len / 16) + 1
    if args.profile and batch in args.profile_batches:
        # the runner's host time per step (prep + enqueue, wait), printed when it goes
        tuning = {"cuda_timing": True, **(tuning or {})}
    eng = _engine.Engine(
        ckpt,
        device="cuda",
        dtype="fp16",
        random_weights=True,
        weights_seed=args.seed,
        num_kv_blocks=blocks,
        max_running_seqs=batch,
        max_batched_tokens=max(4096, batch * (args.prompt_len + 2)),
        **{
            "use_cuda_graphs": not args.no_graphs,
            "overlap_steps": not args.no_overlap,
            **(options or {}),
        },
        **engine_kwargs(args, **(tuning or {})),
    )
    sampling = sampling or {}
    prompts = make_prompts(batch, args.prompt_len, args.seed + batch)
    # Warm-up: captures this batch's decode graph, loads cuBLAS kernels.
    eng.generate(prompts, max_tokens=4, ignore_eos=True, **sampling)

    def timed(max_tokens: int, e=eng) -> float:
        t0 = time.perf_counter()
        out = e.generate(prompts, max_tokens=max_tokens, ignore_eos=True, **sampling)
        dt = time.perf_counter() - t0
        assert all(len(o) == max_tokens for o in out), "a request did not get all its tokens"
        return dt

    # Time to first token: the whole batch's prefill step (+ its first sampled id).
    ttft = statistics.median(timed(1) for _ in range(3))
    wall = timed(args.tokens)
    decode_ms = (wall - ttft) / (args.tokens - 1) * 1e3
    res = {
        "batch": batch,
        "tokens_per_s": batch * args.tokens / wall,
        "decode_tokens_per_s": batch / (decode_ms / 1e3),
        "ms_per_step": decode_ms,
        "ttft_ms": ttft * 1e3,
        "gpu_mem_gib": (used_gpu_bytes(torch) - base_used) / 2**30,
        "backend": eng.backend_description(),  # which kernels ran (e.g. the int8 layout)
        "wall_s": wall,
    }
    if args.profile and batch in args.profile_batches:
        res["profile"] = profile_steps(eng, prompts, args, torch)
    del eng
    gc.collect()
    return res


def profile_steps(eng, prompts, args, torch) -> str:
    """CUDA kernel time by name over 20 decode steps (torch.profiler sees our kernels too)."""
    from torch.profiler import ProfilerActivity, profile

    for k, p in enumerate(prompts):
        eng.submit(50_000 + k, p, None, max_tokens=args.tokens, ignore_eos=True)
    for _ in range(3):
        eng.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(20):
            eng.step()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    for k in range(len(prompts)):
        eng.cancel(50_000 + k)
    while eng.step():
        pass
    table = prof.key_averages().table(
        sort_by="cuda_time_total", row_limit=14, max_name_column_width=70
    )
    return (
        table
        + f"\nwall {wall * 1e3 / 20:.2f} ms/step (host clock, under the profiler); "
        + gap_summary(prof)
    )


def gap_summary(prof, steps: int = 20) -> str:
    """GPU timeline over the profiled steps: span, busy time, idle gaps (host/launch
    overhead), for the whole window and for its steady state (the first and the last step's
    share of the span left out: the window's edges, where the host starts and stops feeding
    the GPU, are not gaps between steps)."""
    try:
        from torch.autograd import DeviceType

        iv = [
            (e.time_range.start, e.time_range.end)
            for e in prof.events()
            if e.device_type == DeviceType.CUDA and e.time_range.end > e.time_range.start
        ]
    except Exception as e:  # profiler API differences: report, do not fail the bench
        return f"(no timeline: {e})"
    if not iv:
        return "(no GPU events)"
    whole = timeline_idle(iv)
    lo, hi = min(s for s, _ in iv), max(e for _, e in iv)
    cut = (hi - lo) / steps
    inner = timeline_idle(iv, lo + cut, hi - cut)
    return describe_idle(whole) + "; without the first and last step: " + describe_idle(inner)


def timeline_idle(
    intervals: list[tuple[float, float]], lo: float | None = None, hi: float | None = None
) -> dict:
    """Busy and idle time of a GPU timeline (event intervals in us, overlapping or not)
    within [lo, hi] (default: the first start to the last end): span, busy, the gaps."""
    lo = min(s for s, _ in intervals) if lo is None else lo
    hi = max(e for _, e in intervals) if hi is None else hi
    iv = sorted((max(s, lo), min(e, hi)) for s, e in intervals if e > lo and s < hi)
    busy, gaps = 0.0, []
    if not iv:
        return {"span": hi - lo, "busy": 0.0, "gaps": [hi - lo] if hi > lo else []}
    if iv[0][0] > lo:
        gaps.append(iv[0][0] - lo)
    cur_s, cur_e = iv[0]
    for s, e in iv[1:]:
        if s > cur_e:
            busy += cur_e - cur_s
            gaps.append(s - cur_e)
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    busy += cur_e - cur_s
    if hi > cur_e:
        gaps.append(hi - cur_e)
    return {"span": hi - lo, "busy": busy, "gaps": gaps}


def describe_idle(t: dict) -> str:
    span, busy, gaps = t["span"], t["busy"], t["gaps"]
    big = [g for g in gaps if g > 20]
    pct = 100 * (span - busy) / span if span > 0 else 0.0
    return (
        f"GPU timeline: span {span / 1e3:.2f} ms, busy {busy / 1e3:.2f} ms, idle {(span - busy) / 1e3:.2f} ms "
        f"= {pct:.1f}% of the span "
        f"({len(big)} gaps > 20 us totalling {sum(big) / 1e3:.2f} ms; {len(gaps) - len(big)} smaller gaps "
        f"totalling {(sum(gaps) - sum(big)) / 1e3:.2f} ms)"
    )


# ------------------------------------------------------------------ INT8 rows


@dataclass(frozen=True)
class Mode:
    """One low-precision row set: `engine` holds Engine keywords (int8, fp8, kv_cache_dtype),
    `tuning` the ``cuda_<name>`` ones."""

    name: str
    engine: dict = field(default_factory=dict)
    tuning: dict = field(default_factory=dict)

    @property
    def weights(self) -> str:
        """The weight format for the memory accounting (weight_bytes)."""
        if self.engine.get("fp8"):
            return "fp8+lm_head" if self.tuning.get("cuda_int8_lm_head") else "fp8"
        if self.engine.get("int8"):
            return "int8+lm_head" if self.tuning.get("cuda_int8_lm_head") else "int8"
        return "fp16"


def int8_modes(args) -> list[Mode]:
    """fp16 first (every ratio's baseline), then int8, and the ones the flags ask for:
    --int8-lm-head, --w8a8 N (int8 with W8A8 from N tokens), --fp8 (with --int8-lm-head also
    fp8 with the int8 lm_head, and with --w8a8 N too that lm_head on W8A8 from N tokens),
    --kv-fp8 (the FP8 KV cache under fp16 linears, and under fp8 ones with --fp8)."""
    m = [
        Mode("fp16"),
        Mode("int8", {"int8": True}, {"cuda_int8_lm_head": False}),
    ]
    if getattr(args, "int8_lm_head", False):
        m.append(Mode("int8+lm_head", {"int8": True}, {"cuda_int8_lm_head": True}))
    w8a8 = getattr(args, "w8a8", 0) or 0
    if w8a8:
        lm = bool(getattr(args, "int8_lm_head", False))
        m.append(
            Mode(
                f"int8 W8A8>={w8a8}{'+lm_head' if lm else ''}",
                {"int8": True},
                {"cuda_int8_lm_head": lm, "cuda_int8_w8a8_min_tokens": w8a8},
            )
        )
    if getattr(args, "fp8", False):
        m.append(Mode("fp8", {"fp8": True}))
        if getattr(args, "int8_lm_head", False):
            m.append(Mode("fp8+int8 lm_head", {"fp8": True}, {"cuda_int8_lm_head": True}))
            if w8a8:  # the int8 lm_head on int8 tensor cores from w8a8 tokens on
                m.append(
                    Mode(
                        f"fp8+int8 lm_head W8A8>={w8a8}",
                        {"fp8": True},
                        {"cuda_int8_lm_head": True, "cuda_int8_w8a8_min_tokens": w8a8},
                    )
                )
    if getattr(args, "fp8_ab", False):
        m.append(Mode("fp8 no GEMV", {"fp8": True}, {"cuda_fp8_gemv_max_tokens": 0}))
    if getattr(args, "kv_fp8", False):
        m.append(Mode("fp16+fp8 KV", {"kv_cache_dtype": "fp8"}))
        if getattr(args, "fp8", False):
            m.append(Mode("fp8+fp8 KV", {"fp8": True, "kv_cache_dtype": "fp8"}))
    return m


def int8_logits_error(_engine, ckpt: str, args, mode: Mode) -> dict:
    """Logits of a mode's engine against the fp16 one (full-size model; a 300-token prompt,
    one token, then a 64-token chunk: 365 positions)."""
    import numpy as np

    p = make_prompts(1, 298, args.seed + 999)[0]
    chunks = [p, [5000], list(range(100, 164))]
    kw = dict(
        device="cuda", dtype="fp16", random_weights=True, weights_seed=args.seed, num_kv_blocks=64
    )
    eng = _engine.Engine(ckpt, **kw, **engine_kwargs(args))
    want = np.asarray(eng.debug_forward(chunks), dtype=np.float64)
    del eng
    gc.collect()
    eng = _engine.Engine(ckpt, **mode.engine, **kw, **engine_kwargs(args, **mode.tuning))
    got = np.asarray(eng.debug_forward(chunks), dtype=np.float64)
    del eng
    gc.collect()
    return {
        "rel_err": float(np.linalg.norm(got - want) / np.linalg.norm(want)),
        "max_abs_err": float(np.abs(got - want).max()),
        "argmax_agree": float((got.argmax(-1) == want.argmax(-1)).mean()),
        "rows": int(want.shape[0]),
    }


def int8_memory(_engine, ckpt: str, args, torch, base_used: int, mode: Mode) -> dict:
    """GPU memory of an engine with one KV block (weights + activations + workspaces), and the
    KV blocks it gets with the default sizing (90% of the memory left)."""
    kw = dict(
        device="cuda",
        dtype="fp16",
        random_weights=True,
        weights_seed=args.seed,
        **mode.engine,
        **engine_kwargs(args, **mode.tuning),
    )
    eng = _engine.Engine(ckpt, num_kv_blocks=1, max_running_seqs=1, **kw)
    used = used_gpu_bytes(torch) - base_used
    del eng
    gc.collect()
    eng = _engine.Engine(ckpt, **kw)
    blocks = eng.stats()["kv_blocks_total"]
    del eng
    gc.collect()
    h, n = REAL_CONFIG["hidden_size"], REAL_CONFIG["num_layers"]
    heads = REAL_CONFIG["num_attention_heads"]
    # bytes of one token's K or V in one layer: fp16, or E4M3 codes + a float scale per head
    per_token = h + 4 * heads if mode.engine.get("kv_cache_dtype") == "fp8" else 2 * h
    return {
        "weights_gib": weight_bytes(REAL_CONFIG, mode.weights) / 2**30,
        "engine_1block_gib": used / 2**30,
        "kv_blocks": blocks,
        "kv_gib": blocks * 2 * n * 16 * per_token / 2**30,
    }


def run_int8(_engine, ckpt: str, batches: list[int], args, torch, base_used: int):
    """Rows per mode and the markdown (speed, accuracy, memory): for every batch size the
    fp16 and the low-precision engines back to back, in the same process on the same card."""
    ms = int8_modes(args)
    rows: dict[str, list[dict]] = {m.name: [] for m in ms}
    for b in batches:
        for m in ms:
            r = run_engine(
                _engine, ckpt, b, args, torch, base_used, options=m.engine, tuning=m.tuning
            )
            prof = r.pop("profile", None)
            if prof:
                print(
                    f"--- kernel profile, {m.name} batch {b}, 20 decode steps ---\n{prof}",
                    flush=True,
                )
            rows[m.name].append(r)
            print(
                f"{m.name} batch {b}: {r['tokens_per_s']:,.0f} tok/s, {r['ms_per_step']:.2f} ms/step, "
                f"TTFT {r['ttft_ms']:.1f} ms",
                flush=True,
            )
    acc: dict = {}
    mem: dict = {}
    if getattr(args, "speed_only", False):
        return {"rows": rows}, int8_table(rows, acc, mem)
    for m in ms[1:]:
        acc[m.name] = int8_logits_error(_engine, ckpt, args, m)
        print(f"{m.name} logits vs fp16: {acc[m.name]}", flush=True)
    for m in ms:
        mem[m.name] = int8_memory(_engine, ckpt, args, torch, base_used, m)
        print(f"{m.name} memory: {mem[m.name]}", flush=True)
    return {"rows": rows, "accuracy": acc, "memory": mem}, int8_table(rows, acc, mem)


def int8_table(rows: dict[str, list[dict]], acc: dict, mem: dict) -> str:
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


def add_low_precision_args(p: argparse.ArgumentParser) -> None:
    """The flags that add low-precision row sets (int8_modes)."""
    p.add_argument("--int8-lm-head", action="store_true", help="also rows with an int8 lm_head")
    p.add_argument(
        "--w8a8",
        type=int,
        default=0,
        metavar="N",
        help="also int8 rows with W8A8 (per-token int8 activations, int8 tensor cores) from N "
        "tokens on (the engine's cuda_int8_w8a8_min_tokens); 0: none",
    )
    p.add_argument(
        "--fp8",
        action="store_true",
        help="also FP8 rows (E4M3 weights per channel and activations per token; Hopper)",
    )
    p.add_argument(
        "--fp8-ab",
        action="store_true",
        help="also fp8 rows without the weight-only GEMV (cuBLASLt's FP8 GEMM at every "
        "token count: tuning fp8_gemv_max_tokens=0), the A/B of its default",
    )
    p.add_argument(
        "--kv-fp8",
        action="store_true",
        help="also rows with kv_cache_dtype=fp8 (E4M3 K/V, a scale per token and head)",
    )


def add_common_args(p: argparse.ArgumentParser) -> None:
    """The arguments both benchmark CLIs take (workload, graphs, CUDA tuning flags)."""
    p.add_argument("--batches", default="1,8,64,128,256")
    p.add_argument("--tokens", type=int, default=150)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-graphs", action="store_true")
    p.add_argument(
        "--no-overlap",
        action="store_true",
        help="synchronous steps: the host waits for each step's ids before preparing the next "
        "(the engine before overlapped scheduling)",
    )
    cuda_tuning.add_flags(p)
