"""Prefix adapters through the real tritonserver (CPU, a tiny checkpoint with two P-Tuning
v2 adapters made by the converter): the `adapter` input of the ensemble and the decoder
against glmserve.reference with the same prefix; a mixed concurrent batch; an unknown
name; the prefix blocks held once and the metrics labelled by adapter."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from helpers.adapters_util import TINY_ADAPTERS as ADAPTERS
from helpers.adapters_util import tiny_with_adapters
from helpers.reliability import id_tensors, run_stream, tensor
from helpers.tritonserver import TritonServer, skip_without_server

from client import ChatGLMClient, ClientError
from glmserve.adapters import load_prefix
from glmserve.reference import ChatGLMModel, generate
from glmserve.tokenizer import ChatGLMTokenizer

pytestmark = pytest.mark.server

PROMPT = "介绍一下北京"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_with_adapters(tmp_path_factory.mktemp("triton_adapters"), seed=21)


@pytest.fixture(scope="module")
def server(ckpt, tmp_path_factory):
    skip_without_server()
    log_dir = tmp_path_factory.mktemp("triton_adapters_log")
    with TritonServer(checkpoint_dir=ckpt, log_dir=log_dir) as srv:
        yield srv


@pytest.fixture(scope="module")
def oracle(ckpt):
    """(tokenizer, greedy ids of the reference for PROMPT with each adapter and none)."""
    torch.set_num_threads(1)
    tok = ChatGLMTokenizer(str(ckpt / "ice_text.model"))
    model = ChatGLMModel.from_pretrained(ckpt)
    ids = tok.encode(PROMPT)
    want = {"": generate(model, [ids], 12)[0]}
    for name in ADAPTERS:
        want[name] = generate(model, [ids], 12, prefix=load_prefix(ckpt, name))[0]
    assert len({tuple(v) for v in want.values()}) == 3  # every adapter has an effect
    return tok, ids, want


@pytest.mark.parametrize("adapter", ["style", "terse", ""])
def test_decoder_and_ensemble_with_an_adapter_equal_the_reference(server, oracle, adapter) -> None:
    tok, ids, want = oracle
    extra = [tensor("adapter", [[adapter.encode()]], np.object_)] if adapter else []
    values, err = run_stream(
        server.grpc_url, "chatglm_decoder", id_tensors(ids, max_tokens=12) + extra, "output_ids"
    )
    assert err is None, err
    assert [int(t) for v in values for t in v.reshape(-1)] == want[adapter]
    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        with ChatGLMClient(url, protocol=protocol) as c:
            kw = {"adapter": adapter} if adapter else {}
            assert c.generate(PROMPT, max_tokens=12, **kw) == tok.decode(want[adapter])


def test_mixed_concurrent_requests_equal_each_alone(server, oracle) -> None:
    tok, _, want = oracle
    jobs = ["style", "", "terse", "style", "terse", ""] * 2
    got: dict[int, str] = {}

    def one(i: int) -> None:
        with ChatGLMClient(server.grpc_url) as c:
            kw = {"adapter": jobs[i]} if jobs[i] else {}
            got[i] = c.generate(PROMPT, max_tokens=12, **kw)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [got[i] for i in range(len(jobs))] == [tok.decode(want[a]) for a in jobs]


def test_unknown_adapter_is_invalid_arg_naming_the_available_ones(server) -> None:
    with ChatGLMClient(server.grpc_url) as c, pytest.raises(ClientError) as e:
        c.generate(PROMPT, max_tokens=4, adapter="nope")
    assert 'unknown adapter "nope" (available: style, terse)' in str(e.value)


def test_prefix_blocks_are_held_once_and_metrics_are_labelled_by_adapter(server, oracle) -> None:
    tok, _, want = oracle
    # Idle: only the adapters' prefix blocks are in use (8 tokens: 1 block; 32: 2).
    server.wait_metric("glm_kv_blocks_used", lambda v: v == 3, timeout=30)
    before = {
        a: server.metric("glm_generated_tokens_total", {"adapter": a}) for a in ("style", "base")
    }
    with ChatGLMClient(server.grpc_url) as c:
        n = sum(ch.tokens for ch in c.stream_chunks(PROMPT, max_tokens=12, adapter="style"))
    server.wait_metric(
        "glm_generated_tokens_total",
        lambda v: v == before["style"] + n,
        labels={"adapter": "style"},
    )
    assert server.metric("glm_generated_tokens_total", {"adapter": "base"}) == before["base"]
    assert server.metric("glm_requests_total", {"adapter": "style", "outcome": "ok"}) >= 1
    server.wait_metric("glm_kv_blocks_used", lambda v: v == 3, timeout=30)


def test_openai_model_name_selects_the_adapter(server, ckpt, oracle) -> None:
    """The OpenAI-compatible server lists `<name>:<adapter>` per adapter in /v1/models, and
    such a model name runs the request with that adapter (the official `openai` client)."""
    openai = pytest.importorskip("openai", reason="the openai package is in requirements.txt")
    from helpers.openai_server import OpenAIServer

    tok, _, want = oracle
    with OpenAIServer(server.http_url, checkpoint=ckpt) as api:
        client = openai.OpenAI(base_url=api.base_url, api_key=api.api_key, max_retries=0)
        names = [m.id for m in client.models.list().data]
        base = ckpt.name
        assert names == [base, f"{base}:style", f"{base}:terse"]
        for model, adapter in ((base, ""), (f"{base}:style", "style"), (f"{base}:terse", "terse")):
            done = client.completions.create(
                model=model, prompt=PROMPT, max_tokens=12, temperature=0
            )
            assert done.choices[0].text == tok.decode(want[adapter]), model
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model=f"{base}:nope", prompt=PROMPT, max_tokens=2)
        client.close()
