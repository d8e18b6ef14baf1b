"""Driving many streams: client processes, closed and open loops, static batches, soak samples.

A ``Pool`` starts ``procs`` client processes (spawn: gRPC does not survive fork), each
running requests in threads with one ``load_tests.streaming.Stream`` per thread, so that
hundreds of streams do not make the client the bottleneck. The measurements:

- ``closed_loop``: C streams, each sending its next request when the previous one ends.
- ``in_flight``: requests due at their arrival times, at most C in flight (over all
  processes), each sent as soon as it is due and a slot is free.
- ``static``: client-side batch to completion at the same C: take up to C requests that
  have arrived, send them together, wait until all have finished, then the next batch.

Every run returns the requests' ``Record``s on the wall clock (``time.time``).
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from load_tests.stats import Record, summarize
from load_tests.workload import Request, next_batch, poisson_arrivals, with_arrivals

START_DELAY_S = 0.5  # a run starts this long after it is sent to the client processes


def split(n: int, parts: int) -> list[int]:
    """n items over ``parts`` as evenly as possible (larger shares first)."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


@dataclass
class Run:
    """The records of one run, when it started, and the client processes' CPU seconds."""

    records: list[Record]
    t0: float
    cpu_s: list[float] = field(default_factory=list)
    offered: int = 0  # requests it was given (open loops: some may not have started)
    samples: list[dict[str, Any]] = field(default_factory=list)  # soak samples, if any


# ------------------------------------------------------------------ inside a client process


class _Worker:
    """One client process: a pool of streams driven by threads."""

    def __init__(self, protocol: str, url: str, model: str, timeout: float, index: int) -> None:
        self.make = lambda: _stream(protocol, url, model, timeout)
        self.index = index
        self.offset = time.time() - time.perf_counter()
        self.idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self.streams: list[Any] = []
        self.failures = 0
        self.lock = threading.Lock()

    def _take(self) -> Any:
        try:
            return self.idle.get_nowait()
        except queue.Empty:
            s = self.make()
            with self.lock:
                self.streams.append(s)
            return s

    def tokens(self) -> int:
        with self.lock:
            return sum(s.tokens_seen for s in self.streams)

    def _one(self, stream: Any, req: Request) -> Record:
        wait = req.arrival - time.time()
        if wait > 0:
            time.sleep(wait)
        rec = stream.send(req).shifted(self.offset)
        rec.arrival = req.arrival or rec.start
        if rec.failure is not None:
            with self.lock:
                self.failures += 1
        return rec

    def closed(
        self, requests: list[Request], threads: int, start: float, deadline: float
    ) -> list[Record]:
        """``threads`` closed loops over ``requests`` (cycled) from ``start`` to ``deadline``."""
        out: list[Record] = []
        counter = itertools.count()

        def loop() -> None:
            stream = self._take()
            time.sleep(max(0.0, start - time.time()))
            while time.time() < deadline:
                with self.lock:
                    n = next(counter)
                req = replace(requests[n % len(requests)], arrival=0.0, index=n)
                rec = self._one(stream, req)
                with self.lock:
                    out.append(rec)
            self.idle.put(stream)

        ts = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return out

    def open(
        self, requests: list[Request], threads: int, deadline: float | None, slots: Any
    ) -> list[Record]:
        """Each request once, not before it is due, holding one of ``slots`` (a semaphore
        shared by all processes) or, when None, one of ``threads`` local ones. With a
        ``deadline``, requests not sent by then are dropped."""
        out: list[Record] = []
        cap = slots if slots is not None else threading.BoundedSemaphore(threads)

        def run(req: Request) -> None:
            stream = self._take()
            try:
                rec = self._one(stream, req)
                with self.lock:
                    out.append(rec)
            finally:
                self.idle.put(stream)
                cap.release()

        with ThreadPoolExecutor(max_workers=threads) as ex:
            for req in sorted(requests, key=lambda r: r.arrival):
                if deadline is not None and req.arrival >= deadline:
                    break
                time.sleep(max(0.0, req.arrival - time.time()))
                left = None if deadline is None else max(0.01, deadline - time.time())
                if not cap.acquire(timeout=left):
                    break
                if deadline is not None and time.time() >= deadline:
                    cap.release()
                    break
                ex.submit(run, req)
        return out

    def close(self) -> None:
        for s in self.streams:
            s.close()


def _stream(protocol: str, url: str, model: str, timeout: float) -> Any:
    from load_tests.streaming import Stream

    return Stream(protocol, url, model, timeout)


def _worker_main(
    config: tuple[str, str, str, float], index: int, live: Any, slots: Any, inq: Any, outq: Any
) -> None:
    worker = _Worker(*config, index=index)
    stop = threading.Event()

    def report() -> None:  # live counters for the soak's sampler
        while not stop.wait(0.5):
            live[2 * index], live[2 * index + 1] = worker.tokens(), worker.failures

    threading.Thread(target=report, daemon=True).start()
    outq.put(("ready", None, 0.0))
    while (msg := inq.get()) is not None:
        kind, args = msg
        cpu0 = sum(os.times()[:2])
        try:
            if kind == "closed":
                recs = worker.closed(*args)
            else:
                requests, threads, deadline, shared = args
                recs = worker.open(requests, threads, deadline, slots if shared else None)
            outq.put(("ok", recs, sum(os.times()[:2]) - cpu0))
        except Exception as exc:  # report, keep serving
            outq.put(("error", f"{type(exc).__name__}: {exc}", 0.0))
    stop.set()
    worker.close()


# ------------------------------------------------------------------ the pool


class Pool:
    """Persistent client processes; each message goes to some of them, records come back.

    ``live``: tokens and failures of each process so far (updated every 0.5 s).
    """

    def __init__(
        self, protocol: str, url: str, model: str, procs: int, timeout: float = 600.0
    ) -> None:
        ctx = mp.get_context("spawn")  # no fork: grpc does not survive it
        self.live = ctx.RawArray("q", 2 * procs)
        self.slots = ctx.Semaphore(0)  # the in-flight cap shared by all processes
        self.workers = []
        for i in range(procs):
            inq, outq = ctx.Queue(), ctx.Queue()
            p = ctx.Process(
                target=_worker_main,
                args=((protocol, url, model, timeout), i, self.live, self.slots, inq, outq),
                daemon=True,
            )
            p.start()
            self.workers.append((p, inq, outq))
        for _, _, outq in self.workers:
            outq.get(timeout=120)

    def run(
        self,
        per_worker: Sequence[tuple[str, tuple[Any, ...]] | None],
        during: Callable[[], Any] | None = None,
    ) -> tuple[list[Record], list[float], Any]:
        """Send message i to worker i (None: idle), call ``during()`` meanwhile, gather
        the records, the CPU seconds of each busy worker, and what ``during`` returned."""
        busy = []
        for (_, inq, outq), msg in zip(self.workers, per_worker, strict=False):
            if msg is not None:
                inq.put(msg)
                busy.append(outq)
        extra = during() if during is not None else None
        recs: list[Record] = []
        cpu: list[float] = []
        errors = []
        for outq in busy:
            kind, payload, seconds = outq.get()
            if kind == "ok":
                recs.extend(payload)
                cpu.append(round(seconds, 2))
            else:
                errors.append(payload)
        if errors:
            raise RuntimeError("client worker failed: " + "; ".join(errors))
        return recs, cpu, extra

    def tokens_and_failures(self) -> tuple[int, int]:
        return sum(self.live[0::2]), sum(self.live[1::2])

    def close(self) -> None:
        for _, inq, _ in self.workers:
            inq.put(None)
        for p, _, _ in self.workers:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()


# ------------------------------------------------------------------ measurements


def closed_loop(
    pool: Pool,
    requests: Sequence[Request],
    conc: int,
    seconds: float,
    during: Callable[[], Any] | None = None,
) -> Run:
    """``conc`` streams over ``requests`` (cycled) for ``seconds``."""
    used = min(len(pool.workers), conc)
    t0 = time.time() + START_DELAY_S
    msgs: list[Any] = [None] * len(pool.workers)
    for i, threads in enumerate(split(conc, used)):
        share = list(requests[i::used]) or list(requests)
        msgs[i] = ("closed", (share, threads, t0, t0 + seconds))
    recs, cpu, samples = pool.run(msgs, during)
    return Run(recs, t0, cpu, samples=samples or [])


def in_flight(
    pool: Pool, requests: Sequence[Request], conc: int, t0: float, deadline: float | None = None
) -> Run:
    """In-flight batching: each request when it is due and one of ``conc`` slots is free."""
    nw = len(pool.workers)
    for _ in range(conc):
        pool.slots.release()
    try:
        shares = [list(requests[i::nw]) for i in range(nw)]
        msgs = [("open", (share, conc, deadline, True)) if share else None for share in shares]
        recs, cpu, _ = pool.run(msgs)
    finally:
        for _ in range(conc):
            pool.slots.acquire()
    return Run(recs, t0, cpu, offered=len(requests))


def static(
    pool: Pool, requests: Sequence[Request], conc: int, t0: float, deadline: float | None = None
) -> Run:
    """Static batching: batches of up to ``conc`` arrived requests, each run to completion
    before the next is formed; with a ``deadline``, no batch is formed after it."""
    nw = len(pool.workers)
    reqs = sorted(requests, key=lambda r: r.arrival)
    arrivals = [r.arrival for r in reqs]
    recs: list[Record] = []
    cpu = [0.0] * nw
    i = 0
    while i < len(reqs):
        if deadline is not None and (time.time() >= deadline or arrivals[i] >= deadline):
            break
        time.sleep(max(0.0, arrivals[i] - time.time()))
        j = next_batch(arrivals, i, time.time(), conc)
        batch, i = reqs[i:j], j
        parts = [batch[k::nw] for k in range(nw)]
        got, seconds, _ = pool.run(
            [("open", (p, len(p), None, False)) if p else None for p in parts]
        )
        recs.extend(got)
        for k, s in zip([k for k, p in enumerate(parts) if p], seconds, strict=True):
            cpu[k] += s
    return Run(recs, t0, [round(c, 2) for c in cpu], offered=len(requests))


# ------------------------------------------------------------------ soak samples


def rss_mib(pid: int) -> float | None:
    """Resident memory of process ``pid`` (/proc), MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def gpu_mib() -> int | None:
    """GPU memory in use (nvidia-smi, first GPU), MiB; None without one."""
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


def soak_sampler(
    pool: Pool, seconds: float, every: float, pid: int = 0, log: Callable[[dict], None] = print
) -> Callable[[], list[dict[str, Any]]]:
    """A ``during`` for ``closed_loop``: every ``every`` s until ``seconds`` have passed,
    tokens/s since the last sample, failures so far, the server's RSS (``pid``) and GPU
    memory; each sample goes to ``log`` as it is taken."""

    def sample() -> list[dict[str, Any]]:
        samples = []
        start = time.time()
        prev_tok, failed0 = pool.tokens_and_failures()  # the counters count earlier runs too
        prev_t = start
        while (left := start + seconds - time.time()) > 0.5:
            time.sleep(min(every, left))
            now = time.time()
            tokens, failures = pool.tokens_and_failures()
            row = {
                "t_s": round(now - start, 1),
                "tokens_per_s": round((tokens - prev_tok) / (now - prev_t), 1),
                "failures": int(failures - failed0),
                "rss_mib": rss_mib(pid) if pid else None,
                "gpu_mib": gpu_mib(),
            }
            samples.append(row)
            log(row)
            prev_t, prev_tok = now, tokens
        return samples

    return sample


# ------------------------------------------------------------------ in-flight vs static


def batching_modes(
    pool: Pool,
    requests: Sequence[Request],
    conc: int,
    rate: float,
    seed: int,
    seconds: float | None = None,
    pause: float = 0.0,
) -> dict[str, tuple[Run, dict[str, Any]]]:
    """The same Poisson arrivals (``rate`` per second) served in-flight, then static, at
    most ``conc`` requests in flight in both modes: each mode's run and its ``summarize``.

    ``seconds`` None: every request of ``requests`` arrives and is served; tokens/s =
    tokens / (last answer - first arrival). Otherwise arrivals during ``seconds`` (the
    requests cycled), none sent after that, tokens/s over those seconds; the requests
    that arrived but were never sent are ``offered - requests``.
    """
    out = {}
    for mode, serve in (("inflight", in_flight), ("static", static)):
        t0 = time.time() + 1.0
        deadline = None if seconds is None else t0 + seconds
        n = len(requests) if seconds is None else None
        jobs = with_arrivals(requests, poisson_arrivals(n, rate, t0, seed, until=deadline))
        run = serve(pool, jobs, conc, t0, deadline)
        if deadline is None:
            summary = summarize(run.records)
        else:
            summary = summarize(run.records, (t0, t0 + max(1, int(seconds or 0))), t0=t0)
        out[mode] = (run, summary)
        if pause:
            time.sleep(pause)
    return out
