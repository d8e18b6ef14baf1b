"""Aggregate metrics of a load test: tokens/s, TTFT and ITL, over time.

A ``Meter`` collects finished requests. In Locust's distributed mode each worker
ships ``drain()`` to the master (``report_to_master``), which ``merge``s it.
Times are wall-clock seconds (``time.time``) so that processes agree.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear interpolation; None for no values."""
    if not values:
        return None
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class Meter:
    """Per-second token counts plus every TTFT and ITL sample (milliseconds)."""

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

    def add(
        self,
        wall_start: float,
        start: float,
        token_times: list[float],
        end: float,
        ok: bool | None,
    ) -> None:
        """One request; ``start``/``token_times``/``end`` on any monotonic clock,
        ``wall_start`` the wall-clock time of ``start``. ``ok`` None: cut off by the
        end of the test (its tokens count, the request does not)."""
        offset = wall_start - start
        for t in token_times:
            self.tokens[int(t + offset)] += 1
        if token_times:
            self.ttft.append((token_times[0] + offset, (token_times[0] - start) * 1e3))
            for a, b in zip(token_times, token_times[1:], strict=False):
                self.itl.append((b + offset, (b - a) * 1e3))
        sec = int(end + offset)
        if ok is not None:
            (self.done if ok else self.failed)[sec] += 1
        self._span(wall_start, end + offset)

    def drain(self) -> dict[str, Any]:
        """Everything collected since the last drain, as plain data (and reset)."""
        data = {
            "tokens": dict(self.tokens),
            "done": dict(self.done),
            "failed": dict(self.failed),
            "ttft": self.ttft,
            "itl": self.itl,
            "first": self.first,
            "last": self.last,
        }
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
        ttft = [v for _, v in self.ttft]
        itl = [v for _, v in self.itl]

        def stats(vals: list[float]) -> dict[str, float | None]:
            mean = sum(vals) / len(vals) if vals else None
            return {
                "p50": percentile(vals, 50),
                "p90": percentile(vals, 90),
                "p99": percentile(vals, 99),
                "mean": mean,
                "n": len(vals),
            }

        return {
            "duration_s": duration,
            "tokens": total,
            "tokens_per_s": total / duration if duration > 0 else 0.0,
            "requests": sum(self.done.values()),
            "failures": sum(self.failed.values()),
            "ttft_ms": stats(ttft),
            "itl_ms": stats(itl),
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
        rows = self.timeseries()
        fields = [
            "time",
            "tokens",
            "requests",
            "failures",
            "ttft_p50_ms",
            "ttft_p99_ms",
            "itl_p50_ms",
            "itl_p99_ms",
        ]
        with open(f"{prefix}_glm_timeseries.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for row in rows:
                w.writerow({k: ("" if row[k] is None else row[k]) for k in fields})
