"""Engine behaviour through glmserve._engine on small random checkpoints: streaming
callbacks, stop reasons, cancellation, KV blocks returned, waiting on a tiny cache,
the bounded queue, the background loop, and the fault path."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from helpers.engine_util import BOS, EOS, GMASK, engine_module, prompt, write_checkpoint


@pytest.fixture(scope="module")
def _engine():
    return engine_module()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("small"), seed=11)


@pytest.fixture(scope="module")
def eos_ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("eos"), seed=12, force_eos=True)


def prompts(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [prompt(rng, n, 50, GMASK, BOS) for n in lengths]


class Collector:
    """Records every event per request; checks 'finished exactly once, last'."""

    def __init__(self):
        self.events: dict[int, list[dict]] = {}
        self.lock = threading.Lock()
        self.all_done = threading.Event()
        self.expected = 0

    def __call__(self, ev: dict) -> None:
        with self.lock:
            evs = self.events.setdefault(ev["request_id"], [])
            assert not (evs and evs[-1]["finished"]), "event after the final one"
            evs.append(ev)
            if sum(1 for e in self.events.values() if e[-1]["finished"]) == self.expected:
                self.all_done.set()

    def tokens(self, rid: int) -> list[int]:
        return [t for e in self.events[rid] for t in e["new_tokens"]]

    def reason(self, rid: int) -> str:
        last = self.events[rid][-1]
        assert last["finished"]
        return last["reason"]


def run_until_idle(eng, limit=10_000):
    for _ in range(limit):
        if not eng.step():
            return
    raise AssertionError("engine did not become idle")


def test_streaming_events_match_generate(_engine, ckpt):
    eng = _engine.Engine(str(ckpt), num_threads=1)
    ps = prompts([2, 7, 4])
    want = eng.generate(ps, max_tokens=9, ignore_eos=True)
    col = Collector()
    col.expected = len(ps)
    for i, p in enumerate(ps):
        eng.submit(i, p, col, max_tokens=9, ignore_eos=True)
    run_until_idle(eng)
    for i in range(len(ps)):
        evs = col.events[i]
        assert len(evs) == 9 and all(len(e["new_tokens"]) == 1 for e in evs)
        assert [e["finished"] for e in evs] == [False] * 8 + [True]
        assert col.tokens(i) == want[i]
        assert col.reason(i) == "length" and evs[-1]["error"] == ""
    st = eng.stats()
    assert st["kv_blocks_used"] == 0 and st["requests_finished"] >= 6
    assert st["max_batch_seen"] == 3


def test_stops_at_eos_unless_ignored(_engine, eos_ckpt):
    eng = _engine.Engine(str(eos_ckpt), num_threads=1)
    p = prompts([5])[0]
    assert eng.generate([p], max_tokens=10) == [[EOS]]
    assert eng.generate([p], max_tokens=4, ignore_eos=True) == [[EOS] * 4]
    col = Collector()
    col.expected = 1
    eng.submit(1, p, col, max_tokens=10)
    run_until_idle(eng)
    assert col.reason(1) == "eos"


def test_blocks_free_after_cancels(_engine, ckpt):
    eng = _engine.Engine(str(ckpt), num_threads=1, block_size=4, num_kv_blocks=6)
    col = Collector()
    col.expected = 4
    ps = prompts([6, 6, 6, 6], seed=1)
    for i, p in enumerate(ps):
        eng.submit(i, p, col, max_tokens=15, ignore_eos=True)
    eng.step()
    eng.step()
    st = eng.stats()
    assert st["running"] >= 1 and st["waiting"] >= 1 and st["kv_blocks_used"] > 0
    eng.cancel(0)  # running
    eng.cancel(3)  # still waiting
    eng.cancel(12345)  # unknown: ignored
    eng.step()
    assert col.reason(0) == "cancelled" and col.reason(3) == "cancelled"
    assert col.tokens(3) == []
    run_until_idle(eng)
    assert col.reason(1) == "length" and col.reason(2) == "length"
    assert eng.stats()["kv_blocks_used"] == 0
    eng.cancel(1)  # finished: ignored
    assert not eng.step()


def test_cancel_from_inside_a_callback(_engine, ckpt):
    eng = _engine.Engine(str(ckpt), num_threads=1)
    got = []

    def cb(ev):
        got.append(ev)
        if len(got) == 3:
            eng.cancel(ev["request_id"])

    eng.submit(5, prompts([3])[0], cb, max_tokens=50, ignore_eos=True)
    run_until_idle(eng)
    assert got[-1]["finished"] and got[-1]["reason"] == "cancelled"
    assert len(got) <= 4
    assert eng.stats()["kv_blocks_used"] == 0


def test_queue_served_with_a_tiny_cache(_engine, ckpt):
    """3 blocks of 4 tokens hold one sequence at a time; all 6 requests finish, same ids."""
    big = _engine.Engine(str(ckpt), num_threads=1)
    tiny = _engine.Engine(str(ckpt), num_threads=1, block_size=4, num_kv_blocks=3)
    ps = prompts([3, 5, 2, 6, 4, 1], seed=2)
    want = big.generate(ps, max_tokens=5, ignore_eos=True)
    assert tiny.generate(ps, max_tokens=5, ignore_eos=True) == want
    st = tiny.stats()
    assert st["kv_blocks_used"] == 0 and st["waiting"] == 0
    assert st["max_batch_seen"] < len(ps)


def test_request_that_never_fits_is_rejected(_engine, ckpt):
    eng = _engine.Engine(str(ckpt), num_threads=1, block_size=4, num_kv_blocks=2)
    with pytest.raises(ValueError, match="KV blocks"):
        eng.submit(1, prompts([5])[0], None, max_tokens=8)
    eng.submit(2, prompts([5])[0], None, max_tokens=2)  # 8 tokens = 2 blocks: fits
    run_until_idle(eng)


def test_bounded_queue_and_duplicate_ids(_engine, ckpt):
    eng = _engine.Engine(str(ckpt), num_threads=1, max_queue=2)
    p = prompts([3])[0]
    eng.submit(1, p, None, max_tokens=2)
    with pytest.raises(ValueError, match="duplicate request id"):
        eng.submit(1, p, None, max_tokens=2)
    eng.submit(2, p, None, max_tokens=2)
    with pytest.raises(_engine.EngineError, match="^queue full"):
        eng.submit(3, p, None, max_tokens=2)
    run_until_idle(eng)
    eng.submit(3, p, None, max_tokens=2)  # room again
    eng.submit(1, p, None, max_tokens=2)  # finished ids may be reused
    run_until_idle(eng)
    assert eng.stats()["requests_finished"] == 4


def test_background_loop_and_stop(_engine, ckpt):
    eng = _engine.Engine(str(ckpt), num_threads=1)
    col = Collector()
    col.expected = 3
    eng.start()
    try:
        for i, p in enumerate(prompts([2, 4, 3], seed=3)):
            eng.submit(i, p, col, max_tokens=6, ignore_eos=True)
        assert col.all_done.wait(60), "background loop did not finish the requests"
    finally:
        eng.stop()
    assert [col.reason(i) for i in range(3)] == ["length"] * 3
    # stop() ends pending requests as cancelled.
    pending = Collector()
    pending.expected = 1
    eng.submit(9, prompts([2])[0], pending, max_tokens=6)
    eng.stop()
    assert pending.reason(9) == "cancelled"
    assert eng.stats()["kv_blocks_used"] == 0


def test_injected_fault_fails_requests_and_marks_unhealthy(_engine, ckpt):
    eng = _engine.Engine(str(ckpt), num_threads=1)
    col = Collector()
    col.expected = 2
    eng.submit(1, prompts([3])[0], col, max_tokens=5, ignore_eos=True)
    eng.submit(2, prompts([4])[0], col, max_tokens=5, ignore_eos=True)
    eng.step()
    eng.inject_fault()
    eng.step()
    for rid in (1, 2):
        last = col.events[rid][-1]
        assert last["finished"] and last["reason"] == "error"
        assert "injected fault" in last["error"]
    st = eng.stats()
    assert not st["healthy"] and st["kv_blocks_used"] == 0 and st["running"] == 0
    with pytest.raises(ValueError, match="unhealthy"):
        eng.submit(3, prompts([3])[0], None)
    with pytest.raises(ValueError, match="unhealthy"):
        eng.generate([prompts([3])[0]], max_tokens=2)


def test_model_info_and_stats(_engine, ckpt):
    eng = _engine.Engine(str(ckpt), num_threads=1, block_size=8, num_kv_blocks=10)
    info = eng.model_info()
    assert info["vocab_size"] == 64 and info["num_layers"] == 2
    assert (info["eos_token_id"], info["bos_token_id"], info["gmask_token_id"]) == (EOS, BOS, GMASK)
    st = eng.stats()
    assert st["kv_blocks_total"] == 10 and st["healthy"] and st["steps"] == 0
