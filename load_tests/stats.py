"""Statistics of a load test, one implementation for every front end.

- ``Record``: one request as the client saw it: when it was due and sent, the arrival
  time of each generated token (all tokens of one response share its time, so tokens
  merged into one response give inter-token gaps of 0), the end, and what went wrong.
- ``summarize``: tokens/s, requests, failures, TTFT and ITL percentiles of a list of
  records (the sweep and the in-flight vs static comparison).
- ``Meter``: the same figures collected on the fly, per second, for Locust (its workers
  ship ``drain()`` to the master, which ``merge``s it). Times are wall-clock seconds
  (``time.time``) so that processes agree.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear interpolation; None for no values."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def distribution(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p90, p99, mean and the number of samples."""
    return {
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "mean": sum(values) / len(values) if values else None,
        "n": len(values),
    }


@dataclass
class Record:
    """One request: times in seconds on one clock (``time.perf_counter`` inside a
    transport, ``time.time`` once gathered from several processes)."""

    start: float  # when it was sent
    token_times: list[float] = field(default_factory=list)  # one entry per generated token
    end: float = 0.0  # when its final response came (or it failed)
    error: str | None = None
    expected: int | None = None  # tokens it must return (ignore_eos), None: unchecked
    arrival: float | None = None  # when it was due (open loop); None: when it was sent
    text: str = ""
    index: int = 0

    @property
    def tokens(self) -> int:
        return len(self.token_times)

    @property
    def due(self) -> float:
        return self.start if self.arrival is None else self.arrival

    @property
    def ttft(self) -> float | None:
        """Seconds from sending to the first token."""
        return self.token_times[0] - self.start if self.token_times else None

    @property
    def itls(self) -> list[float]:
        """Seconds between consecutive tokens."""
        t = self.token_times
        return [b - a for a, b in zip(t, t[1:], strict=False)]

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def failure(self) -> str | None:
        """Why the request failed: its error, or a token count other than expected."""
        if self.error is not None:
            return self.error
        if self.expected is not None and self.tokens != self.expected:
            return f"expected {self.expected} tokens (ignore_eos), got {self.tokens}"
        return None

    def shifted(self, offset: float) -> Record:
        """The same request with every time moved by ``offset`` (to another clock)."""
        return Record(
            start=self.start + offset,
            token_times=[t + offset for t in self.token_times],
            end=self.end + offset,
            error=self.error,
            expected=self.expected,
            arrival=None if self.arrival is None else self.arrival + offset,
            text=self.text,
            index=self.index,
        )


def summarize(
    records: Sequence[Record],
    window: tuple[float, float] | None = None,
    t0: float | None = None,
) -> dict[str, Any]:
    """The figures of one run.

    ``window`` [w0, w1): tokens/s = tokens that arrived inside it / its length, and
    requests/s = successful requests that ended inside it / its length; TTFT and ITL come
    from the successful requests sent inside it (warm-up left out). Without a window: the
    whole run, from ``t0`` to the last answer, every successful request.
    ``t0``: the start of the run (default: the first request's due time), for the
    whole-run throughput ``tokens_per_s_whole`` = all tokens / (last answer - t0).
    TTFT counts from the due time (waiting for a free slot included; in a closed loop the
    same as from sending) and, as ``ttft_sent_ms``, from sending. Times in milliseconds.
    """
    ok = [r for r in records if r.failure is None]
    start = t0 if t0 is not None else min((r.due for r in records), default=0.0)
    last = max((r.end for r in records), default=start)
    total = sum(r.tokens for r in records)
    span = last - start
    if window is None:
        length, in_window, done, sampled = span, total, len(ok), ok
    else:
        w0, w1 = window
        length = w1 - w0
        in_window = sum(1 for r in records for t in r.token_times if w0 <= t < w1)
        done = sum(1 for r in ok if w0 <= r.end < w1)
        sampled = [r for r in ok if w0 <= r.start < w1]
    ttft = [(r.token_times[0] - r.due) * 1e3 for r in sampled if r.token_times]
    ttft_sent = [r.ttft * 1e3 for r in sampled if r.ttft is not None]
    itl = [gap * 1e3 for r in sampled for gap in r.itls]
    return {
        "requests": len(records),
        "ok": len(ok),
        "failures": len(records) - len(ok),
        "errors": sorted({f for r in records if (f := r.failure) is not None})[:5],
        "tokens": total,
        "tokens_per_s": in_window / length if length > 0 else 0.0,
        "tokens_per_s_whole": total / span if span > 0 else 0.0,
        "requests_per_s": done / length if length > 0 else 0.0,
        "makespan_s": span,
        "ttft_ms": distribution(ttft),
        "ttft_sent_ms": distribution(ttft_sent),
        "itl_ms": distribution(itl),
    }


TIMESERIES_FIELDS = [
    "time",
    "tokens",
    "requests",
    "failures",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "itl_p50_ms",
    "itl_p99_ms",
]


class Meter:
    """Per-second token counts plus every TTFT and ITL sample (milliseconds), for Locust.

    Latency samples come from every request that streamed tokens (failed and cut-off
    ones included: their first tokens were timed all the same).
    """

    def __init__(self) -> None:
        self.tokens: dict[int, int] = defaultdict(int)  # second -> tokens
        self.done: dict[int, int] = defaultdict(int)  # second -> finished requests
        self.failed: dict[int, int] = defaultdict(int)
        self.ttft: list[tuple[float, float]] = []  # (time, ms)
        self.itl: list[tuple[float, float]] = []
        self.first: float | None = None
        self.last: float | None = None

    def _span(self, t0: float, t1: float) -> None:
        self.first = t0 if self.first is None else min(self.first, t0)
        self.last = t1 if self.last is None else max(self.last, t1)

    def add(self, rec: Record, ok: bool | None, offset: float = 0.0) -> None:
        """One request; ``offset`` turns its clock into wall-clock time. ``ok`` None: cut
        off by the end of the test (its tokens count, the request does not)."""
        times = [t + offset for t in rec.token_times]
        for t in times:
            self.tokens[int(t)] += 1
        if rec.ttft is not None:
            self.ttft.append((times[0], rec.ttft * 1e3))
            self.itl.extend((t, gap * 1e3) for t, gap in zip(times[1:], rec.itls, strict=True))
        end = rec.end + offset
        if ok is not None:
            (self.done if ok else self.failed)[int(end)] += 1
        self._span(rec.start + offset, end)

    def data(self) -> dict[str, Any]:
        """Everything collected, as plain data (for ``merge``)."""
        return {
            "tokens": dict(self.tokens),
            "done": dict(self.done),
            "failed": dict(self.failed),
            "ttft": list(self.ttft),
            "itl": list(self.itl),
            "first": self.first,
            "last": self.last,
        }

    def drain(self) -> dict[str, Any]:
        """Everything collected since the last drain, as plain data (and reset)."""
        data = self.data()
        self.__init__()
        return data

    def merge(self, data: dict[str, Any]) -> None:
        for key in ("tokens", "done", "failed"):
            target = getattr(self, key)
            for sec, n in data[key].items():
                target[int(sec)] += n
        self.ttft.extend((float(t), float(v)) for t, v in data["ttft"])
        self.itl.extend((float(t), float(v)) for t, v in data["itl"])
        if data["first"] is not None:
            self._span(data["first"], data["last"])

    def summary(self, start: float | None = None, stop: float | None = None) -> dict[str, Any]:
        """Totals; tokens/s over [start, stop] (default: first request to last answer)."""
        t0 = start if start is not None else self.first
        t1 = stop if stop is not None else self.last
        duration = (t1 - t0) if t0 is not None and t1 is not None else 0.0
        total = sum(self.tokens.values())
        return {
            "duration_s": duration,
            "tokens": total,
            "tokens_per_s": total / duration if duration > 0 else 0.0,
            "requests": sum(self.done.values()),
            "failures": sum(self.failed.values()),
            "ttft_ms": distribution([v for _, v in self.ttft]),
            "itl_ms": distribution([v for _, v in self.itl]),
        }

    def timeseries(self) -> list[dict[str, Any]]:
        """Per-second rows: tokens, finished requests, failures, TTFT/ITL p50 and p99."""
        if self.first is None:
            return []
        ttft_by: dict[int, list[float]] = defaultdict(list)
        itl_by: dict[int, list[float]] = defaultdict(list)
        for t, v in self.ttft:
            ttft_by[int(t)].append(v)
        for t, v in self.itl:
            itl_by[int(t)].append(v)
        secs = [*self.tokens, *self.done, *self.failed, int(self.first), int(self.last or 0)]
        rows = []
        for sec in range(min(secs), max(secs) + 1):
            rows.append(
                {
                    "time": sec,
                    "tokens": self.tokens.get(sec, 0),
                    "requests": self.done.get(sec, 0),
                    "failures": self.failed.get(sec, 0),
                    "ttft_p50_ms": percentile(ttft_by.get(sec, []), 50),
                    "ttft_p99_ms": percentile(ttft_by.get(sec, []), 99),
                    "itl_p50_ms": percentile(itl_by.get(sec, []), 50),
                    "itl_p99_ms": percentile(itl_by.get(sec, []), 99),
                }
            )
        return rows

    def write(self, prefix: str, extra: dict[str, Any] | None = None, **window: Any) -> None:
        """``<prefix>_glm_metrics.json`` and ``<prefix>_glm_timeseries.csv``."""
        summary = self.summary(**window)
        summary.update(extra or {})
        Path(f"{prefix}_glm_metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        with open(f"{prefix}_glm_timeseries.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=TIMESERIES_FIELDS)
            w.writeheader()
            for row in self.timeseries():
                w.writerow({k: ("" if row[k] is None else row[k]) for k in TIMESERIES_FIELDS})
