"""Unit tests of the OpenAI-compatible server's pieces (no server): the parameter table and
prompt rules (protocol.py), the SSE client side (upstream.py), rendering (render.py), the
shared detokenization (glmserve/decoder_output.py), errors and settings."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from glmserve import contract
from glmserve.decoder_output import TokenTable, logprob_entries, response_text
from glmserve.openai_api import protocol
from glmserve.openai_api.config import Settings, load_model
from glmserve.openai_api.errors import APIError, is_retryable
from glmserve.openai_api.protocol import ModelInfo, chat_prompt, chat_request, completion_request
from glmserve.openai_api.render import Renderer
from glmserve.openai_api.upstream import DecoderResponse, SSEParser, error_message
from glmserve.tokenizer import DECODE_CONTEXT, ChatGLMTokenizer

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "models" / "chatglm-tiny"

needs_tiny = pytest.mark.skipif(
    not (TINY / "ice_text.model").exists(), reason="needs models/chatglm-tiny (make demo-model)"
)


@pytest.fixture(scope="module")
def model():
    if not (TINY / "ice_text.model").exists():
        pytest.skip("needs models/chatglm-tiny (make demo-model)")
    return load_model(Settings(checkpoint=str(TINY)))


def _err(fn, *args) -> APIError:
    with pytest.raises(APIError) as e:
        fn(*args)
    return e.value


# -- the parameter table ---------------------------------------------------------------


def test_every_param_sets_a_decoder_field_of_the_contract():
    decoder = {f.name for f in contract.fields_of(contract.DECODER)}
    for p in protocol.PARAMS:
        assert p.field in decoder, p
        assert p.endpoints <= protocol.BOTH and p.endpoints
    names = [p.name for p in protocol.PARAMS]
    overlap = set(names) & set(protocol.SERVER_PARAMS) & set(protocol.REFUSED)
    assert not overlap
    assert not set(protocol.REFUSED) & set(names)


def test_docs_list_the_table():
    page = (ROOT / "docs" / "openai.md").read_text()
    assert protocol.params_markdown() in page
    assert protocol.refused_markdown() in page


def test_chat_prompt_rules():
    user = {"role": "user", "content": "q2"}
    assert chat_prompt([user]) == "q2"
    turns = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}, user]
    assert chat_prompt(turns) == ChatGLMTokenizer.build_prompt("q2", [("q1", "a1")])
    system = [{"role": "system", "content": "S1"}, {"role": "developer", "content": "S2"}]
    assert (
        chat_prompt([*system, *turns])
        == "S1\nS2\n[Round 0]\n问：q1\n答：a1\n[Round 1]\n问：q2\n答："
    )
    assert chat_prompt([system[0], user]) == "S1\nq2"
    parts = {
        "role": "user",
        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
    }
    assert chat_prompt([parts]) == "a\nb"
    # null fields are no fields
    assert chat_prompt([{"role": "user", "content": "x", "name": None}]) == "x"


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ("hi", "messages"),
        ([], "messages"),
        (["hi"], "messages[0]"),
        ([{"role": "bot", "content": "x"}], "messages[0].role"),
        ([{"role": "function", "content": "x"}], "messages[0].role"),
        ([{"role": "user"}], "messages[0].content"),
        ([{"role": "user", "content": 5}], "messages[0].content"),
        (
            [{"role": "user", "content": [{"type": "text", "text": 5}]}],
            "messages[0].content[0].text",
        ),
        ([{"role": "user", "content": [{"text": "x"}]}], "messages[0].content[0]"),
        ([{"role": "assistant", "content": "x"}], "messages[0].role"),
        ([{"role": "user", "content": "x", "tool_calls": []}], "messages[0].tool_calls"),
    ],
)
def test_chat_prompt_errors_name_the_message(messages, param):
    assert _err(chat_prompt, messages).param == param


def test_neutral_values_of_refused_parameters_are_accepted(model):
    body = {
        "model": "chatglm-tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "text"},
        "tool_choice": "none",
        "tools": [],
        "logit_bias": {},
        "store": False,
        "service_tier": "auto",
        "modalities": ["text"],
        "metadata": None,
        "parallel_tool_calls": None,
    }
    plan = chat_request(body, model.info)
    assert plan.fields["max_tokens"] == 2048 - len(plan.input_ids)
    c = {"model": "chatglm-tiny", "prompt": "x", "echo": False, "best_of": 2, "n": 2, "suffix": ""}
    assert completion_request(c, model.info).n == 2
    assert _err(completion_request, {**c, "best_of": 3}, model.info).param == "best_of"


def test_defaults_are_openais(model):
    chat = {"model": "chatglm-tiny", "messages": [{"role": "user", "content": "hi"}]}
    a, b = chat_request(chat, model.info), chat_request(chat, model.info)
    assert a.fields["temperature"] == 1.0
    assert a.fields["random_seed"] != b.fields["random_seed"]  # no seed: a fresh one
    assert 0 <= a.fields["random_seed"] < 2**63
    plan = completion_request({"model": "chatglm-tiny", "prompt": "hi"}, model.info)
    assert plan.fields["max_tokens"] == 16
    body = plan.upstream_body(stream=True)
    assert body["input_ids"][-2:] == [
        model.info.tokenizer.gmask_token_id,
        model.info.tokenizer.bos_token_id,
    ]
    assert body["stream"] is True and "temperature" in body
    seeded = chat_request({**chat, "seed": 9, "stop": "x", "logprobs": True}, model.info)
    assert seeded.fields["random_seed"] == 9 and seeded.fields["stop"] == ["x"]
    assert seeded.fields["logprobs"] == 0 and seeded.logprobs


def test_contract_errors_carry_the_openai_name(model):
    chat = {"model": "chatglm-tiny", "messages": [{"role": "user", "content": "hi"}]}
    e = _err(chat_request, {**chat, "seed": -1}, model.info)
    assert e.param == "seed" and e.message.startswith("seed") and "random_seed" not in e.message
    e = _err(chat_request, {**chat, "max_completion_tokens": 0}, model.info)
    assert e.param == "max_completion_tokens" and e.message.startswith("max_completion_tokens")
    e = _err(chat_request, {**chat, "top_logprobs": 30, "logprobs": True}, model.info)
    assert e.param == "top_logprobs" and e.message.startswith("top_logprobs")
    e = _err(chat_request, {**chat, "stop_token_ids": [5000]}, model.info)  # vocab 1024
    assert e.param == "stop_token_ids"
    e = _err(chat_request, {**chat, "model": 5}, model.info)
    assert e.param == "model"
    assert _err(chat_request, {**chat, "model": "x"}, model.info).status == 404
    e = _err(chat_request, {**chat, "stream": "yes"}, model.info)
    assert e.param == "stream"
    e = _err(chat_request, {**chat, "stream": True, "stream_options": {"x": 1}}, model.info)
    assert (e.param, e.code) == ("stream_options.x", "unknown_parameter")
    e = _err(chat_request, [chat], model.info)
    assert e.param is None and "JSON object" in e.message


def test_decoder_messages_map_back_to_the_parameter(model):
    chat = {"model": "chatglm-tiny", "messages": [{"role": "user", "content": "hi"}]}
    plan = chat_request({**chat, "max_completion_tokens": 5}, model.info)
    e = plan.field_error("request 3: n > 1 needs sampling (temperature > 0): ...")
    assert e.param == "n" and e.message.startswith("n > 1")
    e = plan.field_error("max_tokens must be in [1, 2048], got 5000")
    assert e.param == "max_completion_tokens" and e.message.startswith("max_completion_tokens")
    assert plan.field_error("random_seed: bad").param == "seed"
    assert plan.field_error("top_k: bad").param == "top_k"
    assert plan.field_error("chatglm engine error: boom") is None
    assert plan.field_error("nothing here") is None


# -- upstream ----------------------------------------------------------------------------


def test_sse_parser_any_split():
    stream = (
        b': comment\r\ndata: {"a": 1}\r\n\r\ndata: line1\ndata:line2\nevent: x\n\ndata: {"b": 2}'
    )
    for cut in range(len(stream) + 1):
        p = SSEParser()
        events = p.feed(stream[:cut]) + p.feed(stream[cut:]) + p.end()
        assert events == [b'{"a": 1}', b"line1\nline2", b'{"b": 2}'], cut


def test_error_message_forms():
    assert error_message(b'{"error":"queue full: retry later"}') == "queue full: retry later"
    assert (
        error_message(b'data: {"error":"top_p must be in (0, 1]"}\n\n') == "top_p must be in (0, 1]"
    )
    assert error_message(b"plain text") == "plain text"
    assert error_message(b"") == "no message"


def test_decoder_response_from_triton_json():
    one = DecoderResponse.from_event(
        {"output_ids": 7, "prev_ids": [], "is_final": False, "index": 0, "finish_reason": ""}
    )
    assert (one.output_ids, one.prev_ids, one.is_final, one.logprobs) == ([7], [], False, None)
    r = DecoderResponse.from_event(
        {
            "output_ids": [7, 8],
            "prev_ids": 6,
            "is_final": True,
            "index": 2,
            "finish_reason": "stop",
            "prompt_tokens": 4,
            "completion_tokens": 9,
            "trim_bytes": 3,
            "output_logprobs": [-0.5, -1.0],
            "top_logprob_ids": [7, 1, 8, 2],
            "top_logprobs": [-0.5, -2.0, -1.0, -3.0],
        }
    )
    assert r.prev_ids == [6] and r.index == 2 and r.finish_reason == "stop"
    assert (r.prompt_tokens, r.completion_tokens, r.trim_bytes) == (4, 9, 3)
    assert r.top_ids == [[7, 1], [8, 2]] and r.top_logprobs == [[-0.5, -2.0], [-1.0, -3.0]]
    single = DecoderResponse.from_event(
        {"output_ids": 7, "output_logprobs": -0.1, "top_logprob_ids": 7, "top_logprobs": -0.1}
    )
    assert single.top_ids == [[7]] and single.logprobs == [-0.1]
    with pytest.raises(ValueError):
        DecoderResponse.from_event(
            {"output_ids": [1, 2], "output_logprobs": [0, 0], "top_logprob_ids": [1, 2, 3]}
        )


# -- detokenization and rendering ---------------------------------------------------------


def _split(ids: list[int], rng: random.Random, n: int = 0) -> list[DecoderResponse]:
    """ids as the decoder streams them: random chunks, each with its prev_ids."""
    out, i = [], 0
    while i < len(ids):
        k = rng.randint(1, 3)
        chunk = ids[i : i + k]
        prev = ids[max(0, i - DECODE_CONTEXT) : i]
        i = min(i + k, len(ids))
        final = i == len(ids)
        out.append(
            DecoderResponse(
                chunk, prev, final, n, "length" if final else "", 4, i, logprobs=[-0.5] * len(chunk)
            )
        )
    return out


@needs_tiny
def test_renderer_streams_exactly_the_decoded_text(model):
    tok = model.info.tokenizer
    rng = random.Random(3)
    text = "你好，世界！ Hello  world\n\t😀 émoji"
    ids = tok.encode(text, add_special_tokens=False)
    chat = {"model": "chatglm-tiny", "messages": [{"role": "user", "content": "hi"}], "n": 2}
    plan = chat_request(
        {**chat, "stream": True, "stream_options": {"include_usage": True}}, model.info
    )
    r = Renderer(plan, tok, model.table)
    a, b = _split(ids, rng, 0), _split(ids[:5], rng, 1)
    order = []  # the two choices interleaved at random, each in its own order
    while a or b:
        order.append((a if a and (not b or rng.random() < 0.5) else b).pop(0))
    chunks = [c for resp in order for c in r.feed(resp)]
    assert [c["choices"][0]["index"] for c in r.role_chunks()] == [0, 1]
    got = {0: "", 1: ""}
    for c in chunks:
        for ch in c["choices"]:
            got[ch["index"]] += ch["delta"].get("content", "")
    assert got == {0: tok.decode(ids), 1: tok.decode(ids[:5])}
    assert r.done and r.usage() == {
        "prompt_tokens": 4,
        "completion_tokens": len(ids) + 5,
        "total_tokens": 4 + len(ids) + 5,
    }
    assert r.usage_chunk()["choices"] == [] and all(c["usage"] is None for c in chunks)
    finishes = [ch for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert [f["delta"] for f in finishes] == [{}, {}]


@needs_tiny
def test_renderer_result_logprobs_and_trim(model):
    tok = model.info.tokenizer
    ids = tok.encode("abc stop here", add_special_tokens=False)
    plan = completion_request(
        {"model": "chatglm-tiny", "prompt": "x", "logprobs": 1, "stream": True,
         "stream_options": {"continuous_usage_stats": True}},
        model.info,
    )  # fmt: skip
    r = Renderer(plan, tok, model.table)
    full = tok.decode(ids)
    resp = DecoderResponse(ids, [], True, 0, "stop", 5, len(ids), trim_bytes=len(b" here"))
    resp.logprobs = [-1.0] * len(ids)
    resp.top_ids = [[i] for i in ids]
    resp.top_logprobs = [[-1.0]] * len(ids)
    chunks = r.feed(resp)
    assert chunks[0]["choices"][0]["text"] == full[: -len(" here")]
    assert chunks[0]["usage"]["completion_tokens"] == len(ids)  # continuous usage stats
    lp = chunks[0]["choices"][0]["logprobs"]
    assert lp["tokens"] == [tok.decode([i]) for i in ids]
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    result = r.result()
    assert result["choices"][0]["finish_reason"] == "stop"
    assert result["choices"][0]["logprobs"]["text_offset"] == lp["text_offset"]
    with pytest.raises(ValueError):
        r.feed(resp)  # the choice already ended
    with pytest.raises(ValueError):
        r.feed(DecoderResponse([1], [], True, 3))  # no such choice


@needs_tiny
def test_response_text_and_logprob_entries(model):
    tok = model.info.tokenizer
    emoji = tok.encode("😀", add_special_tokens=False)  # byte-fallback pieces
    assert response_text(tok, [], emoji, True) == tok.decode(emoji)
    # a cut that would split a character drops it whole
    assert response_text(tok, [], emoji, True, trim_bytes=1) == ""
    assert response_text(tok, [], emoji, False, trim_bytes=1) == tok.decode_delta([], emoji, False)
    table = TokenTable(tok)
    entries = logprob_entries(
        table, emoji[:2], [-0.1, -0.2], [[emoji[0]], [emoji[1]]], [[-0.1], [-0.2]]
    )
    assert [e["id"] for e in entries] == emoji[:2]
    assert all(len(e["bytes"]) == 1 for e in entries)  # one byte each
    assert entries[0]["top_logprobs"][0]["logprob"] == -0.1
    assert logprob_entries(table, [5], [-1.0])[0]["top_logprobs"] == []
    with pytest.raises(ValueError):
        logprob_entries(table, [5, 6], [-1.0])


# -- errors and settings -----------------------------------------------------------------


def test_error_object_and_retryable_messages():
    e = APIError(400, "bad", param="n", code="invalid_value")
    assert e.body() == {
        "error": {
            "message": "bad",
            "type": "invalid_request_error",
            "param": "n",
            "code": "invalid_value",
        }
    }
    assert APIError(503, "x").type == "server_error"
    assert is_retryable("queue full: 3 requests waiting (max_queue 2); retry later")
    assert is_retryable("chatglm_decoder: the engine failed and is not serving (reload the model)")
    assert not is_retryable("top_p must be in (0, 1]")


def test_settings_round_trip_and_model_names(tmp_path):
    s = Settings(checkpoint="/x/chatglm-6b", served_model_names=("a", "b"), max_body_bytes=2048)
    assert Settings.from_json(s.to_json()) == s
    assert Settings(checkpoint="/x/chatglm-6b").model_names() == ("chatglm-6b",)
    assert json.loads(s.to_json())["served_model_names"] == ["a", "b"]
    with pytest.raises(FileNotFoundError, match="ice_text.model"):
        load_model(Settings(checkpoint=str(tmp_path)))


@needs_tiny
def test_model_limits_come_from_the_checkpoint(model):
    info: ModelInfo = model.info
    assert info.context == 2048 and info.limits.vocab == 1024
    assert info.names == ("chatglm-tiny",)
