"""A faithful PyTorch ChatGLM-6B: the correctness reference for every engine path.

The math is docs/model.md's, written as short functions named after what they do
(``layer_norm``, ``alpha_residual``, ``position_ids_2d``, ``rotary_2d``, ...), with
THUDM's precision details kept on purpose:

- the rotary ``inv_freq`` table is rounded to fp16 when created, in fp32 runs too;
  in fp16 runs the angle ``pos * inv_freq`` and cos/sin are fp16 as well (as the
  released model runs);
- q is divided by ``sqrt(head_dim) * (layer_id + 1)`` in the model dtype, masked
  scores are filled with -10000, then the scores are multiplied back by
  ``layer_id + 1`` in fp32 before the fp32 softmax;
- ``h = LN(x) * alpha + attention`` (the residual is the *normalized* input) and the
  MLP uses tanh-GeLU. ``alpha`` is sqrt(2 * 28) for every model size: THUDM's blocks
  never receive ``num_layers`` and use their default of 28 (``ChatGLMConfig.alpha``;
  the golden one-layer data needs sqrt(56), not sqrt(2)).

Elementwise ops run unfused in the model dtype (each op rounded), i.e. the
semantics of THUDM's code without its JIT fusion.

Batches of prompts of different lengths are left-padded; each sequence keeps its
own positions and mask, so a batch computes exactly what each prompt computes alone.
``generate`` returns the new ids only; when a sequence stops at ``<eop>`` that id is
the last one returned (as Hugging Face's ``generate`` does).

P-Tuning v2 prefixes (``prefix=``, a ``glmserve.adapters.PrefixKV`` or one per row) have
THUDM's semantics (``get_prompt`` + ``past_key_values``, docs/adapters.md): in every
layer the prefix keys and values come before the tokens' own, cast to the model dtype,
without rotary; every query attends to all of them (the mask gets a column of ones per
prefix position); the tokens' position ids do not change.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from glmserve._checkpoint import CheckpointError, expected_shapes, load_hub_state_dict
from glmserve.adapters import PrefixKV
from glmserve.config import ChatGLMConfig
from glmserve.sampling import SamplingParams, make_generator, sample_next

MASKED_SCORE = -10000.0  # THUDM fills disallowed scores with this (in the scaled-down domain)


# ------------------------------------------------------------------- the math
def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """0.5 x (1 + tanh(sqrt(2/pi) x (1 + 0.044715 x^2)))."""
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))


def alpha_residual(normed: torch.Tensor, branch: torch.Tensor, alpha: float) -> torch.Tensor:
    """ChatGLM's post-LN-style residual: the normalized input scaled by alpha plus the branch."""
    return normed * alpha + branch


def rotary_inv_freq(rotary_dim: int) -> torch.Tensor:
    """1 / 10000^(2j / rotary_dim), j < rotary_dim/2, rounded to fp16 like THUDM's buffer."""
    return (1.0 / (10000 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))).half()


def rotary_cos_sin(
    positions: torch.Tensor, rotary_dim: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [..., rotary_dim] of positions (any shape), duplicated over both halves.

    fp16: angle and cos/sin in fp16 (so angles above 1024 are whole radians);
    fp32: the fp16-rounded inv_freq, everything else in fp32.
    """
    table_dtype = torch.float16 if dtype == torch.float16 else torch.float32
    inv_freq = rotary_inv_freq(rotary_dim).to(device=positions.device, dtype=table_dtype)
    angle = positions.to(table_dtype)[..., None] * inv_freq
    angle = torch.cat((angle, angle), dim=-1)
    return angle.cos().to(dtype), angle.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return (x * cos) + (rotate_half(x) * sin)


def rotary_2d(
    x: torch.Tensor, position_ids: torch.Tensor, block_position_ids: torch.Tensor
) -> torch.Tensor:
    """2D rotary on x [B, heads, T, head_dim]: first half by position, second by block position."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos1, sin1 = rotary_cos_sin(position_ids, half, x.dtype)  # [B, T, half]
    cos2, sin2 = rotary_cos_sin(block_position_ids, half, x.dtype)
    x1 = apply_rotary(x1, cos1[:, None], sin1[:, None])
    x2 = apply_rotary(x2, cos2[:, None], sin2[:, None])
    return torch.cat((x1, x2), dim=-1)


def scaled_masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, layer_id: int
) -> torch.Tensor:
    """softmax(q.k / sqrt(hd)) . v with THUDM's layer scaling; q [B,h,T,hd], k/v [B,h,S,hd].

    ``allowed`` [B, T, S] is True where query t may attend to key s.
    """
    coeff = float(layer_id + 1)
    q = q / (math.sqrt(q.shape[-1]) * coeff)
    scores = torch.matmul(q, k.transpose(-1, -2))
    if not bool(allowed.all()):
        scores = scores.masked_fill(~allowed[:, None], MASKED_SCORE)
    probs = torch.softmax(scores.float() * coeff, dim=-1).to(v.dtype)
    return torch.matmul(probs, v)


# ------------------------------------------------------- positions and masks
def context_and_mask_position(ids: list[int], cfg: ChatGLMConfig) -> tuple[int, int]:
    """(c, g): c = index of the final <sop>, g = first [gMASK] (else first [MASK]) before it."""
    if not ids or ids[-1] != cfg.bos_token_id:
        raise ValueError(f"a prompt must end with <sop> (id {cfg.bos_token_id}), got {ids[-3:]}")
    c = len(ids) - 1
    for token in (cfg.gmask_token_id, cfg.mask_token_id):
        if token in ids[:c]:
            return c, ids.index(token)
    raise ValueError(
        f"a prompt must contain [gMASK] (id {cfg.gmask_token_id}) or [MASK] "
        f"(id {cfg.mask_token_id}) before the final <sop>"
    )


def position_ids_2d(t: torch.Tensor, c: int, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(position, block position) of token indices t: t < c -> (t, 0); else (g, t - c + 1)."""
    in_context = t < c
    pos = torch.where(in_context, t, torch.full_like(t, g))
    block = torch.where(in_context, torch.zeros_like(t), t - c + 1)
    return pos, block


def attention_allowed(q_idx: torch.Tensor, k_idx: torch.Tensor, c: int) -> torch.Tensor:
    """[Tq, Tk] bool: query t sees key s iff s < c (bidirectional context) or s <= t (causal)."""
    s = k_idx[None, :]
    return (s < c) | (s <= q_idx[:, None])


# ----------------------------------------------------------------- the model
@dataclass
class PrefixBatch:
    """Prefix K/V of a batch, per layer [B, heads, P, head_dim] (model dtype), and ``valid``.

    Rows with a shorter prefix (or none) are padded after their prefix; ``valid`` [B, P]
    is False there, so those columns are masked like any disallowed key.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    valid: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.valid.shape[1])


PrefixArg = PrefixKV | Sequence[PrefixKV | None] | PrefixBatch | None


@dataclass
class KVCache:
    """Per layer (k, v), each [B, heads, S, head_dim] (rotary applied to k)."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def length(self) -> int:
        return self.layers[0][0].shape[2] if self.layers else 0


class ChatGLMModel:
    """ChatGLM-6B weights plus the forward pass. Weights are kept in ``dtype``."""

    def __init__(
        self, cfg: ChatGLMConfig, weights: dict[str, torch.Tensor], dtype: torch.dtype, device: str
    ) -> None:
        if dtype not in (torch.float32, torch.float16):
            raise ValueError(f"dtype must be torch.float32 or torch.float16, got {dtype}")
        self.cfg = cfg
        self.dtype = dtype
        self.device = torch.device(device)
        shapes = expected_shapes(cfg)
        self.w: dict[str, torch.Tensor] = {}
        for name, shape in shapes.items():
            if name not in weights:
                raise CheckpointError(f"missing tensor {name!r}")
            t = weights[name]
            if tuple(t.shape) != shape:
                raise CheckpointError(f"tensor {name!r} has shape {list(t.shape)}, want {shape}")
            # A fresh (aligned) copy: the same values give the same results whatever file
            # layout they were read from (CPU kernels can depend on alignment).
            self.w[name] = t.to(device=self.device, dtype=dtype).clone()

    # ------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
    ) -> ChatGLMModel:
        """Loads a hub-style directory or a converted one (fp16/fp32, or int8: dequantized)."""
        d = Path(path)
        cfg = ChatGLMConfig.from_json(d)
        if cfg.glmserve_format is not None:
            weights = load_converted_state_dict(d / "model.safetensors")
        else:
            weights = load_hub_state_dict(d, cfg)
        return cls(cfg, weights, dtype, device)

    # ------------------------------------------------------------- forward
    def linear(self, x: torch.Tensor, weight: str, bias: torch.Tensor | None) -> torch.Tensor:
        """A block's linear layer by weight name (a low-precision model overrides it)."""
        return F.linear(x, self.w[weight], bias)

    def stored_kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The new tokens' K (after rotary) and V as the cache keeps them (an FP8 KV cache
        overrides it); [B, heads, T, head_dim]."""
        return k, v

    def layer(
        self,
        i: int,
        x: torch.Tensor,
        pos: torch.Tensor,
        block_pos: torch.Tensor,
        allowed: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One GLM block on x [B, T, hidden]; returns (output, this layer's full (k, v)).

        ``prefix``: this layer's prefix (k, v) [B, heads, P, head_dim], attended before the
        cache and the new tokens (``allowed`` then has P more leading columns); the returned
        (k, v) are the tokens' own, without the prefix.
        """
        cfg, w, p = self.cfg, self.w, f"transformer.layers.{i}."
        heads, hd = cfg.num_attention_heads, cfg.head_dim
        bsz, t = x.shape[:2]

        a = layer_norm(
            x, w[p + "input_layernorm.weight"], w[p + "input_layernorm.bias"], cfg.layernorm_epsilon
        )
        qkv = self.linear(
            a, p + "attention.query_key_value.weight", w[p + "attention.query_key_value.bias"]
        )
        # Per head the 3*hd outputs are [q | k | v].
        qkv = qkv.view(bsz, t, heads, 3 * hd).transpose(1, 2)
        q, k, v = qkv.split(hd, dim=-1)
        q = rotary_2d(q, pos, block_pos)
        k, v = self.stored_kv(rotary_2d(k, pos, block_pos), v)
        if past is not None:
            k = torch.cat((past[0], k), dim=2)
            v = torch.cat((past[1], v), dim=2)
        if prefix is not None:  # no rotary: THUDM's past_key_values are used as they are
            ctx = scaled_masked_attention(
                q, torch.cat((prefix[0], k), dim=2), torch.cat((prefix[1], v), dim=2), allowed, i
            )
        else:
            ctx = scaled_masked_attention(q, k, v, allowed, i)
        ctx = ctx.transpose(1, 2).reshape(bsz, t, heads * hd)
        att = self.linear(ctx, p + "attention.dense.weight", w[p + "attention.dense.bias"])
        h = alpha_residual(a, att, cfg.alpha)

        m = layer_norm(
            h,
            w[p + "post_attention_layernorm.weight"],
            w[p + "post_attention_layernorm.bias"],
            cfg.layernorm_epsilon,
        )
        inner = gelu_tanh(
            self.linear(m, p + "mlp.dense_h_to_4h.weight", w[p + "mlp.dense_h_to_4h.bias"])
        )
        mlp = self.linear(inner, p + "mlp.dense_4h_to_h.weight", w[p + "mlp.dense_4h_to_h.bias"])
        return alpha_residual(m, mlp, cfg.alpha), (k, v)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        block_position_ids: torch.Tensor,
        allowed: torch.Tensor,
        cache: KVCache | None = None,
        last_only: bool = False,
        prefix: PrefixArg = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """Runs new tokens [B, T] on top of ``cache``.

        position_ids / block_position_ids: [B, T]; allowed: [B, T, cache_len + T] bool
        (tokens only: every query sees all of its row's prefix). ``prefix``: a PrefixKV
        for every row, one per row (None: no prefix), or ``prefix_batch()``'s result.
        Returns (logits [B, T or 1, vocab] float32, the extended cache, without the prefix).
        """
        w, cfg = self.w, self.cfg
        dev = self.device
        input_ids, position_ids, block_position_ids, allowed = (
            input_ids.to(dev),
            position_ids.to(dev),
            block_position_ids.to(dev),
            allowed.to(dev),
        )
        x = F.embedding(input_ids, w["transformer.word_embeddings.weight"])
        pb = prefix if isinstance(prefix, PrefixBatch) else self.prefix_batch(prefix, x.shape[0])
        if pb is not None:
            seen = pb.valid.to(dev)[:, None, :].expand(-1, allowed.shape[1], -1)
            allowed = torch.cat((seen, allowed), dim=2)
        new_layers = []
        for i in range(cfg.num_layers):
            past = cache.layers[i] if cache is not None else None
            pre = (pb.keys[i], pb.values[i]) if pb is not None else None
            x, kv = self.layer(i, x, position_ids, block_position_ids, allowed, past, pre)
            new_layers.append(kv)
        if last_only:
            x = x[:, -1:]
        x = layer_norm(
            x,
            w["transformer.final_layernorm.weight"],
            w["transformer.final_layernorm.bias"],
            cfg.layernorm_epsilon,
        )
        logits = F.linear(x, w["lm_head.weight"])
        return logits.float(), KVCache(new_layers)

    def prefix_batch(self, prefix: PrefixArg, bsz: int) -> PrefixBatch | None:
        """The per-layer prefix K/V of a batch of ``bsz`` rows, in the model dtype.

        As THUDM's ``get_prompt``: each layer's [P, hidden] is viewed as [P, heads,
        head_dim] and cast to the model dtype (``.type(dtype)``); no rotary.
        """
        if prefix is None or isinstance(prefix, PrefixBatch):
            return prefix
        rows = [prefix] * bsz if isinstance(prefix, PrefixKV) else list(prefix)
        if len(rows) != bsz:
            raise ValueError(f"{len(rows)} prefixes for a batch of {bsz}")
        given = [r for r in rows if r is not None]
        if not given:
            return None
        cfg, heads, hd = self.cfg, self.cfg.num_attention_heads, self.cfg.head_dim
        width = max(r.length for r in given)
        shape = (cfg.num_layers, bsz, heads, width, hd)
        keys = torch.zeros(shape, dtype=self.dtype, device=self.device)
        values = torch.zeros(shape, dtype=self.dtype, device=self.device)
        valid = torch.zeros((bsz, width), dtype=torch.bool, device=self.device)
        for b, r in enumerate(rows):
            if r is None:
                continue
            r.check_fits(cfg)
            n = r.length
            for dst, src in ((keys, r.key), (values, r.value)):
                per_head = src.view(cfg.num_layers, n, heads, hd).permute(0, 2, 1, 3)
                dst[:, b, :, :n] = per_head.to(device=self.device, dtype=self.dtype)
            valid[b, :n] = True
        return PrefixBatch(list(keys.unbind(0)), list(values.unbind(0)), valid)


# ----------------------------------------------------------- converted files
def load_converted_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a converted model.safetensors; INT8 and FP8 weights come back dequantized
    (fp32: value * scale per output channel)."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: not found")
    raw = load_file(str(p))
    out: dict[str, torch.Tensor] = {}
    for name, t in raw.items():
        if name.endswith(".weight_scale"):
            continue
        if t.dtype in (torch.int8, torch.float8_e4m3fn):
            scale_name = name + "_scale"
            if scale_name not in raw:
                raise CheckpointError(f"{p}: quantized tensor {name!r} has no {scale_name!r}")
            t = dequantize_int8(t, raw[scale_name])
        out[name] = t
    return out


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """w = q * scale per output channel (row), in fp32 (q int8, or float8_e4m3fn codes)."""
    return q.float() * scale.float()[:, None]


# ------------------------------------------------------------- entry points
def golden_forward(model: ChatGLMModel, calls: list[dict[str, list[int]]]) -> list[torch.Tensor]:
    """Runs one sequence's calls (ids with explicit position / block position ids), KV cache kept.

    The context length c (for the mask) is the number of tokens of the first call whose
    block position is 0. Returns each call's logits [T, vocab].
    """
    c = sum(1 for b in calls[0]["block_position_ids"] if b == 0)
    cache: KVCache | None = None
    outs = []
    start = 0
    for call in calls:
        n = len(call["ids"])
        q_idx = torch.arange(start, start + n)
        allowed = attention_allowed(q_idx, torch.arange(start + n), c)[None]
        logits, cache = model.forward(
            torch.tensor([call["ids"]]),
            torch.tensor([call["position_ids"]]),
            torch.tensor([call["block_position_ids"]]),
            allowed,
            cache,
        )
        outs.append(logits[0])
        start += n
    return outs


def chunked_logits(
    model: ChatGLMModel, chunks: list[list[int]], prefix: PrefixKV | None = None
) -> torch.Tensor:
    """Full-sequence logits [sum of lengths, vocab] of one sequence fed chunk by chunk.

    Chunk 0 is the prompt (ends with <sop>); later chunks are treated as generated
    tokens. Mirrors the engine's ``debug_forward``. ``prefix``: a P-Tuning v2 prefix.
    """
    pb = model.prefix_batch(prefix, 1)
    c, g = context_and_mask_position(chunks[0], model.cfg)
    cache: KVCache | None = None
    outs, start = [], 0
    for chunk in chunks:
        t = torch.arange(start, start + len(chunk))
        pos, block = position_ids_2d(t, c, g)
        allowed = attention_allowed(t, torch.arange(start + len(chunk)), c)[None]
        logits, cache = model.forward(
            torch.tensor([chunk]), pos[None], block[None], allowed, cache, prefix=pb
        )
        outs.append(logits[0])
        start += len(chunk)
    return torch.cat(outs)


@torch.inference_mode()
def generate(
    model: ChatGLMModel,
    prompts: list[list[int]],
    max_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    seed: int | list[int] | None = None,
    ignore_eos: bool = False,
    prefix: PrefixKV | Sequence[PrefixKV | None] | None = None,
) -> list[list[int]]:
    """Generates for a batch of prompts (each ends with [gMASK]... <sop>); returns the new ids.

    Greedy when temperature == 0. Each request samples with its own torch.Generator
    (seeded by ``seed``, or ``seed[i]`` when a list), so results do not depend on the
    batch. A sequence stops after ``<eop>`` (included) unless ``ignore_eos``, after
    ``max_tokens`` new ids, or when it reaches ``max_sequence_length`` (counted in
    tokens: a prefix does not count, as in THUDM's code). ``prefix``: a P-Tuning v2
    prefix for every prompt, or one (or None) per prompt.
    """
    cfg = model.cfg
    if not prompts:
        return []
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    params = SamplingParams(temperature, top_k, top_p, repetition_penalty)
    for i, p in enumerate(prompts):
        bad = [x for x in p if not 0 <= x < cfg.vocab_size]
        if bad:
            raise ValueError(
                f"prompt {i}: ids {bad[:5]} outside the vocabulary [0, {cfg.vocab_size})"
            )
        if len(p) >= cfg.max_sequence_length:
            raise ValueError(
                f"prompt {i} has {len(p)} ids; max_sequence_length is {cfg.max_sequence_length}"
            )
    seeds = seed if isinstance(seed, list) else [seed] * len(prompts)
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    gens = [make_generator(s) for s in seeds]

    bsz, width = len(prompts), max(len(p) for p in prompts)
    ctx = [context_and_mask_position(p, cfg) for p in prompts]
    pads = [width - len(p) for p in prompts]

    # Left-padded prefill: every row uses its own token index t = j - pad. Pad slots are
    # masked out as keys; their id only has to be a valid embedding row.
    pad_id = cfg.pad_token_id if cfg.pad_token_id < cfg.vocab_size else 0
    ids = torch.full((bsz, width), pad_id, dtype=torch.long)
    pos = torch.zeros((bsz, width), dtype=torch.long)
    block = torch.zeros((bsz, width), dtype=torch.long)
    allowed = torch.zeros((bsz, width, width), dtype=torch.bool)
    for b, (p, (c, g), pad) in enumerate(zip(prompts, ctx, pads, strict=True)):
        t = torch.arange(len(p))
        ids[b, pad:] = torch.tensor(p)
        pos[b, pad:], block[b, pad:] = position_ids_2d(t, c, g)
        allowed[b, pad:, pad:] = attention_allowed(t, t, c)
        allowed[b, :pad, :pad] = torch.eye(pad, dtype=torch.bool)  # pad rows: finite, unused
    key_valid = torch.zeros((bsz, width), dtype=torch.bool)
    for b, pad in enumerate(pads):
        key_valid[b, pad:] = True
    pb = model.prefix_batch(prefix, bsz)
    logits, cache = model.forward(ids, pos, block, allowed, None, last_only=True, prefix=pb)

    history = [list(p) for p in prompts]
    out: list[list[int]] = [[] for _ in prompts]
    done = [False] * bsz
    while True:
        next_ids = []
        for b in range(bsz):
            if done[b]:
                next_ids.append(pad_id)
                continue
            tok = sample_next(logits[b, -1], history[b], params, gens[b])
            out[b].append(tok)
            history[b].append(tok)
            if (
                (tok == cfg.eos_token_id and not ignore_eos)
                or len(out[b]) >= max_tokens
                or len(history[b]) >= cfg.max_sequence_length
            ):
                done[b] = True
            next_ids.append(tok)
        if all(done):
            return out
        # Decode step: token index t = len(history) - 1 of each row.
        t = torch.tensor([len(h) - 1 for h in history])
        step_pos = torch.empty(bsz, dtype=torch.long)
        step_block = torch.empty(bsz, dtype=torch.long)
        for b, (c, g) in enumerate(ctx):
            step_pos[b], step_block[b] = position_ids_2d(t[b], c, g)
        key_valid = torch.cat((key_valid, torch.ones((bsz, 1), dtype=torch.bool)), dim=1)
        logits, cache = model.forward(
            torch.tensor(next_ids)[:, None],
            step_pos[:, None],
            step_block[:, None],
            key_valid[:, None, :],
            cache,
            prefix=pb,
        )
