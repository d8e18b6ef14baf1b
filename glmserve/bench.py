"""Engine benchmark on the GPU (``make bench``).

Seed workload: each prompt is 16 random ids + [gMASK] <sop>; exactly 150 new
tokens (eos ignored), greedy; the real ChatGLM-6B config with random fp16 weights
made on the GPU (``--random-weights``). For every batch size: tokens/s, decode
ms/step, time to first token, GPU memory. Baseline in the same run: the PyTorch
reference (glmserve.reference, eager fp16, HF-style generate loop). Also the
card's measured copy bandwidth and the batch-1 bandwidth bound.

    python -m glmserve.bench [--batches 1,8,64,128,256] [--baseline-batches 1,8,64]
                             [--out docs/benchmarks.md-fragment] [--profile]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REAL_CONFIG = {
    "vocab_size": 130528,
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_layers": 28,
    "inner_hidden_size": 16384,
    "layernorm_epsilon": 1e-05,
    "max_sequence_length": 2048,
    "position_encoding_2d": True,
    "bos_token_id": 130004,
    "eos_token_id": 130005,
    "mask_token_id": 130000,
    "gmask_token_id": 130001,
    "pad_token_id": 3,
    "torch_dtype": "float16",
    "glmserve_format": 1,
}


def weight_bytes_per_step(cfg: dict, bytes_per_weight: float = 2.0) -> float:
    """Bytes of weights one decode step reads: every layer's four matrices + lm_head."""
    h, i, v, n = cfg["hidden_size"], cfg["inner_hidden_size"], cfg["vocab_size"], cfg["num_layers"]
    per_layer = 3 * h * h + h * h + 2 * h * i
    return (n * per_layer + v * h) * bytes_per_weight


def copy_bandwidth(torch) -> float:
    """Device-to-device copy of 2 GiB, bytes read + written per second (median of 20)."""
    n = 1 << 30
    a = torch.empty(n, dtype=torch.float16, device="cuda").uniform_(-1, 1)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    times = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    return 2 * n * 2 / statistics.median(times)


def make_prompts(batch: int, prompt_len: int, seed: int) -> list[list[int]]:
    import random

    rng = random.Random(seed)
    g, bos = REAL_CONFIG["gmask_token_id"], REAL_CONFIG["bos_token_id"]
    return [[rng.randrange(5, 130000) for _ in range(prompt_len)] + [g, bos] for _ in range(batch)]


def used_gpu_bytes(torch) -> int:
    free, total = torch.cuda.mem_get_info()
    return total - free


def run_engine(
    _engine, ckpt: str, batch: int, args, torch, base_used: int, int8: bool = False
) -> dict:
    seq_len = args.prompt_len + 2 + args.tokens
    blocks = batch * math.ceil(seq_len / 16) + 1
    eng = _engine.Engine(
        ckpt,
        device="cuda",
        dtype="fp16",
        int8=int8,
        random_weights=True,
        weights_seed=args.seed,
        num_kv_blocks=blocks,
        max_running_seqs=batch,
        max_batched_tokens=max(4096, batch * (args.prompt_len + 2)),
        use_cuda_graphs=not args.no_graphs,
    )
    prompts = make_prompts(batch, args.prompt_len, args.seed + batch)
    # Warm-up: captures this batch's decode graph, loads cuBLAS kernels.
    eng.generate(prompts, max_tokens=4, ignore_eos=True)

    def timed(max_tokens: int, e=eng) -> float:
        t0 = time.perf_counter()
        out = e.generate(prompts, max_tokens=max_tokens, ignore_eos=True)
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


def gap_summary(prof) -> str:
    """GPU timeline over the profiled steps: span, busy time, idle gaps (host/launch overhead)."""
    try:
        from torch.autograd import DeviceType

        iv = sorted(
            (e.time_range.start, e.time_range.end)
            for e in prof.events()
            if e.device_type == DeviceType.CUDA and e.time_range.end > e.time_range.start
        )
    except Exception as e:  # profiler API differences: report, do not fail the bench
        return f"(no timeline: {e})"
    if not iv:
        return "(no GPU events)"
    busy, cur_s, cur_e, gaps = 0.0, iv[0][0], iv[0][1], []
    for s, e in iv[1:]:
        if s > cur_e:
            busy += cur_e - cur_s
            gaps.append(s - cur_e)
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    busy += cur_e - cur_s
    span = iv[-1][1] - iv[0][0]
    big = [g for g in gaps if g > 20]
    return (
        f"GPU timeline: span {span / 1e3:.2f} ms, busy {busy / 1e3:.2f} ms, idle {(span - busy) / 1e3:.2f} ms "
        f"({len(big)} gaps > 20 us totalling {sum(big) / 1e3:.2f} ms; {len(gaps) - len(big)} smaller gaps "
        f"totalling {(sum(gaps) - sum(big)) / 1e3:.2f} ms)"
    )


def run_baseline(batches: list[int], args, torch) -> dict[int, dict]:
    """glmserve.reference in eager fp16 (HF-style loop: full forward per step, KV concat)."""
    import glmserve.reference as ref
    from glmserve.config import ChatGLMConfig

    # glmserve.reference makes its rotary inv_freq table on the CPU; follow the model to the GPU.
    orig = getattr(ref, "_glm_orig_rotary_inv_freq", ref.rotary_inv_freq)
    ref._glm_orig_rotary_inv_freq = orig
    ref.rotary_inv_freq = lambda d: orig(d).to("cuda")
    ChatGLMModel, generate = ref.ChatGLMModel, ref.generate

    cfg = ChatGLMConfig.from_dict(REAL_CONFIG)
    from glmserve._checkpoint import expected_shapes

    gen = torch.Generator(device="cuda")
    gen.manual_seed(args.seed)
    sd = {}
    for name, shape in expected_shapes(cfg).items():
        t = torch.empty(shape, dtype=torch.float16, device="cuda")
        if "layernorm.weight" in name:
            t.fill_(1.0)
        else:
            amp = (
                0.02
                if name.endswith(".bias")
                else (1.0 if "word_embeddings" in name else shape[1] ** -0.5)
            )
            t.uniform_(-amp, amp, generator=gen)
        sd[name] = t
    model = ChatGLMModel(cfg, sd, torch.float16, "cuda")
    out = {}
    for b in batches:
        prompts = make_prompts(b, args.prompt_len, args.seed + b)
        generate(model, prompts, max_tokens=2, ignore_eos=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        ids = generate(model, prompts, max_tokens=args.tokens, ignore_eos=True)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        assert all(len(x) == args.tokens for x in ids)
        out[b] = {
            "tokens_per_s": b * args.tokens / dt,
            "wall_s": dt,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
        }
        print(f"baseline batch {b}: {out[b]['tokens_per_s']:.1f} tok/s", flush=True)
    del model, sd
    gc.collect()
    torch.cuda.empty_cache()
    return out


def table(rows: list[dict], base: dict[int, dict], info: dict) -> str:
    lines = [
        "| batch | tokens/s (whole run) | decode tokens/s | ms/step (decode) | TTFT (ms) "
        "| GPU memory (GiB) | PyTorch eager fp16 tokens/s | speed-up |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b = None if "variant" in r else base.get(r["batch"])
        bs = f"{b['tokens_per_s']:,.1f}" if b else "-"
        ratio = f"{r['tokens_per_s'] / b['tokens_per_s']:.1f}x" if b else "-"
        lines.append(
            f"| {r['batch']}{' (' + r['variant'] + ')' if 'variant' in r else ''} | {r['tokens_per_s']:,.0f} | {r['decode_tokens_per_s']:,.0f} | {r['ms_per_step']:.2f} "
            f"| {r['ttft_ms']:.1f} | {r['gpu_mem_gib']:.1f} | {bs} | {ratio} |"
        )
    lines.append("")
    lines.append(
        f"Copy bandwidth (device-to-device, read + write): {info['bw'] / 1e12:.2f} TB/s. "
        f"Weights read per decode step: {info['wbytes'] / 1e9:.2f} GB, so the batch-1 bound is "
        f"{info['bound']:.0f} tokens/s ({1e3 / info['bound']:.2f} ms/step); batch 1 reached "
        f"{info['frac'] * 100:.0f}% of it."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batches", default="1,8,64,128,256")
    p.add_argument("--baseline-batches", default="1,8,64", help="'' to skip the PyTorch baseline")
    p.add_argument("--tokens", type=int, default=150)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-graphs", action="store_true")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="ENV=VALUE",
        help="also run batch 1 and the largest batch with this environment setting (A/B in the same run)",
    )
    p.add_argument(
        "--variant-batches", default="", help="batches for --variant (default: first and last)"
    )
    p.add_argument("--profile", action="store_true", help="kernel-time table over 20 decode steps")
    p.add_argument("--profile-batches", default="1,256")
    p.add_argument(
        "--int8",
        action="store_true",
        help="add INT8 weight-only rows (random fp16 weights quantized on the GPU), "
        "their ratio to fp16, logits error and memory (glmserve/bench_int8.py)",
    )
    p.add_argument(
        "--int8-lm-head", action="store_true", help="with --int8: also rows with an int8 lm_head"
    )
    p.add_argument("--out", help="also write the markdown table (and JSON) to this file")
    args = p.parse_args(argv)
    args.profile_batches = [int(x) for x in args.profile_batches.split(",") if x]
    args.variant_batches = [int(x) for x in args.variant_batches.split(",") if x]

    try:
        import torch
    except ImportError:
        print("bench: needs torch with CUDA", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("bench: no CUDA device", file=sys.stderr)
        return 2
    from glmserve import _engine

    dev = torch.cuda.get_device_name()
    print(f"device: {dev}", flush=True)
    base_used = used_gpu_bytes(torch)
    bw = copy_bandwidth(torch)
    print(f"copy bandwidth: {bw / 1e12:.2f} TB/s", flush=True)
    batches = [int(x) for x in args.batches.split(",") if x]
    rows = []
    int8_rows: dict[str, list[dict]] = {}
    int8_md = ""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "config.json").write_text(json.dumps(REAL_CONFIG))
        if args.int8:
            from glmserve import bench_int8

            int8_rows, int8_md = bench_int8.run(
                _engine, d, batches, args, torch, base_used, run_engine
            )
        for b in batches:
            r = run_engine(_engine, d, b, args, torch, base_used)
            rows.append(r)
            print(
                f"batch {b}: {r['tokens_per_s']:,.0f} tok/s, {r['ms_per_step']:.2f} ms/step, "
                f"TTFT {r['ttft_ms']:.1f} ms, {r['gpu_mem_gib']:.1f} GiB",
                flush=True,
            )
            if "profile" in r:
                print(
                    f"--- kernel profile, batch {b}, 20 decode steps ---\n{r['profile']}",
                    flush=True,
                )
        for var in args.variant:
            name, _, value = var.partition("=")
            old_value = os.environ.get(name)
            os.environ[name] = value
            try:
                for b in args.variant_batches or sorted({batches[0], batches[-1]}):
                    r = run_engine(_engine, d, b, args, torch, base_used)
                    r["variant"] = var
                    rows.append(r)
                    print(
                        f"batch {b} [{var}]: {r['tokens_per_s']:,.0f} tok/s, {r['ms_per_step']:.2f} ms/step",
                        flush=True,
                    )
            finally:
                if old_value is None:
                    del os.environ[name]
                else:
                    os.environ[name] = old_value
    bbs = [int(x) for x in args.baseline_batches.split(",") if x]
    base = run_baseline(bbs, args, torch) if bbs else {}
    wbytes = weight_bytes_per_step(REAL_CONFIG)
    bound = bw / wbytes
    b1 = next((r for r in rows if r["batch"] == 1 and "variant" not in r), None)
    info = {
        "bw": bw,
        "wbytes": wbytes,
        "bound": bound,
        "frac": (b1["decode_tokens_per_s"] / bound) if b1 else 0.0,
    }
    md = table(rows, base, info)
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "python -m glmserve.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    header = f"Card: {dev}; {when}; command: `{cmd.strip()}`\n\n"
    if int8_md:
        md += "\n\n" + int8_md
    print("\n" + header + md)
    if args.out:
        data = {"device": dev, "date": when, "rows": rows, "baseline": base, **info}
        if int8_rows:
            data["int8"] = int8_rows
        for r in data["rows"]:
            r.pop("profile", None)
        Path(args.out).write_text(
            header + md + "\n\n```json\n" + json.dumps(data, indent=1) + "\n```\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
