"""Engine benchmark on the GPU (``make bench``).

Seed workload: each prompt is 16 random ids + [gMASK] <sop>; exactly 150 new
tokens (eos ignored), greedy; the real ChatGLM-6B config with random fp16 weights
made on the GPU (``--random-weights``). For every batch size: tokens/s, decode
ms/step, time to first token, GPU memory. Baseline in the same run: the PyTorch
reference (glmserve.reference, eager fp16, HF-style generate loop). Also the
card's measured copy bandwidth and the batch-1 bandwidth bound.

    python -m glmserve.bench [--batches 1,8,64,128,256] [--baseline-batches 1,8,64]
                             [--out docs/benchmarks.md-fragment] [--profile]
                             [--cuda-<option> VALUE ...] [--variant cuda_<option>=VALUE ...]

``--cuda-<option>`` sets an engine CUDA tuning option (EngineOptions.cuda) for every row;
``--variant`` adds A/B rows with options changed (e.g. ``--variant cuda_pdl=false``; several
in one variant joined by commas).
``--compiled-batches`` adds the compiled PyTorch decode (glmserve.compiled_decode: static
KV cache, torch.compile with CUDA graphs) and the engine's ratio to it.
``--logprobs N`` and ``--prefix P`` add, at ``--controls-batches``, rows with every request
asking for N log-probabilities, or running with an adapter prefix of P tokens (random K/V),
beside a plain row of the same batch in the same run: their cost per decode step.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from glmserve import bench_common as common
from glmserve import bounds, cuda_tuning
from glmserve.config import REAL_CONFIG


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


def baseline_model(args, torch):
    """glmserve.reference's ChatGLMModel of ChatGLM-6B's shapes, random fp16 weights on the GPU."""
    import glmserve.reference as ref
    from glmserve.config import ChatGLMConfig

    # glmserve.reference makes its rotary inv_freq table on the CPU; follow the model to the GPU.
    orig = getattr(ref, "_glm_orig_rotary_inv_freq", ref.rotary_inv_freq)
    ref._glm_orig_rotary_inv_freq = orig
    ref.rotary_inv_freq = lambda d: orig(d).to("cuda")
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
    return ref.ChatGLMModel(cfg, sd, torch.float16, "cuda")


def run_baseline(batches: list[int], args, torch) -> dict[int, dict]:
    """glmserve.reference in eager fp16 (HF-style loop: full forward per step, KV concat)."""
    from glmserve.reference import generate

    model = baseline_model(args, torch)
    out = {}
    for b in batches:
        prompts = common.make_prompts(b, args.prompt_len, args.seed + b)
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
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return out


def run_compiled(batches: list[int], args, torch) -> dict[int, dict]:
    """glmserve.compiled_decode: static KV cache, torch.compile(mode="reduce-overhead")
    (CUDA graphs), greedy; one compile per batch size (warm-up run, not timed)."""
    from torch._dynamo.utils import counters

    from glmserve.compiled_decode import StaticDecoder

    model = baseline_model(args, torch)
    out = {}
    for b in batches:
        prompts = common.make_prompts(b, args.prompt_len, args.seed + b)
        dec = StaticDecoder(model, batch=b, max_len=len(prompts[0]) + args.tokens)
        skips0 = counters["inductor"]["cudagraph_skips"]
        t0 = time.perf_counter()
        dec.generate(prompts, max_tokens=args.tokens)  # compiles and captures
        compile_s = time.perf_counter() - t0
        # Inductor counts each compiled graph that it runs without CUDA graphs (and logs why):
        # a baseline without them would be the launch-bound decode, not the one meant.
        skips = counters["inductor"]["cudagraph_skips"] - skips0
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        ids = dec.generate(prompts, max_tokens=args.tokens)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        assert all(len(x) == args.tokens for x in ids)
        out[b] = {
            "tokens_per_s": b * args.tokens / dt,
            "wall_s": dt,
            "compile_s": compile_s,
            "cudagraph_skips": skips,
        }
        print(
            f"compiled PyTorch batch {b}: {out[b]['tokens_per_s']:,.1f} tok/s "
            f"(timed run; the first run, compiling, took {compile_s:.0f} s; "
            f"{'CUDA graphs' if skips == 0 else f'{skips} graph(s) WITHOUT CUDA graphs'})",
            flush=True,
        )
        del dec
        torch.cuda.empty_cache()
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return out


def compiled_table(rows: list[dict], compiled: dict[int, dict]) -> str:
    """The engine against the compiled PyTorch decode, batch by batch (whole-run tokens/s)."""
    lines = [
        "| batch | this engine tokens/s | compiled PyTorch tokens/s | engine / compiled |",
        "|---:|---:|---:|---:|",
    ]
    for r in rows:
        c = compiled.get(r["batch"])
        if "variant" in r or c is None:
            continue
        lines.append(
            f"| {r['batch']} | {r['tokens_per_s']:,.0f} | {c['tokens_per_s']:,.0f} "
            f"| {r['tokens_per_s'] / c['tokens_per_s']:.2f}x |"
        )
    return "\n".join(lines)


def table(rows: list[dict], base: dict[int, dict], info: dict) -> str:
    lines = [
        "| batch | tokens/s (whole run) | decode tokens/s | ms/step (decode) | TTFT (ms) "
        "| GPU memory (GiB) | PyTorch eager fp16 tokens/s | speed-up | bound tokens/s (limit) "
        "| decode share of the bound |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_batch = info.get("bounds", {})
    for r in rows:
        b = None if "variant" in r else base.get(r["batch"])
        bs = f"{b['tokens_per_s']:,.1f}" if b else "-"
        ratio = f"{r['tokens_per_s'] / b['tokens_per_s']:.1f}x" if b else "-"
        bd = by_batch.get(r["batch"])
        bound = f"{bd[0]:,.0f} ({bd[1]})" if bd else "-"
        share = f"{r['decode_tokens_per_s'] / bd[0] * 100:.0f}%" if bd else "-"
        lines.append(
            f"| {r['batch']}{' (' + r['variant'] + ')' if 'variant' in r else ''} | {r['tokens_per_s']:,.0f} | {r['decode_tokens_per_s']:,.0f} | {r['ms_per_step']:.2f} "
            f"| {r['ttft_ms']:.1f} | {r['gpu_mem_gib']:.1f} | {bs} | {ratio} | {bound} | {share} |"
        )
    lines.append("")
    lines.append(
        f"Copy bandwidth (device-to-device, read + write): {info['bw'] / 1e12:.2f} TB/s. "
        f"Weights read per decode step: {info['wbytes'] / 1e9:.2f} GB, so the batch-1 bound is "
        f"{info['bound']:.0f} tokens/s ({1e3 / info['bound']:.2f} ms/step)"
        + (f"; batch 1 reached {info['frac'] * 100:.0f}% of it" if info["frac"] is not None else "")
        + ". The bound of a batch B (glmserve.bounds) is B / the "
        "larger of that memory time and the compute time: the step's GEMM FLOPs at M = B at the "
        "rate cuBLAS reaches on the same shapes at M = max(B, 256) (fp16, each shape timed "
        "alone on this card in this run); the share compares decode tokens/s with it."
    )
    return "\n".join(lines)


def write_random_prefix(ckpt: str, length: int, seed: int) -> str:
    """An adapters directory holding adapter 'bench': a random prefix of `length` tokens
    with the real model's shapes (K/V of the scale the model's own keys have)."""
    import torch

    from glmserve.adapters import PrefixKV, write_prefix_adapter
    from glmserve.config import ChatGLMConfig

    cfg = ChatGLMConfig.from_dict(REAL_CONFIG)
    gen = torch.Generator().manual_seed(seed)
    shape = (cfg.num_layers, length, cfg.hidden_size)
    kv = PrefixKV(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))
    # Not in the checkpoint's own adapters/: the plain rows' engines must load no adapter.
    base = Path(ckpt) / "bench_prefix"
    write_prefix_adapter(base, "bench", kv, cfg, source=f"glmserve.bench random prefix {length}")
    return str(base / "adapters")


def run_controls(_engine, ckpt: str, args, torch, base_used: int) -> list[dict]:
    """Plain, logprobs and prefix rows of the same batch sizes, in this run."""
    out: list[dict] = []
    if args.logprobs is None and args.prefix is None:
        return out
    adapters = write_random_prefix(ckpt, args.prefix, args.seed) if args.prefix else None
    for b in [int(x) for x in args.controls_batches.split(",") if x]:
        plain = common.run_engine(_engine, ckpt, b, args, torch, base_used)
        row = {"batch": b, "plain_ms": plain["ms_per_step"], "plain_tps": plain["tokens_per_s"]}
        if args.logprobs is not None:
            r = common.run_engine(
                _engine, ckpt, b, args, torch, base_used, sampling={"logprobs": args.logprobs}
            )
            row["logprobs_ms"], row["logprobs_tps"] = r["ms_per_step"], r["tokens_per_s"]
        if adapters:
            r = common.run_engine(
                _engine, ckpt, b, args, torch, base_used,
                sampling={"adapter": "bench"}, options={"adapters_dir": adapters},
                prefix_len=args.prefix,
            )  # fmt: skip
            row["prefix_ms"], row["prefix_tps"] = r["ms_per_step"], r["tokens_per_s"]
        print(f"controls batch {b}: {row}", flush=True)
        out.append(row)
    return out


def controls_table(rows: list[dict]) -> str:
    """Cost of the generation controls per decode step, against plain rows of the same run."""
    lines = [
        "| batch | plain ms/step | with logprobs ms/step | cost | with prefix ms/step | cost |",
        "|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(r: dict, key: str) -> tuple[str, str]:
        if key not in r:
            return "-", "-"
        return f"{r[key]:.2f}", f"{(r[key] / r['plain_ms'] - 1) * 100:+.1f}%"

    for r in rows:
        lp, lpc = cell(r, "logprobs_ms")
        px, pxc = cell(r, "prefix_ms")
        lines.append(f"| {r['batch']} | {r['plain_ms']:.2f} | {lp} | {lpc} | {px} | {pxc} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_args(p)
    p.add_argument("--baseline-batches", default="1,8,64", help="'' to skip the PyTorch baseline")
    p.add_argument(
        "--compiled-batches",
        default="",
        help="batches of the compiled PyTorch decode (glmserve.compiled_decode: static KV "
        "cache, torch.compile with CUDA graphs), e.g. 1,8,64,128,256; each compiles first",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        type=cuda_tuning.parse_variant,
        metavar="cuda_NAME=VALUE[,...]",
        help="also run batch 1 and the largest batch with these engine tuning options, e.g. "
        "cuda_pdl=false or cuda_gemv_max_tokens=2,cuda_gemv_mma_max_tokens=16 (A/B in the "
        "same run; the options are the --cuda-* flags)",
    )
    p.add_argument(
        "--variant-batches", default="", help="batches for --variant (default: first and last)"
    )
    p.add_argument(
        "--overlap-ab",
        action="store_true",
        help="after each batch, the same batch with overlap_steps=false (synchronous steps, "
        "the engine before overlapped scheduling): an A/B in the same run",
    )
    p.add_argument("--profile", action="store_true", help="kernel-time table over 20 decode steps")
    p.add_argument("--profile-batches", default="1,256")
    p.add_argument(
        "--int8",
        action="store_true",
        help="add INT8 weight-only rows (random fp16 weights quantized on the GPU), "
        "their ratio to fp16, logits error and memory (as glmserve.bench_int8)",
    )
    common.add_low_precision_args(p)
    p.add_argument(
        "--logprobs", type=int, default=None, help="rows with logprobs=N on every request"
    )
    p.add_argument(
        "--prefix", type=int, default=None, help="rows with an adapter prefix of P tokens"
    )
    p.add_argument("--controls-batches", default="1,64,256", help="batches of those rows")
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
    base_used = common.used_gpu_bytes(torch)
    bw = copy_bandwidth(torch)
    print(f"copy bandwidth: {bw / 1e12:.2f} TB/s", flush=True)
    batches = [int(x) for x in args.batches.split(",") if x]
    rows = []
    controls: list[dict] = []
    int8_rows: dict[str, list[dict]] = {}
    int8_md = ""

    def keep(r: dict, variant: str = "") -> None:
        """A row of the table (an A/B variant names what it changed); its line and profile."""
        tag = f" [{variant}]" if variant else ""
        if variant:
            r["variant"] = variant
        rows.append(r)
        print(
            f"batch {r['batch']}{tag}: {r['tokens_per_s']:,.0f} tok/s, {r['ms_per_step']:.2f} ms/step, "
            f"TTFT {r['ttft_ms']:.1f} ms, {r['gpu_mem_gib']:.1f} GiB",
            flush=True,
        )
        if "profile" in r:
            print(
                f"--- kernel profile, batch {r['batch']}{tag}, 20 decode steps ---\n{r['profile']}",
                flush=True,
            )

    with tempfile.TemporaryDirectory() as d:
        common.write_real_config(d)
        if args.int8:
            int8_rows, int8_md = common.run_int8(_engine, d, batches, args, torch, base_used)
        for b in batches:
            keep(common.run_engine(_engine, d, b, args, torch, base_used))
            if args.overlap_ab and not args.no_overlap:
                opts = {"overlap_steps": False}
                r = common.run_engine(_engine, d, b, args, torch, base_used, options=opts)
                keep(r, "overlap_steps=false")
        for tuning in args.variant:
            label = ",".join(f"{k}={v}" for k, v in tuning.items())
            for b in args.variant_batches or sorted({batches[0], batches[-1]}):
                r = common.run_engine(_engine, d, b, args, torch, base_used, tuning=tuning)
                keep(r, label)
        controls = run_controls(_engine, d, args, torch, base_used)
    bbs = [int(x) for x in args.baseline_batches.split(",") if x]
    base = run_baseline(bbs, args, torch) if bbs else {}
    cbs = [int(x) for x in args.compiled_batches.split(",") if x]
    compiled = run_compiled(cbs, args, torch) if cbs else {}
    wbytes = common.weight_bytes_per_step(REAL_CONFIG)
    bound = bw / wbytes
    b1 = next((r for r in rows if r["batch"] == 1 and "variant" not in r), None)
    info = {
        "bw": bw,
        "wbytes": wbytes,
        "bound": bound,
        "frac": (b1["decode_tokens_per_s"] / bound) if b1 else None,
        "bounds": {
            b: bounds.bound_tokens_per_s(b, wbytes, bw, s)
            for b, s in bounds.compute_seconds(
                torch, REAL_CONFIG, sorted({r["batch"] for r in rows})
            ).items()
        },
    }
    md = table(rows, base, info)
    when, header = common.report_header(dev, "glmserve.bench", argv)
    if int8_md:
        md += "\n\n" + int8_md
    if controls:
        md += "\n\n" + controls_table(controls)
    if compiled:
        md += "\n\n" + compiled_table(rows, compiled)
    print("\n" + header + md)
    if args.out:
        data = {"device": dev, "date": when, "rows": rows, "baseline": base, **info}
        if compiled:
            data["compiled"] = compiled
        if int8_rows:
            data["int8"] = int8_rows
        if controls:
            data["controls"] = controls
        for r in data["rows"]:
            r.pop("profile", None)
        Path(args.out).write_text(
            header + md + "\n\n```json\n" + json.dumps(data, indent=1) + "\n```\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
