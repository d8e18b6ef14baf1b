"""Serving benchmark against a running server: concurrency sweep, in-flight vs static, soak.

Over gRPC (``--protocol grpc``, Triton's stream, the default) or HTTP (``--protocol
http``, ``/generate_stream`` with SSE), against the ``chatglm`` ensemble or, with
``--target chatglm_decoder``, the decoder alone (random-id prompts of the same lengths,
for a server without a tokenizer).

1. Concurrency sweep (closed loop): for each concurrency C (default 1, 8, 64, 256),
   C streams send seed-workload requests back to back (fixed prompt, 150 tokens with
   ignore_eos) for --duration seconds after --warmup. Tokens/s counts the tokens that
   arrived inside the measured window; TTFT/ITL come from the successful requests that
   started in it.
2. In-flight vs static batching (open loop): the same --requests mixed-set requests
   (prompts 16..1024 tokens, outputs 32..256) arrive as a Poisson process at --rate
   requests/s. In-flight mode keeps at most C requests in flight, each sent as soon as
   a slot is free. Static mode emulates batch-to-completion at the same C: it takes up
   to C requests that have arrived, sends them together, waits until all have finished,
   then forms the next batch. TTFT counts from the arrival time (waiting included).
   Throughput = tokens / (last answer - first arrival). With --rate auto the rate is
   1.5x the in-flight capacity measured by a short closed-loop probe, so both modes
   run saturated. With --compare-seconds S, requests arrive for S seconds instead, none
   is sent after that, and tokens/s counts those S seconds.
3. Soak (--soak S, off by default): a closed loop at --soak-concurrency for S seconds;
   every --sample seconds tokens/s, failures, the server's RSS (--pid) and GPU memory.

Writes sweep.md (tables), sweep.json (all numbers) and sweep_throughput.png into --out.
Clients run in --procs processes (threads inside each), so the client does not become
the bottleneck at 256 streams. Tokens: the sum of the responses' ``token_count`` output
(target chatglm; one streamed response may carry several tokens), or the returned
``output_ids`` (target chatglm_decoder).

    python -m load_tests.sweep --url 127.0.0.1:8001                       # the full run
    python -m load_tests.sweep --concurrency 1,2 --duration 3 --requests 8 # a quick check
    python -m load_tests.sweep --protocol http --url 127.0.0.1:8000 --target chatglm_decoder \\
        --ids-config models/chatglm-tiny/config.json --skip-compare
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from load_tests.report import load_direct, num, plot, render  # noqa: E402
from load_tests.runner import (  # noqa: E402
    Pool,
    batching_modes,
    closed_loop,
    soak_sampler,
)
from load_tests.stats import summarize  # noqa: E402
from load_tests.streaming import DEFAULT_PORTS, PROTOCOLS, server_problem  # noqa: E402
from load_tests.workload import (  # noqa: E402
    DECODER,
    TARGETS,
    IdsSpec,
    Request,
    mixed_requests,
    seed_requests,
)


def _ints(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text}"
        ) from None
    if not vals or min(vals) <= 0:
        raise argparse.ArgumentTypeError(f"need positive integers: {text}")
    return vals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m load_tests.sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--protocol", choices=PROTOCOLS, default="grpc", help="default grpc")
    p.add_argument("--url", help="host:port (default 127.0.0.1:8001 for grpc, :8000 for http)")
    p.add_argument("--out", type=Path, help="results folder (default load_tests/results/sweep-*)")
    p.add_argument("--concurrency", type=_ints, default=[1, 8, 64, 256])
    p.add_argument("--duration", type=float, default=60.0, help="measured seconds per level")
    p.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds per level")
    p.add_argument(
        "--workload",
        choices=["seed", "mixed"],
        default="seed",
        help="requests of the sweep and the soak (default seed)",
    )
    p.add_argument("--procs", type=int, default=min(8, os.cpu_count() or 1), help="client procs")
    p.add_argument("--compare-concurrency", type=int, default=64)
    p.add_argument("--requests", type=int, default=512, help="requests per compared mode")
    p.add_argument("--rate", default="auto", help="Poisson arrivals per second, or 'auto'")
    p.add_argument("--probe", type=float, default=20.0, help="seconds of the 'auto' rate probe")
    p.add_argument(
        "--compare-seconds",
        type=float,
        help="compare over arrivals during this many seconds (instead of --requests)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument("--skip-compare", action="store_true")
    p.add_argument("--soak", type=float, default=0.0, metavar="SECONDS", help="soak length")
    p.add_argument("--soak-concurrency", type=int, default=256)
    p.add_argument("--pid", type=int, default=0, help="soak: the server's pid, for its RSS")
    p.add_argument("--sample", type=float, default=10.0, help="soak: seconds between samples")
    p.add_argument("--pause", type=float, default=0.0, help="seconds between runs")
    p.add_argument(
        "--direct",
        type=Path,
        help="the engine's direct tokens/s by batch size, for the ratio column: the file of "
        "'python -m glmserve.bench --out FILE', or JSON {\"8\": tokens/s, ...}",
    )
    p.add_argument("--server", default="", help="what served (GPU, model, build), for the report")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per streamed response")
    p.add_argument(
        "--target",
        choices=TARGETS,
        default="chatglm",
        help="the text ensemble (default), or the decoder alone with random-id prompts of "
        "the same lengths (for a server without a tokenizer)",
    )
    p.add_argument(
        "--ids-config",
        type=Path,
        help="checkpoint config.json giving the special ids for --target chatglm_decoder "
        "(default: ChatGLM-6B's)",
    )
    return p


def sweep_level(
    pool: Pool, requests: list[Request], conc: int, duration: float, warmup: float
) -> dict[str, Any]:
    """One closed-loop level: ``warmup`` s, then ``duration`` s measured."""
    run = closed_loop(pool, requests, conc, warmup + duration)
    window = (run.t0 + warmup, run.t0 + warmup + duration)
    return {"concurrency": conc, **summarize(run.records, window), "client_cpu_s": run.cpu_s}


def auto_rate(pool: Pool, requests: list[Request], conc: int, seconds: float) -> float:
    """1.5x the requests/s a closed loop of ``conc`` streams completes in ``seconds``."""
    s = summarize(closed_loop(pool, requests, conc, seconds).records)
    return 1.5 * s["ok"] / s["makespan_s"] if s["ok"] and s["makespan_s"] > 0 else 1.0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    url = args.url or f"127.0.0.1:{DEFAULT_PORTS[args.protocol]}"
    problem = server_problem(args.protocol, url, args.target)
    if problem is not None:
        raise SystemExit(f"sweep: {problem}")
    out = args.out or Path("load_tests/results") / time.strftime(
        "sweep-%Y%m%dT%H%M%SZ", time.gmtime()
    )
    out.mkdir(parents=True, exist_ok=True)
    direct = load_direct(args.direct) if args.direct else {}
    need = max([*args.concurrency, args.compare_concurrency, args.soak_concurrency])
    ids = IdsSpec.from_config(args.ids_config) if args.target == DECODER else None
    steady = seed_requests(ids) if args.workload == "seed" else mixed_requests(200, args.seed, ids)
    pool = Pool(args.protocol, url, args.target, max(1, min(args.procs, need)), args.timeout)
    decoder = args.target == DECODER
    result: dict[str, Any] = {
        "server": args.server or url,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "procs": len(pool.workers),
        "protocol": args.protocol,
        "duration_s": args.duration,
        "direct": {str(k): v for k, v in direct.items()},
        "note": f"{args.protocol}; "
        + (
            "target chatglm_decoder (random-id prompts); tokens = output ids"
            if decoder
            else "target chatglm; tokens = sum of token_count"
        )
        + "; TTFT/ITL exact percentiles",
        "sweep": [],
        "compare": [],
    }
    try:
        if not args.skip_sweep:
            for conc in args.concurrency:
                row = sweep_level(pool, steady, conc, args.duration, args.warmup)
                result["sweep"].append(row)
                print(
                    f"sweep: concurrency {conc}: {row['tokens_per_s']:.1f} tokens/s, "
                    f"TTFT p50 {num(row['ttft_ms']['p50'])} ms, failures {row['failures']}",
                    flush=True,
                )
                time.sleep(args.pause)
        if not args.skip_compare:
            conc = args.compare_concurrency
            mixed = mixed_requests(args.requests, args.seed, ids)
            if args.rate == "auto":
                rate = auto_rate(pool, mixed, conc, args.probe)
            else:
                rate = float(args.rate)
            modes = batching_modes(
                pool, mixed, conc, rate, args.seed, args.compare_seconds, args.pause
            )
            for mode, (run, summary) in modes.items():
                row = {"mode": mode, "concurrency": conc, "rate": rate, **summary}
                row.update(offered=run.offered, client_cpu_s=run.cpu_s)
                result["compare"].append(row)
                print(
                    f"compare: {mode}: {row['tokens_per_s']:.1f} tokens/s, TTFT p99 "
                    f"{num(row['ttft_ms']['p99'])} ms, failures {row['failures']}",
                    flush=True,
                )
        if args.soak > 0:
            result["soak"] = soak(pool, steady, args)
    finally:
        pool.close()
    (out / "sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    md = render(result)
    (out / "sweep.md").write_text(md)
    plot(result, out / "sweep_throughput.png")
    print(md)
    print(f"sweep: results in {out} (sweep.md, sweep.json, sweep_throughput.png)")
    rows = [*result["sweep"], *result["compare"], *([result["soak"]] if args.soak > 0 else [])]
    return 1 if sum(r["failures"] for r in rows) else 0


def soak(pool: Pool, requests: list[Request], args: argparse.Namespace) -> dict[str, Any]:
    """The soak: a closed loop with samples of throughput and server memory."""

    def log(row: dict[str, Any]) -> None:
        print("soak", json.dumps(row), flush=True)

    conc, seconds = args.soak_concurrency, args.soak
    sampler = soak_sampler(pool, seconds, args.sample, args.pid, log)
    run = closed_loop(pool, requests, conc, seconds, during=sampler)
    summary = summarize(run.records, (run.t0 + args.warmup, run.t0 + seconds), t0=run.t0)
    return {"concurrency": conc, "duration_s": seconds, **summary, "samples": run.samples}


if __name__ == "__main__":
    sys.exit(main())
