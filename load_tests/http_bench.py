"""The serving benchmark over HTTP in its earlier command line and output files.

Kept for scripts/gpu_serving.sh and scripts/gpu_multi.sh, which run it by path, and for
the tables in docs/serving_gpu.md and docs/benchmarks.md. It is the sweep tool
(``python -m load_tests.sweep --protocol http``, same measurements, same client
processes) with these defaults and files: target ``chatglm_decoder`` (ids in,
tokens = ids received) or, with ``--model chatglm``, the ensemble.

Modes:

* ``sweep``: closed loop at each concurrency C for D seconds on the seed workload (16 ids +
  [gMASK] <sop>, exactly 150 new tokens, ignore_eos): tokens/s (steady: seconds
  ceil(warmup) to D; whole run), TTFT p50/p99, ITL p50/p99, requests, failures.
* ``inflight-vs-static``: the same Poisson arrivals during D seconds (prompts of 16..1024
  ids and outputs of 32..256, uniform; the mixed set for ``--model chatglm``) served
  twice with the same cap of C requests in flight: in-flight and static (client-side
  batch to completion); tokens/s over the D seconds; requests that arrived but were
  never sent are "not started".
* ``soak``: closed loop at C for D seconds; every ``--sample`` seconds: tokens/s, server RSS
  (``/proc/<pid>/status``), GPU memory used (nvidia-smi), failures.

Writes ``<out>/<name>.json`` and ``<out>/<name>.md`` (name: ``--name`` or the mode) and a
PNG when matplotlib imports.

    python3 load_tests/http_bench.py sweep --url 127.0.0.1:8000 --conc 1 8 64 256 -d 30 \\
        --config models/chatglm-tiny/config.json --out build/http_bench
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from load_tests.report import fmt_row, legacy_row, write_legacy  # noqa: E402
from load_tests.runner import Pool, batching_modes, closed_loop, soak_sampler  # noqa: E402
from load_tests.stats import summarize  # noqa: E402
from load_tests.streaming import wait_ready  # noqa: E402
from load_tests.workload import (  # noqa: E402
    DECODER,
    IdsSpec,
    Request,
    mixed_requests,
    poisson_arrivals,
    seed_requests,
    uniform_requests,
)


def auto_procs(conc: int) -> int:
    """One client process per 32 streams, at most half the CPUs."""
    return max(1, min(math.ceil(conc / 32), max(1, (os.cpu_count() or 2) // 2)))


def workload(args: argparse.Namespace, kind: str, n: int) -> list[Request]:
    """``n`` requests of workload ``kind`` (seed or mixed) for ``--model``."""
    ids = args.ids if args.model == DECODER else None
    if kind == "seed":
        return seed_requests(ids)
    if ids is not None:
        return uniform_requests(n, args.seed, ids)
    return mixed_requests(min(n, 200), args.seed)  # cycled when more arrive


def closed(args: argparse.Namespace, conc: int, soak: bool = False) -> dict[str, Any]:
    """A closed loop of ``-d`` seconds; tokens/s over whole seconds ceil(warmup) .. d."""
    pool = Pool("http", args.url, args.model, args.procs or auto_procs(conc), args.timeout)
    try:
        sampler = None
        if soak:

            def log(row: dict[str, Any]) -> None:
                print("soak", json.dumps(row), flush=True)

            sampler = soak_sampler(pool, args.duration, args.sample, args.pid, log)
        run = closed_loop(
            pool, workload(args, args.workload, 1000), conc, args.duration, during=sampler
        )
    finally:
        pool.close()
    a = math.ceil(args.warmup)
    window = (run.t0 + a, run.t0 + max(int(args.duration), a + 1))
    row = legacy_row(summarize(run.records, window, t0=run.t0))
    row.update(concurrency=conc, duration_s=args.duration, client_procs=len(run.cpu_s))
    row["client_cpu_s"] = run.cpu_s
    row["client_cpu_max_frac"] = round(max(run.cpu_s, default=0.0) / (args.duration + 1e-9), 3)
    if soak:
        row["samples"] = run.samples
    return row


def cmd_sweep(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for c in args.conc:
        rows.append(closed(args, c))
        print(fmt_row(rows[-1]), flush=True)
        time.sleep(args.pause)
    return {"mode": "sweep", "workload": args.workload, "model": args.model, "rows": rows}


def cmd_ivs(args: argparse.Namespace) -> dict[str, Any]:
    conc = args.conc[0]
    offered = len(poisson_arrivals(None, args.rate, 0.0, args.seed, until=args.duration))
    procs = min(args.procs or auto_procs(conc), conc)
    pool = Pool("http", args.url, args.model, procs, args.timeout)
    try:
        reqs = workload(args, "mixed", offered)
        modes = batching_modes(pool, reqs, conc, args.rate, args.seed, args.duration, args.pause)
    finally:
        pool.close()
    out: dict[str, Any] = {
        "mode": "inflight-vs-static",
        "model": args.model,
        "concurrency": conc,
        "rate_per_s": args.rate,
        "duration_s": args.duration,
        "jobs_offered": modes["inflight"][0].offered,
    }
    for mode, (run, summary) in modes.items():
        s = legacy_row(summary)
        s["not_started"] = run.offered - len(run.records)
        s["client_cpu_s"] = run.cpu_s
        out[mode] = s
        print(mode, fmt_row(s), f"| not started {s['not_started']}", flush=True)
    st, inf = out["static"], out["inflight"]
    out["throughput_ratio"] = (
        inf["tokens_per_s"] / st["tokens_per_s"] if st["tokens_per_s"] else None
    )
    if inf["ttft_ms_p99"] is not None and st["ttft_ms_p99"]:
        out["ttft_p99_ratio_static_over_inflight"] = st["ttft_ms_p99"] / inf["ttft_ms_p99"]
    return out


def cmd_soak(args: argparse.Namespace) -> dict[str, Any]:
    row = closed(args, args.conc[0], soak=True)
    samples = row.pop("samples")
    return {
        "mode": "soak",
        "workload": args.workload,
        "model": args.model,
        "summary": row,
        "samples": samples,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("mode", choices=["sweep", "inflight-vs-static", "soak"])
    p.add_argument("--url", default="127.0.0.1:8000", help="Triton HTTP host:port")
    p.add_argument("--model", default=DECODER, help="chatglm_decoder (ids) or chatglm (text)")
    p.add_argument(
        "--config", default="", help="config.json of the served checkpoint (special ids)"
    )
    p.add_argument("--conc", type=int, nargs="+", default=[8], help="concurrency (sweep: several)")
    p.add_argument("-d", "--duration", type=float, default=30.0, help="seconds per run")
    p.add_argument(
        "--warmup", type=float, default=3.0, help="seconds left out of the steady tokens/s"
    )
    p.add_argument(
        "--workload", choices=["seed", "mixed"], default="seed", help="sweep/soak prompts"
    )
    p.add_argument(
        "--rate", type=float, default=20.0, help="inflight-vs-static: arrivals per second"
    )
    p.add_argument("--procs", type=int, default=0, help="client processes (0: one per 32 streams)")
    p.add_argument("--pid", type=int, default=0, help="soak: tritonserver pid for RSS")
    p.add_argument("--sample", type=float, default=10.0, help="soak: seconds between samples")
    p.add_argument("--pause", type=float, default=0.0, help="seconds between runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="socket timeout per request")
    p.add_argument("--out", default="build/http_bench", help="results folder")
    p.add_argument("--name", default="", help="file stem (default: the mode)")
    args = p.parse_args(argv)
    args.ids = IdsSpec.from_config(args.config)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if wait_ready("http", args.url, args.model, 10) is not None:
        print(f"http_bench: {args.model} at {args.url} is not ready")
        return 1
    fn = {"sweep": cmd_sweep, "inflight-vs-static": cmd_ivs, "soak": cmd_soak}[args.mode]
    result = fn(args)
    write_legacy(result, Path(args.out), args.name or args.mode.replace("-", "_"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
