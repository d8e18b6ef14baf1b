"""Low precision on the CUDA back-end (GPU). INT8 weight-only: the kernel test, the tiny
model against the CPU engine's int8, load-time GPU quantization = the converter's,
continuous batching, and the full-size random model against fp16. W8A8 and FP8 (issue 19):
the full-size accuracy gates against fp16, and the tiny model against their CPU references
(glmserve.w8a8, glmserve.fp8_reference).

Run on a GPU machine: ``pytest -m gpu tests/gpu/test_int8_cuda.py`` (``bash scripts/gpu.sh int8-tests``).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers.engine_util import cuda_engine_module, tiny_dir_or_make
from helpers.lowprec import prefill_logits, prompts_for, rel_err

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def eng_mod():
    return cuda_engine_module()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_dir_or_make(tmp_path_factory)


@pytest.fixture(scope="module")
def int8_ckpts(tiny, tmp_path_factory) -> dict[bool, Path]:
    from glmserve.convert import convert

    pre = {
        lm: ROOT / "models" / ("chatglm-tiny-int8-lm" if lm else "chatglm-tiny-int8")
        for lm in (False, True)
    }
    if tiny == ROOT / "models" / "chatglm-tiny" and all(
        (d / "model.safetensors").exists() for d in pre.values()
    ):
        return pre  # converted beforehand (GPU machines without the converter's dependencies)
    base = tmp_path_factory.mktemp("int8")
    return {
        lm: convert(tiny / "hub", base / f"lm{int(lm)}", int8=True, int8_lm_head=lm, progress=False)
        for lm in (False, True)
    }


def test_int8_kernel_test_binary():
    exe = os.environ.get("GLM_CUDA_INT8_TEST")
    if not exe:
        pytest.skip("GLM_CUDA_INT8_TEST (path of glm_cuda_int8_test) is not set")
    r = subprocess.run([exe, "7"], capture_output=True, text=True, timeout=600)
    print(r.stdout[-3000:])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


@pytest.mark.parametrize("lm_head", [False, True])
def test_tiny_int8_close_to_cpu_engine(eng_mod, int8_ckpts, lm_head):
    d = int8_ckpts[lm_head]
    cfg = json.loads((d / "config.json").read_text())
    (p,) = prompts_for(cfg, [23], 2)
    chunks = [p, [7], [11, 12, 13], [9]]
    cpu = eng_mod.Engine(str(d), device="cpu", num_threads=4)
    gpu = eng_mod.Engine(str(d), device="cuda", dtype="fp16", num_kv_blocks=64)
    err = rel_err(gpu.debug_forward(chunks), cpu.debug_forward(chunks))
    prompts = prompts_for(cfg, [5, 18, 40, 97], 1)
    want = cpu.generate(prompts, max_tokens=40, ignore_eos=True)
    got = gpu.generate(prompts, max_tokens=40, ignore_eos=True)
    agree = [
        next((i for i, (a, b) in enumerate(zip(w, g, strict=True)) if a != b), len(w))
        for w, g in zip(want, got, strict=True)
    ]
    print(
        f"tiny int8 (lm_head int8: {lm_head}) cuda vs cpu: logits rel err {err:.3g}, greedy agreement {agree}"
    )
    # recorded 0.000916 / 0.000893 (git show 79f503a:lab/results/h200_1342_pytest_int8.log)
    assert err < 3e-3
    assert min(agree) == 40, agree  # recorded 40 of 40 for every prompt


def test_gpu_quantization_equals_converter(eng_mod, tiny, int8_ckpts):
    """int8=True on the float checkpoint quantizes on the GPU bit-exactly as the converter."""
    cfg = json.loads((tiny / "config.json").read_text())
    (p,) = prompts_for(cfg, [31], 3)
    chunks = [p, [7, 8]]
    a = eng_mod.Engine(str(tiny), device="cuda", dtype="fp16", int8=True, num_kv_blocks=32)
    b = eng_mod.Engine(str(int8_ckpts[False]), device="cuda", dtype="fp16", num_kv_blocks=32)
    assert np.array_equal(np.asarray(a.debug_forward(chunks)), np.asarray(b.debug_forward(chunks)))


def test_int8_continuous_batching_matches_one_at_a_time(eng_mod, int8_ckpts):
    d = int8_ckpts[True]
    cfg = json.loads((d / "config.json").read_text())
    prompts = prompts_for(cfg, [7, 30, 12, 64, 5, 19, 41, 8, 25], 4)
    gpu = eng_mod.Engine(str(d), device="cuda", dtype="fp16", max_running_seqs=16)
    alone = [gpu.generate([p], max_tokens=24, ignore_eos=True)[0] for p in prompts]
    batched = gpu.generate(
        prompts, max_tokens=24, ignore_eos=True, arrival_steps=[0, 0, 1, 3, 3, 5, 8, 9, 20]
    )
    assert batched == alone


@pytest.fixture
def full_size(eng_mod, tmp_path) -> Path:
    """A config-only ChatGLM-6B checkpoint (random weights at load); skips without ~20 GB free."""
    import torch

    from glmserve.config import REAL_CONFIG

    free, _ = torch.cuda.mem_get_info()
    if free < 20e9:
        pytest.skip(f"needs ~20 GB of free GPU memory, {free / 1e9:.0f} GB free")
    d = tmp_path / "full"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(REAL_CONFIG))
    return d


def compare_logits(label: str, got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """Relative error of the logits and the argmax agreement, printed for the log."""
    err = rel_err(got, want)
    agree = float((got.argmax(-1) == want.argmax(-1)).mean())
    print(f"{label}: logits rel err {err:.3g}, argmax agreement {agree:.2f}")
    return err, agree


def test_full_size_int8_vs_fp16(eng_mod, full_size):
    from glmserve.config import REAL_CONFIG

    d = full_size
    (p,) = prompts_for(REAL_CONFIG, [20], 6)
    chunks = [p, [5000], [77, 1234]]
    kw = dict(device="cuda", dtype="fp16", random_weights=True, weights_seed=2024, num_kv_blocks=32)
    fp16 = eng_mod.Engine(str(d), **kw)
    want = np.asarray(fp16.debug_forward(chunks))
    del fp16
    q8 = eng_mod.Engine(str(d), int8=True, **kw)
    got = np.asarray(q8.debug_forward(chunks))
    del q8
    err, _ = compare_logits("full-size random model: int8 vs fp16", got, want)
    assert err < 5e-3  # recorded 0.00173 (docs/int8.md)


def test_full_size_packed_layout_matches_row_major(eng_mod, full_size):
    """On Hopper the block linears run over the packed layout (GEMV + wgmma kernels);
    cuda_int8_packed=False keeps the row-major kernels. Same math, other summation order:
    the logits agree closely, and each engine says which kernels it runs."""
    from glmserve.config import REAL_CONFIG

    d = full_size
    # a decode-sized chunk (1 token: GEMV), a 24-token one (wgmma) and the prompt
    (p,) = prompts_for(REAL_CONFIG, [300], 7)
    chunks = [p, [5000], list(range(100, 124))]
    kw = dict(
        device="cuda",
        dtype="fp16",
        int8=True,
        random_weights=True,
        weights_seed=7,
        num_kv_blocks=64,
    )
    packed = eng_mod.Engine(str(d), **kw)
    desc = packed.backend_description()
    if "packed" not in desc:
        pytest.skip(f"the packed layout needs an sm_90a build on an sm_90 GPU (engine: {desc!r})")
    got = np.asarray(packed.debug_forward(chunks))
    del packed
    row = eng_mod.Engine(str(d), cuda_int8_packed=False, **kw)
    assert "row-major" in row.backend_description()
    want = np.asarray(row.debug_forward(chunks))
    del row
    err, agree = compare_logits(f"packed vs row-major int8 ({desc})", got, want)
    assert err < 3.5e-4  # recorded 0.00011 (docs/int8.md)
    assert agree > 0.99


# The full-size tests' engines: random weights made on the GPU, few KV blocks.
FULL_SIZE_KW = dict(
    device="cuda", dtype="fp16", random_weights=True, weights_seed=11, num_kv_blocks=64
)


def full_size_prompt() -> list[int]:
    """The 300-token prompt of the full-size accuracy tests."""
    from glmserve.config import REAL_CONFIG

    (p,) = prompts_for(REAL_CONFIG, [300], 8)
    return p


def full_size_gate(eng_mod, d: Path, label: str, measured: str, make_engine) -> str:
    """Issue 19's full-size accuracy gates for one mode against the fp16 engine (a 300-token
    prompt, 1 token, a 64-token chunk: 365 positions): the logits relative error <= 2e-2 is
    asserted; an argmax agreement below 0.99 is recorded as an xfail naming the number.
    `make_engine(**kw)` builds the mode's engine; returns its backend description."""
    chunks = [full_size_prompt(), [5000], list(range(100, 164))]
    kw = FULL_SIZE_KW
    fp16 = eng_mod.Engine(str(d), **kw)
    want = np.asarray(fp16.debug_forward(chunks))
    del fp16
    eng = make_engine(**kw)
    desc = eng.backend_description()
    got = np.asarray(eng.debug_forward(chunks))
    del eng
    err, agree = compare_logits(f"full-size random model: {label} vs fp16 ({desc})", got, want)
    assert err <= 2e-2, (label, measured)
    if agree < 0.99:
        pytest.xfail(
            f"issue 19's argmax gate missed by {label}: {agree:.3f} < 0.99 (logits rel err "
            f"{err:.3g} met; {measured})"
        )
    return desc


def test_full_size_w8a8_vs_fp16(eng_mod, full_size):
    """W8A8 (per-token int8 activations, int8 tensor cores) on every linear
    (cuda_int8_w8a8_min_tokens=1: prefill and decode alike)."""
    desc = full_size_gate(
        eng_mod, full_size, "W8A8", "H100 2026-12-07: 0.00289 and 0.989, 4 of 365 positions",
        lambda **kw: eng_mod.Engine(str(full_size), int8=True, cuda_int8_w8a8_min_tokens=1, **kw),
    )  # fmt: skip
    assert "W8A8" in desc and "row-major" in desc, desc


def tiny_follows_its_reference(eng_mod, tiny, label: str, engine_kw: dict, wrap, margin: float):
    """The CUDA path computes its CPU reference's math: on the tiny model its logits are
    closer to the reference (`wrap` of the fp32 model) than to fp32 by `margin` (fp16
    activations flip a few codes; the other mode, or none, would be the other way round)."""
    import torch

    from glmserve import reference

    cfg = json.loads((tiny / "config.json").read_text())
    (p,) = prompts_for(cfg, [23], 2)
    gpu = eng_mod.Engine(str(tiny), device="cuda", dtype="fp16", num_kv_blocks=32, **engine_kw)
    got = np.asarray(gpu.debug_forward([p]))
    del gpu
    model = reference.ChatGLMModel.from_pretrained(tiny, dtype=torch.float32)
    to_ref = rel_err(got, prefill_logits(wrap(model), p).numpy())
    to_fp32 = rel_err(got, prefill_logits(model, p).numpy())
    print(
        f"tiny {label} cuda: logits rel err {to_ref:.3g} vs its CPU reference, {to_fp32:.3g} vs fp32"
    )
    assert to_ref < margin * to_fp32


def test_tiny_w8a8_follows_the_cpu_reference(eng_mod, tiny):
    """glmserve.w8a8's math (measured 0.0108 vs 0.0194 from fp32, H100 2026-12-07; weight-only
    int8 would be ~1e-3 from fp32 and ~2e-2 from the W8A8 reference)."""
    from glmserve.w8a8 import W8A8Reference

    tiny_follows_its_reference(
        eng_mod,
        tiny,
        "W8A8",
        dict(int8=True, cuda_int8_w8a8_min_tokens=1),
        W8A8Reference.wrap,
        0.75,
    )


def fp8_engine_or_skip(eng_mod, d: Path, **kw):
    """An fp8 engine, or a skip naming why: FP8 tensor cores need compute capability 8.9 or
    newer. The card is asked first, so an engine error on an FP8 card always fails."""
    import torch

    cc = torch.cuda.get_device_capability()
    if cc < (8, 9):
        pytest.skip(f"this GPU (compute capability {cc[0]}.{cc[1]}) has no FP8 tensor cores")
    return eng_mod.Engine(str(d), fp8=True, **kw)


def test_full_size_fp8_vs_fp16(eng_mod, full_size):
    """FP8 (E4M3 weights per channel, activations per token)."""
    desc = full_size_gate(
        eng_mod, full_size, "fp8", "H100 2026-12-07: 0.00777 and 0.975, 9 of 365 positions",
        lambda **kw: fp8_engine_or_skip(eng_mod, full_size, **kw),
    )  # fmt: skip
    assert desc.startswith("fp8 block linears"), desc


@pytest.mark.parametrize("w8a8", [0, 16], ids=["weight-only", "w8a8-from-16"])
def test_full_size_fp8_with_int8_lm_head_vs_fp16(eng_mod, full_size, w8a8):
    """fp8 block linears with the lm_head int8 weight-only per channel (cuda_int8_lm_head;
    the CPU gate keeps 17.25 of 32 tokens, as without: tests/unit/test_fp8_reference.py).
    H100, 2026-12-08: logits rel. error 0.00871, argmax 0.97 (plain fp8 0.00776, 0.98).
    w8a8-from-16: that lm_head on W8A8 (per-token int8 activations, int8 tensor cores) from
    16 tokens on (cuda_int8_w8a8_min_tokens, which in fp8 mode only the lm_head reads): the
    300- and 64-token chunks take it, the 1-token one the GEMV. Not yet run on a GPU."""

    def make(**kw):
        eng = fp8_engine_or_skip(
            eng_mod, full_size, cuda_int8_lm_head=True, cuda_int8_w8a8_min_tokens=w8a8, **kw
        )
        desc = eng.backend_description()
        assert desc.startswith("fp8 block linears") and "lm_head int8" in desc, desc
        assert ("W8A8 int8 tensor cores from 16 tokens" in desc) == (w8a8 == 16), desc
        return eng

    measured = "H100: 0.97, 2026-12-08" if w8a8 == 0 else "not yet measured"
    label = "fp8+int8 lm_head" + (f" (W8A8 from {w8a8})" if w8a8 else "")
    full_size_gate(eng_mod, full_size, label, measured, make)


def test_tiny_fp8_follows_the_cpu_reference(eng_mod, tiny):
    """glmserve.fp8_reference's math, fp8_linears (measured 0.0325 vs 0.0709, H100)."""
    from glmserve.fp8_reference import Fp8Reference

    fp8_engine_or_skip(
        eng_mod, tiny, device="cuda", dtype="fp16", num_kv_blocks=4
    )  # skips without FP8
    tiny_follows_its_reference(
        eng_mod, tiny, "fp8", dict(fp8=True), lambda m: Fp8Reference.wrap(m, fp8_linears=True), 0.75
    )


def test_full_size_fp8_gemv_for_small_token_counts(eng_mod, full_size):
    """cuda_fp8_gemv_max_tokens=8: linears of at most 8 tokens run the weight-only fp8 GEMV
    (fp16 activations, quant_gemv.cuh), larger ones cuBLASLt as before. The 300-token
    prefill is bit for bit that of an fp8 engine without the GEMV (0; the default is 2); the
    1- and 3-token chunks are not (they took the GEMV) and still pass issue 19's logits gate
    against fp16 (measured 0.00553 with the GEMV, 0.00777 without: H100, 2026-12-07)."""
    chunks = [full_size_prompt(), [5000], [7, 8, 9]]
    kw = FULL_SIZE_KW
    fp16 = eng_mod.Engine(str(full_size), **kw)
    want = np.asarray(fp16.debug_forward(chunks))
    del fp16
    plain = fp8_engine_or_skip(eng_mod, full_size, cuda_fp8_gemv_max_tokens=0, **kw)
    base = np.asarray(plain.debug_forward(chunks))
    del plain
    eng = fp8_engine_or_skip(eng_mod, full_size, cuda_fp8_gemv_max_tokens=8, **kw)
    assert "weight-only GEMV up to 8 tokens" in eng.backend_description()
    got = np.asarray(eng.debug_forward(chunks))
    del eng
    assert np.array_equal(got[:300], base[:300])
    assert not np.array_equal(got[300:], base[300:])
    err_gemv, err_plain = rel_err(got[300:], want[300:]), rel_err(base[300:], want[300:])
    print(
        f"fp8 small chunks vs fp16: logits rel err {err_gemv:.3g} with the GEMV, {err_plain:.3g} without"
    )
    assert err_gemv <= 2e-2
