"""Bad input through the real server: every case gets INVALID_ARG naming the field.

Each bad request goes over the gRPC stream (the ensemble `chatglm`, and
directly `chatglm_decoder`) with a good request sent at the same moment; the
bad one must end with an error whose message names the field and the allowed
range, within the client timeout (no hang); the good one must produce exactly
the text it produces alone (no cross-talk, no crash). HTTP /generate shows the
status (400), which the gRPC stream does not carry (R3: it is 400 for any error
in a response, so the messages are what clients and these tests rely on).
Documented conventions (temperature 0 = greedy, top_k 0 = off) are checked to
be accepted and to give the greedy text.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from helpers.reliability import (
    CONTEXT,
    GMASK,
    SOP,
    VOCAB,
    generate_ids,
    generate_text,
    http_post,
    id_tensors,
    model_ready,
    prompt_ids,
    record,
    run_stream,
    run_threads,
    tensor,
    text_tensors,
)

pytestmark = pytest.mark.server

GOOD_PROMPT = "你好"
GOOD_MAX = 16
GOOD_IDS = prompt_ids(3)

NAN, INF = float("nan"), float("inf")
MAXT = f"[1, {CONTEXT}]"


def _hist(obj) -> str:
    return json.dumps(obj)


# (case id, ensemble tensors, words the error message must contain)
ENSEMBLE_CASES = [
    ("no_inputs_at_all", [], ["text_input"]),
    ("non_utf8_text", text_tensors(b"\xff\xfe bad \xc3\x28"), ["text_input", "UTF-8"]),
    ("truncated_utf8_text", text_tensors("你好".encode()[:-1]), ["text_input", "UTF-8"]),
    (
        "prompt_plus_max_tokens_over_context",
        text_tensors("你好 " * 400, max_tokens=CONTEXT - 8),
        ["max_tokens", str(CONTEXT)],
    ),
    ("prompt_alone_over_context", text_tensors("你好 " * 1500), ["text_input", str(CONTEXT)]),
    ("max_tokens_0", text_tensors("hi", max_tokens=0), ["max_tokens", MAXT]),
    ("max_tokens_negative", text_tensors("hi", max_tokens=-5), ["max_tokens", MAXT]),
    ("max_tokens_over_context", text_tensors("hi", max_tokens=CONTEXT + 1), ["max_tokens", MAXT]),
    ("max_tokens_int32_max", text_tensors("hi", max_tokens=2**31 - 1), ["max_tokens", MAXT]),
    ("temperature_negative", text_tensors("hi", temperature=-0.5), ["temperature", ">= 0"]),
    ("temperature_nan", text_tensors("hi", temperature=NAN), ["temperature", ">= 0"]),
    ("temperature_inf", text_tensors("hi", temperature=INF), ["temperature", ">= 0"]),
    ("temperature_minus_inf", text_tensors("hi", temperature=-INF), ["temperature", ">= 0"]),
    ("top_p_0", text_tensors("hi", top_p=0.0), ["top_p", "(0, 1]"]),
    ("top_p_negative", text_tensors("hi", top_p=-0.1), ["top_p", "(0, 1]"]),
    ("top_p_above_1", text_tensors("hi", top_p=1.0001), ["top_p", "(0, 1]"]),
    ("top_p_nan", text_tensors("hi", top_p=NAN), ["top_p", "(0, 1]"]),
    ("top_k_negative", text_tensors("hi", top_k=-1), ["top_k", ">= 0"]),
    ("top_k_int32_min", text_tensors("hi", top_k=-(2**31)), ["top_k", ">= 0"]),
    ("rep_penalty_0", text_tensors("hi", repetition_penalty=0.0), ["repetition_penalty", "> 0"]),
    ("rep_penalty_neg", text_tensors("hi", repetition_penalty=-1.0), ["repetition_penalty", "> 0"]),
    ("rep_penalty_nan", text_tensors("hi", repetition_penalty=NAN), ["repetition_penalty", "> 0"]),
    ("rep_penalty_inf", text_tensors("hi", repetition_penalty=INF), ["repetition_penalty", "> 0"]),
    ("history_not_json", text_tensors("hi", history="[[oops"), ["history", "[question, answer]"]),
    ("history_object", text_tensors("hi", history=_hist({"q": "a"})), ["history", "pairs"]),
    ("history_string", text_tensors("hi", history=_hist("hello")), ["history", "pairs"]),
    ("history_single", text_tensors("hi", history=_hist([["q only"]])), ["history", "pairs"]),
    ("history_triple", text_tensors("hi", history=_hist([["q", "a", "x"]])), ["history", "pairs"]),
    ("history_ints", text_tensors("hi", history=_hist([[1, 2]])), ["history", "string"]),
    ("history_nested", text_tensors("hi", history=_hist([["q", ["a"]]])), ["history", "string"]),
    ("history_null_item", text_tensors("hi", history=_hist([None])), ["history", "pairs"]),
    ("history_non_utf8", text_tensors("hi", history=b"\xff\xfe"), ["history", "UTF-8"]),
    # What a hostile or careless client sends besides.
    ("text_over_byte_limit", text_tensors("a" * 70_000), ["text_input", "65536"]),
    (
        "history_over_byte_limit",
        text_tensors("hi", history=_hist([["q" * 40_000, "a" * 30_000]])),
        ["text_input", "65536"],
    ),
    (
        "two_strings_in_text_input",
        [tensor("text_input", [[b"a", b"b"]], np.object_)],
        ["text_input", "shape"],
    ),
    (
        "batch_of_two_prompts",
        [tensor("text_input", [[b"a"], [b"b"]], np.object_)],
        ["text_input", "shape"],
    ),
    (
        "temperature_as_fp64",
        text_tensors("hi") + [tensor("temperature", [[0.5]], np.float64)],
        ["temperature", "FP32"],
    ),
    (
        "negative_seed_as_int64",
        text_tensors("hi") + [tensor("random_seed", [[-1]], np.int64)],
        ["random_seed", "UINT64"],
    ),
    (
        "max_tokens_two_values",
        text_tensors("hi") + [tensor("max_tokens", [[4, 5]], np.int32)],
        ["max_tokens", "shape"],
    ),
    (
        "stream_as_int32",
        text_tensors("hi") + [tensor("stream", [[1]], np.int32)],
        ["stream", "BOOL"],
    ),
    ("unknown_input", text_tensors("hi") + [tensor("foo", [[1]], np.int32)], ["foo"]),
    (
        "text_input_as_int32",
        [tensor("text_input", [[1]], np.int32)],
        ["text_input", "BYTES"],
    ),
]

# The generation controls (docs/request_fields.md), on both models.
CONTROL_CASES = [
    ("n_17", {"n": 17, "temperature": 1.0}, [], ["n", "[1, 16]"]),
    ("n_0", {"n": 0}, [], ["n", "[1, 16]"]),
    ("n_greedy", {"n": 2}, [], ["n", "needs sampling"]),
    ("logprobs_21", {"logprobs": 21}, [], ["logprobs", "[-1, 20]"]),
    ("presence_3", {"presence_penalty": 3.0}, [], ["presence_penalty", "[-2, 2]"]),
    ("frequency_nan", {"frequency_penalty": NAN}, [], ["frequency_penalty", "[-2, 2]"]),
    ("stop_17", {}, [tensor("stop", [[b"x"] * 17], np.object_)], ["stop", "at most 16"]),
    ("stop_257_bytes", {}, [tensor("stop", [[b"y" * 257]], np.object_)], ["stop", "256 bytes"]),
    ("stop_not_utf8", {}, [tensor("stop", [[b"\xff\xfe"]], np.object_)], ["stop", "UTF-8"]),
    (
        "stop_id_out_of_vocab",
        {},
        [tensor("stop_token_ids", [[VOCAB]], np.int32)],
        ["stop_token_ids", f"[0, {VOCAB})"],
    ),
    ("stop_id_negative", {}, [tensor("stop_token_ids", [[-1]], np.int32)], ["stop_token_ids"]),
    ("stop_ids_65", {}, [tensor("stop_token_ids", [list(range(65))], np.int32)], ["at most 64"]),
    (
        "include_stop_as_int32",
        {},
        [tensor("include_stop_str_in_output", [[1]], np.int32)],
        ["include_stop_str_in_output", "BOOL"],
    ),
    ("adapter_65_bytes", {}, [tensor("adapter", [[b"a" * 65]], np.object_)], ["adapter", "64"]),
    (
        "adapter_unknown",
        {},
        [tensor("adapter", [[b"nope"]], np.object_)],
        ["adapter", 'unknown adapter "nope"', "loaded none"],
    ),
]
ENSEMBLE_CASES += [
    (f"control_{name}", text_tensors("hi", **params) + extra, words)
    for name, params, extra, words in CONTROL_CASES
]

DECODER_CASES = [
    ("id_equal_vocab", id_tensors([5, VOCAB, GMASK, SOP]), ["input_ids", f"[0, {VOCAB})"]),
    ("id_huge", id_tensors([5, 99_999, GMASK, SOP]), ["input_ids", f"[0, {VOCAB})"]),
    ("id_negative", id_tensors([-3, GMASK, SOP]), ["input_ids", f"[0, {VOCAB})"]),
    ("id_int32_min", id_tensors([-(2**31), GMASK, SOP]), ["input_ids", f"[0, {VOCAB})"]),
    ("empty_ids", [tensor("input_ids", np.zeros((1, 0)), np.int32)], ["input_ids", "at least 1"]),
    ("ids_1d", [tensor("input_ids", [5, GMASK, SOP], np.int32)], ["input_ids", "shape"]),
    ("ids_3d", [tensor("input_ids", [[[5, GMASK, SOP]]], np.int32)], ["input_ids", "shape"]),
    (
        "two_prompts_in_one_request",
        [tensor("input_ids", [[5, GMASK, SOP], [6, GMASK, SOP]], np.int32)],
        ["input_ids", "batch"],
    ),
    ("ids_int64", [tensor("input_ids", [[5, GMASK, SOP]], np.int64)], ["input_ids", "INT32"]),
    ("ids_fp32", [tensor("input_ids", [[5.0, 6.0]], np.float32)], ["input_ids", "INT32"]),
    ("missing_ids", [tensor("max_tokens", [[3]], np.int32)], ["input_ids", "missing"]),
    ("no_sop_at_end", id_tensors([5, 6, GMASK]), ["input_ids", f"<sop> (id {SOP})"]),
    ("no_gmask", id_tensors([5, 6, SOP]), ["input_ids", f"[gMASK] (id {GMASK})"]),
    (
        "prompt_fills_context",
        id_tensors([5] * (CONTEXT - 2) + [GMASK, SOP]),
        ["input_ids", f"[1, {CONTEXT - 1}]"],
    ),
    (
        "prompt_plus_max_tokens_over_context",
        id_tensors(GOOD_IDS, max_tokens=CONTEXT - len(GOOD_IDS) + 1),
        ["max_tokens", f"[1, {CONTEXT - len(GOOD_IDS)}]"],
    ),
    ("max_tokens_0", id_tensors(GOOD_IDS, max_tokens=0), ["max_tokens", MAXT]),
    ("max_tokens_negative", id_tensors(GOOD_IDS, max_tokens=-1), ["max_tokens", MAXT]),
    ("temperature_nan", id_tensors(GOOD_IDS, temperature=NAN), ["temperature", ">= 0"]),
    ("temperature_negative", id_tensors(GOOD_IDS, temperature=-1.0), ["temperature", ">= 0"]),
    ("top_p_0", id_tensors(GOOD_IDS, top_p=0.0), ["top_p", "(0, 1]"]),
    ("top_p_above_1", id_tensors(GOOD_IDS, top_p=2.0), ["top_p", "(0, 1]"]),
    ("top_k_negative", id_tensors(GOOD_IDS, top_k=-7), ["top_k", ">= 0"]),
    ("rep_penalty_0", id_tensors(GOOD_IDS, repetition_penalty=0.0), ["repetition_penalty", "> 0"]),
    (
        "max_tokens_two_values",
        id_tensors(GOOD_IDS) + [tensor("max_tokens", [[1, 2]], np.int32)],
        ["max_tokens", "shape"],
    ),
    (
        "max_tokens_as_int64",
        id_tensors(GOOD_IDS) + [tensor("max_tokens", [[4]], np.int64)],
        ["max_tokens", "INT32"],
    ),
    (
        "seed_as_int64",
        id_tensors(GOOD_IDS) + [tensor("random_seed", [[-1]], np.int64)],
        ["random_seed", "UINT64"],
    ),
]


DECODER_CASES += [
    (f"control_{name}", id_tensors(GOOD_IDS, **params) + extra, words)
    for name, params, extra, words in CONTROL_CASES
]


@pytest.fixture(scope="module")
def expected(triton_server):
    """The good requests' outputs when run alone."""
    url = triton_server.grpc_url
    text, err = generate_text(url, GOOD_PROMPT, max_tokens=GOOD_MAX)
    assert err is None, err
    ids, err = generate_ids(url, GOOD_IDS, max_tokens=GOOD_MAX)
    assert err is None, err
    assert text and len(ids) >= 1
    return {"text": text, "ids": ids}


def _bad_with_good_alongside(srv, model, bad_tensors, expected):
    """Sends the bad request and a good one at the same moment. -> the bad one's error."""
    output = "text_output" if model == "chatglm" else "output_ids"
    good_result: dict = {}
    barrier = threading.Barrier(2)

    def good():
        barrier.wait(timeout=30)
        if model == "chatglm":
            good_result["v"] = generate_text(srv.grpc_url, GOOD_PROMPT, max_tokens=GOOD_MAX)
        else:
            good_result["v"] = generate_ids(srv.grpc_url, GOOD_IDS, max_tokens=GOOD_MAX)

    t = threading.Thread(target=good, daemon=True)
    t.start()
    barrier.wait(timeout=30)
    values, err = run_stream(srv.grpc_url, model, bad_tensors, output)
    t.join(120)
    assert not t.is_alive(), "the good request hung"
    out, good_err = good_result["v"]
    assert good_err is None, f"a good request failed next to a bad one: {good_err}"
    assert out == expected["text" if model == "chatglm" else "ids"]
    return values, err


def _check_error(err, words):
    assert err is not None, "a bad request was accepted"
    for w in words:
        assert w in err, f"{w!r} not in error message {err!r}"


@pytest.mark.parametrize("case, tensors, words", ENSEMBLE_CASES, ids=[c[0] for c in ENSEMBLE_CASES])
def test_ensemble_rejects(triton_server, expected, case, tensors, words):
    values, err = _bad_with_good_alongside(triton_server, "chatglm", tensors, expected)
    _check_error(err, words)
    assert values == []


def test_ensemble_rejects_missing_text_input_with_other_inputs(triton_server, expected):
    """Only optional inputs (max_tokens) and no text_input: Triton 2.51's input-count check
    lets it through; before R1 the ensemble never ran preprocessing and ended the stream with
    no response and no error (HTTP /generate: 200 with an error text)."""
    values, err = _bad_with_good_alongside(
        triton_server, "chatglm", text_tensors(None, max_tokens=8), expected
    )
    _check_error(err, ["text_input", "missing"])
    status, body = http_post(
        f"http://{triton_server.http_url}/v2/models/chatglm/generate", {"max_tokens": 8}
    )
    assert status == 400, body
    assert "text_input" in body


@pytest.mark.parametrize("case, tensors, words", DECODER_CASES, ids=[c[0] for c in DECODER_CASES])
def test_decoder_rejects(triton_server, expected, case, tensors, words):
    values, err = _bad_with_good_alongside(triton_server, "chatglm_decoder", tensors, expected)
    _check_error(err, words)
    assert values == []


HTTP_CASES = [
    ("chatglm", {"text_input": "hi", "max_tokens": 0}, "max_tokens"),
    ("chatglm", {"text_input": "hi", "temperature": -1.0}, "temperature"),
    ("chatglm", {"text_input": "hi", "top_p": 1.5}, "top_p"),
    ("chatglm", {"text_input": "hi", "top_k": -1}, "top_k"),
    ("chatglm", {"text_input": "hi", "repetition_penalty": 0.0}, "repetition_penalty"),
    ("chatglm", {"text_input": "hi", "history": "{"}, "history"),
    ("chatglm", {"text_input": "a" * 70_000}, "text_input"),
    ("chatglm", {"text_input": "你好 " * 400, "max_tokens": CONTEXT - 8}, "max_tokens"),
    ("chatglm_decoder", {"input_ids": [5, VOCAB, GMASK, SOP]}, "input_ids"),
    ("chatglm_decoder", {"input_ids": []}, "input_ids"),
    ("chatglm_decoder", {"input_ids": GOOD_IDS, "max_tokens": -1}, "max_tokens"),
    ("chatglm_decoder", {"input_ids": GOOD_IDS, "top_p": 0.0}, "top_p"),
    ("chatglm", {"text_input": "hi", "n": 99, "temperature": 1.0}, "n"),
    ("chatglm", {"text_input": "hi", "stop": ["x"] * 17}, "stop"),
    ("chatglm", {"text_input": "hi", "logprobs": 50}, "logprobs"),
    ("chatglm_decoder", {"input_ids": GOOD_IDS, "stop_token_ids": [-5]}, "stop_token_ids"),
    ("chatglm_decoder", {"input_ids": GOOD_IDS, "presence_penalty": 9.0}, "presence_penalty"),
]


@pytest.mark.parametrize(
    "model, body, field", HTTP_CASES, ids=[f"{m}-{f}" for m, _, f in HTTP_CASES]
)
def test_http_status_is_400(triton_server, model, body, field):
    status, text = http_post(f"http://{triton_server.http_url}/v2/models/{model}/generate", body)
    assert status == 400, (status, text)
    assert field in json.loads(text)["error"]


# ---------------------------------------------------------------------------- conventions


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 0.0},
        {"top_k": 0},
        {"top_p": 1.0},
        {"repetition_penalty": 1.0},
        {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "random_seed": 2**64 - 1},
    ],
    ids=["temperature_0_is_greedy", "top_k_0_is_off", "top_p_1_is_off", "rep_1_is_off", "all"],
)
def test_conventions_are_not_errors(triton_server, expected, params):
    text, err = generate_text(triton_server.grpc_url, GOOD_PROMPT, max_tokens=GOOD_MAX, **params)
    assert err is None, err
    assert text == expected["text"]
    ids, err = generate_ids(triton_server.grpc_url, GOOD_IDS, max_tokens=GOOD_MAX, **params)
    assert err is None, err
    assert ids == expected["ids"]


def test_top_k_0_with_sampling_means_full_vocabulary(triton_server):
    """top_k 0 = off: the same seeded sample as a top_k that keeps the whole vocabulary."""
    url = triton_server.grpc_url
    base = {"max_tokens": 24, "temperature": 1.0, "random_seed": 11}
    a, err = generate_ids(url, GOOD_IDS, top_k=0, **base)
    assert err is None, err
    b, err = generate_ids(url, GOOD_IDS, top_k=VOCAB, **base)
    assert err is None, err
    assert a == b


def test_empty_and_whitespace_text_are_served(triton_server):
    """An empty prompt is [gMASK] <sop>: a valid request, answered (not an error, no hang)."""
    for text in ("", " ", "\n"):
        _, err = generate_text(triton_server.grpc_url, text, max_tokens=4)
        assert err is None, (text, err)


# ---------------------------------------------------------------------------- mixed batches


def test_mixed_burst_good_unaffected(triton_server, expected):
    """A burst of good and bad requests together (dynamic batching groups them): every good
    one gets its solo text, every bad one its own error."""
    bad = [c for c in ENSEMBLE_CASES if c[0] != "no_inputs_at_all"][:12]
    n = 2 * len(bad)
    results: dict[int, tuple] = {}
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait(timeout=60)
        if i % 2:
            results[i] = generate_text(triton_server.grpc_url, GOOD_PROMPT, max_tokens=GOOD_MAX)
        else:
            _, tensors, _ = bad[i // 2]
            results[i] = run_stream(triton_server.grpc_url, "chatglm", tensors)

    run_threads(run, n, timeout=240)
    for i in range(n):
        if i % 2:
            text, err = results[i]
            assert err is None, err
            assert text == expected["text"]
        else:
            values, err = results[i]
            _check_error(err, bad[i // 2][2])
    record("mixed_burst", requests=n, bad=len(bad), good_ok=n - len(bad))


def test_server_survived_all_bad_input(triton_server, expected):
    """After every case above: still live, all models ready, nothing left running."""
    srv = triton_server
    for model in ("chatglm", "chatglm_decoder", "preprocessing", "postprocessing"):
        assert model_ready(srv, model), model
    text, err = generate_text(srv.grpc_url, GOOD_PROMPT, max_tokens=GOOD_MAX)
    assert err is None and text == expected["text"]
    srv.wait_metric("glm_active_requests", lambda v: v == 0, timeout=30)
    srv.wait_metric("glm_kv_blocks_used", lambda v: v == 0, timeout=30)
    assert srv.process.poll() is None
    record(
        "validation",
        ensemble_cases=len(ENSEMBLE_CASES) + 1,
        decoder_cases=len(DECODER_CASES),
        http_cases=len(HTTP_CASES),
    )
