"""Reports of the serving benchmark, in the two formats the docs cite.

- The sweep's (``python -m load_tests.sweep``): ``sweep.md`` (tables), ``sweep.json``
  (every number) and ``sweep_throughput.png``.
- The HTTP bench's (``load_tests/http_bench.py``, kept for scripts/gpu_serving.sh and
  scripts/gpu_multi.sh): ``<name>.md`` and ``<name>.json`` per mode, with flat keys
  (``ttft_ms_p50``, ...), plus ``sweep.png`` / ``inflight_vs_static.png`` / ``soak.png``.

Both render rows made by ``load_tests.stats.summarize``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def num(v: float | None, d: int = 1, none: str = "n/a", sep: str = "") -> str:
    """A number with ``d`` decimals (``sep``: thousands separator), ``none`` for None."""
    return none if v is None else f"{v:{sep}.{d}f}"


def load_direct(path: Path) -> dict[str, float]:
    """Engine-direct tokens/s by batch size, from ``{"8": tps, ...}``, from JSON with
    ``rows`` of ``{"batch", "tokens_per_s"}``, or from ``glmserve.bench --out``'s file
    (markdown holding such JSON in a ```json block)."""
    text = path.read_text()
    if "```json" in text:
        text = text.split("```json", 1)[1].split("```", 1)[0]
    data = json.loads(text)
    if isinstance(data, dict) and isinstance(data.get("rows"), list):
        return {str(r["batch"]): float(r["tokens_per_s"]) for r in data["rows"]}
    if isinstance(data, dict):
        return {str(k): float(v) for k, v in data.items()}
    raise ValueError(f"{path}: expected a JSON object")


# ------------------------------------------------------------------ the sweep's format


def _latency_cells(row: dict[str, Any]) -> str:
    return (
        f"| {num(row['ttft_ms']['p50'])} / {num(row['ttft_ms']['p99'])} "
        f"| {num(row['itl_ms']['p50'], 2)} / {num(row['itl_ms']['p99'], 2)} "
    )


def render(result: dict[str, Any]) -> str:
    """sweep.md: the concurrency sweep, the in-flight vs static comparison, the soak."""
    lines = [f"# Serving benchmark ({result['server']})", ""]
    lines += [f"{result['when']}; client: {result['procs']} processes; {result['note']}", ""]
    direct = result.get("direct") or {}
    if result.get("sweep"):
        lines += [
            f"## Concurrency sweep (seed workload, {result['duration_s']:g} s per level)",
            "",
            "| concurrency | tokens/s | direct tokens/s | Triton/direct | requests/s "
            "| TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) | failures |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in result["sweep"]:
            d = direct.get(str(row["concurrency"]))
            ratio = f"{100 * row['tokens_per_s'] / d:.0f}%" if d else "n/a"
            lines.append(
                f"| {row['concurrency']} | {num(row['tokens_per_s'])} | {num(d)} | {ratio} "
                f"| {num(row['requests_per_s'], 2)} {_latency_cells(row)}| {row['failures']} |"
            )
        lines.append("")
    if result.get("compare"):
        cmp = result["compare"]
        lines += [
            f"## In-flight vs static batching (Poisson arrivals at {num(cmp[0]['rate'], 2)} "
            f"req/s, mixed set, concurrency {cmp[0]['concurrency']})",
            "",
            "| mode | requests | tokens/s | makespan (s) | TTFT p50 / p99 (ms) "
            "| ITL p50 / p99 (ms) | failures |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in cmp:
            lines.append(
                f"| {row['mode']} | {row['requests']} | {num(row['tokens_per_s'])} "
                f"| {num(row['makespan_s'])} {_latency_cells(row)}| {row['failures']} |"
            )
        by = {r["mode"]: r for r in cmp}
        if "inflight" in by and "static" in by and by["static"]["tokens_per_s"] > 0:
            speed = by["inflight"]["tokens_per_s"] / by["static"]["tokens_per_s"]
            lines += ["", f"In-flight / static throughput: {speed:.2f}x."]
        lines.append("")
    soak = result.get("soak")
    if soak:
        lines += [
            f"## Soak ({soak['concurrency']} streams, seed workload, {soak['duration_s']:g} s)",
            "",
            *soak_table(soak["samples"]),
            "",
            f"{soak['tokens']} tokens, {num(soak['tokens_per_s'])} tokens/s over the run; "
            f"{soak['requests']} requests, {soak['failures']} failures.",
            "",
        ]
    rows = [*result["sweep"], *result["compare"], *([soak] if soak else [])]
    errors = sorted({e for r in rows for e in r["errors"]})
    if errors:
        lines += ["## Errors seen", "", *[f"- {e}" for e in errors], ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """sweep_throughput.png: tokens/s against concurrency; the two batching modes; the soak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [k for k in ("sweep", "compare", "soak") if result.get(k)]
    n = max(len(parts), 1)
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4.5), squeeze=False)
    for ax, part in zip(axes[0], parts, strict=False):
        if part == "sweep":
            xs = [r["concurrency"] for r in result["sweep"]]
            ax.plot(xs, [r["tokens_per_s"] for r in result["sweep"]], "o-", label="through Triton")
            direct = result.get("direct") or {}
            dx = [x for x in xs if str(x) in direct]
            if dx:
                ax.plot(dx, [direct[str(x)] for x in dx], "s--", label="engine direct (make bench)")
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.set_xlabel("concurrency")
            ax.set_ylabel("tokens/s")
            ax.set_title("Throughput vs concurrency (seed workload)")
            ax.grid(True, alpha=0.3)
            ax.legend()
        elif part == "compare":
            cmp = result["compare"]
            ax.bar([r["mode"] for r in cmp], [r["tokens_per_s"] for r in cmp], color=["C0", "C1"])
            ax.set_ylabel("tokens/s")
            ax.set_title(f"In-flight vs static (C={cmp[0]['concurrency']}, Poisson, mixed)")
        else:
            samples = result["soak"]["samples"]
            ax.plot([s["t_s"] for s in samples], [s["tokens_per_s"] for s in samples])
            ax.set(xlabel="s", ylabel="tokens/s", title="Soak")
    fig.suptitle(result["server"])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------ the HTTP bench's format


def legacy_row(summary: dict[str, Any]) -> dict[str, Any]:
    """A ``summarize`` result with the HTTP bench's flat keys (``requests``: the
    successful ones; TTFT from the due time, and from sending as ``ttft_sent_ms_*``)."""
    row = {
        "requests": summary["ok"],
        "failures": summary["failures"],
        "errors": summary["errors"],
        "tokens": summary["tokens"],
        "tokens_per_s": summary["tokens_per_s"],
        "tokens_per_s_whole": summary["tokens_per_s_whole"],
    }
    for key in ("ttft_ms", "ttft_sent_ms", "itl_ms"):
        for q in ("p50", "p99"):
            row[f"{key}_{q}"] = summary[key][q]
    return row


def _g(x: float | None, nd: int = 1) -> str:
    return num(x, nd, none="-", sep=",")


def fmt_row(s: dict[str, Any]) -> str:
    """One line per run, as the GPU scripts grep it (``C=...``)."""
    return (
        f"C={s.get('concurrency', '')} tok/s {_g(s['tokens_per_s'], 0)} "
        f"(whole {_g(s['tokens_per_s_whole'], 0)}) "
        f"TTFT p50/p99 {_g(s['ttft_ms_p50'])}/{_g(s['ttft_ms_p99'])} ms "
        f"ITL p50/p99 {_g(s['itl_ms_p50'], 2)}/{_g(s['itl_ms_p99'], 2)} ms "
        f"req {s['requests']} fail {s['failures']}"
    )


def soak_table(samples: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| t (s) | tokens/s | failures | server RSS MiB | GPU MiB |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in samples:
        gpu = r["gpu_mib"] if r["gpu_mib"] is not None else "-"
        lines.append(
            f"| {r['t_s']} | {_g(r['tokens_per_s'], 0)} | {r['failures']} "
            f"| {_g(r['rss_mib'])} | {gpu} |"
        )
    return lines


def markdown(result: dict[str, Any]) -> str:
    """``<name>.md`` of one HTTP bench mode."""
    lines: list[str] = []
    if result["mode"] == "sweep":
        lines += [
            "| concurrency | tokens/s (steady) | tokens/s (whole run) | TTFT p50 ms | TTFT p99 ms"
            " | ITL p50 ms | ITL p99 ms | requests | failures |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in result["rows"]:
            lines.append(
                f"| {s['concurrency']} | {_g(s['tokens_per_s'], 0)} "
                f"| {_g(s['tokens_per_s_whole'], 0)} | {_g(s['ttft_ms_p50'])} "
                f"| {_g(s['ttft_ms_p99'])} | {_g(s['itl_ms_p50'], 2)} "
                f"| {_g(s['itl_ms_p99'], 2)} | {s['requests']} | {s['failures']} |"
            )
    elif result["mode"] == "inflight-vs-static":
        lines += [
            "| mode | tokens/s | TTFT p50 ms (from arrival) | TTFT p99 ms (from arrival)"
            " | TTFT p99 ms (from send) | ITL p99 ms | requests | failures | arrived, not started |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for m in ("inflight", "static"):
            s = result[m]
            lines.append(
                f"| {m} | {_g(s['tokens_per_s'], 0)} | {_g(s['ttft_ms_p50'])} "
                f"| {_g(s['ttft_ms_p99'])} | {_g(s['ttft_sent_ms_p99'])} "
                f"| {_g(s['itl_ms_p99'], 2)} | {s['requests']} | {s['failures']} "
                f"| {s['not_started']} |"
            )
        lines.append("")
        lines.append(
            f"throughput ratio in-flight / static: {_g(result.get('throughput_ratio'), 2)}"
        )
    else:
        lines += soak_table(result["samples"])
        lines += ["", fmt_row(result["summary"])]
    return "\n".join(lines) + "\n"


def plots(result: dict[str, Any], out: Path) -> list[str]:
    """The HTTP bench's PNG when matplotlib imports; the names written (none otherwise)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    if result["mode"] == "sweep":
        rows = result["rows"]
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
        c = [r["concurrency"] for r in rows]
        ax[0].plot(c, [r["tokens_per_s"] for r in rows], "o-")
        ax[0].set(xscale="log", xlabel="concurrency", ylabel="tokens/s", title="throughput")
        ax[1].plot(c, [r["ttft_ms_p99"] or 0 for r in rows], "o-", label="TTFT p99")
        ax[1].plot(c, [r["itl_ms_p99"] or 0 for r in rows], "s-", label="ITL p99")
        ax[1].set(xscale="log", yscale="log", xlabel="concurrency", ylabel="ms", title="latency")
        ax[1].legend()
        name = "sweep.png"
    elif result["mode"] == "soak":
        sm = result["samples"]
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
        t = [r["t_s"] for r in sm]
        ax[0].plot(t, [r["tokens_per_s"] for r in sm])
        ax[0].set(xlabel="s", ylabel="tokens/s", title="throughput")
        ax[1].plot(t, [r["rss_mib"] or 0 for r in sm], label="server RSS MiB")
        ax[1].plot(t, [r["gpu_mib"] or 0 for r in sm], label="GPU MiB")
        ax[1].set(xlabel="s", title="memory")
        ax[1].legend()
        name = "soak.png"
    else:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ms = ["inflight", "static"]
        ax.bar(ms, [result[m]["tokens_per_s"] for m in ms])
        ax.set(ylabel="tokens/s", title="in-flight vs static")
        name = "inflight_vs_static.png"
    fig.tight_layout()
    fig.savefig(out / name, dpi=80)
    plt.close(fig)
    return [name]


def write_legacy(result: dict[str, Any], out: Path, name: str) -> None:
    """``<out>/<name>.json`` and ``.md`` (printed too) and the PNG of one HTTP bench mode."""
    out.mkdir(parents=True, exist_ok=True)
    result["pngs"] = plots(result, out)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    md = markdown(result)
    (out / f"{name}.md").write_text(md)
    print(md, flush=True)
    if not result["pngs"]:
        print("(matplotlib not importable: no PNG)", flush=True)
