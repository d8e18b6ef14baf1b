"""Serving benchmark over Triton's HTTP generate extension (SSE), standard library only.

For machines without tritonclient/grpcio/gevent (the GPU machine): threads, ``http.client``
and ``json``, several processes (fork) for hundreds of streams. Targets ``chatglm_decoder``
(ids in: ``{"input_ids": [...], "max_tokens": N, "ignore_eos": true, "stream": true}``;
tokens = ids received) or the ``chatglm`` ensemble (text in; tokens = SSE events).

Modes (see ``--help`` of each):

* ``sweep``: closed loop at each concurrency C for D seconds on the seed workload (16 ids +
  [gMASK] <sop>, exactly 150 new tokens, ignore_eos): tokens/s, TTFT p50/p99, ITL p50/p99,
  requests, failures.
* ``inflight-vs-static``: the same Poisson arrivals (mixed prompts 16..1024 ids, outputs
  32..256) served twice with the same cap of C requests in flight: in-flight (a request is
  sent as soon as it has arrived and a slot is free) and static (client-side batch to
  completion: take up to C arrived requests, send them together, wait for all, repeat).
* ``soak``: closed loop at C for D seconds; every ``--sample`` seconds: tokens/s, server RSS
  (``/proc/<pid>/status``), GPU memory used (nvidia-smi), requests, failures.

Writes ``<out>/<mode>.json`` and ``<out>/<mode>.md`` (and PNGs when matplotlib imports).

    python3 load_tests/http_bench.py sweep --url 127.0.0.1:8000 --conc 1 8 64 256 -d 30 \\
        --config models/chatglm-tiny/config.json --out build/http_bench
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import multiprocessing as mp
import os
import random
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DECODER = "chatglm_decoder"
_WORDS = "the of and to in is that for it as with was on be by this at from or an".split()


# ---------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation; None for no values."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def parse_sse_line(line: bytes | str) -> dict[str, Any] | None:
    """The JSON object of one ``data: {...}`` line; None for blank lines and comments."""
    if isinstance(line, bytes):
        line = line.decode("utf-8")
    line = line.strip()
    if not line.startswith("data:"):
        return None
    return json.loads(line[5:].strip())


def event_tokens(event: dict[str, Any], model: str) -> int:
    """Tokens one SSE event carries: the number of ``output_ids`` (Triton sends a one-element
    array as a bare number), or 1 per non-empty ``text_output`` for the ensemble."""
    if "output_ids" in event:
        ids = event["output_ids"]
        return len(ids) if isinstance(ids, list) else 1
    if model != DECODER and event.get("text_output") is not None:
        return 1
    return 0


@dataclass
class Rec:
    """One request as the client saw it (wall-clock seconds, ``time.time``)."""

    arrival: float  # when it was due (Poisson) or sent (closed loop)
    sent: float
    first: float | None = None
    end: float = 0.0
    tokens: int = 0
    expected: int = 0
    error: str = ""
    itl: list[float] = field(default_factory=list)  # ms, one per token after the first

    @property
    def ok(self) -> bool:
        return not self.error and (self.expected <= 0 or self.tokens == self.expected)


def summarize(
    recs: Sequence[Rec], buckets: dict[int, int], t0: float, window: tuple[int, int]
) -> dict[str, Any]:
    """Aggregate figures. ``buckets``: second since t0 -> tokens received in it; the
    throughput is the tokens of the seconds in ``window`` [a, b) over (b - a)."""
    a, b = window
    tok_window = sum(n for s, n in buckets.items() if a <= s < b)
    ok = [r for r in recs if r.ok]
    ttft = [(r.first - r.arrival) * 1e3 for r in ok if r.first is not None]
    ttft_sent = [(r.first - r.sent) * 1e3 for r in ok if r.first is not None]
    itl = [x for r in ok for x in r.itl]
    total = sum(r.tokens for r in recs)
    span = (max(r.end for r in recs) - t0) if recs else 0.0
    return {
        "requests": len(ok),
        "failures": len(recs) - len(ok),
        "errors": sorted({r.error or f"short: {r.tokens}/{r.expected}" for r in recs if not r.ok})[
            :5
        ],
        "tokens": total,
        "tokens_per_s": tok_window / (b - a) if b > a else 0.0,
        "tokens_per_s_whole": total / span if span > 0 else 0.0,
        "ttft_ms_p50": percentile(ttft, 50),
        "ttft_ms_p99": percentile(ttft, 99),
        "ttft_sent_ms_p50": percentile(ttft_sent, 50),
        "ttft_sent_ms_p99": percentile(ttft_sent, 99),
        "itl_ms_p50": percentile(itl, 50),
        "itl_ms_p99": percentile(itl, 99),
    }


# ---------------------------------------------------------------- workloads


@dataclass
class Ids:
    """Special ids and vocabulary of the served checkpoint (its config.json)."""

    gmask: int = 130001
    bos: int = 130004
    vocab: int = 130528
    special: tuple[int, ...] = (130000, 130001, 130004, 130005, 3)

    @classmethod
    def from_config(cls, path: str | os.PathLike | None) -> Ids:
        if not path:
            return cls()
        c = json.loads(Path(path).read_text(encoding="utf-8"))
        keys = ("mask_token_id", "gmask_token_id", "bos_token_id", "eos_token_id", "pad_token_id")
        special = tuple(int(c[k]) for k in keys if k in c)
        return cls(int(c["gmask_token_id"]), int(c["bos_token_id"]), int(c["vocab_size"]), special)

    def prompt(self, n: int, rng: random.Random) -> list[int]:
        """n plain ids, then [gMASK] <sop>."""
        hi = min(self.vocab, 130000) - 1
        out: list[int] = []
        while len(out) < n:
            x = rng.randint(5, hi)
            if x not in self.special:
                out.append(x)
        return out + [self.gmask, self.bos]


@dataclass
class Job:
    prompt_len: int
    max_tokens: int
    arrival: float = 0.0  # seconds after t0 (Poisson modes)
    seed: int = 0


def seed_job(rng: random.Random) -> Job:
    return Job(16, 150, seed=rng.getrandbits(32))


def mixed_job(rng: random.Random) -> Job:
    return Job(rng.randint(16, 1024), rng.randint(32, 256), seed=rng.getrandbits(32))


def poisson_jobs(rate: float, duration: float, seed: int) -> list[Job]:
    """Mixed jobs arriving as a Poisson process of ``rate`` per second over ``duration``."""
    rng = random.Random(seed)
    jobs, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            return jobs
        j = mixed_job(rng)
        j.arrival = t
        jobs.append(j)


def body_for(job: Job, model: str, ids: Ids) -> bytes:
    rng = random.Random(job.seed)
    d: dict[str, Any] = {"max_tokens": job.max_tokens, "ignore_eos": True, "stream": True}
    if model == DECODER:
        d["input_ids"] = ids.prompt(job.prompt_len, rng)
    else:
        d["text_input"] = " ".join(rng.choice(_WORDS) for _ in range(job.prompt_len))
    return json.dumps(d).encode()


# ---------------------------------------------------------------- the client


class Client:
    """One thread's keep-alive HTTP connection and its counters."""

    def __init__(
        self, host: str, port: int, model: str, ids: Ids, t0: float, timeout: float
    ) -> None:
        self.host, self.port, self.model, self.ids, self.t0 = host, port, model, ids, t0
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None
        self.buckets: dict[int, int] = defaultdict(int)
        self.tokens = 0  # read by the process's reporter thread
        self.failures = 0

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def run(self, job: Job, arrival: float) -> Rec:
        body = body_for(job, self.model, self.ids)
        expected = job.max_tokens if self.model == DECODER else 0
        rec = Rec(arrival=arrival, sent=time.time(), expected=expected)
        last = 0.0
        try:
            conn = self._connection()
            conn.request(
                "POST",
                f"/v2/models/{self.model}/generate_stream",
                body,
                {"Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            for raw in iter(resp.readline, b""):
                ev = parse_sse_line(raw)
                if ev is None:
                    continue
                if "error" in ev:
                    rec.error = str(ev["error"])[:200]
                    continue
                n = event_tokens(ev, self.model)
                if n <= 0:
                    continue
                now = time.time()
                if rec.first is None:
                    rec.first = now
                    if n > 1:
                        rec.itl.extend([0.0] * (n - 1))
                else:
                    rec.itl.extend([(now - last) * 1e3 / n] * n)
                last = now
                rec.tokens += n
                self.tokens += n
                self.buckets[int(now - self.t0)] += n
            if resp.status != 200 and not rec.error:
                rec.error = f"HTTP {resp.status}"
            if resp.will_close:
                self.close()
        except (OSError, http.client.HTTPException, ValueError) as e:
            rec.error = f"{type(e).__name__}: {e}"[:200]
            self.close()
        rec.end = time.time()
        if not rec.ok:
            self.failures += 1
        return rec


@dataclass
class Plan:
    """What one worker process does (picklable; fork copies it anyway)."""

    url: str
    model: str
    ids: Ids
    mode: str  # closed | inflight | static
    t0: float
    deadline: float
    threads: int  # closed: streams of this process; inflight/static: max threads
    workload: str = "seed"
    seed: int = 0
    jobs: list[tuple[int, Job]] = field(default_factory=list)  # (global index, job)
    timeout: float = 600.0


def _split_url(url: str) -> tuple[str, int]:
    url = url.split("://")[-1].rstrip("/")
    host, _, port = url.rpartition(":")
    return (host or "127.0.0.1"), int(port or 8000)


def worker(plan: Plan, shared: Any, index: int, results: Any, sync: Any = None) -> None:
    """Run ``plan`` in this process; put (records, buckets, cpu seconds) on ``results``.
    ``shared[2*index]`` / ``[2*index+1]``: this process's tokens / failures so far."""
    host, port = _split_url(plan.url)
    clients: list[Client] = []
    lock = threading.Lock()
    stop = threading.Event()

    def new_client() -> Client:
        c = Client(host, port, plan.model, plan.ids, plan.t0, plan.timeout)
        with lock:
            clients.append(c)
        return c

    def report() -> None:
        while not stop.wait(0.5):
            with lock:
                shared[2 * index] = sum(c.tokens for c in clients)
                shared[2 * index + 1] = sum(c.failures for c in clients)

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    recs: list[Rec] = []
    local = threading.local()

    def client() -> Client:
        if not hasattr(local, "c"):
            local.c = new_client()
        return local.c

    def run_one(job: Job, arrival: float, sem: Any = None) -> None:
        try:
            r = client().run(job, arrival)
            with lock:
                recs.append(r)
        finally:
            if sem is not None:
                sem.release()

    if plan.mode == "closed":

        def loop(k: int) -> None:
            rng = random.Random(plan.seed * 100003 + index * 1009 + k)
            c = client()
            while time.time() < plan.deadline:
                job = seed_job(rng) if plan.workload == "seed" else mixed_job(rng)
                r = c.run(job, time.time())
                with lock:
                    recs.append(r)

        ts = [threading.Thread(target=loop, args=(k,)) for k in range(plan.threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    elif plan.mode == "inflight":
        sem = sync
        with ThreadPoolExecutor(max_workers=plan.threads) as pool:
            for _, job in plan.jobs:
                due = plan.t0 + job.arrival
                if due >= plan.deadline:
                    break
                time.sleep(max(0.0, due - time.time()))
                if not sem.acquire(timeout=max(0.01, plan.deadline - time.time())):
                    break
                if time.time() >= plan.deadline:
                    sem.release()
                    break
                pool.submit(run_one, job, due, sem)
    elif plan.mode == "static":
        barrier, state = sync  # state: [next index, batch end, start time, stop]
        mine = dict(plan.jobs)
        with ThreadPoolExecutor(max_workers=plan.threads) as pool:
            while True:
                barrier.wait()
                if state[3]:
                    break
                i0, i1, start = int(state[0]), int(state[1]), state[2]
                time.sleep(max(0.0, start - time.time()))
                futs = [
                    pool.submit(run_one, mine[i], plan.t0 + mine[i].arrival)
                    for i in range(i0, i1)
                    if i in mine
                ]
                for f in futs:
                    f.result()
    stop.set()
    reporter.join()
    with lock:
        shared[2 * index] = sum(c.tokens for c in clients)
        shared[2 * index + 1] = sum(c.failures for c in clients)
        buckets: dict[int, int] = defaultdict(int)
        for c in clients:
            for s, n in c.buckets.items():
                buckets[s] += n
            c.close()
    cpu = os.times()
    results.put(([asdict(r) for r in recs], dict(buckets), cpu.user + cpu.system))


def _static_action(jobs: Sequence[Job], t0: float, deadline: float, conc: int, state: Any) -> Any:
    """Barrier action of static batching (runs in one process between batches): the next
    batch is up to ``conc`` jobs that have arrived by now (or, if none has, the next one, at
    its arrival time)."""

    def action() -> None:
        now = time.time()
        i0 = int(state[1])
        state[0] = i0
        if now >= deadline or i0 >= len(jobs) or t0 + jobs[i0].arrival >= deadline:
            state[3] = 1
            return
        arrived = i0
        while arrived < len(jobs) and t0 + jobs[arrived].arrival <= now:
            arrived += 1
        if arrived == i0:
            state[1], state[2] = i0 + 1, t0 + jobs[i0].arrival
        else:
            state[1], state[2] = min(arrived, i0 + conc), now

    return action


@dataclass
class RunResult:
    recs: list[Rec]
    buckets: dict[int, int]
    t0: float
    client_cpu_s: list[float]
    samples: list[dict[str, Any]] = field(default_factory=list)


def split(n: int, parts: int) -> list[int]:
    """n as ``parts`` near-equal non-negative integers."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def auto_procs(conc: int) -> int:
    return max(1, min(math.ceil(conc / 32), max(1, (os.cpu_count() or 2) // 2)))


def run_processes(
    plans: list[Plan],
    sync: Any = None,
    sampler: Any = None,
) -> RunResult:
    """Start one process per plan (fork), optionally call ``sampler(shared)`` every so often
    from this process until the deadline, and gather the results."""
    ctx = mp.get_context("fork")
    shared = ctx.RawArray("q", 2 * len(plans))
    results = ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(p, shared, i, results, sync), daemon=True)
        for i, p in enumerate(plans)
    ]
    for p in procs:
        p.start()
    samples: list[dict[str, Any]] = []
    if sampler is not None:
        samples = sampler(shared)
    recs: list[Rec] = []
    buckets: dict[int, int] = defaultdict(int)
    cpu: list[float] = []
    for _ in procs:
        rs, bs, c = results.get()
        recs.extend(Rec(**r) for r in rs)
        for s, n in bs.items():
            buckets[int(s)] += n
        cpu.append(round(c, 2))
    for p in procs:
        p.join()
    return RunResult(recs, dict(buckets), plans[0].t0, cpu, samples)


# ---------------------------------------------------------------- modes


def closed_loop(
    args: argparse.Namespace, conc: int, duration: float, sampler: Any = None
) -> RunResult:
    procs = args.procs or auto_procs(conc)
    procs = min(procs, conc)
    t0 = time.time() + 0.2
    plans = [
        Plan(
            args.url, args.model, args.ids, "closed", t0, t0 + duration, n, args.workload, args.seed
        )
        for n in split(conc, procs)
    ]
    return run_processes(plans, sampler=sampler)


def poisson_run(
    args: argparse.Namespace, mode: str, jobs: list[Job], conc: int, duration: float
) -> RunResult:
    procs = min(args.procs or auto_procs(conc), conc)
    ctx = mp.get_context("fork")
    t0 = time.time() + 0.5
    deadline = t0 + duration
    per: list[list[tuple[int, Job]]] = [[] for _ in range(procs)]
    for i, j in enumerate(jobs):
        per[i % procs].append((i, j))
    if mode == "inflight":
        sync: Any = ctx.BoundedSemaphore(conc)
        threads = conc
    else:
        state = ctx.RawArray("d", [0.0, 0.0, 0.0, 0.0])
        sync = (ctx.Barrier(procs, action=_static_action(jobs, t0, deadline, conc, state)), state)
        threads = math.ceil(conc / procs) + 1
    plans = [Plan(args.url, args.model, args.ids, mode, t0, deadline, threads, jobs=p) for p in per]
    return run_processes(plans, sync=sync)


def _window(res: RunResult, duration: float, warmup: float) -> tuple[int, int]:
    return (int(math.ceil(warmup)), max(int(duration), int(math.ceil(warmup)) + 1))


def cmd_sweep(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for c in args.conc:
        res = closed_loop(args, c, args.duration)
        s = summarize(res.recs, res.buckets, res.t0, _window(res, args.duration, args.warmup))
        s.update(concurrency=c, duration_s=args.duration, client_procs=len(res.client_cpu_s))
        s["client_cpu_s"] = res.client_cpu_s
        s["client_cpu_max_frac"] = round(max(res.client_cpu_s) / (args.duration + 1e-9), 3)
        rows.append(s)
        print(fmt_row(s), flush=True)
        if args.pause:
            time.sleep(args.pause)
    return {"mode": "sweep", "workload": args.workload, "model": args.model, "rows": rows}


def cmd_ivs(args: argparse.Namespace) -> dict[str, Any]:
    jobs = poisson_jobs(args.rate, args.duration, args.seed)
    out: dict[str, Any] = {
        "mode": "inflight-vs-static",
        "model": args.model,
        "concurrency": args.conc[0],
        "rate_per_s": args.rate,
        "duration_s": args.duration,
        "jobs_offered": len(jobs),
    }
    for mode in ("inflight", "static"):
        res = poisson_run(args, mode, jobs, args.conc[0], args.duration)
        s = summarize(res.recs, res.buckets, res.t0, (0, max(1, int(args.duration))))
        s["not_started"] = len(jobs) - len(res.recs)
        s["client_cpu_s"] = res.client_cpu_s
        out[mode] = s
        print(mode, fmt_row(s), f"| not started {s['not_started']}", flush=True)
        if args.pause:
            time.sleep(args.pause)
    st, inf = out["static"], out["inflight"]
    out["throughput_ratio"] = (
        inf["tokens_per_s"] / st["tokens_per_s"] if st["tokens_per_s"] else None
    )
    if inf["ttft_ms_p99"] is not None and st["ttft_ms_p99"]:
        out["ttft_p99_ratio_static_over_inflight"] = st["ttft_ms_p99"] / inf["ttft_ms_p99"]
    return out


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def gpu_mib() -> int | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
        return int(out.split()[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def cmd_soak(args: argparse.Namespace) -> dict[str, Any]:
    conc = args.conc[0]

    def sampler(shared: Any) -> list[dict[str, Any]]:
        samples = []
        start = time.time()
        prev_t, prev_tok = start, 0
        while True:
            left = start + args.duration - time.time()
            if left <= 0.5:
                break
            time.sleep(min(args.sample, left))
            now = time.time()
            tok = sum(shared[0::2])
            row = {
                "t_s": round(now - start, 1),
                "tokens_per_s": round((tok - prev_tok) / (now - prev_t), 1),
                "failures": int(sum(shared[1::2])),
                "rss_mib": (round(r / 1024, 1) if (r := rss_kb(args.pid)) else None)
                if args.pid
                else None,
                "gpu_mib": gpu_mib(),
            }
            samples.append(row)
            print("soak", json.dumps(row), flush=True)
            prev_t, prev_tok = now, tok
        return samples

    res = closed_loop(args, conc, args.duration, sampler=sampler)
    s = summarize(res.recs, res.buckets, res.t0, _window(res, args.duration, args.warmup))
    s.update(concurrency=conc, duration_s=args.duration, client_cpu_s=res.client_cpu_s)
    return {
        "mode": "soak",
        "workload": args.workload,
        "model": args.model,
        "summary": s,
        "samples": res.samples,
    }


# ---------------------------------------------------------------- output


def _f(x: float | None, nd: int = 1) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def fmt_row(s: dict[str, Any]) -> str:
    return (
        f"C={s.get('concurrency', '')} tok/s {_f(s['tokens_per_s'], 0)} (whole {_f(s['tokens_per_s_whole'], 0)}) "
        f"TTFT p50/p99 {_f(s['ttft_ms_p50'])}/{_f(s['ttft_ms_p99'])} ms "
        f"ITL p50/p99 {_f(s['itl_ms_p50'], 2)}/{_f(s['itl_ms_p99'], 2)} ms "
        f"req {s['requests']} fail {s['failures']}"
    )


def markdown(result: dict[str, Any]) -> str:
    lines: list[str] = []
    if result["mode"] == "sweep":
        lines += [
            "| concurrency | tokens/s (steady) | tokens/s (whole run) | TTFT p50 ms | TTFT p99 ms"
            " | ITL p50 ms | ITL p99 ms | requests | failures |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in result["rows"]:
            lines.append(
                f"| {s['concurrency']} | {_f(s['tokens_per_s'], 0)} | {_f(s['tokens_per_s_whole'], 0)} "
                f"| {_f(s['ttft_ms_p50'])} | {_f(s['ttft_ms_p99'])} | {_f(s['itl_ms_p50'], 2)} "
                f"| {_f(s['itl_ms_p99'], 2)} | {s['requests']} | {s['failures']} |"
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
                f"| {m} | {_f(s['tokens_per_s'], 0)} | {_f(s['ttft_ms_p50'])} | {_f(s['ttft_ms_p99'])} "
                f"| {_f(s['ttft_sent_ms_p99'])} | {_f(s['itl_ms_p99'], 2)} | {s['requests']} | {s['failures']} "
                f"| {s['not_started']} |"
            )
        lines.append("")
        lines.append(
            f"throughput ratio in-flight / static: {_f(result.get('throughput_ratio'), 2)}"
        )
    else:
        lines += [
            "| t (s) | tokens/s | failures | server RSS MiB | GPU MiB |",
            "|---:|---:|---:|---:|---:|",
        ]
        for r in result["samples"]:
            lines.append(
                f"| {r['t_s']} | {_f(r['tokens_per_s'], 0)} | {r['failures']} | {_f(r['rss_mib'])} "
                f"| {r['gpu_mib'] if r['gpu_mib'] is not None else '-'} |"
            )
        lines += ["", fmt_row(result["summary"])]
    return "\n".join(lines) + "\n"


def plots(result: dict[str, Any], out: Path) -> list[str]:
    """PNG plots when matplotlib imports; the names written (empty list otherwise)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
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
    made.append(name)
    return made


def write(result: dict[str, Any], out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    result["pngs"] = plots(result, out)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    md = markdown(result)
    (out / f"{name}.md").write_text(md)
    print(md, flush=True)
    if not result["pngs"]:
        print("(matplotlib not importable: no PNG)", flush=True)


def wait_ready(url: str, model: str, seconds: float) -> bool:
    host, port = _split_url(url)
    end = time.time() + seconds
    while time.time() < end:
        try:
            c = http.client.HTTPConnection(host, port, timeout=5)
            c.request("GET", f"/v2/models/{model}/ready")
            if c.getresponse().status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


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
    args.ids = Ids.from_config(args.config)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not wait_ready(args.url, args.model, 10):
        print(f"http_bench: {args.model} at {args.url} is not ready")
        return 1
    fn = {"sweep": cmd_sweep, "inflight-vs-static": cmd_ivs, "soak": cmd_soak}[args.mode]
    result = fn(args)
    write(result, Path(args.out), args.name or args.mode.replace("-", "_"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
