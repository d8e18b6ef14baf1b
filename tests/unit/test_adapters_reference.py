"""The reference model with a P-Tuning v2 prefix against THUDM's own formulation.

``thudm_logits`` below is THUDM's modeling_chatglm.py (revision 8b7d335) written out
plainly in its own layout ([seq, batch, heads, head_dim]): ``PrefixEncoder`` ->
``get_prompt`` (view [B, P, 2L, heads, hd], permute [2, 1, 0, 3, 4], split(2): layer i
gets (slot 2i, slot 2i+1) as (past_key, past_value)), ``get_masks`` with the prefix
columns of ones prepended, ``get_position_ids`` (unchanged by the prefix), and
``attention_fn`` (past keys/values concatenated before the tokens' own, rotary only on
the tokens). It shares no code with glmserve.reference. The reference side reads the
prefix the converter wrote (OUT/adapters/NAME), so the whole chain is tested: the
recipe's checkpoint -> converter -> adapter files -> reference model.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers.torch_threads import one_thread

from glmserve.adapter_fixtures import random_prefix_encoder, write_ptuning_checkpoint
from glmserve.adapters import PrefixKV, load_prefix
from glmserve.config import ChatGLMConfig
from glmserve.convert import main as convert_main
from glmserve.reference import ChatGLMModel, chunked_logits, generate
from glmserve.tiny import make_tiny


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


PRE_SEQ_LEN = 6


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny demo model, converted, with adapters 'plain' and 'proj' added by the CLI."""
    root = tmp_path_factory.mktemp("adapters_ref")
    out = make_tiny(root / "tiny")
    cfg = ChatGLMConfig.from_json(out / "config.json")
    for name, projection, seed in (("plain", False, 1), ("proj", True, 2)):
        src = write_ptuning_checkpoint(root / name, cfg, PRE_SEQ_LEN, projection, seed)
        args = ["--ptuning", str(src), "--base", str(out), "--adapter-name", name, "--quiet"]
        assert convert_main(args) == 0
    return out


@pytest.fixture(scope="module")
def model(tiny: Path) -> ChatGLMModel:
    return ChatGLMModel.from_pretrained(tiny)


def prompt(model: ChatGLMModel, ids: list[int]) -> list[int]:
    return [*ids, model.cfg.gmask_token_id, model.cfg.bos_token_id]


# --------------------------------------------------------- THUDM, written out
def prefix_encoder_output(encoder: dict[str, torch.Tensor], projection: bool) -> torch.Tensor:
    """THUDM's PrefixEncoder as torch.nn modules (fp32, as the recipe runs it): [1, P, 2LH]."""
    sd = {k.removeprefix("transformer.prefix_encoder."): v for k, v in encoder.items()}
    emb = torch.nn.Embedding(*sd["embedding.weight"].shape)
    emb.weight.data.copy_(sd["embedding.weight"])
    prefix_tokens = torch.arange(emb.num_embeddings)[None]
    with torch.no_grad():
        if not projection:
            return emb(prefix_tokens)
        h, out = sd["trans.0.weight"].shape[0], sd["trans.2.weight"].shape[0]
        trans = torch.nn.Sequential(torch.nn.Linear(h, h), torch.nn.Tanh(), torch.nn.Linear(h, out))
        trans.load_state_dict({k.removeprefix("trans."): v for k, v in sd.items() if "trans" in k})
        return trans(emb(prefix_tokens))


def get_prompt(out: torch.Tensor, cfg: ChatGLMConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """THUDM's get_prompt: per layer (past_key, past_value), each [P, 1, heads, hd]."""
    heads = cfg.num_attention_heads
    pkv = out.view(1, out.shape[1], cfg.num_layers * 2, heads, cfg.hidden_size // heads)
    pkv = pkv.permute([2, 1, 0, 3, 4]).split(2)
    return [(layer_past[0], layer_past[1]) for layer_past in pkv]


def thudm_logits(
    w: dict[str, torch.Tensor],
    cfg: ChatGLMConfig,
    ids: list[int],
    past: list[tuple[torch.Tensor, torch.Tensor]] | None,
    queries: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Logits [T, vocab] of one sequence (no KV cache) in fp32; ``queries`` collects q per layer."""
    n, heads = len(ids), cfg.num_attention_heads
    hd = cfg.hidden_size // heads
    c, g = ids.index(cfg.bos_token_id), ids.index(cfg.gmask_token_id)
    mask = torch.ones(1, n, n).tril()
    mask[:, :, :c] = 1
    mask = (mask < 0.5)[:, None]  # True = masked, [1, 1, n, n]
    if past is not None:
        prefix_mask = torch.ones(1, 1, n, past[0][0].shape[0]) < 0.5
        mask = torch.cat((prefix_mask, mask), dim=3)
    position_ids = torch.arange(n)
    position_ids[c:] = g
    block_position_ids = torch.cat((torch.zeros(c, dtype=torch.long), torch.arange(n - c) + 1))
    # RotaryEmbedding(hd // 2): inv_freq made fp16 at creation, then float() with the model.
    dim = hd // 2
    inv_freq = (1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))).half().float()
    freqs = torch.einsum("i,j->ij", torch.arange(n).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()

    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
        return torch.cat((-x2, x1), dim=-1)

    def apply_rotary(q, k, pid):  # noqa: ANN001, ANN202 - THUDM's apply_rotary_pos_emb_index
        cs, sn = (
            F.embedding(pid[:, None], cos)[:, :, None],
            F.embedding(pid[:, None], sin)[:, :, None],
        )
        return q * cs + rotate_half(q) * sn, k * cs + rotate_half(k) * sn

    def ln(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), w[name + ".weight"], w[name + ".bias"], 1e-5)

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, w[name + ".weight"], w.get(name + ".bias"))

    alpha = (2 * 28) ** 0.5  # GLMBlock's default num_layers=28
    hidden = F.embedding(torch.tensor(ids), w["transformer.word_embeddings.weight"])[:, None]
    for i in range(cfg.num_layers):
        p = f"transformer.layers.{i}."
        attention_input = ln(hidden, p + "input_layernorm")
        mixed = linear(attention_input, p + "attention.query_key_value").view(n, 1, heads, 3 * hd)
        q, k, v = mixed.split(hd, dim=-1)
        q1, q2 = q.chunk(2, dim=-1)
        k1, k2 = k.chunk(2, dim=-1)
        q1, k1 = apply_rotary(q1, k1, position_ids)
        q2, k2 = apply_rotary(q2, k2, block_position_ids)
        q, k = torch.cat([q1, q2], dim=-1), torch.cat([k1, k2], dim=-1)
        if queries is not None:
            queries.append(q[:, 0].clone())  # [n, heads, hd]
        if past is not None:  # attention_fn: layer_past[0], layer_past[1]
            k = torch.cat((past[i][0], k), dim=0)
            v = torch.cat((past[i][1], v), dim=0)
        coeff = float(i + 1)
        q = q / (math.sqrt(hd) * coeff)
        scores = torch.einsum("qbhd,kbhd->bhqk", q, k)
        if not (mask == 0).all():
            scores = scores.masked_fill(mask, -10000.0)
        probs = F.softmax(scores.float() * coeff, dim=-1)
        context = torch.einsum("bhqk,kbhd->qbhd", probs, v).reshape(n, 1, heads * hd)
        hidden = attention_input * alpha + linear(context, p + "attention.dense")
        mlp_input = ln(hidden, p + "post_attention_layernorm")
        inner = linear(mlp_input, p + "mlp.dense_h_to_4h")
        inner = (
            0.5
            * inner
            * (1.0 + torch.tanh(0.7978845608028654 * inner * (1.0 + 0.044715 * inner**2)))
        )
        hidden = mlp_input * alpha + linear(inner, p + "mlp.dense_4h_to_h")
    hidden = ln(hidden, "transformer.final_layernorm")
    return F.linear(hidden, w["lm_head.weight"])[:, 0]


def thudm_greedy(w, cfg, ids: list[int], past, steps: int) -> list[int]:  # noqa: ANN001
    """Greedy decoding from scratch: the whole sequence recomputed at every step."""
    out: list[int] = []
    for _ in range(steps):
        out.append(int(thudm_logits(w, cfg, ids + out, past)[-1].argmax()))
    return out


def recipe_past(model: ChatGLMModel, name: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixture's prefix encoder (same seed as the tiny fixture) through THUDM's path."""
    projection, seed = {"plain": (False, 1), "proj": (True, 2)}[name]
    enc = random_prefix_encoder(model.cfg, PRE_SEQ_LEN, projection, seed)
    return get_prompt(prefix_encoder_output(enc, projection), model.cfg)


# ---------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", ["plain", "proj"])
def test_logits_equal_thudm_formulation(tiny: Path, model: ChatGLMModel, name: str) -> None:
    ids = prompt(model, [5, 17, 9, 33, 40])
    cont = [21, 8, 77]
    prefix = load_prefix(tiny, name, model.cfg)
    ours = chunked_logits(model, [ids, cont[:1], cont[1:]], prefix=prefix)
    theirs = thudm_logits(model.w, model.cfg, ids + cont, recipe_past(model, name))
    assert torch.allclose(ours, theirs, atol=2e-4, rtol=1e-5), (ours - theirs).abs().max()
    # and the prefix matters: without it the logits are far away
    plain = thudm_logits(model.w, model.cfg, ids + cont, None)
    assert (plain - theirs).abs().max() > 0.5
    assert torch.allclose(chunked_logits(model, [ids, cont]), plain, atol=2e-4, rtol=1e-5)


@pytest.mark.parametrize("name", ["plain", "proj"])
def test_greedy_ids_differ_and_equal_from_scratch(
    tiny: Path, model: ChatGLMModel, name: str
) -> None:
    prompts = [prompt(model, [5, 17, 9]), prompt(model, [100, 3, 250, 41, 12])]
    prefix = load_prefix(tiny, name, model.cfg)
    with_prefix = generate(model, prompts, 10, prefix=prefix)
    without = generate(model, prompts, 10)
    assert with_prefix != without  # the adapter has an effect
    past = recipe_past(model, name)
    for p, got in zip(prompts, with_prefix, strict=True):
        assert got == thudm_greedy(model.w, model.cfg, p, past, 10)


def test_mixed_batch_equals_single_rows(tiny: Path, model: ChatGLMModel) -> None:
    plain, proj = load_prefix(tiny, "plain", model.cfg), load_prefix(tiny, "proj", model.cfg)
    short = PrefixKV(proj.key[:, :3].clone(), proj.value[:, :3].clone())  # a shorter prefix
    prompts = [prompt(model, [5, 17, 9]), prompt(model, [7]), prompt(model, [1, 2, 3, 4, 5, 6])]
    rows = [plain, None, short]
    batched = generate(model, prompts, 8, prefix=rows)
    single = [generate(model, [p], 8, prefix=r)[0] for p, r in zip(prompts, rows, strict=True)]
    assert batched == single
    assert batched[1] == generate(model, [prompts[1]], 8)[0]


def test_keys_far_below_every_query_change_nothing(model: ChatGLMModel) -> None:
    """Prefix keys whose score against every query is about -1e5: softmax weight exactly 0.

    (All-zero keys would not do: a zero score still gets softmax weight.) For each layer
    and head, k = -M * s with Q s = 1 for the queries Q [T, hd] of the sequence, found by
    least squares (T <= head_dim), so q.k / sqrt(hd) = -M / sqrt(hd) for every query. The
    queries are those of the run without a prefix, which a prefix with zero weight does
    not change. The prefix values are huge: any weight on them would show.
    """
    cfg, hd, heads = model.cfg, model.cfg.head_dim, model.cfg.num_attention_heads
    ids = prompt(model, [5, 17, 9, 33, 40])
    cont = [21, 8, 77, 3]
    queries: list[torch.Tensor] = []
    thudm_logits(model.w, cfg, ids + cont, None, queries)
    assert len(ids + cont) <= hd
    m = 1e5 * math.sqrt(hd)
    key = torch.zeros(cfg.num_layers, 4, cfg.hidden_size)
    for i, q in enumerate(queries):
        for h in range(heads):
            qs = q[:, h].double()
            s = torch.linalg.lstsq(qs, torch.ones(qs.shape[0], 1, dtype=torch.float64)).solution
            assert torch.allclose(qs @ s, torch.ones_like(qs @ s), atol=1e-6)
            key[i, :, h * hd : (h + 1) * hd] = (-m * s[:, 0]).float()
    value = torch.randn(key.shape, generator=torch.Generator().manual_seed(0)) * 1e3
    far = PrefixKV(key, value)
    base = chunked_logits(model, [ids, cont])
    assert torch.allclose(chunked_logits(model, [ids, cont], prefix=far), base, atol=1e-4, rtol=0)
    # the same values with ordinary keys do change the logits
    near = PrefixKV(torch.randn(key.shape, generator=torch.Generator().manual_seed(1)), value)
    assert (chunked_logits(model, [ids, cont], prefix=near) - base).abs().max() > 1.0


def test_prefix_cast_to_model_dtype_fp16(tiny: Path) -> None:
    # get_prompt casts the fp32 encoder output to the model dtype: fp16 runs are close to fp32.
    m16 = ChatGLMModel.from_pretrained(tiny, dtype=torch.float16)
    m32 = ChatGLMModel.from_pretrained(tiny)
    prefix = load_prefix(tiny, "proj", m32.cfg)
    ids = prompt(m32, [5, 17, 9, 33])
    pb = m16.prefix_batch(prefix, 1)
    assert pb is not None and pb.keys[0].dtype == torch.float16
    a, b = chunked_logits(m16, [ids], prefix=prefix), chunked_logits(m32, [ids], prefix=prefix)
    assert float((a - b).norm() / b.norm()) < 2e-2


def test_prefix_of_another_model_is_refused(model: ChatGLMModel) -> None:
    bad = PrefixKV(
        torch.zeros(model.cfg.num_layers + 1, 2, model.cfg.hidden_size),
        torch.zeros(model.cfg.num_layers + 1, 2, model.cfg.hidden_size),
    )
    with pytest.raises(ValueError, match="num_layers"):
        generate(model, [prompt(model, [5])], 2, prefix=bad)
    with pytest.raises(ValueError, match="2 prefixes for a batch of 1"):
        generate(model, [prompt(model, [5])], 2, prefix=[None, None])
