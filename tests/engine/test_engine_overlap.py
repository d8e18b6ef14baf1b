"""Overlapped stepping (EngineOptions.overlap_steps, the default): the engine plans and
launches step n+1 before it learns the ids of step n, which stay with the back-end and
feed step n+1 there (SeqBatchEntry.prev_row). The CPU runner launches synchronously but
follows the same protocol (ids fed by row, learnt one collect later), so these tests
drive the engine's overlapped loop by hand with step() and compare it with synchronous
stepping (overlap_steps=False) event by event."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.engine_util import BOS, GMASK, engine_module, prompt, write_checkpoint
from helpers.torch_threads import one_thread


@pytest.fixture(scope="module")
def _engine():
    return engine_module()


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("overlap"), seed=31)


def make(_engine, ckpt, overlap: bool, **kw):
    return _engine.Engine(str(ckpt), num_threads=1, overlap_steps=overlap, **kw)


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [prompt(rng, 3 + (7 * i) % 11, 50, GMASK, BOS) for i in range(n)]


class Recorder:
    """Every event, in order; a callback may act on an event (cancel, say)."""

    def __init__(self, on_event=None):
        self.events: list[dict] = []
        self.on_event = on_event

    def __call__(self, ev: dict) -> None:
        self.events.append(ev)
        if self.on_event:
            self.on_event(ev)

    def of(self, rid: int, choice: int | None = None) -> list[dict]:
        return [
            e
            for e in self.events
            if e["request_id"] == rid and (choice is None or e["choice"] == choice)
        ]

    def tokens(self, rid: int, choice: int = 0) -> list[int]:
        return [t for e in self.of(rid, choice) for t in e["new_tokens"]]

    def per_choice(self) -> dict[tuple[int, int], list[tuple]]:
        """What a client sees of each choice, without the interleaving of requests."""
        out: dict[tuple[int, int], list[tuple]] = {}
        for e in self.events:
            lps = [
                (lp["logprob"], tuple(lp["top_ids"]), tuple(lp["top_logprobs"]))
                for lp in e["logprobs"]
            ]
            out.setdefault((e["request_id"], e["choice"]), []).append(
                (
                    tuple(e["new_tokens"]),
                    tuple(lps),
                    e["choice_finished"],
                    e["finished"],
                    e["reason"],
                    e["completion_tokens"],
                    e["trim_bytes"],
                )
            )
        return out


def run_until_idle(eng, limit: int = 10_000) -> int:
    for calls in range(1, limit):
        if not eng.step():
            return calls
    raise AssertionError("engine did not become idle")


def run_joining(eng, ps, max_tokens, rec, **kw) -> None:
    """One request joins before every step; stepping goes on until the engine is idle."""
    for i, p in enumerate(ps):
        eng.submit(i, p, rec, max_tokens=max_tokens[i], **kw)
        eng.step()
    run_until_idle(eng)


def test_ids_are_learnt_one_step_later(_engine, ckpt):
    p = prompts(1)[0]
    for overlap, seen_after_first_step in ((True, 0), (False, 1)):
        eng = make(_engine, ckpt, overlap)
        rec = Recorder()
        eng.submit(1, p, rec, max_tokens=4, ignore_eos=True)
        assert eng.step()
        assert len(rec.tokens(1)) == seen_after_first_step, overlap
        run_until_idle(eng)
        assert len(rec.tokens(1)) == 4
        stats = eng.stats()
        # max_tokens is known ahead: no step is launched for a fifth id.
        assert stats["steps"] == 4 and stats["tokens_generated"] == 4, (overlap, stats)
        assert stats["kv_blocks_used"] == 0


@pytest.mark.parametrize(
    "kw",
    [
        dict(ignore_eos=True),
        dict(ignore_eos=True, temperature=0.9, top_k=20, top_p=0.9, seed=5, logprobs=2),
        dict(ignore_eos=True, temperature=0.7, seed=9, n=3),
        # the penalties need every previous id on the host: those steps run synchronously
        dict(ignore_eos=True, repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.2),
    ],
    ids=["greedy", "sampled-logprobs", "three-choices", "penalties"],
)
def test_joins_and_leaves_at_every_step_match_synchronous(_engine, ckpt, kw):
    ps = prompts(12, seed=1)
    max_tokens = [2 + (5 * i) % 7 for i in range(len(ps))]  # leaves at most steps
    got = {}
    for overlap in (True, False):
        eng = make(_engine, ckpt, overlap)
        rec = Recorder()
        run_joining(eng, ps, max_tokens, rec, **kw)
        got[overlap] = rec.per_choice()
        stats = eng.stats()
        n = kw.get("n", 1)
        assert stats["tokens_generated"] == n * sum(max_tokens), overlap
        assert stats["kv_blocks_used"] == 0 and stats["running"] == 0
        for i in range(len(ps)):
            for c in range(n):
                assert len(rec.tokens(i, c)) == max_tokens[i]
            assert [e["finished"] for e in rec.of(i)].count(True) == 1
    assert got[True] == got[False]
    if "temperature" not in kw and "repetition_penalty" not in kw:
        # greedy: each request's ids are its ids alone
        alone = make(_engine, ckpt, True)
        for i, p in enumerate(ps):
            want = alone.generate([p], max_tokens=max_tokens[i], ignore_eos=True)[0]
            assert [t for e in got[True][(i, 0)] for t in e[0]] == want


def test_a_stop_found_one_step_late_never_streams_the_extra_token(_engine, ckpt):
    ps = prompts(3, seed=2)
    greedy = make(_engine, ckpt, False).generate(ps, max_tokens=12, ignore_eos=True)
    stop = greedy[0][4]
    j = greedy[0].index(stop)
    seen, steps = {}, {}
    for overlap in (True, False):
        eng = make(_engine, ckpt, overlap)
        rec = Recorder()
        for i, p in enumerate(ps):
            eng.submit(i, p, rec, max_tokens=12, ignore_eos=True, stop_token_ids=[stop])
        run_until_idle(eng)
        seen[overlap] = rec.per_choice()
        steps[overlap] = eng.stats()["steps"]
        assert rec.of(0)[-1]["reason"] == "stop"
        streamed = rec.tokens(0)
        # what the client sees ends at the stop id: never the id after it
        assert streamed == greedy[0][: len(streamed)] and len(streamed) <= j + 1
        assert rec.of(0)[-1]["completion_tokens"] == j + 1
        assert eng.stats()["kv_blocks_used"] == 0
    assert seen[True] == seen[False]
    # the overlapped engine did launch the step after the stop (its id was dropped)
    assert steps[True] >= steps[False]


def test_cancel_while_the_next_step_runs(_engine, ckpt):
    """The callback of request 0's third id cancels it: with overlap the step that samples
    its fourth id is already launched then. That id is dropped; the others go on."""
    ps = prompts(2, seed=3)
    alone = make(_engine, ckpt, False).generate([ps[1]], max_tokens=10, ignore_eos=True)[0]
    for overlap in (True, False):
        eng = make(_engine, ckpt, overlap)

        def on_event(ev, eng=eng):
            if ev["request_id"] == 0 and ev["completion_tokens"] == 3 and not ev["finished"]:
                eng.cancel(0)

        rec = Recorder(on_event)
        for i, p in enumerate(ps):
            eng.submit(i, p, rec, max_tokens=10, ignore_eos=True)
        run_until_idle(eng)
        last = rec.of(0)[-1]
        assert last["finished"] and last["reason"] == "cancelled", overlap
        assert len(rec.tokens(0)) == 3 and last["completion_tokens"] == 3, overlap
        assert rec.tokens(1) == alone
        stats = eng.stats()
        assert stats["kv_blocks_used"] == 0 and stats["tokens_generated"] == 13, (overlap, stats)


def test_cancel_from_another_thread_with_the_background_loop(_engine, ckpt):
    import threading

    eng = make(_engine, ckpt, True)
    done = threading.Event()
    rec = Recorder(lambda ev: ev["finished"] and done.set())
    eng.start()
    try:
        eng.submit(0, prompts(1, seed=4)[0], rec, max_tokens=60, ignore_eos=True)
        while len(rec.tokens(0)) < 5:
            assert not done.wait(0.001)
        eng.cancel(0)
        assert done.wait(30)
    finally:
        eng.stop()
    last = rec.events[-1]
    assert last["finished"] and last["reason"] == "cancelled"
    assert 5 <= len(rec.tokens(0)) < 60 and last["completion_tokens"] == len(rec.tokens(0))
    assert eng.stats()["kv_blocks_used"] == 0
