"""kv_cache_dtype=fp8 on the CUDA back-end (issue 19): E4M3 K/V with a scale per (token,
head), written by kv_fp8_write and read by paged_attention_fp8. Held to the CPU
back-end's fp8 cache (the reference, tests/engine/test_fp8_kv_engine.py), to the issue's
full-size gates against the fp16 cache, and to the cache's contract (batching, forked
choices, adapter prefixes, about twice the blocks).

Run on a machine with an NVIDIA GPU: ``pytest -m gpu tests/gpu/test_cuda_fp8_kv.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.adapters_util import tiny_with_adapters
from helpers.controls import Run, run
from helpers.engine_util import cuda_engine_module, tiny_dir_or_make
from helpers.lowprec import prompts_for, rel_err

from glmserve.config import REAL_CONFIG

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def eng_mod():
    return cuda_engine_module()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_dir_or_make(tmp_path_factory)


@pytest.mark.parametrize("one_pass", [0, 4], ids=["two-phase", "one-pass"])
def test_tiny_fp8_kv_follows_the_cpu_engine(eng_mod, tiny, one_pass):
    """Both block attention kernels read the fp8 cache (one-pass: cuda_attention_one_pass)."""
    cfg = json.loads((tiny / "config.json").read_text())
    (p,) = prompts_for(cfg, [23], 2)
    chunks = [p, [7], [11, 12, 13], [9]]
    gpu = eng_mod.Engine(
        str(tiny), device="cuda", dtype="fp16", kv_cache_dtype="fp8", num_kv_blocks=64,
        cuda_attention_one_pass=one_pass,
    )  # fmt: skip
    assert "KV cache fp8" in gpu.backend_description()
    assert ("one-pass" in gpu.backend_description()) == (one_pass > 0)
    got = np.asarray(gpu.debug_forward(chunks))
    cpu8 = eng_mod.Engine(str(tiny), device="cpu", kv_cache_dtype="fp8", num_threads=4)
    cpu32 = eng_mod.Engine(str(tiny), device="cpu", num_threads=4)
    to8, to32 = rel_err(got, cpu8.debug_forward(chunks)), rel_err(got, cpu32.debug_forward(chunks))
    print(
        f"tiny fp8 KV cuda: logits rel err {to8:.3g} vs the CPU fp8 cache, {to32:.3g} vs the CPU fp32 cache"
    )
    assert to8 < 0.5 * to32


def test_fp8_kv_batching_and_forked_choices(eng_mod, tmp_path):
    """The full-size random model (on the tiny model the GEMMs' batch-dependent fp16
    rounding flips fp8 codes and then greedy ids: seen on an H100; the full-size model's
    margins are small too, see below, but held so far): staggered arrivals decode the same
    ids as each request alone, and
    n=3 choices forked from one prefill (copied blocks, codes and scales) decode what a
    single request does.

    The choices draw with top_k=1 (the argmax, on the sampling path): sampled ids at
    temperature 1 are not comparable on the GPU. Choices after the first feed <sop> in a
    decode step where a single request's prefill computed it, and the random model's
    distribution is nearly uniform (chosen log-probabilities about -11, ln(1/130,528) =
    -11.8), so a log-probability difference of 1e-4 flips draws: H100, 2026-12-07, with
    the fp16 cache as with fp8 (choice 1 equal to seed 41 alone until its first or second
    id). A block copied without its scales moves the argmax; rounding does not.

    Split-KV is off here (`cuda_attention_split_min_keys=0`): decode-only steps of few
    sequences split a 64+-key context's attention into chunks, steps that carry a prefill
    do not, so a sequence alone (split at every step) and among staggered arrivals (some
    steps unsplit) sums its attention in different orders. With it on (the default, 64
    keys) this test failed on an H100 (2026-12-08) for the one prompt whose context
    reaches 64 keys (64 tokens; every other one stays under 64 with its 20 new ids), from
    its fifth id: a rounding-level change that flips this model's nearly tied argmax, not
    a cache fault. Split-KV over the fp8 cache is held to the CPU reference by
    glm_cuda_kernel_test ("paged_attention_fp8 ... split-KV")."""
    d = tmp_path / "full"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(REAL_CONFIG))
    prompts = prompts_for(REAL_CONFIG, [7, 30, 12, 64, 5, 19], 3)
    gpu = eng_mod.Engine(
        str(d), device="cuda", dtype="fp16", random_weights=True, weights_seed=5, kv_cache_dtype="fp8",
        max_running_seqs=16, num_kv_blocks=256, cuda_attention_split_min_keys=0,
    )  # fmt: skip
    alone = [gpu.generate([p], max_tokens=20, ignore_eos=True)[0] for p in prompts]
    batched = gpu.generate(
        prompts, max_tokens=20, ignore_eos=True, arrival_steps=[0, 0, 1, 3, 3, 5]
    )
    assert batched == alone
    single = run(gpu, prompts[3], max_tokens=12, ignore_eos=True)
    r = Run()
    gpu.submit(
        1, prompts[3], r, max_tokens=12, temperature=1.0, top_k=1, seed=40, n=3, ignore_eos=True
    )
    while gpu.step():
        pass
    for i in range(3):  # the forked choices read the prompt's copied blocks
        assert r.ids(i) == single.ids(), i
    assert gpu.stats()["kv_blocks_used"] == 0


def test_tiny_fp8_kv_adapter_prefix_follows_the_cpu_engine(eng_mod, tmp_path):
    d = tiny_with_adapters(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    (p,) = prompts_for(cfg, [19], 4)
    gpu = eng_mod.Engine(
        str(d), device="cuda", dtype="fp16", kv_cache_dtype="fp8", num_kv_blocks=64
    )
    cpu8 = eng_mod.Engine(str(d), device="cpu", kv_cache_dtype="fp8", num_threads=4)
    cpu32 = eng_mod.Engine(str(d), device="cpu", num_threads=4)
    got = gpu.debug_forward([p], adapter="style")
    to8 = rel_err(got, cpu8.debug_forward([p], adapter="style"))
    to32 = rel_err(got, cpu32.debug_forward([p], adapter="style"))
    print(f"tiny fp8 KV + prefix cuda: {to8:.3g} vs the CPU fp8 cache, {to32:.3g} vs fp32")
    assert to8 < 0.5 * to32


def test_full_size_fp8_kv_vs_fp16(eng_mod, tmp_path):
    """The issue's gates: logits relative error <= 2e-2 and argmax agreement >= 0.99
    against the fp16 cache; and about twice the KV blocks from the same memory."""
    import torch

    free, _ = torch.cuda.mem_get_info()
    if free < 20e9:
        pytest.skip(f"needs ~20 GB of free GPU memory, {free / 1e9:.0f} GB free")
    d = tmp_path / "full"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(REAL_CONFIG))
    (p,) = prompts_for(REAL_CONFIG, [300], 8)
    chunks = [p, [5000], list(range(100, 164))]
    kw = dict(device="cuda", dtype="fp16", random_weights=True, weights_seed=11)
    fp16 = eng_mod.Engine(str(d), num_kv_blocks=64, **kw)
    want = np.asarray(fp16.debug_forward(chunks))
    del fp16
    f8 = eng_mod.Engine(str(d), num_kv_blocks=64, kv_cache_dtype="fp8", **kw)
    got = np.asarray(f8.debug_forward(chunks))
    del f8
    err = rel_err(got, want)
    agree = float((got.argmax(-1) == want.argmax(-1)).mean())
    print(
        f"full-size random model: fp8 KV vs fp16 KV logits rel err {err:.3g}, argmax agreement {agree:.3f}"
    )
    blocks = {}
    for dt in ("auto", "fp8"):
        e = eng_mod.Engine(str(d), kv_cache_dtype=dt, max_running_seqs=2048, **kw)
        blocks[dt] = e.stats()["kv_blocks_total"]
        del e
    print(f"KV blocks from the default sizing: fp16 {blocks['auto']:,}, fp8 {blocks['fp8']:,}")
    assert err <= 2e-2
    assert agree >= 0.99
    assert blocks["fp8"] >= 1.9 * blocks["auto"]
