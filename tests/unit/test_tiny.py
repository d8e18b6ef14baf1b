"""The tiny demo model: layout, determinism, conversion, non-degenerate greedy, int8 accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.torch_threads import one_thread

from glmserve.config import ChatGLMConfig
from glmserve.convert import convert
from glmserve.reference import ChatGLMModel, chunked_logits, generate
from glmserve.tiny import DEMO_PROMPTS, main, make_tiny
from glmserve.tokenizer import ChatGLMTokenizer


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


STEPS = 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "chatglm-tiny"
    assert main(["--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def tok(tiny: Path) -> ChatGLMTokenizer:
    return ChatGLMTokenizer(tiny / "ice_text.model")


@pytest.fixture(scope="module")
def prompts(tok: ChatGLMTokenizer) -> list[list[int]]:
    return [tok.encode(p) for p in DEMO_PROMPTS]


@pytest.fixture(scope="module")
def fp32_greedy(tiny: Path, prompts: list[list[int]]) -> list[list[int]]:
    return generate(ChatGLMModel.from_pretrained(tiny), prompts, STEPS)


def test_layout(tiny: Path, tok: ChatGLMTokenizer) -> None:
    for f in ("config.json", "model.safetensors", "ice_text.model"):
        assert (tiny / f).is_file()
        assert (tiny / "hub" / f).is_file()
    hub_cfg = json.loads((tiny / "hub" / "config.json").read_text())
    assert "glmserve_format" not in hub_cfg and hub_cfg["model_type"] == "chatglm"
    cfg = ChatGLMConfig.from_json(tiny)
    assert cfg.glmserve_format == 1 and cfg.torch_dtype == "float32"
    assert 2 <= cfg.num_layers <= 4 and 128 <= cfg.hidden_size <= 256 and cfg.head_dim % 4 == 0
    assert cfg.vocab_size == tok.vocab_size
    assert (cfg.bos_token_id, cfg.eos_token_id) == (tok.bos_token_id, tok.eos_token_id)
    assert (cfg.gmask_token_id, cfg.mask_token_id) == (tok.gmask_token_id, tok.mask_token_id)


def test_deterministic(tiny: Path, tmp_path: Path) -> None:
    again = make_tiny(tmp_path / "again")
    for f in ("model.safetensors", "hub/model.safetensors", "config.json", "ice_text.model"):
        assert (again / f).read_bytes() == (tiny / f).read_bytes(), f


def test_converted_logits_equal_unconverted(tiny: Path, prompts: list[list[int]]) -> None:
    hub = ChatGLMModel.from_pretrained(tiny / "hub")
    conv = ChatGLMModel.from_pretrained(tiny)
    chunks = [prompts[3], [100, 200], [300]]
    assert torch.equal(chunked_logits(hub, chunks), chunked_logits(conv, chunks))


def test_greedy_not_degenerate(fp32_greedy: list[list[int]], tok: ChatGLMTokenizer) -> None:
    for out in fp32_greedy:
        assert len(out) == STEPS  # <eop> is never greedy-decoded in the tiny model
        assert tok.eos_token_id not in out
        assert len(set(out)) >= 24, out
        assert len(set(out[-16:])) >= 4, out  # no short cycle at the end either
    assert len({tuple(o) for o in fp32_greedy}) == len(fp32_greedy)
    text = tok.decode(fp32_greedy[0])
    assert len(text.strip()) > 10


def test_batched_equals_one_at_a_time(
    tiny: Path, prompts: list[list[int]], fp32_greedy: list[list[int]]
) -> None:
    model = ChatGLMModel.from_pretrained(tiny)
    assert len({len(p) for p in prompts}) > 1  # different lengths: left padding is exercised
    singles = [generate(model, [p], STEPS)[0] for p in prompts]
    assert singles == fp32_greedy


def test_fp16_reference_close(
    tiny: Path, prompts: list[list[int]], fp32_greedy: list[list[int]]
) -> None:
    out = generate(ChatGLMModel.from_pretrained(tiny, dtype=torch.float16), prompts, 16)
    assert out == [o[:16] for o in fp32_greedy]


def test_int8_greedy_agrees_with_fp32(
    tiny: Path, tmp_path: Path, prompts: list[list[int]], fp32_greedy: list[list[int]]
) -> None:
    q8 = ChatGLMModel.from_pretrained(
        convert(tiny / "hub", tmp_path / "int8", int8=True, progress=False)
    )
    out = generate(q8, prompts, STEPS)
    agree = [
        next((i for i, (a, b) in enumerate(zip(x, y, strict=True)) if a != b), STEPS)
        for x, y in zip(out, fp32_greedy, strict=True)
    ]
    print(
        f"int8 vs fp32 greedy agreement over {STEPS} steps: {agree}, mean {sum(agree) / len(agree):.1f}"
    )
    assert min(agree) >= 16, agree
