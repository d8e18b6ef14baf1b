"""glmserve.bounds: the step's GEMM shapes, their timing (on the CPU here) and which limit
binds."""

from __future__ import annotations

import pytest
import torch

from glmserve.bounds import bound_tokens_per_s, compute_seconds, gemm_seconds, linear_shapes
from glmserve.config import REAL_CONFIG

TINY = {"hidden_size": 32, "inner_hidden_size": 128, "vocab_size": 100, "num_layers": 3}


def test_shapes_cover_every_weight_of_a_step():
    shapes = linear_shapes(REAL_CONFIG)
    params = sum(s.out * s.inp * s.count for s in shapes)
    h, i, v, n = 4096, 16384, REAL_CONFIG["vocab_size"], 28
    assert params == n * (3 * h * h + h * h + 2 * h * i) + v * h
    assert [s.name for s in shapes] == ["qkv", "dense", "h_to_4h", "4h_to_h", "lm_head"]


def test_gemm_seconds_grows_with_the_token_count():
    small = gemm_seconds(torch, TINY, 1, device="cpu", reps=3)
    assert small > 0
    big = min(
        gemm_seconds(
            torch,
            {**TINY, "hidden_size": 256, "inner_hidden_size": 1024},
            512,
            device="cpu",
            reps=3,
        )
        for _ in range(2)
    )
    assert big > small


def test_compute_time_scales_the_rate_at_256_tokens(monkeypatch):
    """Below 256 tokens the compute time is B / 256 of the time at 256 (cuBLAS at M = 1 is
    bound by reading the weights, not by FLOPs); from 256 on it is the time at B."""
    import glmserve.bounds as b

    asked = []

    def fake(torch, cfg, counts, device, reps):
        asked.append(counts)
        return {m: 0.002 * m / 256 + 0.001 for m in counts}  # 3 ms at 256, 5 ms at 512

    monkeypatch.setattr(b, "gemm_seconds_each", fake)
    got = compute_seconds(torch, TINY, [1, 64, 256, 512], device="cpu")
    assert asked == [[256, 512]]
    assert got[1] == pytest.approx(0.003 / 256)
    assert got[64] == pytest.approx(0.003 / 4)
    assert got[256] == pytest.approx(0.003)
    assert got[512] == pytest.approx(0.005)


@pytest.mark.parametrize(
    "gemm_s, want",
    [(0.001, ("memory", 256 / 0.005)), (0.010, ("GEMM", 256 / 0.010))],
)
def test_the_slower_limit_binds(gemm_s, want):
    tps, which = bound_tokens_per_s(256, weight_bytes=10e9, bandwidth=2e12, gemm_s=gemm_s)
    assert which == want[0]
    assert tps == pytest.approx(want[1])


def test_bench_table_gives_each_batch_its_share_of_the_bound():
    from glmserve.bench import table

    row = dict(
        tokens_per_s=200.0,
        decode_tokens_per_s=210.0,
        ms_per_step=4.8,
        ttft_ms=20.0,
        gpu_mem_gib=13.0,
    )
    rows = [{"batch": 1, **row}, {"batch": 256, **row, "decode_tokens_per_s": 21000.0}]
    info = {"bw": 3e12, "wbytes": 12.5e9, "bound": 240.0, "frac": 0.875}
    info["bounds"] = {1: (240.0, "memory"), 256: (30000.0, "GEMM")}
    lines = table(rows, {}, info).splitlines()
    assert lines[2].endswith("| 240 (memory) | 88% |")
    assert lines[3].endswith("| 30,000 (GEMM) | 70% |")
    assert "batch 1 reached 88% of it" in lines[-1]


def test_bench_table_without_batch_1_claims_no_share_for_it():
    """A run without batch 1 (e.g. --batches 256 --profile) has no batch-1 share to
    report; it used to print 'batch 1 reached 0% of it'."""
    from glmserve.bench import table

    row = dict(tokens_per_s=2e4, decode_tokens_per_s=2.1e4, ms_per_step=11.0, ttft_ms=100.0)
    info = {"bw": 3e12, "wbytes": 12.5e9, "bound": 240.0, "frac": None}
    info["bounds"] = {256: (30000.0, "GEMM")}
    md = table([{"batch": 256, **row, "gpu_mem_gib": 33.0}], {}, info)
    assert "batch 1 reached" not in md
    assert "so the batch-1 bound is 240 tokens/s (4.17 ms/step). The bound" in md


def test_timeline_idle_whole_window_and_steady_state():
    """glmserve.bench_common's GPU-idle measure: overlapping events merge, gaps between
    them are idle; the steady-state window clips events and counts its own edges."""
    from glmserve.bench_common import describe_idle, timeline_idle

    # events (us): a 100-us start gap is the window's edge, then 10-us gaps between steps
    # (320, 330) runs inside (310, 400): another stream's kernel, no gap
    iv = [(0, 10), (110, 200), (150, 300), (310, 400), (320, 330), (410, 500), (500, 600)]
    whole = timeline_idle(iv)
    assert whole["span"] == 600
    assert whole["busy"] == 10 + 190 + 90 + 90 + 100
    assert whole["gaps"] == [100, 10, 10]
    inner = timeline_idle(iv, 120, 580)  # the edges cut off
    assert inner["span"] == 460 and inner["gaps"] == [10, 10]
    assert inner["busy"] == 440
    assert "idle 0.02 ms = 4.3% of the span (0 gaps > 20 us" in describe_idle(inner)
    assert timeline_idle(iv, 101, 109) == {"span": 8, "busy": 0.0, "gaps": [8]}
