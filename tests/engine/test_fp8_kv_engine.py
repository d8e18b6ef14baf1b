"""kv_cache_dtype=fp8 on the C++ engine's CPU back-end (issue 19; CI): E4M3 K/V with one
scale per (token, head), quantized at write and dequantized inside attention. The CPU
back-end is the reference the CUDA kernels are held to, so here it is held to
glmserve.fp8_reference (fp8_kv), the Python statement of the rule; and the cache keeps
its contract: blocks from bytes, prefixes, forked choices, batching."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.adapters_util import tiny_with_adapters
from helpers.controls import Run, run
from helpers.engine_util import engine_module, tiny_dir
from helpers.lowprec import prefill_logits, rel_err
from helpers.torch_threads import one_thread

from glmserve import reference
from glmserve.fp8_reference import Fp8Reference
from glmserve.tokenizer import ChatGLMTokenizer


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def _engine():
    return engine_module()


@pytest.fixture(scope="module")
def ids() -> list[int]:
    tok = ChatGLMTokenizer(str(tiny_dir() / "ice_text.model"))
    return tok.encode(tok.build_prompt("写一首关于春天的诗", []))


def test_the_engine_computes_the_reference_fp8_kv(_engine, ids):
    """Logits of a prompt fed in chunks: the engine's fp8 KV cache against the Python
    reference's (much closer than either is to fp32: the rule, not just some noise)."""
    d = tiny_dir()
    eng = _engine.Engine(str(d), kv_cache_dtype="fp8", num_threads=1, num_kv_blocks=32)
    got = np.asarray(eng.debug_forward([ids]))
    model = reference.ChatGLMModel.from_pretrained(d, dtype=torch.float32)
    fp32 = prefill_logits(model, ids)
    f8 = prefill_logits(Fp8Reference.wrap(model, fp8_kv=True), ids)
    to_ref, to_fp32 = rel_err(got, f8.numpy()), rel_err(got, fp32.numpy())
    print(
        f"cpu engine fp8 KV: logits rel err {to_ref:.2e} vs the FP8 reference, {to_fp32:.2e} vs fp32"
    )
    assert to_fp32 > 1e-3  # the cache is really fp8
    assert to_ref < 0.05 * to_fp32


def test_fp8_blocks_hold_the_same_tokens_in_fewer_bytes(_engine):
    """From the same kv_cache_bytes the fp8 cache gets 4 * head_dim / (head_dim + 4) times
    the float32 blocks (1 byte per value + a 4-byte scale per token and head)."""
    d = str(tiny_dir())
    cfg = json.loads((tiny_dir() / "config.json").read_text())
    layers, heads, hidden = cfg["num_layers"], cfg["num_attention_heads"], cfg["hidden_size"]
    hd = hidden // heads
    budget = 3 << 20
    f32 = _engine.Engine(d, kv_cache_bytes=budget).stats()["kv_blocks_total"]
    f8 = _engine.Engine(d, kv_cache_bytes=budget, kv_cache_dtype="fp8").stats()["kv_blocks_total"]
    assert f32 == budget // (2 * layers * 16 * hidden * 4)
    assert f8 == budget // (2 * layers * 16 * (hidden + heads * 4))
    assert f8 / f32 == pytest.approx(4 * hd / (hd + 4), rel=0.02)


def test_batching_and_forked_choices_do_not_change_fp8_ids(_engine, ids):
    """Quantization is per (token, head), so a request decodes the same ids alone or in a
    batch; n=3 choices forked from one prefill (copied blocks) equal single requests."""
    eng = _engine.Engine(str(tiny_dir()), kv_cache_dtype="fp8", num_threads=2, num_kv_blocks=128)
    other = ids[:3] + ids[-2:]
    alone = [eng.generate([p], max_tokens=12, ignore_eos=True)[0] for p in (ids, other)]
    assert eng.generate([ids, other], max_tokens=12, ignore_eos=True) == alone
    r = Run()
    eng.submit(1, ids, r, max_tokens=8, temperature=1.0, seed=40, n=3, ignore_eos=True)
    while eng.step():
        pass
    for i in range(3):
        single = run(eng, ids, max_tokens=8, temperature=1.0, seed=40 + i, ignore_eos=True)
        assert r.ids(i) == single.ids(), i
    assert eng.stats()["kv_blocks_used"] == 0


def test_an_adapter_prefix_is_stored_in_fp8_too(_engine, ids, tmp_path):
    """A P-Tuning prefix written into an fp8 cache: its logits move away from the float
    cache's by the fp8 rounding only (close, not equal), and generation runs."""
    d = tiny_with_adapters(tmp_path)
    name = "style"
    a = _engine.Engine(str(d), num_threads=1, num_kv_blocks=64)
    b = _engine.Engine(str(d), kv_cache_dtype="fp8", num_threads=1, num_kv_blocks=64)
    want = np.asarray(a.debug_forward([ids], adapter=name))
    got = np.asarray(b.debug_forward([ids], adapter=name))
    err = rel_err(got, want)
    assert 1e-4 < err < 0.1, err
    assert len(run(b, ids, max_tokens=4, ignore_eos=True, adapter=name).ids()) == 4


def test_a_bad_kv_cache_dtype_names_the_field(_engine):
    with pytest.raises(
        _engine.EngineError, match=r'engine option kv_cache_dtype must be "auto" or "fp8"'
    ):
        _engine.Engine(str(tiny_dir()), kv_cache_dtype="int4")
