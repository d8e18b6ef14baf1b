"""A compiled PyTorch decode of ChatGLM-6B: the baseline that a PyTorch user writes in an
afternoon, which the engine must beat (``glmserve.bench --compiled-batches``).

The math is glmserve.reference's (the same functions); what differs is what makes PyTorch
fast: a static KV cache (one tensor, written in place at the step's index), a decode step
whose shapes never change (the token index is a device tensor, keys past it are masked),
and ``torch.compile(mode="reduce-overhead")``, which fuses the elementwise work and replays
the step as a CUDA graph. Greedy, for a batch whose prompts have one length (the seed
workload); the prefill runs eagerly through glmserve.reference.

    dec = StaticDecoder(model, batch=8, max_len=prompt_len + max_tokens)
    ids = dec.generate(prompts, max_tokens=150)      # compile=True by default on CUDA
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from glmserve.reference import (
    MASKED_SCORE,
    ChatGLMModel,
    alpha_residual,
    context_and_mask_position,
    gelu_tanh,
    layer_norm,
    position_ids_2d,
    rotary_2d,
)


class DecodeStep(torch.nn.Module):
    """One decode step of a fixed batch. The weights and the KV cache are buffers, so that
    torch.compile treats them as static (a CUDA graph reads them in place; the cache is
    written in place)."""

    def __init__(self, model: ChatGLMModel, batch: int, max_len: int):
        super().__init__()
        cfg = model.cfg
        self.cfg = cfg
        for name, t in model.w.items():
            self.register_buffer(name.replace(".", "__"), t, persistent=False)
        # One K and one V buffer per layer, written in place with index_copy_ on the whole
        # buffer: a write into a view of one cache for all layers (cache[i].index_copy_)
        # was functionalized by torch.compile into a copy of the whole cache and a copy
        # back every step (seen in Inductor's output code), a cost growing with the batch.
        shape = (batch, cfg.num_attention_heads, max_len, cfg.head_dim)
        for i in range(cfg.num_layers):
            kw = dict(dtype=model.dtype, device=model.device)
            self.register_buffer(f"k_cache_{i}", torch.zeros(shape, **kw), persistent=False)
            self.register_buffer(f"v_cache_{i}", torch.zeros(shape, **kw), persistent=False)
        self.register_buffer("key_idx", torch.arange(max_len, device=model.device))

    def w(self, name: str) -> torch.Tensor:
        return getattr(self, name.replace(".", "__"))

    def cache(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer`'s K and V buffers [B, heads, max_len, head_dim]."""
        return getattr(self, f"k_cache_{layer}"), getattr(self, f"v_cache_{layer}")

    def forward(
        self, tok: torch.Tensor, t: torch.Tensor, pos: torch.Tensor, block: torch.Tensor
    ) -> torch.Tensor:
        """Ids tok [B] at token index t (0-dim, long) with 2D positions pos / block (0-dim):
        writes their K/V at t and returns the next ids [B]."""
        cfg, w = self.cfg, self.w
        heads, hd, eps = cfg.num_attention_heads, cfg.head_dim, cfg.layernorm_epsilon
        bsz = tok.shape[0]
        # One token per row: the hidden states stay [B, H], so every linear is one GEMM
        # of M = B over the weights (read once per step, whatever the batch).
        x = F.embedding(tok, w("transformer.word_embeddings.weight"))  # [B, H]
        p2 = pos.expand(bsz, 1)
        b2 = block.expand(bsz, 1)
        allowed = (self.key_idx <= t)[None, None, None, :]  # [1, 1, 1, max_len]
        for i in range(cfg.num_layers):
            p = f"transformer.layers.{i}."
            a = layer_norm(x, w(p + "input_layernorm.weight"), w(p + "input_layernorm.bias"), eps)
            qkv = F.linear(
                a,
                w(p + "attention.query_key_value.weight"),
                w(p + "attention.query_key_value.bias"),
            )
            q, k, v = qkv.view(bsz, heads, 1, 3 * hd).split(hd, dim=-1)  # [B, heads, 1, hd]
            q = rotary_2d(q, p2, b2)
            k = rotary_2d(k, p2, b2)
            kc, vc = self.cache(i)
            kc.index_copy_(2, t.view(1), k)
            vc.index_copy_(2, t.view(1), v)
            coeff = float(i + 1)
            scores = torch.matmul(q / (math.sqrt(hd) * coeff), kc.transpose(-1, -2))
            scores = scores.masked_fill(~allowed, MASKED_SCORE)
            probs = torch.softmax(scores.float() * coeff, dim=-1).to(v.dtype)
            ctx = torch.matmul(probs, vc).reshape(bsz, heads * hd)
            att = F.linear(ctx, w(p + "attention.dense.weight"), w(p + "attention.dense.bias"))
            h = alpha_residual(a, att, cfg.alpha)
            mm = layer_norm(
                h,
                w(p + "post_attention_layernorm.weight"),
                w(p + "post_attention_layernorm.bias"),
                eps,
            )
            inner = gelu_tanh(
                F.linear(mm, w(p + "mlp.dense_h_to_4h.weight"), w(p + "mlp.dense_h_to_4h.bias"))
            )
            mlp = F.linear(
                inner, w(p + "mlp.dense_4h_to_h.weight"), w(p + "mlp.dense_4h_to_h.bias")
            )
            x = alpha_residual(mm, mlp, cfg.alpha)
        x = layer_norm(
            x,
            w("transformer.final_layernorm.weight"),
            w("transformer.final_layernorm.bias"),
            eps,
        )
        return F.linear(x, w("lm_head.weight")).float().argmax(-1)


class StaticDecoder:
    """Greedy decoding of ``batch`` same-length prompts with a static KV cache."""

    def __init__(self, model: ChatGLMModel, batch: int, max_len: int, compile: bool = True):
        if max_len > model.cfg.max_sequence_length:
            raise ValueError(f"max_len {max_len} exceeds max_sequence_length")
        self.model, self.batch, self.max_len = model, batch, max_len
        self.module = DecodeStep(model, batch, max_len)
        self.step = (
            torch.compile(self.module, mode="reduce-overhead", fullgraph=True)
            if compile
            else self.module
        )

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
        """Greedy ids (eos ignored) of ``batch`` prompts of one length."""
        m, cfg = self.model, self.model.cfg
        n = len(prompts[0])
        if len(prompts) != self.batch or any(len(p) != n for p in prompts):
            raise ValueError(f"want {self.batch} prompts of one length")
        if n + max_tokens - 1 > self.max_len:  # the last id is never fed
            raise ValueError(f"{n} + {max_tokens} tokens exceed max_len {self.max_len}")
        ctx = {context_and_mask_position(p, cfg) for p in prompts}
        if len(ctx) != 1:
            raise ValueError("the prompts must share [gMASK]'s position")
        c, g = ctx.pop()
        dev = m.device
        t = torch.arange(n)
        pos, block = position_ids_2d(t, c, g)
        allowed = (t[None, :] < c) | (t[None, :] <= t[:, None])
        ids = torch.tensor(prompts, device=dev)
        logits, cache = m.forward(
            ids,
            pos.expand(self.batch, n),
            block.expand(self.batch, n),
            allowed.expand(self.batch, n, n),
            last_only=True,
        )
        for i, (k, v) in enumerate(cache.layers):
            kc, vc = self.module.cache(i)
            kc[:, :, :n] = k
            vc[:, :, :n] = v
        tok = logits[:, -1].argmax(-1)
        out = [tok]
        # Every step's token index and positions made on the device at once: the loop
        # itself copies nothing from the host.
        steps = torch.arange(n, n + max_tokens - 1, device=dev)
        pos_all, block_all = position_ids_2d(steps, c, g)
        for j in range(max_tokens - 1):
            # A CUDA-graph output lives in the graph's pool and is overwritten by the next
            # replay: mark the step boundary and keep a copy of each step's ids.
            torch.compiler.cudagraph_mark_step_begin()
            tok = self.step(tok, steps[j], pos_all[j], block_all[j]).clone()
            out.append(tok)
        return torch.stack(out, dim=1).tolist()
