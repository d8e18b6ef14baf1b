"""glmserve.serving_report: the summary table of scripts/gpu.sh serving."""

from __future__ import annotations

import json

from glmserve import serving_report as sr


def _point(conc: int) -> dict:
    return {
        "concurrency": conc, "tokens_per_s": 100.4 * conc, "tokens_per_s_whole": 90.6 * conc,
        "ttft_ms_p50": 5.04, "ttft_ms_p99": 9.96, "itl_ms_p50": 1.234, "itl_ms_p99": 2.345,
        "requests": 10, "failures": 0, "client_cpu_max_frac": 0.25,
    }  # fmt: skip


def test_summary_orders_by_concurrency(tmp_path):
    for c in (64, 8, 256):
        (tmp_path / f"sweep_c{c}.json").write_text(json.dumps({"rows": [_point(c)]}))
    lines = sr.summary(tmp_path)
    assert lines[0] == sr.HEADER
    assert [line.split("|")[1].strip() for line in lines[1:]] == ["8", "64", "256"]
    assert lines[1] == "| 8 | 803 | 725 | 5.0/10.0 | 1.23/2.35 | 10 | 0 | 0.25 |"


def test_inflight_vs_static(tmp_path, capsys):
    r = {
        "inflight": {"tokens_per_s": 2000.2, "ttft_ms_p99": 50.0, "failures": 0},
        "static": {"tokens_per_s": 1000.0, "ttft_ms_p99": 900.0, "failures": 1},
        "throughput_ratio": 2.0,
    }
    (tmp_path / "inflight_vs_static.json").write_text(json.dumps(r))
    assert sr.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        sr.HEADER,
        "inflight: 2000 tok/s, TTFT p99 50.0 ms, fail 0",
        "static: 1000 tok/s, TTFT p99 900.0 ms, fail 1",
        "ratio 2.0",
    ]
