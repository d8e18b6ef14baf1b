"""The C++ engine through glmserve._engine: exact math and batching invariance.

Golden data (THUDM's numbers), logits and greedy ids equal to glmserve.reference on
the tiny demo model, and continuous batching (staggered arrivals, a tiny KV cache that
forces waiting and preemption) that changes no result.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers.engine_util import (
    BOS,
    GMASK,
    engine_module,
    prompt,
    tiny_dir,
    write_checkpoint,
)

from glmserve import golden


@pytest.fixture(scope="module")
def _engine():
    return engine_module()


@pytest.fixture(scope="module")
def golden_dir(tmp_path_factory):
    try:
        return golden.write_checkpoint(tmp_path_factory.mktemp("golden"))
    except FileNotFoundError as e:
        pytest.skip(f"golden data missing: {e}")


@pytest.fixture(scope="module")
def tiny(_engine):
    d = tiny_dir()
    import torch

    from glmserve.reference import ChatGLMModel

    torch.set_num_threads(1)  # the tiny reference is ~20x faster single-threaded on a busy box

    return d, ChatGLMModel.from_pretrained(d), _engine.Engine(str(d), num_threads=2)


def tiny_prompts(info: dict, lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    hi = min(
        info["vocab_size"], info["mask_token_id"], info["gmask_token_id"], info["bos_token_id"]
    )
    return [prompt(rng, n, hi, info["gmask_token_id"], info["bos_token_id"]) for n in lengths]


# ------------------------------------------------------------------ golden
def test_golden_hidden_states(_engine, golden_dir):
    g = golden.load()
    eng = _engine.Engine(str(golden_dir), num_threads=1)
    out = eng.debug_forward([c["ids"] for c in golden.CALLS])
    want = np.concatenate(g.outputs)
    assert out.shape == want.shape == (5, golden.PADDED_VOCAB)
    np.testing.assert_allclose(out, want, atol=1e-5, rtol=0)
    assert eng.stats()["kv_blocks_used"] == 0


def test_golden_in_one_chunk_equals_three(_engine, golden_dir):
    """The prefill path (5 tokens at once) and the decode path agree."""
    eng = _engine.Engine(str(golden_dir), num_threads=1, block_size=2)
    split = eng.debug_forward([[0, 1, 2], [3], [4]])
    whole = eng.debug_forward([[0, 1, 2], [3, 4]])
    np.testing.assert_allclose(split, whole, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ reference
def test_logits_match_reference_across_chunks(tiny):
    from glmserve.reference import chunked_logits

    _, model, eng = tiny
    p = tiny_prompts(eng.model_info(), [20])[0]
    chunks = [p, [7, 8, 9], [10], [11]]
    got = eng.debug_forward(chunks)
    want = chunked_logits(model, chunks).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


LENGTHS = [1, 3, 8, 17, 30]


def test_greedy_equals_reference_batched(tiny):
    from glmserve.reference import generate

    _, model, eng = tiny
    prompts = tiny_prompts(eng.model_info(), LENGTHS)
    want = generate(model, prompts, max_tokens=24)
    assert eng.generate(prompts, max_tokens=24) == want
    # Alone, each prompt gives the same ids as in the batch.
    for p, w in zip(prompts, want, strict=True):
        assert eng.generate([p], max_tokens=24) == [w]
    assert eng.stats()["kv_blocks_used"] == 0


def test_greedy_unchanged_by_staggered_arrivals(tiny):
    from glmserve.reference import generate

    _, model, eng = tiny
    prompts = tiny_prompts(eng.model_info(), LENGTHS, seed=1)
    want = generate(model, prompts, max_tokens=20, ignore_eos=True)
    got = eng.generate(prompts, max_tokens=20, ignore_eos=True, arrival_steps=[5, 0, 11, 2, 2])
    assert got == want
    assert all(len(g) == 20 for g in got)


def test_greedy_unchanged_with_a_tiny_kv_cache(_engine, tiny):
    """6 blocks of 4 tokens: requests wait, running ones get preempted and recomputed."""
    from glmserve.reference import generate

    d, model, _ = tiny
    eng = _engine.Engine(str(d), num_threads=1, block_size=4, num_kv_blocks=8)
    prompts = tiny_prompts(eng.model_info(), [3, 9, 5, 12, 2], seed=2)
    want = generate(model, prompts, max_tokens=12, ignore_eos=True)
    assert (
        eng.generate(prompts, max_tokens=12, ignore_eos=True, arrival_steps=[0, 0, 1, 1, 3]) == want
    )
    st = eng.stats()
    assert st["preemptions"] > 0  # the case this test is about did happen
    assert st["kv_blocks_used"] == 0 and st["kv_blocks_total"] == 8
    assert st["running"] == 0 and st["waiting"] == 0


# ------------------------------------------------------------------ sampling
SAMPLING = dict(temperature=0.9, top_k=40, top_p=0.95, repetition_penalty=1.1, seed=1234)


def test_seeded_sampling_reproducible_and_batch_independent(tiny):
    _, _, eng = tiny
    prompts = tiny_prompts(eng.model_info(), [4, 11, 6], seed=3)
    a = eng.generate(prompts, max_tokens=16, ignore_eos=True, **SAMPLING)
    b = eng.generate(prompts, max_tokens=16, ignore_eos=True, **SAMPLING)
    assert a == b
    alone = [eng.generate([p], max_tokens=16, ignore_eos=True, **SAMPLING)[0] for p in prompts]
    assert alone == a
    staggered = eng.generate(
        prompts, max_tokens=16, ignore_eos=True, arrival_steps=[3, 0, 7], **SAMPLING
    )
    assert staggered == a
    # It really samples: another seed changes the ids, and they differ from greedy.
    other = eng.generate(prompts, max_tokens=16, ignore_eos=True, **{**SAMPLING, "seed": 99})
    greedy = eng.generate(prompts, max_tokens=16, ignore_eos=True)
    assert other != a and greedy != a


def test_sampling_with_repetition_penalty_greedy(tiny):
    """Greedy + repetition penalty equals the reference (HF's processor)."""
    from glmserve.reference import generate

    _, model, eng = tiny
    prompts = tiny_prompts(eng.model_info(), [5, 9], seed=4)
    want = generate(model, prompts, max_tokens=16, repetition_penalty=1.3, ignore_eos=True)
    got = eng.generate(prompts, max_tokens=16, repetition_penalty=1.3, ignore_eos=True)
    assert got == want


# ------------------------------------------------------------------ checkpoint dtypes
@pytest.mark.parametrize("dtype,int8", [("float32", False), ("float16", False), ("float32", True)])
def test_small_checkpoints_match_reference(_engine, tmp_path, dtype, int8):
    from glmserve.reference import ChatGLMModel, chunked_logits

    d = write_checkpoint(tmp_path / "ckpt", seed=5, dtype=dtype, int8=int8)
    eng = _engine.Engine(str(d), num_threads=1)
    model = ChatGLMModel.from_pretrained(d)
    rng = np.random.default_rng(0)
    chunks = [prompt(rng, 9, 50, GMASK, BOS), [5, 6], [7]]
    np.testing.assert_allclose(
        eng.debug_forward(chunks), chunked_logits(model, chunks).numpy(), atol=1e-4, rtol=1e-4
    )


def test_random_weights_engine_runs(_engine, tmp_path):
    """random_weights: shapes from config.json alone, no model.safetensors needed."""
    d = write_checkpoint(tmp_path / "ckpt")
    (d / "model.safetensors").unlink()
    eng = _engine.Engine(str(d), random_weights=True, weights_seed=3, num_threads=1)
    p = [5, 6, GMASK, BOS]
    a = eng.generate([p], max_tokens=5, ignore_eos=True)
    assert len(a[0]) == 5
    assert np.isfinite(eng.debug_forward([p])).all()
    again = _engine.Engine(str(d), random_weights=True, weights_seed=3, num_threads=1)
    assert again.generate([p], max_tokens=5, ignore_eos=True) == a


def test_int8_option_quantizes_like_the_converter(_engine, tiny):
    """int8=True on a float checkpoint = the converter's int8 scheme (the CLI's reference path)."""
    from glmserve.cli import fake_quantize_int8
    from glmserve.reference import ChatGLMModel, chunked_logits

    d, _, eng = tiny
    model = ChatGLMModel.from_pretrained(d)
    fake_quantize_int8(model)
    q = _engine.Engine(str(d), int8=True, num_threads=2)
    p = tiny_prompts(eng.model_info(), [12], seed=6)[0]
    chunks = [p, [7, 8]]
    got = q.debug_forward(chunks)
    np.testing.assert_allclose(got, chunked_logits(model, chunks).numpy(), atol=1e-4, rtol=1e-4)
    assert np.abs(got - eng.debug_forward(chunks)).max() > 1e-4  # it really is quantized


def test_thread_count_does_not_change_results(_engine, tmp_path):
    d = write_checkpoint(tmp_path / "ckpt", seed=8, hidden_size=64, inner_hidden_size=160)
    rng = np.random.default_rng(1)
    chunks = [prompt(rng, 70, 50, GMASK, BOS), [5, 6, 7, 8, 9], [3]]
    one = _engine.Engine(str(d), num_threads=1).debug_forward(chunks)
    three = _engine.Engine(str(d), num_threads=3).debug_forward(chunks)
    assert np.array_equal(one, three)
