"""Unit tests of the load-test library: stats, prompt sets, workload, transports, summary,
sweep report."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]

from helpers.client_fakes import FakeGrpcServer, Script  # noqa: E402

from load_tests.prompts import (  # noqa: E402
    chat_set,
    estimate_tokens,
    load_jsonl,
    load_set,
    mixed_set,
    seed_set,
)
from load_tests.report import load_direct, render  # noqa: E402
from load_tests.runner import split  # noqa: E402
from load_tests.stats import Meter, Record, percentile  # noqa: E402
from load_tests.streaming import Stream, grpc_response  # noqa: E402
from load_tests.summarize import summarize  # noqa: E402
from load_tests.workload import Request, next_batch, poisson_arrivals  # noqa: E402

GOLDEN = ROOT.parent / "shared" / "golden" / "tokenizer_cases.json"


def test_percentile_interpolates() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile(list(range(101)), 99) == 99


def test_meter_counts_tokens_latencies_and_partial_requests() -> None:
    m = Meter()
    # perf-counter clock at 100, wall clock at 1000: offset 900.
    m.add(Record(100.0, [100.2, 100.3, 100.5], 100.6), True, offset=900.0)
    m.add(Record(101.0, [101.1], 101.2), False, offset=900.0)
    m.add(Record(101.5, [101.6, 101.8], 101.9), None, offset=900.0)  # cut off by the end
    s = m.summary(start=1000.0, stop=1002.0)
    assert s["tokens"] == 6 and s["tokens_per_s"] == 3.0
    assert s["requests"] == 1 and s["failures"] == 1
    assert s["ttft_ms"]["n"] == 3 and s["ttft_ms"]["p50"] == pytest.approx(100.0)
    assert sorted(round(v) for _, v in m.itl) == [100, 200, 200]
    rows = m.timeseries()
    assert [r["time"] for r in rows] == [1000, 1001]
    assert [r["tokens"] for r in rows] == [3, 3]


def test_meter_drain_and_merge_like_locust_workers() -> None:
    a, b, master = Meter(), Meter(), Meter()
    a.add(Record(0.0, [0.5, 1.5], 2.0), True, offset=10.0)
    b.add(Record(5.0, [5.5], 6.0), True, offset=6.0)
    for worker in (a, b):
        master.merge(json.loads(json.dumps(worker.drain())))  # as sent over the wire
    assert a.summary()["tokens"] == 0  # drained
    s = master.summary()
    assert s["tokens"] == 3 and s["requests"] == 2
    assert master.first == 10.0 and master.last == 12.0


def test_seed_set_is_150_tokens_with_ignore_eos() -> None:
    (conv,) = seed_set()
    assert conv.max_tokens == 150 and conv.ignore_eos and len(conv.turns) == 1


def test_mixed_set_lengths_and_languages() -> None:
    convs = mixed_set(60, seed=1, count=estimate_tokens)
    assert all(16 <= c.prompt_tokens <= 1024 for c in convs)
    assert all(estimate_tokens(c.turns[0]) == c.prompt_tokens for c in convs)
    assert all(32 <= c.max_tokens <= 256 and c.ignore_eos for c in convs)
    assert {c.lang for c in convs} == {"zh", "en"}
    lengths = [c.prompt_tokens for c in convs]
    assert min(lengths) < 64 and max(lengths) > 512  # spans the range
    assert [c.turns for c in mixed_set(5, seed=1, count=estimate_tokens)] == [
        c.turns for c in convs[:5]
    ]


def test_chat_set_is_multi_turn() -> None:
    convs = chat_set()
    assert all(len(c.turns) >= 3 for c in convs)
    assert {c.lang for c in convs} == {"zh", "en"}


@pytest.mark.skipif(not GOLDEN.is_file(), reason=f"{GOLDEN} not present")
def test_token_estimate_is_close_to_the_real_tokenizer() -> None:
    cases = json.loads(GOLDEN.read_text())["cases"]
    longest = max(cases, key=lambda c: len(c["ids"]))
    real = len(longest["ids"]) - 2
    assert abs(estimate_tokens(longest["text"]) - real) <= 0.25 * real


def test_prompt_files(tmp_path: Path) -> None:
    good = tmp_path / "p.jsonl"
    good.write_text(
        '{"prompt": "hi", "max_tokens": 8, "turns": ["more"]}\n\n'
        '{"prompt": "q", "history": [["a", "b"]], "ignore_eos": true}\n',
        encoding="utf-8",
    )
    convs = load_set(str(good))
    assert [c.turns for c in convs] == [["hi", "more"], ["q"]]
    assert convs[1].history == [["a", "b"]] and convs[1].ignore_eos
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"max_tokens": 3}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_jsonl(bad)
    with pytest.raises(ValueError, match="unknown prompt set"):
        load_set("nonexistent")


def test_summary_and_plot_from_a_run(tmp_path: Path) -> None:
    m = Meter()
    rng = random.Random(0)
    for i in range(20):
        t0 = 50.0 + i * 0.5
        times = [t0 + 0.1 + 0.02 * k + rng.random() * 0.001 for k in range(10)]
        m.add(Record(t0, times, times[-1]), i != 3, offset=950.0)
    m.write(str(tmp_path / "locust"), start=1000.0, stop=1011.0)
    (tmp_path / "locust_failures.csv").write_text(
        "Method,Name,Error,Occurrences\ngRPC,generate seed,RuntimeError('boom'),1\n"
    )
    md = summarize(tmp_path, {"users": "8"})
    assert "| tokens/s (aggregate) | 18.2 |" in md  # 200 tokens / 11 s
    assert "| failures | 1 |" in md and "boom" in md
    assert (tmp_path / "summary.md").read_text() == md
    assert (tmp_path / "throughput_latency.png").stat().st_size > 10_000


def test_split_and_static_batches() -> None:
    assert split(10, 4) == [3, 3, 2, 2] and split(2, 4) == [1, 1, 0, 0]
    arrivals = [0.0, 0.1, 0.2, 5.0, 5.1]
    assert next_batch(arrivals, 0, 0.15, 8) == 2  # only those that arrived
    assert next_batch(arrivals, 0, 1.0, 2) == 2  # at most the batch size
    assert next_batch(arrivals, 2, 9.0, 8) == 5


def test_poisson_arrivals_rate() -> None:
    a = poisson_arrivals(4000, 10.0, 100.0, seed=3)
    assert a == sorted(a) and a[0] > 100.0
    assert (a[-1] - 100.0) / 4000 == pytest.approx(0.1, rel=0.1)


def test_sweep_report_has_ratio_and_speedup() -> None:
    row = {
        "concurrency": 8,
        "tokens_per_s": 850.0,
        "requests_per_s": 5.0,
        "failures": 0,
        "errors": [],
        "ttft_ms": {"p50": 20.0, "p99": 40.0},
        "itl_ms": {"p50": 9.0, "p99": 12.0},
    }
    cmp = [
        dict(row, mode=m, rate=3.0, requests=10, makespan_s=9.0, tokens_per_s=t)
        for m, t in (("inflight", 900.0), ("static", 450.0))
    ]
    result = {
        "server": "test",
        "when": "now",
        "procs": 1,
        "note": "",
        "duration_s": 1.0,
        "direct": {"8": 1000.0},
        "sweep": [row],
        "compare": cmp,
    }
    md = render(result)
    assert "| 8 | 850.0 | 1000.0 | 85% |" in md
    assert "In-flight / static throughput: 2.00x." in md


def test_direct_figures_from_bench_output(tmp_path: Path) -> None:
    md = tmp_path / "bench.md"
    rows = [{"batch": 1, "tokens_per_s": 110.5}, {"batch": 256, "tokens_per_s": 9000.0}]
    md.write_text("| table |\n\n```json\n" + json.dumps({"device": "x", "rows": rows}) + "\n```\n")
    assert load_direct(md) == {"1": 110.5, "256": 9000.0}
    plain = tmp_path / "d.json"
    plain.write_text('{"8": 800}')
    assert load_direct(plain) == {"8": 800.0}


class _FakeResult:
    """A tritonclient gRPC InferResult stand-in: outputs by name."""

    def __init__(self, **outputs: np.ndarray) -> None:
        self.outputs = outputs

    def as_numpy(self, name: str) -> np.ndarray | None:
        return self.outputs.get(name)


def _text(s: str) -> np.ndarray:
    return np.array([[s.encode("utf-8")]], dtype=np.object_)


def test_stream_tokens_sum_token_count_of_merged_responses() -> None:
    # One response per step, then one carrying 3 merged steps, then the empty final one.
    script = Script(pieces=["a", "bcd"], token_counts=[1, 3], delay=0.05)
    with FakeGrpcServer(script) as fake:
        stream = Stream("grpc", fake.url, timeout=10)
        rec = stream.send(Request("x", 4))
        stream.close()
    assert rec.error is None and rec.failure is None
    assert rec.tokens == 4 and stream.tokens_seen == 4
    t = rec.token_times
    assert t[0] < t[1] == t[2] == t[3]  # the merged tokens share their response's time
    assert rec.itls[0] > 0.03 and rec.itls[1:] == [0.0, 0.0]
    assert rec.text == "abcd"
    assert grpc_response(
        _FakeResult(text_output=_text("bcd"), token_count=np.array([[3]], np.int32))
    ) == (3, "bcd")


def test_stream_tokens_fall_back_to_responses_without_token_count() -> None:
    with FakeGrpcServer(Script(pieces=["x", "", "y"])) as fake:
        stream = Stream("grpc", fake.url, timeout=10)
        rec = stream.send(Request("q", 3))
        stream.close()
    assert rec.tokens == 3 and rec.text == "xy" and rec.failure is None
    assert grpc_response(_FakeResult(text_output=_text("z"))) == (1, "z")


def test_stream_failures_are_recorded() -> None:
    script = Script(pieces=["a"], error="in-flight request failed: out of memory")
    with FakeGrpcServer(script) as fake:
        stream = Stream("grpc", fake.url, timeout=10)
        failed = stream.send(Request("q", 8))
        script.error = None
        short = stream.send(Request("q", 8))  # ignore_eos: 8 tokens expected, 1 came
        stream.close()
    assert failed.failure == "in-flight request failed: out of memory" and failed.tokens == 1
    assert short.error is None and short.failure == "expected 8 tokens (ignore_eos), got 1"


def test_decoder_target_counts_output_ids() -> None:
    assert grpc_response(_FakeResult(output_ids=np.array([[5, 6, 7]], np.int32))) == (3, "")
    assert grpc_response(_FakeResult(output_ids=np.array([[8]], np.int32))) == (1, "")
    assert grpc_response(_FakeResult()) == (0, "")  # the empty final response
