"""load_tests/http_bench.py: statistics, SSE parsing, workloads; one live smoke run."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "load_tests"))

import http_bench as hb  # noqa: E402


def test_percentile_interpolates() -> None:
    assert hb.percentile([], 50) is None
    assert hb.percentile([7.0], 99) == 7.0
    assert hb.percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)
    assert hb.percentile(list(range(101)), 99) == pytest.approx(99.0)


def test_sse_lines_and_token_counts() -> None:
    assert hb.parse_sse_line(b"\n") is None
    assert hb.parse_sse_line(b": comment\n") is None
    scalar = hb.parse_sse_line(b'data: {"output_ids":518,"prev_ids":[],"is_final":false}\n')
    listed = hb.parse_sse_line('data: {"output_ids":[1,2,3],"prev_ids":518}')
    empty = hb.parse_sse_line('data: {"output_ids":[],"is_final":true}')
    assert hb.event_tokens(scalar, hb.DECODER) == 1  # Triton sends one id as a bare number
    assert hb.event_tokens(listed, hb.DECODER) == 3
    assert hb.event_tokens(empty, hb.DECODER) == 0
    text = hb.parse_sse_line('data: {"text_output":"变","model_name":"chatglm"}')
    assert hb.event_tokens(text, "chatglm") == 1
    assert "error" in hb.parse_sse_line('data: {"error":"max_tokens: 0 is out of range"}')


def test_summarize_windows_failures_and_latencies() -> None:
    t0 = 1000.0
    ok = hb.Rec(
        arrival=t0,
        sent=t0 + 0.5,
        first=t0 + 1.0,
        end=t0 + 2,
        tokens=3,
        expected=3,
        itl=[10.0, 30.0],
    )
    short = hb.Rec(arrival=t0, sent=t0, first=t0 + 0.1, end=t0 + 1, tokens=2, expected=3, itl=[1.0])
    err = hb.Rec(arrival=t0, sent=t0, end=t0 + 1, error="HTTP 400")
    s = hb.summarize([ok, short, err], {0: 100, 1: 40, 2: 60, 5: 999}, t0, (1, 3))
    assert (s["requests"], s["failures"], s["tokens"]) == (1, 2, 5)
    assert s["tokens_per_s"] == pytest.approx(50.0)  # seconds 1 and 2 only
    assert s["ttft_ms_p50"] == pytest.approx(1000.0)  # from arrival
    assert s["ttft_sent_ms_p50"] == pytest.approx(500.0)
    assert s["itl_ms_p50"] == pytest.approx(20.0)  # failed requests' samples left out
    assert "HTTP 400" in s["errors"] and "short: 2/3" in s["errors"]


def test_workloads_and_bodies(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(
        json.dumps(
            {
                "vocab_size": 1024,
                "gmask_token_id": 681,
                "bos_token_id": 684,
                "mask_token_id": 680,
                "eos_token_id": 685,
                "pad_token_id": 3,
            }
        )
    )
    ids = hb.Ids.from_config(cfg)
    p = ids.prompt(16, random.Random(1))
    assert len(p) == 18 and p[-2:] == [681, 684]
    assert all(5 <= x < 1024 and x not in ids.special for x in p[:-2])
    body = json.loads(hb.body_for(hb.seed_job(random.Random(0)), hb.DECODER, ids))
    assert body["max_tokens"] == 150 and body["ignore_eos"] and body["stream"]
    assert len(body["input_ids"]) == 18
    assert "text_input" in json.loads(hb.body_for(hb.Job(5, 7), "chatglm", ids))
    jobs = hb.poisson_jobs(rate=50.0, duration=20.0, seed=3)
    assert 700 < len(jobs) < 1300  # ~1000 expected
    assert all(a.arrival < b.arrival for a, b in zip(jobs, jobs[1:], strict=False))
    assert all(16 <= j.prompt_len <= 1024 and 32 <= j.max_tokens <= 256 for j in jobs)
    assert hb.split(10, 3) == [4, 3, 3] and sum(hb.split(256, 8)) == 256


def test_markdown_tables() -> None:
    row = hb.summarize([], {}, 0.0, (0, 1)) | {"concurrency": 4}
    md = hb.markdown({"mode": "sweep", "rows": [row]})
    assert md.splitlines()[2].startswith("| 4 | 0 |")


@pytest.mark.server
def test_live_sweep_and_static(triton_server, tmp_path: Path) -> None:
    cfg = str(ROOT / "models" / "chatglm-tiny" / "config.json")
    common = [
        "--url",
        triton_server.http_url,
        "--config",
        cfg,
        "--out",
        str(tmp_path),
        "--procs",
        "2",
    ]
    assert hb.main(["sweep", "--conc", "2", "-d", "3", "--warmup", "1", *common]) == 0
    rows = json.loads((tmp_path / "sweep.json").read_text())["rows"]
    assert rows[0]["failures"] == 0 and rows[0]["requests"] > 0
    assert rows[0]["tokens"] == 150 * rows[0]["requests"]  # exactly 150 ids each (ignore_eos)
    assert (tmp_path / "sweep.md").read_text().count("|") > 10
    args = hb.parse_args(["inflight-vs-static", "--conc", "2", "--rate", "4", "-d", "3", *common])
    for mode in ("inflight", "static"):
        res = hb.poisson_run(args, mode, hb.poisson_jobs(4.0, 3.0, 0), 2, 3.0)
        assert res.recs and all(r.ok for r in res.recs), mode
