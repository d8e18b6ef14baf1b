"""The reference model against THUDM's golden data, and its batching / caching invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.torch_threads import one_thread

from glmserve import golden
from glmserve.reference import (
    ChatGLMModel,
    attention_allowed,
    chunked_logits,
    generate,
    golden_forward,
    position_ids_2d,
    rotary_inv_freq,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


needs_golden = pytest.mark.skipif(
    not golden.default_path().is_file(), reason=f"golden data not found at {golden.default_path()}"
)


@pytest.fixture(scope="module")
def golden_dir(tmp_path_factory: pytest.TempPathFactory):
    return golden.write_checkpoint(tmp_path_factory.mktemp("golden"))


def _golden_errors(golden_dir, dtype: torch.dtype) -> list[float]:
    model = ChatGLMModel.from_pretrained(golden_dir, dtype=dtype)
    outs = golden_forward(model, golden.CALLS)
    ref = golden.load().outputs
    return [
        float(np.abs(o.numpy()[:, : golden.HIDDEN] - y).max())
        for o, y in zip(outs, ref, strict=True)
    ]


@needs_golden
def test_golden_fp32(golden_dir) -> None:
    errs = _golden_errors(golden_dir, torch.float32)
    assert max(errs) <= 1e-5, errs


@needs_golden
def test_golden_fp16(golden_dir) -> None:
    # fp16 matmul/layernorm run on CPU in torch >= 2.1; errors are fp16 rounding (~1e-3).
    errs = _golden_errors(golden_dir, torch.float16)
    assert max(errs) <= 1e-2, errs


def test_positions_and_mask_rule() -> None:
    # prompt "a b [gMASK] <sop>" (n=4, c=3, g=2) followed by two generated tokens.
    t = torch.arange(6)
    pos, block = position_ids_2d(t, c=3, g=2)
    assert pos.tolist() == [0, 1, 2, 2, 2, 2]
    assert block.tolist() == [0, 0, 0, 1, 2, 3]
    allowed = attention_allowed(t, t, c=3).int().tolist()
    assert allowed[0] == [1, 1, 1, 0, 0, 0]  # context is bidirectional, sees no later token
    assert allowed[3] == [1, 1, 1, 1, 0, 0]  # <sop> sees the context and itself
    assert allowed[5] == [1, 1, 1, 1, 1, 1]


def test_rotary_inv_freq_is_fp16_rounded() -> None:
    inv = rotary_inv_freq(64)
    exact = 1.0 / (10000 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64))
    assert inv.dtype == torch.float16 and inv.shape == (32,)
    assert not torch.equal(inv.double(), exact)  # rounding happened
    assert torch.allclose(inv.double(), exact, rtol=1e-3)


# ----------------------------------------------------------- small random model
SPECIAL = {
    "mask_token_id": 60,
    "gmask_token_id": 61,
    "bos_token_id": 62,
    "eos_token_id": 63,
    "pad_token_id": 0,
}
PROMPTS = [[5, 9, 17, 61, 62], [33, 61, 62], [7, 8, 9, 10, 11, 12, 61, 62], [4, 61, 4, 4, 62]]


@pytest.fixture(scope="module")
def small() -> ChatGLMModel:
    from glmserve.config import ChatGLMConfig
    from glmserve.tiny import tiny_config, tiny_weights

    d = tiny_config(64, SPECIAL).to_dict()
    d.update(hidden_size=64, num_attention_heads=4, inner_hidden_size=128)
    cfg = ChatGLMConfig.from_dict(d)
    return ChatGLMModel(cfg, tiny_weights(cfg, seed=7), torch.float32, "cpu")


def test_kv_cache_matches_one_prefill(small: ChatGLMModel) -> None:
    gen = generate(small, [PROMPTS[0]], 6)[0]
    one = chunked_logits(small, [PROMPTS[0], gen])
    many = chunked_logits(small, [PROMPTS[0], gen[:1], gen[1:4], gen[4:]])
    assert torch.allclose(one, many, atol=1e-4, rtol=1e-5)
    # the greedy tokens are the argmax of the logits one position earlier
    n = len(PROMPTS[0])
    assert one[n - 1 : n + 5].argmax(-1).tolist() == gen


def test_batched_greedy_equals_single(small: ChatGLMModel) -> None:
    batched = generate(small, PROMPTS, 24)
    assert batched == [generate(small, [p], 24)[0] for p in PROMPTS]


def test_stops_at_eos_unless_ignored(small: ChatGLMModel) -> None:
    first = generate(small, [PROMPTS[1]], 1)[0][0]
    w = small.w["lm_head.weight"]
    saved = w[small.cfg.eos_token_id].clone()
    try:
        w[small.cfg.eos_token_id] = 2.0 * w[first]  # eos now beats the first greedy token
        assert generate(small, [PROMPTS[1]], 10) == [[small.cfg.eos_token_id]]
        out = generate(small, [PROMPTS[1]], 10, ignore_eos=True)[0]
        assert len(out) == 10 and out[0] == small.cfg.eos_token_id
        # in a batch, a finished sequence does not stop the others
        both = generate(small, [PROMPTS[1], PROMPTS[2]], 5)
        assert both[0] == [small.cfg.eos_token_id] and len(both[1]) >= 1
    finally:
        w[small.cfg.eos_token_id] = saved


def test_sampling_seeded_and_batch_independent(small: ChatGLMModel) -> None:
    kw = {"temperature": 1.0, "top_k": 20, "top_p": 0.9, "seed": 11}
    a = generate(small, PROMPTS, 12, **kw)
    assert a == generate(small, PROMPTS, 12, **kw)
    assert a[2] == generate(small, [PROMPTS[2]], 12, **kw)[0]  # per-request generator
    assert a != generate(small, PROMPTS, 12, **{**kw, "seed": 12})
    greedy = generate(small, PROMPTS, 12)
    assert generate(small, PROMPTS, 12, temperature=0.7, top_k=1, seed=3) == greedy


def test_prompt_validation(small: ChatGLMModel) -> None:
    with pytest.raises(ValueError, match="<sop>"):
        generate(small, [[5, 61]], 2)
    with pytest.raises(ValueError, match=r"\[gMASK\]"):
        generate(small, [[5, 62]], 2)
    with pytest.raises(ValueError, match="vocabulary"):
        generate(small, [[500, 61, 62]], 2)


def test_mask_instead_of_gmask(small: ChatGLMModel) -> None:
    # [MASK] is accepted when there is no [gMASK]; g is its index.
    out = generate(small, [[5, 60, 7, 62]], 3)
    assert len(out[0]) == 3


def test_sampling_processors_hf_semantics() -> None:
    from glmserve.sampling import SamplingParams, make_generator, sample_next

    gen = make_generator(0)
    logits = torch.tensor([2.0, -1.0, 0.5, 0.5])
    assert sample_next(logits, [], SamplingParams(), gen) == 0
    # HF repetition penalty: positive logits divided, negative multiplied.
    assert sample_next(logits, [0], SamplingParams(repetition_penalty=2.0), gen) == 0  # 1.0
    assert sample_next(logits, [0], SamplingParams(repetition_penalty=5.0), gen) == 2  # 0.4<0.5
    # ties: lowest id
    assert sample_next(torch.tensor([0.0, 3.0, 3.0]), [], SamplingParams(), gen) == 1
    # top-p keeps at least the best token; top-k=1 is greedy even when sampling
    for seed in range(5):
        g = make_generator(seed)
        assert sample_next(logits, [], SamplingParams(1.0, top_p=1e-6), g) == 0
        assert sample_next(logits, [], SamplingParams(3.0, top_k=1), g) == 0
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)


def test_fp16_rotary_rounds_angles_like_thudm() -> None:
    from glmserve.reference import rotary_cos_sin

    pos = torch.tensor([2047])
    inv = rotary_inv_freq(64)
    cos16, _ = rotary_cos_sin(pos, 64, torch.float16)
    cos32, _ = rotary_cos_sin(pos, 64, torch.float32)
    # fp16 run: the angle 2047 * inv_freq[1] = 1535.25 is rounded to fp16: 1535 (whole radians).
    angle16 = (pos.half() * inv[1]).item()
    assert angle16 == round(angle16) and angle16 != 2047 * inv[1].item()
    assert cos16[0, 1].item() == torch.tensor(angle16).cos().half().item()
    # fp32 run: fp16-rounded inv_freq, fp32 angle.
    assert cos32[0, 1].item() == pytest.approx(
        torch.tensor(2047 * inv[1].float().item()).cos().item()
    )
    assert cos16.dtype == torch.float16 and cos32.dtype == torch.float32
