"""The OpenAI-compatible server through the official ``openai`` package, against the real
tritonserver and ``python -m glmserve.openai_api`` on the tiny model (CPU).

The reference for every text is the ``chatglm`` ensemble over gRPC (``ChatGLMClient``):
the same prompt builder and detokenizer must give the same text, token counts and
log-probabilities.
"""

from __future__ import annotations

import pytest

from client import ChatGLMClient
from glmserve.tokenizer import ChatGLMTokenizer

pytestmark = pytest.mark.server

MODEL = "chatglm-tiny"
PROMPTS = ["你好", "Hello, how are you?", "写一首关于春天的诗", "What is 1 + 1?"]


@pytest.fixture(scope="module")
def ensemble(triton_server):
    with ChatGLMClient(triton_server.grpc_url, protocol="grpc") as c:
        yield c


@pytest.fixture(scope="module")
def tokenizer(triton_server):
    return ChatGLMTokenizer(triton_server.checkpoint_dir / "ice_text.model")


def _chat(client, content, **kw):
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], **kw
    )


def _streamed_chat(client, messages, **kw):
    """(texts by choice, finish reasons by choice, usage chunk or None, chunks)."""
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    usage = None
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, stream=True, **kw))
    for ch in chunks:
        assert ch.object == "chat.completion.chunk" and ch.model == MODEL
        if ch.usage is not None:
            usage = ch.usage
        for c in ch.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                reasons[c.index] = c.finish_reason
    return texts, reasons, usage, chunks


def test_models_lists_the_served_model(openai_client):
    models = openai_client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert openai_client.models.retrieve(MODEL).id == MODEL


def test_chat_matches_the_ensemble(openai_client, ensemble, tokenizer):
    for prompt in PROMPTS:
        ref = ensemble.complete(prompt, max_tokens=24, temperature=0.0)
        r = _chat(openai_client, prompt, max_tokens=24, temperature=0)
        (choice,) = r.choices
        assert ref.choices[0].text and ref.completion_tokens > 0
        assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
        assert choice.message.role == "assistant"
        assert choice.message.content == ref.choices[0].text
        assert choice.finish_reason == ref.choices[0].finish_reason
        assert r.usage.prompt_tokens == len(tokenizer.encode(prompt)) == ref.prompt_tokens
        assert r.usage.completion_tokens == ref.completion_tokens
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_concatenates_to_the_same_text(openai_client):
    whole = _chat(openai_client, PROMPTS[2], max_tokens=40, temperature=0)
    texts, reasons, usage, chunks = _streamed_chat(
        openai_client,
        [{"role": "user", "content": PROMPTS[2]}],
        max_tokens=40,
        temperature=0,
        stream_options={"include_usage": True},
    )
    assert texts == {0: whole.choices[0].message.content}
    assert reasons == {0: whole.choices[0].finish_reason}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and usage is not None  # the usage chunk is the last
    assert usage.model_dump() == whole.usage.model_dump()
    assert len({ch.id for ch in chunks}) == 1


def test_history_and_system_prompt_follow_build_prompt(openai_client, ensemble, tokenizer):
    """Earlier turns become ChatGLM's [Round i] history, exactly as the ensemble's
    `history` input; system messages go before the first round, followed by a newline."""
    history = [("你好", "你好！有什么可以帮你？"), ("天气怎么样", "今天晴天。")]
    messages = []
    for q, a in history:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": "谢谢"})
    ref = ensemble.complete("谢谢", history=history, max_tokens=20, temperature=0.0)
    r = openai_client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=20, temperature=0
    )
    assert r.choices[0].message.content == ref.choices[0].text
    prompt = ChatGLMTokenizer.build_prompt("谢谢", history)
    assert r.usage.prompt_tokens == len(tokenizer.encode(prompt)) == ref.prompt_tokens

    system = "You are a helpful assistant."
    with_system = [{"role": "system", "content": system}, *messages]
    ref = ensemble.complete(system + "\n" + prompt, max_tokens=20, temperature=0.0)
    r = openai_client.chat.completions.create(
        model=MODEL, messages=with_system, max_tokens=20, temperature=0
    )
    assert r.choices[0].message.content == ref.choices[0].text
    assert r.usage.prompt_tokens == ref.prompt_tokens
    # content as a list of text parts is the same as the joined string
    parts = [{"type": "text", "text": "谢"}, {"type": "text", "text": "谢"}]
    r2 = openai_client.chat.completions.create(
        model=MODEL,
        messages=[*with_system[:-1], {"role": "user", "content": parts}],
        max_tokens=20,
        temperature=0,
    )
    assert r2.usage.prompt_tokens == len(
        tokenizer.encode(system + "\n" + ChatGLMTokenizer.build_prompt("谢\n谢", history))
    )


def test_completions_raw_prompt_streamed_and_not(openai_client, ensemble):
    prompt = "The quick brown fox"
    ref = ensemble.complete(prompt, max_tokens=30, temperature=0.0)
    r = openai_client.completions.create(model=MODEL, prompt=prompt, max_tokens=30, temperature=0)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.choices[0].text == ref.choices[0].text
    assert r.usage.completion_tokens == ref.completion_tokens == 30
    stream = openai_client.completions.create(
        model=MODEL,
        prompt=prompt,
        max_tokens=30,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.text for ch in chunks for c in ch.choices)
    assert text == ref.choices[0].text
    assert [c.finish_reason for ch in chunks for c in ch.choices if c.finish_reason] == ["length"]
    assert chunks[-1].usage.completion_tokens == 30


def test_completions_default_max_tokens_is_openais_16(openai_client):
    r = openai_client.completions.create(
        model=MODEL, prompt="Once upon a time", temperature=0, extra_body={"ignore_eos": True}
    )
    assert r.usage.completion_tokens == 16 and r.choices[0].finish_reason == "length"


def test_stop_strings(openai_client):
    base = _chat(openai_client, PROMPTS[1], max_tokens=40, temperature=0).choices[0].message.content
    assert len(base) > 8, base
    stop = base[4:7]
    cut = base[: base.index(stop)]
    r = _chat(openai_client, PROMPTS[1], max_tokens=40, temperature=0, stop=stop)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (cut, "stop")
    texts, reasons, _, _ = _streamed_chat(
        openai_client,
        [{"role": "user", "content": PROMPTS[1]}],
        max_tokens=40,
        temperature=0,
        stop=[stop, "never appears"],
    )
    assert texts == {0: cut} and reasons == {0: "stop"}
    kept = _chat(
        openai_client,
        PROMPTS[1],
        max_tokens=40,
        temperature=0,
        stop=stop,
        extra_body={"include_stop_str_in_output": True},
    )
    assert kept.choices[0].message.content == cut + stop


def test_n3_with_a_seed_is_reproducible(openai_client):
    kw = dict(max_tokens=24, temperature=1.0, top_p=0.9, n=3, seed=1234)
    a = _chat(openai_client, PROMPTS[0], **kw)
    b = _chat(openai_client, PROMPTS[0], **kw)
    texts = [c.message.content for c in a.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in b.choices]
    assert len(set(texts)) > 1, texts  # three draws, not three copies
    # choice i draws from seed + i (docs/request_fields.md, n)
    one = _chat(openai_client, PROMPTS[0], **{**kw, "n": 1, "seed": 1235})
    assert one.choices[0].message.content == texts[1]
    # streamed: the same three texts, interleaved by index
    streamed, reasons, usage, _ = _streamed_chat(
        openai_client,
        [{"role": "user", "content": PROMPTS[0]}],
        stream_options={"include_usage": True},
        **kw,
    )
    assert [streamed[i] for i in range(3)] == texts
    assert usage.completion_tokens == a.usage.completion_tokens
    singles = [
        _chat(openai_client, PROMPTS[0], **{**kw, "n": 1, "seed": 1234 + i}) for i in range(3)
    ]
    assert [s.choices[0].message.content for s in singles] == texts
    assert a.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles)


def test_chat_logprobs_match_the_ensemble(openai_client, ensemble):
    ref = ensemble.complete(PROMPTS[3], max_tokens=12, temperature=0.0, logprobs=3)
    r = _chat(
        openai_client, PROMPTS[3], max_tokens=12, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == len(ref.choices[0].logprobs)
    for got, want in zip(content, ref.choices[0].logprobs, strict=True):
        assert got.token == want["token"] and got.bytes == want["bytes"]
        assert got.logprob == pytest.approx(want["logprob"], abs=1e-6)
        assert [t.token for t in got.top_logprobs] == [t["token"] for t in want["top_logprobs"]]
        assert len(got.top_logprobs) == 3
        # greedy: the chosen token is the most likely one
        assert got.logprob == pytest.approx(got.top_logprobs[0].logprob, abs=1e-6)
    off = _chat(openai_client, PROMPTS[3], max_tokens=4, temperature=0)
    assert off.choices[0].logprobs is None


def test_streamed_logprobs_and_completions_format(openai_client):
    texts, _, _, chunks = _streamed_chat(
        openai_client,
        [{"role": "user", "content": PROMPTS[0]}],
        max_tokens=10,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    entries = [e for ch in chunks for c in ch.choices if c.logprobs for e in c.logprobs.content]
    whole = _chat(
        openai_client, PROMPTS[0], max_tokens=10, temperature=0, logprobs=True, top_logprobs=2
    )
    assert [(e.token, e.logprob) for e in entries] == [
        (e.token, e.logprob) for e in whole.choices[0].logprobs.content
    ]
    r = openai_client.completions.create(
        model=MODEL, prompt=PROMPTS[1], max_tokens=10, temperature=0, logprobs=2
    )
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == 10
    assert all(len(t) <= 2 for t in lp.top_logprobs)
    assert lp.text_offset == sorted(lp.text_offset)
    assert all(0 <= o <= len(r.choices[0].text) for o in lp.text_offset)


def test_usage_counts_every_choice(openai_client, tokenizer):
    r = _chat(
        openai_client,
        PROMPTS[1],
        max_tokens=7,
        temperature=0.8,
        n=2,
        seed=5,
        extra_body={"ignore_eos": True},
    )
    assert [c.finish_reason for c in r.choices] == ["length", "length"]
    assert r.usage.completion_tokens == 14
    assert r.usage.prompt_tokens == len(tokenizer.encode(PROMPTS[1]))  # the prompt once
    assert r.usage.total_tokens == r.usage.prompt_tokens + 14


def test_penalties_and_user_reach_the_decoder(openai_client, ensemble):
    kw = dict(max_tokens=32, temperature=0.0, presence_penalty=1.5, frequency_penalty=1.0)
    ref = ensemble.complete(PROMPTS[2], **kw)
    plain = ensemble.complete(PROMPTS[2], max_tokens=32, temperature=0.0)
    assert ref.choices[0].text != plain.choices[0].text  # the penalties matter here
    r = _chat(openai_client, PROMPTS[2], user="test-user-1", **kw)
    assert r.choices[0].message.content == ref.choices[0].text
    r = _chat(
        openai_client,
        PROMPTS[2],
        max_completion_tokens=32,
        **{k: v for k, v in kw.items() if k != "max_tokens"},
    )
    assert r.choices[0].message.content == ref.choices[0].text
