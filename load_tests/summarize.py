"""Summarize a load-test run: summary.md and a PNG of throughput and latency over time.

Reads, in a results folder: Locust's ``locust_stats.csv``, ``locust_stats_history.csv``,
``locust_failures.csv`` and our ``locust_glm_metrics.json`` /
``locust_glm_timeseries.csv`` (written by load_tests/locustfile.py).

    python -m load_tests.summarize load_tests/results/<timestamp>
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _num(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "", "N/A") else None
    except ValueError:
        return None


def load(results: Path, prefix: str = "locust") -> dict[str, Any]:
    metrics_path = results / f"{prefix}_glm_metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path} is missing: did Locust run with --csv?")
    return {
        "metrics": json.loads(metrics_path.read_text()),
        "stats": _read_csv(results / f"{prefix}_stats.csv"),
        "history": _read_csv(results / f"{prefix}_stats_history.csv"),
        "failures": _read_csv(results / f"{prefix}_failures.csv"),
        "series": _read_csv(results / f"{prefix}_glm_timeseries.csv"),
    }


def render_markdown(data: dict[str, Any], title: str, params: dict[str, str]) -> str:
    m = data["metrics"]
    gen = [r for r in data["stats"] if r.get("Type") in ("gRPC", "OpenAI")]
    lines = [f"# {title}", ""]
    if params:
        lines += [", ".join(f"{k}={v}" for k, v in params.items()), ""]
    lines += [
        "| metric | value |",
        "|---|---|",
        f"| tokens/s (aggregate) | {_fmt(m['tokens_per_s'])} |",
        f"| tokens | {m['tokens']} in {_fmt(m['duration_s'])} s |",
        f"| TTFT p50 / p99 (ms) | {_fmt(m['ttft_ms']['p50'])} / {_fmt(m['ttft_ms']['p99'])} |",
        f"| ITL p50 / p99 (ms) | {_fmt(m['itl_ms']['p50'], 2)} / {_fmt(m['itl_ms']['p99'], 2)} |",
        f"| requests | {m['requests']} |",
        f"| failures | {m['failures']} |",
    ]
    for row in gen:
        lines.append(
            f"| {row['Name']}: latency p50 / p99 (ms), avg tokens | "
            f"{row['50%']} / {row['99%']}, {_fmt(_num(row['Average Content Size']))} |"
        )
    lines += _transport_rows(m)
    lines += [
        "",
        "Tokens are the sum of the responses' token_count (one streamed response may "
        "carry several tokens); "
        "tokens of requests cut off by the end of the run count too. TTFT and ITL "
        "percentiles are exact (from every sample), not Locust's rounded ones.",
    ]
    if data["failures"]:
        lines += ["", "## Failures", "", "| name | error | occurrences |", "|---|---|---|"]
        for f in data["failures"]:
            err = f.get("Error", "").replace("|", "\\|").replace("\n", " ")[:300]
            lines.append(f"| {f.get('Name', '')} | {err} | {f.get('Occurrences', '')} |")
    return "\n".join(lines) + "\n"


def _transport_rows(m: dict[str, Any]) -> list[str]:
    """A table per transport (gRPC to Triton, the OpenAI-compatible server) when the run
    had users of both, so that one run compares them under the same load."""
    parts = m.get("by_transport") or {}
    if len(parts) < 2:
        return []
    users = m.get("users_by_transport") or {}
    lines = [
        "",
        "| transport | users | tokens/s | tokens/s per user | TTFT p50 / p99 (ms) | "
        "ITL p50 / p99 (ms) | requests | failures |",
        "|---|---:|---:|---:|---|---|---:|---:|",
    ]
    for name, t in parts.items():
        n = users.get(name, 0)
        per_user = _fmt(t["tokens_per_s"] / n) if n else "n/a"
        lines.append(
            f"| {name} | {n or 'n/a'} | {_fmt(t['tokens_per_s'])} | {per_user} | "
            f"{_fmt(t['ttft_ms']['p50'])} / {_fmt(t['ttft_ms']['p99'])} | "
            f"{_fmt(t['itl_ms']['p50'], 2)} / {_fmt(t['itl_ms']['p99'], 2)} | "
            f"{t['requests']} | {t['failures']} |"
        )
    return lines


def plot(data: dict[str, Any], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = data["series"]
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    if series:
        t0 = float(series[0]["time"])
        t = [float(r["time"]) - t0 for r in series]
        axes[0].plot(t, [float(r["tokens"]) for r in series], label="tokens/s")
        users = [
            (float(r["Timestamp"]) - t0, float(r["User Count"]))
            for r in data["history"]
            if r.get("Name") == "Aggregated"
        ]
        if users:
            ax2 = axes[0].twinx()
            ax2.step([u[0] for u in users], [u[1] for u in users], "C7--", where="post")
            ax2.set_ylabel("users", color="C7")
        for ax, key, unit in ((axes[1], "ttft", "TTFT"), (axes[2], "itl", "ITL")):
            for q, style in (("p50", "C0-"), ("p99", "C3-")):
                pts = [(x, _num(r[f"{key}_{q}_ms"])) for x, r in zip(t, series, strict=False)]
                pts = [(x, y) for x, y in pts if y is not None]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{unit} {q}")
            ax.set_ylabel(f"{unit} (ms)")
            ax.legend(loc="upper right")
    axes[0].set_ylabel("tokens/s")
    axes[0].legend(loc="upper left")
    axes[2].set_xlabel("seconds since start")
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def summarize(results: Path, params: dict[str, str] | None = None, png: bool = True) -> str:
    data = load(results)
    title = f"Load test {results.name}"
    md = render_markdown(data, title, params or {})
    (results / "summary.md").write_text(md)
    if png:
        plot(data, results / "throughput_latency.png", title)
    return md


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("results", type=Path, help="the results folder of one run")
    p.add_argument("--param", action="append", default=[], help="KEY=VALUE shown in the summary")
    p.add_argument("--no-png", action="store_true", help="skip the plot")
    args = p.parse_args(argv)
    params = dict(kv.split("=", 1) for kv in args.param if "=" in kv)
    try:
        md = summarize(args.results, params, png=not args.no_png)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(md, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
