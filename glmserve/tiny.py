"""The tiny demo ChatGLM: real architecture, small sizes, deterministic weights.

    python -m glmserve.tiny --out models/chatglm-tiny

Writes a hub-style checkpoint to ``OUT/hub/`` (``config.json`` with the real config's
fields, ``model.safetensors`` with hub tensor names in fp32, ``ice_text.model`` from
``glmserve.tokenizer.train_tiny_tokenizer``) and its conversion to ``OUT/`` (fp32),
so ``OUT/model.safetensors`` exists for ``make demo-model``.

Architecture: 2 layers, hidden 128, 4 heads (head dim 32), inner 512, the vocabulary
and special ids of the tiny tokenizer, max_sequence_length 2048.

Weights (``torch.Generator`` seeded with ``WEIGHTS_SEED + seed``; the same bytes every
run) are scaled so that greedy output is not degenerate:

- embeddings ~ N(0, 1) and lm_head ~ N(0, 1): each token gets a distinct, confident
  next-token preference (logit std ~ sqrt(hidden) ~ 11);
- q/k weights with gain 2, so attention is peaked, and the attention output
  projection with gain 4, so that the context (not just the current token) moves the
  prediction against the residual's alpha = sqrt(56): different prompts get different
  continuations from the first token on; the other linears are ~ N(0, 1/fan_in);
- the lm_head rows of the special ids ([MASK], [gMASK], <sop>, <eop>, pad) and of the
  control, byte (<0x..>), <|tab|> and <|blank_N|> pieces are zero, so their logit is
  exactly 0 while the best logit is large and positive: greedy decoding never emits
  them (the demo text is made of ordinary pieces), in particular not <eop>, so greedy
  runs go to
  ``max_tokens`` (tests get long outputs; stopping at <eop> is tested with sampling or
  a modified model). Sampling at high temperature can still emit them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from glmserve._checkpoint import expected_shapes
from glmserve.config import ChatGLMConfig

HIDDEN = 128
HEADS = 4
LAYERS = 2
INNER = 512
MAX_SEQ = 2048
QK_GAIN = 2.0
ATTN_OUT_GAIN = 4.0  # attention.dense: the context competes with the alpha-scaled residual
# Weights seed = WEIGHTS_SEED + --seed. With these gains seeds 10..15 all give varied
# greedy text for 8 test prompts; 14 gives 14+ distinct ids in steps 48..63 and 27+ in
# steps 96..127, and 8 different 3-token openings.
WEIGHTS_SEED = 14

DEMO_PROMPTS = ["Hello", "你好", "What is ChatGLM?", "Write a poem about the sea.\nThen stop."]


def tiny_config(vocab_size: int, special: dict[str, int]) -> ChatGLMConfig:
    return ChatGLMConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        num_layers=LAYERS,
        inner_hidden_size=INNER,
        layernorm_epsilon=1e-5,
        max_sequence_length=MAX_SEQ,
        position_encoding_2d=True,
        bos_token_id=special["bos_token_id"],
        eos_token_id=special["eos_token_id"],
        mask_token_id=special["mask_token_id"],
        gmask_token_id=special["gmask_token_id"],
        pad_token_id=special["pad_token_id"],
        torch_dtype="float32",
    )


def quiet_piece(piece: str) -> bool:
    """Pieces greedy decoding should not produce: control, byte and blank/tab pieces."""
    if piece in ("<n>", "<", ">"):
        return False
    return (piece.startswith("<") and piece.endswith(">")) or piece.endswith("MASK]")


def tiny_weights(
    cfg: ChatGLMConfig, seed: int = 0, quiet_ids: list[int] | None = None
) -> dict[str, torch.Tensor]:
    """Deterministic fp32 weights with hub names (see the module docstring for the scales).

    ``quiet_ids`` (plus the special ids from ``cfg``) get a zero lm_head row.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(shape: tuple[int, ...], std: float) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std

    sd: dict[str, torch.Tensor] = {}
    h = cfg.hidden_size
    for name, shape in expected_shapes(cfg).items():
        if name.endswith("layernorm.weight"):
            sd[name] = 1.0 + normal(shape, 0.1)
        elif name.endswith(".bias"):
            sd[name] = normal(shape, 0.02)
        elif name in ("transformer.word_embeddings.weight", "lm_head.weight"):
            sd[name] = normal(shape, 1.0)
        elif name.endswith("query_key_value.weight"):
            w = normal(shape, 1.0 / h**0.5)
            # Per head the rows are [q | k | v]; sharpen q and k.
            w = w.view(cfg.num_attention_heads, 3, cfg.head_dim, h)
            w[:, :2] *= QK_GAIN
            sd[name] = w.reshape(shape)
        elif name.endswith("attention.dense.weight"):
            sd[name] = normal(shape, ATTN_OUT_GAIN / shape[1] ** 0.5)
        else:
            sd[name] = normal(shape, 1.0 / shape[1] ** 0.5)
    quiet = {cfg.mask_token_id, cfg.gmask_token_id, cfg.bos_token_id, cfg.eos_token_id}
    quiet.update(quiet_ids or [])
    if cfg.pad_token_id < cfg.vocab_size:
        quiet.add(cfg.pad_token_id)
    sd["lm_head.weight"][sorted(quiet)] = 0.0
    return sd


def write_hub(out: Path, seed: int = 0) -> Path:
    """Writes OUT (hub-style): tokenizer, config.json, model.safetensors."""
    from safetensors.torch import save_file

    from glmserve.tokenizer import ChatGLMTokenizer, train_tiny_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    tok_file = out / "ice_text.model"
    train_tiny_tokenizer(str(tok_file), seed=seed)
    tok = ChatGLMTokenizer(str(tok_file))
    special = {
        k: int(getattr(tok, k))
        for k in ("bos_token_id", "eos_token_id", "mask_token_id", "gmask_token_id", "pad_token_id")
    }
    cfg = tiny_config(int(tok.vocab_size), special)
    hub_cfg = {
        "_name_or_path": "glmserve/chatglm-tiny",
        "architectures": ["ChatGLMModel"],
        "model_type": "chatglm",
        **cfg.to_dict(),
        "use_cache": True,
    }
    (out / "config.json").write_text(json.dumps(hub_cfg, indent=2) + "\n")
    quiet = [i for i in range(cfg.vocab_size) if quiet_piece(tok.id_to_piece(i))]
    weights = tiny_weights(cfg, WEIGHTS_SEED + seed, quiet)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def make_tiny(out: str | Path, seed: int = 0) -> Path:
    """Hub-style tiny checkpoint in OUT/hub and its fp32 conversion in OUT; returns OUT."""
    from glmserve.convert import convert

    out = Path(out)
    hub = write_hub(out / "hub", seed)
    return convert(hub, out, dtype="fp32", progress=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m glmserve.tiny",
        description="Write the deterministic tiny demo ChatGLM (hub-style in OUT/hub, "
        "converted in OUT).",
    )
    p.add_argument("--out", required=True, help="output directory, e.g. models/chatglm-tiny")
    p.add_argument("--seed", type=int, default=0, help="weights and tokenizer seed (default 0)")
    args = p.parse_args(argv)
    t0 = time.time()
    out = make_tiny(args.out, args.seed)
    print(f"tiny: wrote {out} (hub-style copy in {out / 'hub'}) in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
