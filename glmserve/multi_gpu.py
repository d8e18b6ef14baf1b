"""The report of the multi-GPU serving run (``scripts/gpu.sh multi``).

    python -m glmserve.multi_gpu WORK OUT --device cuda --conc "64 256 512" --dur 25

WORK holds the run's ``cards.csv`` (nvidia-smi: index, name, memory, driver) and one
``phase_<tag>/`` folder per GPU configuration that the task served: ``gpus`` (the GPU ids),
``skipped`` (why the phase did not run, if it did not), ``instances.txt`` (the server's
instance log lines), ``ready_s``, ``smi_load.csv`` / ``smi_after.csv`` (GPU memory after the
load and after the sweep), ``metrics.txt`` (the metrics port at the end), ``server_rc`` and
``b/c<N>.json`` (``load_tests/http_bench.py sweep`` at concurrency N). Writes to OUT
``multi_gpu.md`` (instances, throughput with the scaling over the first configuration,
per-instance work, errors), ``phases.json`` and one ``sweep_gpus<tag>.json`` per phase, and
prints the report.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

INSTANCE_RE = re.compile(r"instance (\S+): checkpoint .*?, device ([^,]+)")


def metric_rows(text: str) -> dict[str, dict[str, float]]:
    """{instance: {metric: value}} of the glm_* metrics (requests_total split by outcome)."""
    per: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        m = re.match(r"^(glm_\w+)\{([^}]*)\}\s+(\S+)", line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        inst = labels.get("instance", "?")
        if "device" in labels:  # the instances of one group on different GPUs share a name
            inst += " on " + labels["device"]
        name = m.group(1)
        if name == "glm_requests_total":
            name = f"requests_{labels.get('outcome', '?')}"
        per.setdefault(inst, {})[name] = float(m.group(3))
    return per


def _read(p: Path, default: str = "") -> str:
    return p.read_text().strip() if p.exists() else default


def phase_order(p: Path) -> tuple[bool, int, str]:
    """The CPU phase first, then by the number of GPUs (shorter tags first)."""
    return (p.name != "phase_cpu", len(p.name), p.name)


def read_phase(p: Path, device: str, conc: list[int]) -> dict[str, Any]:
    """One phase folder as a dict (what phases.json holds)."""
    ph: dict[str, Any] = {
        "gpus": _read(p / "gpus"),
        "tag": p.name[len("phase_") :],
        "skipped": _read(p / "skipped") or None,
    }
    inst = _read(p / "instances.txt").splitlines()
    ph["instance_log"] = inst
    # one instance per (name, device): Triton names the instances of a group alike on every GPU
    found = [m for line in inst if (m := INSTANCE_RE.search(line))]
    ph["instances"] = sorted({m.group(1) + "@" + m.group(2) for m in found})
    ph["instance_devices"] = sorted({f"{m.group(1)} -> {m.group(2)}" for m in found})
    ph["ready_s"] = _read(p / "ready_s") or None
    ph["smi_load"] = _read(p / "smi_load.csv").splitlines()
    ph["smi_after"] = _read(p / "smi_after.csv").splitlines()
    ph["metrics"] = metric_rows(_read(p / "metrics.txt"))
    ph["server_rc"] = _read(p / "server_rc") or None
    rows: list[dict[str, Any]] = []
    for c in conc:
        f = p / "b" / f"c{c}.json"
        if f.exists():
            rows.extend(json.loads(f.read_text())["rows"])
    ph["rows"] = rows
    n_expected = 1 if device != "cuda" else len([g for g in ph["gpus"].split(",") if g])
    ph["expected_instances"] = n_expected
    ph["instances_ok"] = (not ph["skipped"]) and len(ph["instances"]) == n_expected
    return ph


def _num(x: float | None, nd: int = 1) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def _smi(lines: list[str]) -> str:
    """index:used MiB of nvidia-smi's CSV lines."""
    return ", ".join(f"{a.split(',')[0].strip()}:{a.split(',')[1].strip()}" for a in lines) or "-"


def render(phases: list[dict[str, Any]], cards: list[str], device: str, dur: str, when: str) -> str:
    """multi_gpu.md."""
    lines = [
        "# Multi-GPU serving: one chatglm_decoder instance per GPU",
        "",
        f"Run {when}, device {device}; cards (index, name, memory, driver): "
        + ("; ".join(cards) if cards else "none"),
        "",
        "Server: `scripts/serve.sh` as `make serve DEVICE=cuda GPUS=<ids> MODEL=<config-only "
        "ChatGLM-6B> TRITON_ARGS=--backend-config=chatglm,random_weights=true` (chatglm_decoder "
        "alone, random fp16 weights, `configs/gpu.pbtxt`: `instance_group [ { count: 1 kind: "
        "KIND_GPU } ]`, max_batch_size 256 and max_running_seqs 256 per instance, KV cache 0.9 of "
        "free memory per GPU).",
        "Client: `load_tests/http_bench.py sweep`, seed workload (16 ids + [gMASK] <sop>, exactly "
        "150 new tokens, ignore_eos), HTTP generate_stream, closed loop, "
        f"{dur} s per concurrency; tokens/s over the steady window (the first 3 s left out).",
        "",
        "## Instances",
        "",
        "| GPUS | instances (expected) | instance -> device | ready after (s) | GPU memory used "
        "after load, MiB (index:used) | after the sweep | server exit |",
        "|---|---|---|---:|---|---|---:|",
    ]
    for ph in phases:
        if ph["skipped"]:
            lines.append(f"| {ph['gpus'] or '-'} | {ph['skipped']} | | | | | |")
            continue
        ok = "ok" if ph["instances_ok"] else "MISMATCH"
        lines.append(
            f"| {ph['gpus']} | {len(ph['instances'])} ({ph['expected_instances']}, {ok}) | "
            f"{'; '.join(ph['instance_devices']) or '-'} | {ph['ready_s'] or '-'} | "
            f"{_smi(ph['smi_load'])} | {_smi(ph['smi_after'])} | {ph['server_rc'] or '-'} |"
        )
    run = [ph for ph in phases if ph["rows"]]
    first = run[0] if run else None
    lines += [
        "",
        "## Throughput",
        "",
        "| GPUs | concurrency | tokens/s | TTFT p50 ms | TTFT p99 ms | ITL p50/p99 ms | requests "
        "| failures | client CPU max | scaling vs GPUS=" + (first["gpus"] if first else "-") + " |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {r["concurrency"]: r["tokens_per_s"] for r in first["rows"]} if first else {}
    for ph in run:
        for r in ph["rows"]:
            b = base.get(r["concurrency"])
            if ph is first:
                ratio = "1.00x"
            else:
                ratio = f"{r['tokens_per_s'] / b:.2f}x" if b else "-"
            lines.append(
                f"| {ph['gpus'] if device == 'cuda' else 'cpu'} | {r['concurrency']} | "
                f"{_num(r['tokens_per_s'], 0)} | {_num(r['ttft_ms_p50'])} | "
                f"{_num(r['ttft_ms_p99'])} | {_num(r['itl_ms_p50'], 2)}/{_num(r['itl_ms_p99'], 2)} | "
                f"{r['requests']} | {r['failures']} | {r.get('client_cpu_max_frac', '-')} | {ratio} |"
            )
    if len(run) >= 2:
        last = run[-1]
        scaling = ", ".join(
            f"C={r['concurrency']}: {r['tokens_per_s'] / base[r['concurrency']]:.2f}x"
            for r in last["rows"]
            if base.get(r["concurrency"])
        )
        lines += [
            "",
            f"Scaling (tokens/s of GPUS={last['gpus']} over GPUS={run[0]['gpus']}): {scaling}",
        ]
    lines += [
        "",
        "## Per-instance work (metrics port, end of each phase)",
        "",
        "| GPUS | instance | generated tokens | requests ok | largest step batch | KV blocks | healthy |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for ph in run:
        for inst, m in sorted(ph["metrics"].items()):
            lines.append(
                f"| {ph['gpus']} | {inst} | {_num(m.get('glm_generated_tokens_total'), 0)} | "
                f"{_num(m.get('requests_ok'), 0)} | {_num(m.get('glm_max_batch_size'), 0)} | "
                f"{_num(m.get('glm_kv_blocks_total'), 0)} | {_num(m.get('glm_engine_healthy'), 0)} |"
            )
    errs = [
        (ph["gpus"], r["concurrency"], r["errors"])
        for ph in run
        for r in ph["rows"]
        if r.get("errors")
    ]
    if errs:
        lines += ["", "## Errors (first 5 distinct per run)", ""]
        lines += [f"- GPUS={g} C={c}: {e}" for g, c, e in errs]
    return "\n".join(lines) + "\n"


def report(work: Path, out: Path, device: str, conc: list[int], dur: str) -> str:
    """Reads WORK, writes OUT's files, returns multi_gpu.md's text."""
    phases = [read_phase(p, device, conc) for p in sorted(work.glob("phase_*"), key=phase_order)]
    for ph in phases:
        if ph["rows"]:
            sweep = {"gpus": ph["gpus"], "rows": ph["rows"]}
            (out / f"sweep_gpus{ph['tag']}.json").write_text(json.dumps(sweep, indent=1))
    (out / "phases.json").write_text(json.dumps(phases, indent=1))
    cards = _read(work / "cards.csv").splitlines()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = render(phases, cards, device, dur, when)
    (out / "multi_gpu.md").write_text(text)
    return text


def _concurrencies(text: str) -> list[int]:
    return [int(c) for c in text.split()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="the run's work folder (cards.csv, phase_*/)")
    parser.add_argument("out", type=Path, help="where multi_gpu.md, phases.json and the sweeps go")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run")
    parser.add_argument(
        "--conc", type=_concurrencies, default=[64, 256, 512], help="concurrencies, space-separated"
    )
    parser.add_argument("--dur", default="25", help="seconds per concurrency (for the text)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    print(report(args.work, args.out, args.device, args.conc, args.dur), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
