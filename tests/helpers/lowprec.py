"""Helpers of the low-precision tests (issue 19; CPU and GPU levels): the reference model's
prefill logits, the tiny model's fp32 greedy baseline, prompts and the logits error."""

from __future__ import annotations

import numpy as np

# The chat prompts the tiny-model agreement gates decode (32 greedy tokens each).
GATE_PROMPTS = ["介绍一下北京", "你好", "写一首关于春天的诗", "What is the capital of France?"]
GATE_TOKENS = 32


def prefill_logits(model, ids: list[int]):
    """Logits [T, vocab] of `model` (a glmserve.reference.ChatGLMModel or a wrapper of it)
    over one prompt, fed at once."""
    import torch

    from glmserve.reference import attention_allowed, context_and_mask_position, position_ids_2d

    c, g = context_and_mask_position(ids, model.cfg)
    idx = torch.arange(len(ids))
    pos, block = position_ids_2d(idx, c, g)
    allowed = attention_allowed(idx, idx, c)[None]
    logits, _ = model.forward(torch.tensor([ids]), pos[None], block[None], allowed)
    return logits[0]


def tiny_gate_baseline():
    """(fp32 model, prompt ids, its greedy ids) of the tiny demo model for GATE_PROMPTS."""
    import torch

    from glmserve import reference
    from glmserve.tokenizer import ChatGLMTokenizer
    from helpers.engine_util import tiny_dir

    d = tiny_dir()
    model = reference.ChatGLMModel.from_pretrained(d, dtype=torch.float32)
    tok = ChatGLMTokenizer(str(d / "ice_text.model"))
    ids = [tok.encode(tok.build_prompt(p, [])) for p in GATE_PROMPTS]
    want = [reference.generate(model, [p], max_tokens=GATE_TOKENS, ignore_eos=True)[0] for p in ids]
    return model, ids, want


def greedy(model, ids: list[list[int]]) -> list[list[int]]:
    from glmserve import reference

    return [reference.generate(model, [p], max_tokens=GATE_TOKENS, ignore_eos=True)[0] for p in ids]


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| in float64; a must be finite."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.isfinite(a).all(), "non-finite values"
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def prompts_for(cfg: dict, lens: list[int], seed: int) -> list[list[int]]:
    """Random prompts of the given lengths: ordinary ids, then [gMASK] <sop>."""
    rng = np.random.default_rng(seed)
    hi = min(cfg["vocab_size"], cfg["mask_token_id"], cfg["gmask_token_id"], cfg["bos_token_id"])
    return [
        [int(v) for v in rng.integers(5, hi, n - 2)] + [cfg["gmask_token_id"], cfg["bos_token_id"]]
        for n in lens
    ]
