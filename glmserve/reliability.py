"""Summaries of the soak and reload runs (``scripts/gpu.sh soak`` and ``reload``).

    python -m glmserve.reliability soak-summary OUT
    python -m glmserve.reliability reload-check RELOAD_CSV [--rss-bound-mb 64] [--gpu-bound-mb 256]

``soak-summary`` reads ``OUT/samples.csv`` (the server sampled every few seconds: host RSS,
threads, GPU memory, generated tokens, ...) and Locust's ``locust_stats.csv`` (in OUT or
OUT/load), prints one line (requests, failures, RSS / threads / GPU memory after the first
minute and at the end, tokens/s per minute) and writes it to ``OUT/soak_summary.txt``.

``reload-check`` reads the per-cycle series of the reload loop and exits 1 when the host
RSS or the GPU memory grew by more than the bounds between cycle 2 and the end.
"""

from __future__ import annotations

import argparse
import csv
from itertools import pairwise
from pathlib import Path


def locust_totals(out: Path) -> tuple[int, int]:
    """(requests, failures) of Locust's Aggregated row; (0, 0) when there is no stats file."""
    for stats in (out / "locust_stats.csv", out / "load" / "locust_stats.csv"):
        if stats.exists():
            with stats.open(newline="") as f:
                for r in csv.DictReader(f):
                    if r["Name"] == "Aggregated":
                        return int(r["Request Count"]), int(r["Failure Count"])
            break
    return 0, 0


def tokens_per_minute(rows: list[dict[str, str]]) -> list[float]:
    """Tokens/s over each minute of the samples (the last, partial minute included)."""
    per_min = [
        b for a, b in pairwise(rows) if int(b["t_s"]) // 60 > int(a["t_s"]) // 60 or b is rows[-1]
    ]
    tps = []
    prev = rows[0]
    for r in per_min:
        dt = int(r["t_s"]) - int(prev["t_s"])
        if dt > 0:
            tps.append((int(r["tokens_total"]) - int(prev["tokens_total"])) / dt)
        prev = r
    return tps


def soak_summary(rows: list[dict[str, str]], requests: int, failures: int) -> str:
    """The summary line of a soak from its samples and Locust's totals."""
    if not rows:  # the server died before the first sample
        return f"requests {requests}, failures {failures}; no samples"
    warm = [r for r in rows if int(r["t_s"]) >= 60] or rows
    first, last = warm[0], warm[-1]
    parts = [
        f"requests {requests}, failures {failures}",
        f"RSS {int(first['rss_kb']) // 1024} -> {int(last['rss_kb']) // 1024} MiB",
        f"threads {first['threads']} -> {last['threads']}",
    ]
    if first["gpu_mib"]:
        parts.append(f"GPU memory {first['gpu_mib']} -> {last['gpu_mib']} MiB")
    parts.append("tokens/s per minute " + ", ".join(f"{x:.0f}" for x in tokens_per_minute(rows)))
    return "; ".join(parts)


def reload_growth(
    rows: list[dict[str, str]], rss_bound_mb: int, gpu_bound_mb: int
) -> tuple[bool, str]:
    """Whether RSS and GPU memory stayed within the bounds from cycle 2 on, and a message."""
    tail = rows[2:] if len(rows) > 4 else rows
    rss = [int(r["rss_kb"]) for r in tail]
    msg = [f"reload: {len(rows) - 1} cycles, RSS {rss[0] // 1024} -> max {max(rss) // 1024} MiB"]
    ok = max(rss) - rss[0] <= rss_bound_mb * 1024
    if tail[0]["gpu_mib"]:
        gpu = [int(r["gpu_mib"]) for r in tail]
        msg.append(f"GPU memory {gpu[0]} -> max {max(gpu)} MiB")
        ok = ok and max(gpu) - gpu[0] <= gpu_bound_mb
    return ok, ", ".join(msg) + ("" if ok else "  GROWTH BEYOND BOUND")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("soak-summary", help="summary line of a soak (writes OUT/soak_summary.txt)")
    s.add_argument("out", type=Path, help="the soak's folder (samples.csv, locust_stats.csv)")
    r = sub.add_parser("reload-check", help="RSS / GPU memory growth over the reload cycles")
    r.add_argument("csv", type=Path, help="reload.csv: cycle,rss_kb,threads,gpu_mib")
    r.add_argument("--rss-bound-mb", type=int, default=64)
    r.add_argument("--gpu-bound-mb", type=int, default=256)
    args = p.parse_args(argv)

    if args.cmd == "soak-summary":
        line = soak_summary(_rows(args.out / "samples.csv"), *locust_totals(args.out))
        print(f"soak: {line}")
        (args.out / "soak_summary.txt").write_text(line + "\n")
        return 0
    ok, msg = reload_growth(_rows(args.csv), args.rss_bound_mb, args.gpu_bound_mb)
    print(msg)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
