"""INT8 weight-only on the C++ engine's CPU back-end (CI): the tiny demo model
converted with --int8 decodes greedily like the fp32 model.

The PyTorch reference's int8 agreement is tests/unit/test_tiny.py; this is the engine
(glmserve._engine, device cpu) on the converter's int8 checkpoint, and the
engine's own load-time quantization (int8=True on the float checkpoint) giving
the same ids.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.engine_util import engine_module

ROOT = Path(__file__).resolve().parents[2]
STEPS = 64
MUST_AGREE = 16


@pytest.fixture(scope="module")
def _engine():
    return engine_module()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = ROOT / "models" / "chatglm-tiny"
    if (d / "model.safetensors").exists() and (d / "hub" / "model.safetensors").exists():
        return d
    from glmserve import tiny as tiny_mod

    out = tmp_path_factory.mktemp("tiny") / "chatglm-tiny"
    assert tiny_mod.main(["--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def int8_dir(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from glmserve.convert import convert

    return convert(
        tiny / "hub", tmp_path_factory.mktemp("int8") / "ckpt", int8=True, progress=False
    )


@pytest.fixture(scope="module")
def prompts(tiny: Path) -> list[list[int]]:
    from glmserve.tiny import DEMO_PROMPTS
    from glmserve.tokenizer import ChatGLMTokenizer

    tok = ChatGLMTokenizer(tiny / "ice_text.model")
    return [tok.encode(p) for p in DEMO_PROMPTS]


def agreement(a: list[int], b: list[int]) -> int:
    """Length of the common prefix."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))


def test_int8_checkpoint_is_int8(int8_dir: Path) -> None:
    import json

    from safetensors import safe_open

    cfg = json.loads((int8_dir / "config.json").read_text())
    assert cfg["quantization"] == {"int8": True, "lm_head": False}
    with safe_open(str(int8_dir / "model.safetensors"), framework="np") as f:
        names = set(f.keys())
        w = f.get_tensor("transformer.layers.0.mlp.dense_h_to_4h.weight")
        s = f.get_tensor("transformer.layers.0.mlp.dense_h_to_4h.weight_scale")
    assert str(w.dtype) == "int8" and str(s.dtype) == "float16"
    assert "transformer.layers.0.attention.query_key_value.weight_scale" in names


def test_int8_greedy_agrees_with_fp32(_engine, tiny: Path, int8_dir: Path, prompts) -> None:
    fp32 = _engine.Engine(str(tiny), num_threads=2)
    want = fp32.generate(prompts, max_tokens=STEPS, ignore_eos=True)
    del fp32
    q8 = _engine.Engine(str(int8_dir), num_threads=2)
    got = q8.generate(prompts, max_tokens=STEPS, ignore_eos=True)
    del q8
    assert all(len(g) == STEPS for g in got)
    agree = [agreement(g, w) for g, w in zip(got, want, strict=True)]
    print(
        f"engine cpu int8 vs fp32 greedy agreement over {STEPS} steps: {agree}, "
        f"mean {sum(agree) / len(agree):.1f}"
    )
    assert min(agree) >= MUST_AGREE, agree
    # Load-time quantization of the float checkpoint is the converter's scheme: same ids.
    opt = _engine.Engine(str(tiny), int8=True, num_threads=2)
    assert opt.generate(prompts, max_tokens=STEPS, ignore_eos=True) == got
