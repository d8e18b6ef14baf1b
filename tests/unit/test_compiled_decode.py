"""glmserve.compiled_decode: the static-KV-cache decode behind make bench's compiled-PyTorch
baseline must be ChatGLM-6B's math. Here eager (compile=False) on the CPU against
glmserve.reference's generate, and compiled on the CPU (the GPU bench runs it compiled
with CUDA graphs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.engine_util import BOS, GMASK, prompt, write_checkpoint
from helpers.torch_threads import one_thread

from glmserve import reference
from glmserve.compiled_decode import StaticDecoder


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = write_checkpoint(tmp_path_factory.mktemp("compiled"), seed=41)
    return reference.ChatGLMModel.from_pretrained(d, dtype=torch.float32)


def same_length_prompts(n: int, length: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [prompt(rng, length, 50, GMASK, BOS) for _ in range(n)]


@pytest.mark.parametrize("batch,length,tokens", [(1, 5, 9), (3, 9, 12)])
def test_static_decode_gives_the_reference_greedy_ids(model, batch, length, tokens):
    prompts = same_length_prompts(batch, length, seed=batch)
    want = reference.generate(model, prompts, max_tokens=tokens, ignore_eos=True)
    dec = StaticDecoder(model, batch=batch, max_len=len(prompts[0]) + tokens, compile=False)
    assert dec.generate(prompts, max_tokens=tokens) == want
    # the cache is reused: a second run of other prompts is right too
    other = same_length_prompts(batch, length, seed=99)
    assert dec.generate(other, max_tokens=tokens) == reference.generate(
        model, other, max_tokens=tokens, ignore_eos=True
    )


def test_compiled_on_the_cpu_gives_the_reference_greedy_ids(model):
    """torch.compile of the step (Inductor's CPU code; CUDA graphs are a GPU matter) keeps
    the math: the per-layer KV buffers written in place by the compiled graph hold what the
    next step reads."""
    prompts = same_length_prompts(2, 7, seed=5)
    want = reference.generate(model, prompts, max_tokens=10, ignore_eos=True)
    dec = StaticDecoder(model, batch=2, max_len=len(prompts[0]) + 10, compile=True)
    assert dec.generate(prompts, max_tokens=10) == want


def test_refuses_what_it_cannot_run(model):
    dec = StaticDecoder(model, batch=2, max_len=12, compile=False)
    with pytest.raises(ValueError, match="one length"):
        dec.generate(same_length_prompts(1, 5, 0) + same_length_prompts(1, 6, 1), max_tokens=2)
    two = same_length_prompts(2, 5, 0)
    with pytest.raises(ValueError, match="exceed max_len"):
        dec.generate(two, max_tokens=12 - len(two[0]) + 2)


def test_bench_table_compares_the_engine_with_the_compiled_decode():
    from glmserve.bench import compiled_table

    rows = [
        {"batch": 1, "tokens_per_s": 226.0},
        {"batch": 1, "tokens_per_s": 210.0, "variant": "overlap_steps=false"},
        {"batch": 8, "tokens_per_s": 1500.0},
    ]
    md = compiled_table(rows, {1: {"tokens_per_s": 185.0}})
    assert md.splitlines()[2] == "| 1 | 226 | 185 | 1.22x |"
    assert len(md.splitlines()) == 3  # no variant row, no batch without a compiled run
