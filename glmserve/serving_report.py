"""The summary table of the serving benchmark (``scripts/gpu.sh serving``).

    python -m glmserve.serving_report RESULTS_DIR

RESULTS_DIR is ``load_tests/http_bench.py``'s ``--out`` folder: one ``sweep_c<N>.json`` per
concurrency and ``inflight_vs_static.json``. Prints a Markdown table of the sweep (tokens/s
over the steady window and the whole run, TTFT and inter-token latency p50/p99, requests,
failures, the client's busiest CPU) and the in-flight vs static batching comparison.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HEADER = (
    "| concurrency | tokens/s | whole-run tok/s | TTFT p50/p99 ms | ITL p50/p99 ms | req | fail "
    "| client cpu max |"
)


def sweep_row(s: dict) -> str:
    """One table row of a sweep point (a row of http_bench's JSON)."""
    return (
        f"| {s['concurrency']} | {s['tokens_per_s']:.0f} | {s['tokens_per_s_whole']:.0f} | "
        f"{s['ttft_ms_p50']:.1f}/{s['ttft_ms_p99']:.1f} | "
        f"{s['itl_ms_p50']:.2f}/{s['itl_ms_p99']:.2f} | "
        f"{s['requests']} | {s['failures']} | {s['client_cpu_max_frac']} |"
    )


def summary(results: Path) -> list[str]:
    """The table lines, sweep points in concurrency order, then in-flight vs static."""
    lines = [HEADER]
    sweeps = sorted(results.glob("sweep_c*.json"), key=lambda p: int(p.stem[len("sweep_c") :]))
    for f in sweeps:
        lines.append(sweep_row(json.loads(f.read_text())["rows"][0]))
    f = results / "inflight_vs_static.json"
    if f.exists():
        r = json.loads(f.read_text())
        for mode in ("inflight", "static"):
            s = r[mode]
            lines.append(
                f"{mode}: {s['tokens_per_s']:.0f} tok/s, TTFT p99 {s['ttft_ms_p99']} ms, "
                f"fail {s['failures']}"
            )
        lines.append(f"ratio {r['throughput_ratio']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, help="http_bench.py's --out folder")
    args = p.parse_args(argv)
    print("\n".join(summary(args.results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
