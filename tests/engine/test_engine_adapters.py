"""P-Tuning v2 prefix adapters in the C++ engine (CPU back-end, tiny demo model with two
adapters made by the converter from random checkpoints in the official recipe's format):
logits and greedy ids equal glmserve.reference with the same prefix; a mixed batch (two
adapters and none) equals each request alone; each adapter's prefix blocks are held once
(engine stats); n choices with an adapter; bad input."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.adapters_util import TINY_ADAPTERS as ADAPTERS
from helpers.adapters_util import tiny_with_adapters
from helpers.engine_util import engine_module

from glmserve.adapters import load_prefix
from glmserve.reference import ChatGLMModel, chunked_logits, generate


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_with_adapters(tmp_path_factory.mktemp("engine_adapters"))


@pytest.fixture(scope="module")
def reference(ckpt):
    torch.set_num_threads(1)
    return ChatGLMModel.from_pretrained(ckpt)


@pytest.fixture(scope="module")
def eng(ckpt):
    return engine_module().Engine(str(ckpt), num_threads=2, num_kv_blocks=128, block_size=16)


def prompts(cfg) -> list[list[int]]:
    g, b = cfg.gmask_token_id, cfg.bos_token_id
    return [[20, 31, 42, g, b], [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, g, b]]


def run(eng, jobs: list[tuple[list[int], str]], **sampling) -> list[list[int]]:
    """Submits every (prompt, adapter) at once (one batch), steps until done."""
    out: dict[int, list[int]] = {i: [] for i in range(len(jobs))}
    lock = threading.Lock()

    def cb(i):
        def f(ev):
            with lock:
                out[i] += ev["new_tokens"]

        return f

    base = run.next_id
    run.next_id += len(jobs)
    for i, (ids, adapter) in enumerate(jobs):
        eng.submit(base + i, ids, cb(i), adapter=adapter, **sampling)
    while eng.step():
        pass
    return [out[i] for i in range(len(jobs))]


run.next_id = 100


def test_adapters_are_loaded_and_their_prefix_blocks_held_once(eng) -> None:
    assert eng.adapters() == ["style", "terse"]
    st = eng.stats()
    assert st["kv_blocks_reserved"] == 1 + 2 == st["kv_blocks_used"]  # 8 tokens: 1 block; 32: 2


@pytest.mark.parametrize("adapter", ["style", "terse"])
def test_logits_equal_the_reference_with_the_prefix(eng, ckpt, reference, adapter) -> None:
    p = prompts(reference.cfg)[1]
    prefix = load_prefix(ckpt, adapter)
    want = chunked_logits(reference, [p, [5, 6]], prefix=prefix).numpy()
    got = eng.debug_forward([p, [5, 6]], adapter)
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=0)
    plain = eng.debug_forward([p, [5, 6]])
    assert np.abs(plain - got).max() > 1e-2  # the prefix has an effect


def test_greedy_ids_equal_the_reference(eng, ckpt, reference) -> None:
    ps = prompts(reference.cfg)
    for adapter in ADAPTERS:
        want = generate(reference, ps, 12, prefix=load_prefix(ckpt, adapter))
        assert run(eng, [(p, adapter) for p in ps], max_tokens=12) == want


def test_mixed_batch_equals_each_request_alone(eng, reference) -> None:
    """Two adapters and none in one batch (and staggered lengths): each as alone."""
    ps = prompts(reference.cfg)
    jobs = [(ps[0], "style"), (ps[1], "terse"), (ps[0], ""), (ps[1], "style"), (ps[0], "terse")]
    together = run(eng, jobs, max_tokens=10, ignore_eos=True)
    alone = [run(eng, [job], max_tokens=10, ignore_eos=True)[0] for job in jobs]
    assert together == alone
    assert len({tuple(x) for x in together}) > 2
    st = eng.stats()
    assert st["kv_blocks_used"] == st["kv_blocks_reserved"]  # everything else was freed


def test_prefix_blocks_are_shared_while_requests_run(eng, reference) -> None:
    """While four requests with 'terse' (2 full prefix blocks) run, the blocks in use are
    the reserved ones plus each request's own (no copies of the prefix)."""
    p = prompts(reference.cfg)[0]  # 5 ids: one block of its own
    for i in range(4):
        eng.submit(200 + i, p, None, max_tokens=4, adapter="terse")
    eng.step()
    st = eng.stats()
    assert st["running"] == 4
    assert st["kv_blocks_used"] == st["kv_blocks_reserved"] + 4
    while eng.step():
        pass


def test_n_choices_with_an_adapter_replay_from_their_seeds(eng, reference) -> None:
    p = prompts(reference.cfg)[1]
    out: dict[int, list[int]] = {}

    def cb(ev):
        out.setdefault(ev["choice"], []).extend(ev["new_tokens"])

    eng.submit(300, p, cb, max_tokens=8, temperature=1.0, seed=9, n=3, adapter="style")
    while eng.step():
        pass
    for i in range(3):
        alone = run(eng, [(p, "style")], max_tokens=8, temperature=1.0, seed=9 + i)[0]
        assert out[i] == alone


def test_unknown_adapter_names_the_available_ones(eng, reference) -> None:
    _engine = engine_module()
    p = prompts(reference.cfg)[0]
    with pytest.raises(_engine.EngineError) as e:
        eng.submit(400, p, None, max_tokens=4, adapter="nope")
    assert 'unknown adapter "nope" (available: style, terse)' in str(e.value)
    assert e.value.field == "adapter" and e.value.code == "invalid_argument"


def test_a_malformed_adapter_fails_the_engine_start_naming_the_file(ckpt, tmp_path) -> None:
    import shutil

    _engine = engine_module()
    d = tmp_path / "c"
    shutil.copytree(ckpt, d)
    meta = d / "adapters" / "style" / "adapter.json"
    meta.write_text(meta.read_text().replace('"num_layers": 2', '"num_layers": 3'))
    with pytest.raises(_engine.EngineError, match=r"adapter.json: field \"num_layers\" is 3"):
        _engine.Engine(str(d), num_threads=1)
    # Pointed elsewhere (adapters_dir), the engine loads none.
    e = _engine.Engine(str(d), num_threads=1, adapters_dir=str(tmp_path / "none"))
    assert e.adapters() == []


def test_a_request_that_fits_only_with_the_prefix_blocks_is_refused(ckpt, reference) -> None:
    """The adapters' blocks are held for good: a request that would need them is refused at
    submit (naming the KV cache), instead of preempting itself forever (it did once)."""
    _engine = engine_module()
    e = _engine.Engine(str(ckpt), num_threads=1, num_kv_blocks=6, block_size=16)
    assert e.stats()["kv_blocks_reserved"] == 3
    p = prompts(reference.cfg)[0]
    with pytest.raises(_engine.EngineError, match="only 3 besides the adapters' prefixes") as info:
        e.submit(1, p, None, max_tokens=60, adapter="style")  # 8 + 5 + 60 slots: 5 blocks
    assert info.value.field == "max_tokens"
    e.submit(2, p, None, max_tokens=20, adapter="style")  # 8 + 5 + 20 slots: 3 blocks, fits
    while e.step():
        pass
    assert e.stats()["kv_blocks_used"] == 3
