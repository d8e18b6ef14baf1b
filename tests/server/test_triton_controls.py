"""Generation controls through the real tritonserver (CPU, tiny demo model): stop strings,
stop ids, include_stop_str_in_output, streaming hold-back, log-probabilities, presence and
frequency penalties, n choices sharing the prompt's KV blocks, finish reasons and usage,
over the `chatglm` ensemble (gRPC stream and HTTP generate_stream, through the project's
client) and `chatglm_decoder`.

Oracles that do not come from the server: the tokenizer's decode of the greedy ids
(stops), glmserve.reference's fp32 logits (log-probabilities, penalties), single-choice
requests (n choices).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from helpers.controls import byte_char_sample, first_stop, openai_penalized_greedy
from helpers.engine_util import engine_module, tiny_dir
from helpers.reliability import id_tensors, run_stream, tensor
from helpers.tritonserver import parse_metrics

from client import ChatGLMClient, ClientError
from glmserve.tokenizer import ChatGLMTokenizer

pytestmark = pytest.mark.server

PROMPT = "介绍一下北京"


@pytest.fixture(scope="module")
def tok() -> ChatGLMTokenizer:
    return ChatGLMTokenizer(str(tiny_dir() / "ice_text.model"))


@pytest.fixture(scope="module", params=["grpc", "http"])
def client(request, triton_server):
    url = triton_server.grpc_url if request.param == "grpc" else triton_server.http_url
    with ChatGLMClient(url, protocol=request.param, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def greedy(triton_server, tok) -> tuple[list[int], str]:
    """The server's greedy continuation of PROMPT (48 tokens), as ids and as text."""
    with ChatGLMClient(triton_server.grpc_url) as c:
        done = c.complete(PROMPT, max_tokens=48, ignore_eos=True)
    text = done.choices[0].text
    ids = tok.encode(PROMPT)
    eng = engine_module().Engine(str(tiny_dir()), num_threads=1)
    out = eng.generate([ids], max_tokens=48, ignore_eos=True)[0]
    assert tok.decode(out) == text  # the same engine semantics, whatever process runs it
    return out, text


def spanning_stop(tok, out: list[int]) -> str:
    """Two characters whose first ends one id's text and whose second begins the next's."""
    for k in range(3, len(out) - 1):
        a, b, prev = tok.decode(out[: k + 1]), tok.decode(out[: k + 2]), tok.decode(out[:k])
        if len(a) - len(prev) >= 2 and len(b) - len(a) >= 2:
            stop = a[-1] + b[len(a)]
            if stop.strip() and stop not in a:
                return stop
    pytest.skip("no id pair with two-character texts in the greedy output")


# ------------------------------------------------------------------ stops


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_stop_string_spanning_ids(client, tok, greedy, stream) -> None:
    out, text = greedy
    stop = spanning_stop(tok, out)
    want = text[: text.index(stop)]
    if stream:
        chunks = list(client.stream_chunks(PROMPT, max_tokens=48, ignore_eos=True, stop=[stop]))
        assert "".join(c.text for c in chunks) == want
        assert chunks[-1].finish_reason == "stop"
    else:
        done = client.complete(PROMPT, max_tokens=48, ignore_eos=True, stop=stop)
        assert done.choices[0].text == want and done.choices[0].finish_reason == "stop"


def test_streamed_pieces_never_carry_part_of_a_stop(client, tok, greedy) -> None:
    """Every streamed prefix is a prefix of the final text: no piece ever holds part of a
    stop string that completes later, for every stop cut from the greedy text."""
    out, text = greedy
    for start in range(2, 30, 5):
        stop = text[start : start + 3]
        want = text[: first_stop(text, [stop])]
        seen = ""
        for chunk in client.stream_chunks(PROMPT, max_tokens=48, ignore_eos=True, stop=[stop]):
            seen += chunk.text
            assert want.startswith(seen), (stop, seen, want)
        assert seen == want


def test_stop_string_ending_inside_a_character_split_over_byte_pieces(triton_server, tok) -> None:
    """The stop's last character is spelled by two byte pieces: the server stops on the
    second and the text ends before the stop (the seed is found with the same engine)."""
    eng = engine_module().Engine(str(tiny_dir()), num_threads=1, num_kv_blocks=256)
    ids = tok.encode("写一首诗")
    seed, out, k, ch = byte_char_sample(eng, tok, ids)
    full = tok.decode(out)
    stop = tok.decode(out[:k])[-1] + ch
    params = dict(max_tokens=400, temperature=50.0, seed=seed, ignore_eos=True)
    with ChatGLMClient(triton_server.grpc_url, timeout=120) as c:
        assert c.complete("写一首诗", **params).choices[0].text == full
        done = c.complete("写一首诗", stop=[stop], **params)
    assert done.choices[0].text == full[: full.index(stop)]
    assert done.choices[0].finish_reason == "stop"


def test_include_stop_str_in_output(client, tok, greedy) -> None:
    out, text = greedy
    stop = spanning_stop(tok, out)
    done = client.complete(
        PROMPT, max_tokens=48, ignore_eos=True, stop=[stop], include_stop_str_in_output=True
    )
    assert done.choices[0].text == text[: text.index(stop) + len(stop)]


def test_stop_token_ids_on_the_ensemble_and_the_decoder(triton_server, client, tok, greedy) -> None:
    out, text = greedy
    k = next(i for i in range(5, len(out)) if tok.decode([out[i]]).strip())
    first = out.index(out[k])
    done = client.complete(PROMPT, max_tokens=48, ignore_eos=True, stop_token_ids=[out[k]])
    assert done.choices[0].text == tok.decode(out[:first])
    assert done.choices[0].finish_reason == "stop"
    assert done.completion_tokens == first + 1  # the stop id was generated, its text cut
    ids = tok.encode(PROMPT)
    values, err = run_stream(
        triton_server.grpc_url, "chatglm_decoder",
        id_tensors(ids, max_tokens=48, ignore_eos=True)
        + [tensor("stop_token_ids", [[out[k]]], np.int32)],
        "output_ids",
    )  # fmt: skip
    assert err is None, err
    assert [int(t) for v in values for t in v.reshape(-1)] == out[: first + 1]


# ------------------------------------------------------------------ logprobs


def test_logprobs_equal_the_references_log_softmax(client, tok) -> None:
    """token_logprobs: each token's log-probability and its top-3 alternatives equal
    log_softmax of glmserve.reference's fp32 logits within 1e-4, with their texts."""
    from glmserve.reference import ChatGLMModel, chunked_logits

    torch.set_num_threads(1)
    ref = ChatGLMModel.from_pretrained(tiny_dir())
    done = client.complete(PROMPT, max_tokens=10, ignore_eos=True, logprobs=3)
    lps = done.choices[0].logprobs
    assert lps is not None and len(lps) == 10 == done.completion_tokens
    out = [e["id"] for e in lps]
    assert tok.decode(out) == done.choices[0].text
    ids = tok.encode(PROMPT)
    want = torch.log_softmax(chunked_logits(ref, [ids, out[:-1]]).double(), -1)[len(ids) - 1 :]
    for t, e in enumerate(lps):
        assert abs(e["logprob"] - float(want[t, e["id"]])) < 1e-4
        top = torch.topk(want[t], 3)
        assert [a["id"] for a in e["top_logprobs"]] == top.indices.tolist()
        np.testing.assert_allclose([a["logprob"] for a in e["top_logprobs"]], top.values, atol=1e-4)
        assert e["token"] == tok.decode([e["id"]])
    assert client.complete(PROMPT, max_tokens=4).choices[0].logprobs is None


# ------------------------------------------------------------------ penalties


def test_penalties_follow_openais_formula_through_the_server(client, tok) -> None:
    from glmserve.reference import ChatGLMModel

    torch.set_num_threads(1)
    ref = ChatGLMModel.from_pretrained(tiny_dir())
    prompt = "重复一下：你好你好你好"
    want = openai_penalized_greedy(ref, tok.encode(prompt), 12, 0.7, 0.6)
    done = client.complete(
        prompt, max_tokens=12, ignore_eos=True, presence_penalty=0.7, frequency_penalty=0.6,
        logprobs=0,
    )  # fmt: skip
    assert [e["id"] for e in done.choices[0].logprobs] == want


# ------------------------------------------------------------------ n choices


def test_n_choices_replay_from_their_seeds_and_share_the_prompt_blocks(
    triton_server, client
) -> None:
    """n=4: each choice equals a single request with seed + i; while the four run, the KV
    blocks in use are fewer than four copies of the prompt would need (metrics)."""
    prompt = "".join(f"{i % 10}," for i in range(300))  # about 600 ids: ~38 KV blocks
    params = dict(max_tokens=64, temperature=1.0, seed=7, ignore_eos=True)
    samples: list[tuple[float, float]] = []
    done_event = threading.Event()

    def watch() -> None:  # one scrape: both gauges come from the same engine snapshot
        while not done_event.is_set():
            got = {n: v for n, _, v in parse_metrics(triton_server.metrics_text())}
            samples.append((got["glm_running_sequences"], got["glm_kv_blocks_used"]))
            time.sleep(0.005)

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    try:
        done = client.complete(prompt, n=4, **params)
    finally:
        done_event.set()
        w.join(10)
    assert [c.index for c in done.choices] == [0, 1, 2, 3]
    for c in done.choices:
        alone = client.complete(prompt, **dict(params, seed=7 + c.index)).choices[0]
        assert c.text == alone.text and c.finish_reason == "length" == alone.finish_reason
        assert c.completion_tokens == 64
    assert len({c.text for c in done.choices}) > 1
    assert done.completion_tokens == 4 * 64
    # Held once: the prompt's blocks + each choice's own (<= 5 for 64 tokens + the partial
    # prompt block); four copies of the prompt would need 4 * prompt_blocks alone.
    prompt_blocks = -(-done.prompt_tokens // 16)  # the server's block_size is 16
    assert prompt_blocks >= 30
    four = [used for running, used in samples if running == 4]
    if not four:
        pytest.skip("the metrics never showed the four choices running (machine too fast)")
    assert max(four) <= prompt_blocks + 4 * 6 < 4 * prompt_blocks, (max(four), prompt_blocks)


def test_n_needs_sampling(client) -> None:
    with pytest.raises(ClientError, match="n > 1 needs sampling"):
        client.complete("hi", n=2, max_tokens=4)


# ------------------------------------------------------------------ finish reasons, usage


def test_finish_reasons_and_usage(client, tok) -> None:
    done = client.complete(PROMPT, max_tokens=6, ignore_eos=True)
    assert done.choices[0].finish_reason == "length"
    assert done.prompt_tokens == len(tok.encode(PROMPT))
    assert done.completion_tokens == 6
    chunks = list(client.stream_chunks(PROMPT, max_tokens=6, ignore_eos=True))
    assert sum(c.tokens for c in chunks) == 6 == chunks[-1].completion_tokens
    assert [c.finish_reason for c in chunks[:-1]] == [""] * (len(chunks) - 1)
