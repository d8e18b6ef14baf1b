"""Serving benchmark against a running server: concurrency sweep and in-flight vs static.

1. Concurrency sweep (closed loop): for each concurrency C (default 1, 8, 64, 256),
   C streams send seed-workload requests back to back (fixed prompt, 150 tokens with
   ignore_eos) for --duration seconds after --warmup. Tokens/s counts the tokens that
   arrived inside the measured window; TTFT/ITL come from requests that started in it.
2. In-flight vs static batching (open loop): the same --requests mixed-set requests
   (prompts 16..1024 tokens, outputs 32..256) arrive as a Poisson process at --rate
   requests/s. In-flight mode keeps at most C requests in flight, each sent as soon as
   a slot is free. Static mode emulates batch-to-completion at the same C: it takes up
   to C requests that have arrived, sends them together, waits until all have finished,
   then forms the next batch. TTFT counts from the arrival time (waiting included).
   Throughput = tokens / (last answer - first arrival). With --rate auto the rate is
   1.5x the in-flight capacity measured by a short closed-loop probe, so both modes
   run saturated.

Writes sweep.md (tables), sweep.json (all numbers) and sweep_throughput.png (tokens/s
against concurrency; and the two modes) into --out. Clients run in --procs processes
(threads inside each), so the client does not become the bottleneck at 256 streams.
Tokens: the sum of the responses' ``token_count`` output (target chatglm; one streamed
response may carry several tokens), or the returned ``output_ids`` (target chatglm_decoder).

    python -m load_tests.sweep --url 127.0.0.1:8001                       # the full run
    python -m load_tests.sweep --concurrency 1,2 --duration 3 --requests 8 # a quick check
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import queue
import random
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from load_tests.metrics import percentile  # noqa: E402
from load_tests.prompts import Conversation, mixed_set, seed_set  # noqa: E402


@dataclass
class Job:
    index: int
    prompt: str | list[int]  # text (chatglm) or ids (chatglm_decoder)
    max_tokens: int
    ignore_eos: bool
    arrival: float = 0.0  # wall-clock time it may be sent (0: at once)


@dataclass
class Rec:
    index: int
    arrival: float
    start: float
    token_times: list[float] = field(default_factory=list)
    end: float = 0.0
    error: str | None = None
    expected: int | None = None  # tokens expected (ignore_eos), for the length check

    @property
    def failed(self) -> bool:
        return self.error is not None or (
            self.expected is not None and len(self.token_times) != self.expected
        )


@dataclass(frozen=True)
class IdsSpec:
    """Special ids for ``chatglm_decoder`` prompts (ChatGLM-6B's unless a config says)."""

    mask: int = 130000
    gmask: int = 130001
    bos: int = 130004

    @classmethod
    def from_config(cls, path: Path) -> IdsSpec:
        cfg = json.loads(path.read_text())
        return cls(cfg["mask_token_id"], cfg["gmask_token_id"], cfg["bos_token_id"])

    def prompt(self, n: int, rng: random.Random) -> list[int]:
        """n ordinary ids (below the special ones), then [gMASK] <sop>, as the bench does."""
        top = min(self.mask, self.gmask)
        return [rng.randrange(10, top) for _ in range(n)] + [self.gmask, self.bos]


def _jobs_from(convs: Sequence[Conversation], ids: IdsSpec | None = None, seed: int = 0):
    """Jobs of a prompt set: its text, or (``ids``) random ids of the same token lengths
    (the seed workload: 16 ids, like ``make bench``)."""
    rng = random.Random(seed)
    jobs = []
    for i, c in enumerate(convs):
        prompt: str | list[int] = c.turns[0]
        if ids is not None:
            prompt = ids.prompt(c.prompt_tokens or 16, rng)
        jobs.append(Job(i, prompt, c.max_tokens, c.ignore_eos))
    return jobs


# ------------------------------------------------------------------ worker processes


class _Runner:
    """Inside a worker process: a pool of gRPC stream sessions driven by threads."""

    def __init__(self, url: str, timeout: float, model: str) -> None:
        from load_tests.streaming import StreamSession

        self._make = lambda: StreamSession(url, timeout=timeout, model=model)
        self.sessions: list[Any] = []
        self.offset = time.time() - time.perf_counter()

    def _session(self, slot: int) -> Any:
        while len(self.sessions) <= slot:
            self.sessions.append(self._make())
        return self.sessions[slot]

    def _run_one(self, slot: int, job: Job) -> Rec:
        wait = job.arrival - time.time()
        if wait > 0:
            time.sleep(wait)
        r = self._session(slot).request(job.prompt, job.max_tokens, job.ignore_eos)
        off = self.offset
        return Rec(
            index=job.index,
            arrival=job.arrival or r.start + off,
            start=r.start + off,
            token_times=[t + off for t in r.token_times],
            end=r.end + off,
            error=r.error,
            expected=job.max_tokens if job.ignore_eos else None,
        )

    def run_jobs(self, jobs: list[Job], slots: int) -> list[Rec]:
        """Every job once, at most ``slots`` at a time, each not before its arrival."""
        todo: queue.Queue[Job] = queue.Queue()
        for job in sorted(jobs, key=lambda j: j.arrival):
            todo.put(job)
        out: list[Rec] = []
        lock = threading.Lock()

        def loop(slot: int) -> None:
            while True:
                try:
                    job = todo.get_nowait()
                except queue.Empty:
                    return
                rec = self._run_one(slot, job)
                with lock:
                    out.append(rec)

        self._threads(loop, slots)
        return out

    def run_closed(self, jobs: list[Job], slots: int, deadline: float) -> list[Rec]:
        """``slots`` closed loops over ``jobs`` (cycled) until ``deadline``."""
        cycle = itertools.cycle(jobs)
        counter = itertools.count()
        out: list[Rec] = []
        lock = threading.Lock()

        def loop(slot: int) -> None:
            while time.time() < deadline:
                with lock:
                    job = next(cycle)
                    n = next(counter)
                rec = self._run_one(slot, Job(n, job.prompt, job.max_tokens, job.ignore_eos))
                with lock:
                    out.append(rec)

        self._threads(loop, slots)
        return out

    @staticmethod
    def _threads(target: Any, n: int) -> None:
        threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def close(self) -> None:
        for s in self.sessions:
            s.close()


def _worker_main(url: str, timeout: float, model: str, inq: Any, outq: Any) -> None:
    runner = _Runner(url, timeout, model)
    outq.put(("ready", None))
    while True:
        msg = inq.get()
        if msg is None:
            break
        kind, args = msg
        try:
            if kind == "jobs":
                recs = runner.run_jobs(*args)
            else:
                recs = runner.run_closed(*args)
            outq.put(("ok", [asdict(r) for r in recs]))
        except Exception as exc:  # report, keep serving
            outq.put(("error", f"{type(exc).__name__}: {exc}"))
    runner.close()


class Pool:
    """Persistent client processes; each message goes to some of them, results come back."""

    def __init__(self, url: str, procs: int, timeout: float, model: str = "chatglm") -> None:
        ctx = mp.get_context("spawn")  # no fork: grpc does not survive it
        self.workers = []
        for _ in range(procs):
            inq, outq = ctx.Queue(), ctx.Queue()
            p = ctx.Process(target=_worker_main, args=(url, timeout, model, inq, outq), daemon=True)
            p.start()
            self.workers.append((p, inq, outq))
        for _, _, outq in self.workers:
            kind, _ = outq.get(timeout=120)

    def run(self, per_worker: list[tuple[str, tuple[Any, ...]] | None]) -> list[Rec]:
        """Send message i to worker i (None: idle); gather all records."""
        busy = []
        for (_, inq, outq), msg in zip(self.workers, per_worker, strict=False):
            if msg is not None:
                inq.put(msg)
                busy.append(outq)
        recs: list[Rec] = []
        errors = []
        for outq in busy:
            kind, payload = outq.get()
            if kind == "ok":
                recs.extend(Rec(**r) for r in payload)
            else:
                errors.append(payload)
        if errors:
            raise RuntimeError("client worker failed: " + "; ".join(errors))
        return recs

    def close(self) -> None:
        for _, inq, _ in self.workers:
            inq.put(None)
        for p, _, _ in self.workers:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()


def split(n: int, parts: int) -> list[int]:
    """n items over ``parts`` as evenly as possible (larger shares first)."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


# ------------------------------------------------------------------ measurements


def _stats(values: list[float]) -> dict[str, float | None]:
    return {"p50": percentile(values, 50), "p99": percentile(values, 99)}


def closed_loop(
    pool: Pool, conc: int, duration: float, warmup: float, ids: IdsSpec | None = None
) -> dict[str, Any]:
    jobs = _jobs_from(seed_set(), ids)
    used = min(len(pool.workers), conc)
    t0 = time.time() + 0.5
    deadline = t0 + warmup + duration
    msgs: list[Any] = [None] * len(pool.workers)
    for i, slots in enumerate(split(conc, used)):
        msgs[i] = ("closed", (jobs, slots, deadline))
    recs = pool.run(msgs)
    w0, w1 = t0 + warmup, deadline
    tokens = sum(1 for r in recs for t in r.token_times if w0 <= t < w1)
    inside = [r for r in recs if w0 <= r.start < w1]
    ttft = [(r.token_times[0] - r.start) * 1e3 for r in inside if r.token_times]
    itl = [
        (b - a) * 1e3
        for r in inside
        for a, b in zip(r.token_times, r.token_times[1:], strict=False)
    ]
    done = [r for r in recs if w0 <= r.end < w1 and not r.failed]
    return {
        "concurrency": conc,
        "tokens_per_s": tokens / (w1 - w0),
        "requests_per_s": len(done) / (w1 - w0),
        "requests": len(recs),
        "failures": sum(r.failed for r in recs),
        "errors": sorted({r.error or "wrong token count" for r in recs if r.failed})[:5],
        "ttft_ms": _stats(ttft),
        "itl_ms": _stats(itl),
    }


def poisson_arrivals(n: int, rate: float, start: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    t, out = start, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(t)
    return out


def next_batch(arrivals: Sequence[float], i: int, now: float, size: int) -> int:
    """Static batching: the batch formed at ``now`` is requests i..j-1, those of the next
    ``size`` that have arrived (``arrivals`` sorted). Returns j (> i when arrivals[i] <= now).
    """
    j = i
    while j < len(arrivals) and j - i < size and arrivals[j] <= now:
        j += 1
    return j


def _summarize_open(recs: list[Rec], mode: str, conc: int, rate: float) -> dict[str, Any]:
    ok = [r for r in recs if not r.failed]
    tokens = sum(len(r.token_times) for r in recs)
    first = min(r.arrival for r in recs)
    last = max(r.end for r in recs)
    ttft = [(r.token_times[0] - r.arrival) * 1e3 for r in ok if r.token_times]
    itl = [
        (b - a) * 1e3 for r in ok for a, b in zip(r.token_times, r.token_times[1:], strict=False)
    ]
    return {
        "mode": mode,
        "concurrency": conc,
        "rate": rate,
        "requests": len(recs),
        "failures": len(recs) - len(ok),
        "errors": sorted({r.error or "wrong token count" for r in recs if r.failed})[:5],
        "makespan_s": last - first,
        "tokens": tokens,
        "tokens_per_s": tokens / (last - first),
        "ttft_ms": _stats(ttft),
        "itl_ms": _stats(itl),
    }


def open_loop(
    pool: Pool, jobs: list[Job], conc: int, rate: float, seed: int, mode: str
) -> dict[str, Any]:
    start = time.time() + 1.0
    arrivals = poisson_arrivals(len(jobs), rate, start, seed)
    jobs = [
        Job(j.index, j.prompt, j.max_tokens, j.ignore_eos, a)
        for j, a in zip(jobs, arrivals, strict=True)
    ]
    nw = len(pool.workers)
    if mode == "inflight":
        used = min(nw, conc)
        shares = [jobs[i::used] for i in range(used)]
        msgs: list[Any] = [None] * nw
        for i, (share, slots) in enumerate(zip(shares, split(conc, used), strict=True)):
            msgs[i] = ("jobs", (share, slots))
        recs = pool.run(msgs)
    else:
        recs, i = [], 0
        arrivals = [j.arrival for j in jobs]
        while i < len(jobs):
            wait = arrivals[i] - time.time()
            if wait > 0:
                time.sleep(wait)
            j = next_batch(arrivals, i, time.time(), conc)
            batch, i = jobs[i:j], j
            parts = [batch[k::nw] for k in range(nw)]
            recs.extend(pool.run([("jobs", (p, len(p))) if p else None for p in parts]))
    return _summarize_open(recs, mode, conc, rate)


# ------------------------------------------------------------------ report


def _f(v: float | None, d: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{d}f}"


def render(result: dict[str, Any]) -> str:
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
                f"| {row['concurrency']} | {_f(row['tokens_per_s'])} | {_f(d)} | {ratio} "
                f"| {_f(row['requests_per_s'], 2)} "
                f"| {_f(row['ttft_ms']['p50'])} / {_f(row['ttft_ms']['p99'])} "
                f"| {_f(row['itl_ms']['p50'], 2)} / {_f(row['itl_ms']['p99'], 2)} "
                f"| {row['failures']} |"
            )
        lines.append("")
    if result.get("compare"):
        cmp = result["compare"]
        lines += [
            f"## In-flight vs static batching (Poisson arrivals at {_f(cmp[0]['rate'], 2)} "
            f"req/s, mixed set, concurrency {cmp[0]['concurrency']})",
            "",
            "| mode | requests | tokens/s | makespan (s) | TTFT p50 / p99 (ms) "
            "| ITL p50 / p99 (ms) | failures |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in cmp:
            lines.append(
                f"| {row['mode']} | {row['requests']} | {_f(row['tokens_per_s'])} "
                f"| {_f(row['makespan_s'])} "
                f"| {_f(row['ttft_ms']['p50'])} / {_f(row['ttft_ms']['p99'])} "
                f"| {_f(row['itl_ms']['p50'], 2)} / {_f(row['itl_ms']['p99'], 2)} "
                f"| {row['failures']} |"
            )
        by = {r["mode"]: r for r in cmp}
        if "inflight" in by and "static" in by and by["static"]["tokens_per_s"] > 0:
            speed = by["inflight"]["tokens_per_s"] / by["static"]["tokens_per_s"]
            lines += ["", f"In-flight / static throughput: {speed:.2f}x."]
        lines.append("")
    errors = sorted({e for r in [*result["sweep"], *result["compare"]] for e in r["errors"]})
    if errors:
        lines += ["## Errors seen", "", *[f"- {e}" for e in errors], ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = int(bool(result.get("sweep"))) + int(bool(result.get("compare")))
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(6 * max(panels, 1), 4.5), squeeze=False)
    k = 0
    if result.get("sweep"):
        ax = axes[0][k]
        k += 1
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
    if result.get("compare"):
        ax = axes[0][k]
        cmp = result["compare"]
        ax.bar([r["mode"] for r in cmp], [r["tokens_per_s"] for r in cmp], color=["C0", "C1"])
        ax.set_ylabel("tokens/s")
        ax.set_title(f"In-flight vs static (C={cmp[0]['concurrency']}, Poisson, mixed)")
    fig.suptitle(result["server"])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------ main


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
    p.add_argument("--url", default="127.0.0.1:8001", help="gRPC host:port")
    p.add_argument("--out", type=Path, help="results folder (default load_tests/results/sweep-*)")
    p.add_argument("--concurrency", type=_ints, default=[1, 8, 64, 256])
    p.add_argument("--duration", type=float, default=60.0, help="measured seconds per level")
    p.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds per level")
    p.add_argument("--procs", type=int, default=min(8, os.cpu_count() or 1), help="client procs")
    p.add_argument("--compare-concurrency", type=int, default=64)
    p.add_argument("--requests", type=int, default=512, help="requests per compared mode")
    p.add_argument("--rate", default="auto", help="Poisson arrivals per second, or 'auto'")
    p.add_argument("--probe", type=float, default=20.0, help="seconds of the 'auto' rate probe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument("--skip-compare", action="store_true")
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
        choices=["chatglm", "chatglm_decoder"],
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


def _check_server(url: str, model: str) -> None:
    import tritonclient.grpc as grpcclient

    try:
        ready = grpcclient.InferenceServerClient(url).is_model_ready(model)
    except Exception as exc:
        first = str(exc).splitlines()[0][:200]
        raise SystemExit(f"sweep: no Triton server at {url}: {first}") from None
    if not ready:
        raise SystemExit(f"sweep: model {model!r} is not ready at {url}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_server(args.url, args.target)
    out = args.out or Path("load_tests/results") / time.strftime(
        "sweep-%Y%m%dT%H%M%SZ", time.gmtime()
    )
    out.mkdir(parents=True, exist_ok=True)
    direct = load_direct(args.direct) if args.direct else {}
    need = max([*args.concurrency, args.compare_concurrency])
    ids = None
    if args.target == "chatglm_decoder":
        ids = IdsSpec.from_config(args.ids_config) if args.ids_config else IdsSpec()
    pool = Pool(args.url, max(1, min(args.procs, need)), args.timeout, args.target)
    result: dict[str, Any] = {
        "server": args.server or args.url,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "procs": len(pool.workers),
        "duration_s": args.duration,
        "direct": {str(k): v for k, v in direct.items()},
        "note": (
            "target chatglm_decoder (random-id prompts); tokens = output ids"
            if args.target == "chatglm_decoder"
            else "target chatglm; tokens = sum of token_count"
        )
        + "; TTFT/ITL exact percentiles",
        "sweep": [],
        "compare": [],
    }
    try:
        if not args.skip_sweep:
            for conc in args.concurrency:
                row = closed_loop(pool, conc, args.duration, args.warmup, ids)
                result["sweep"].append(row)
                print(
                    f"sweep: concurrency {conc}: {row['tokens_per_s']:.1f} tokens/s, "
                    f"TTFT p50 {_f(row['ttft_ms']['p50'])} ms, failures {row['failures']}",
                    flush=True,
                )
        if not args.skip_compare:
            conc = args.compare_concurrency
            convs = mixed_set(args.requests, seed=args.seed)
            jobs = _jobs_from(convs, ids, args.seed)
            if args.rate == "auto":
                probe = pool.run(_probe_msgs(pool, jobs, conc, args.probe))
                finished = [r for r in probe if not r.failed]
                span = max(r.end for r in probe) - min(r.start for r in probe)
                rate = 1.5 * len(finished) / span if finished and span > 0 else 1.0
            else:
                rate = float(args.rate)
            for mode in ("inflight", "static"):
                row = open_loop(pool, jobs, conc, rate, args.seed, mode)
                result["compare"].append(row)
                print(
                    f"compare: {mode}: {row['tokens_per_s']:.1f} tokens/s, TTFT p99 "
                    f"{_f(row['ttft_ms']['p99'])} ms, failures {row['failures']}",
                    flush=True,
                )
    finally:
        pool.close()
    (out / "sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    md = render(result)
    (out / "sweep.md").write_text(md)
    plot(result, out / "sweep_throughput.png")
    print(md)
    print(f"sweep: results in {out} (sweep.md, sweep.json, sweep_throughput.png)")
    failures = sum(r["failures"] for r in [*result["sweep"], *result["compare"]])
    return 1 if failures else 0


def _probe_msgs(pool: Pool, jobs: list[Job], conc: int, seconds: float) -> list[Any]:
    nw = len(pool.workers)
    deadline = time.time() + seconds
    return [
        ("closed", (jobs[i::nw], k, deadline)) if k else None for i, k in enumerate(split(conc, nw))
    ]


if __name__ == "__main__":
    sys.exit(main())
