"""The client and its CLI against the real tritonserver (tiny model on CPU).

Uses the session-scoped ``triton_server`` fixture of tests/conftest.py; every test
skips, saying why, when that fixture cannot start a server here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from client import ChatGLMClient, ClientError, ServerUnavailable

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]
GREEDY = {"max_tokens": 12, "ignore_eos": True}
Q1, Q2 = "你好", "What can you do?"


@pytest.fixture(scope="module")
def server(triton_server: Any) -> Any:
    return triton_server


@pytest.fixture(scope="module")
def grpc_client(server: Any) -> Any:
    with ChatGLMClient(server.grpc_url, "grpc", timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def http_client(server: Any) -> Any:
    with ChatGLMClient(server.http_url, "http", timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def reference(grpc_client: ChatGLMClient) -> str:
    """The non-streamed gRPC reply to Q1 (greedy, 12 tokens)."""
    text = grpc_client.generate(Q1, **GREEDY)
    assert isinstance(text, str) and text
    return text


def test_grpc_stream_token_counts_sum_to_max_tokens_and_text_to_generate(
    grpc_client: ChatGLMClient, reference: str
) -> None:
    chunks = list(grpc_client.stream_chunks(Q1, **GREEDY))
    # One response may carry several tokens (merged when the server is behind): the
    # token_count outputs sum to the tokens generated; the load tests count this way.
    assert sum(c.tokens for c in chunks) == GREEDY["max_tokens"]
    assert all(c.tokens >= 1 for c in chunks)
    assert "".join(c.text for c in chunks) == reference
    assert "".join(grpc_client.stream(Q1, **GREEDY)) == reference


def test_http_generate_matches_grpc(http_client: ChatGLMClient, reference: str) -> None:
    assert http_client.generate(Q1, **GREEDY) == reference


def test_http_generate_stream_matches(http_client: ChatGLMClient, reference: str) -> None:
    chunks = list(http_client.stream_chunks(Q1, **GREEDY))
    assert sum(c.tokens for c in chunks) == GREEDY["max_tokens"]
    assert "".join(c.text for c in chunks) == reference
    assert "".join(http_client.stream(Q1, **GREEDY)) == reference


def test_sampling_inputs_reach_the_server(grpc_client: ChatGLMClient) -> None:
    sampling = dict(
        max_tokens=10, temperature=1.0, top_k=20, top_p=0.9, repetition_penalty=1.1, seed=7
    )
    a = grpc_client.generate(Q2, **sampling)
    assert a == grpc_client.generate(Q2, **sampling)  # same seed, same text
    others = {grpc_client.generate(Q2, **dict(sampling, seed=s)) for s in range(8, 12)}
    assert len(others | {a}) > 1  # the seed changes what is drawn


def test_rejected_request_is_client_error_with_the_server_message(
    grpc_client: ChatGLMClient, http_client: ChatGLMClient
) -> None:
    for c in (grpc_client, http_client):
        with pytest.raises(ClientError) as info:
            c.generate(Q1, max_tokens=10**6)
        assert not isinstance(info.value, ServerUnavailable)
        assert "max_tokens" in str(info.value)


def test_two_turn_chat_carries_history(grpc_client: ChatGLMClient) -> None:
    a1, history = grpc_client.chat(Q1, **GREEDY)
    a2, history = grpc_client.chat(Q2, history, **GREEDY)
    assert history == [(Q1, a1), (Q2, a2)]
    # The second turn's prompt holds the first turn: it answers differently from Q2 alone.
    assert a2 != grpc_client.generate(Q2, **GREEDY)
    assert "".join(grpc_client.stream(Q2, history=[(Q1, a1)], **GREEDY)) == a2


def _cli(server: Any, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        input=stdin, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env,
    )  # fmt: skip


def test_cli_one_shot_and_stream(server: Any, reference: str) -> None:
    for extra in ([], ["--stream"]):
        proc = _cli(server, "--url", server.grpc_url, "--max-tokens", "12", "--ignore-eos",
                    *extra, Q1)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == reference + "\n"
    proc = _cli(server, "--protocol", "http", "--url", server.http_url, "--stream",
                "--max-tokens", "12", "--ignore-eos", Q1)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == reference + "\n"


def test_cli_chat_streams_two_turns_with_history(
    server: Any, grpc_client: ChatGLMClient, reference: str
) -> None:
    proc = _cli(server, "--url", server.grpc_url, "--chat", "--max-tokens", "12",
                "--ignore-eos", stdin=f"{Q1}\n{Q2}\n")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    a2 = grpc_client.generate(Q2, history=[(Q1, reference)], **GREEDY)
    assert f"ChatGLM: {reference}\n" in proc.stdout
    assert f"ChatGLM: {a2}\n" in proc.stdout


def test_cli_rejected_request(server: Any) -> None:
    proc = _cli(server, "--url", server.grpc_url, "--max-tokens", "1000000", Q1)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: request rejected: ") and "max_tokens" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_controls_json_and_usage(server: Any, grpc_client: ChatGLMClient) -> None:
    """-n, --stop, --logprobs and the penalties reach the server; --json shows every
    choice with its finish reason and log-probabilities, and the usage; --usage prints
    the finish reason and the usage on stderr."""
    import json

    params = dict(max_tokens=10, temperature=1.0, seed=5, ignore_eos=True, presence_penalty=0.5)
    want = grpc_client.complete(Q1, n=2, logprobs=1, **params)
    proc = _cli(server, "--url", server.grpc_url, "--json", "-n", "2", "--logprobs", "1",
                "--max-tokens", "10", "--temperature", "1", "--seed", "5", "--ignore-eos",
                "--presence-penalty", "0.5", Q1)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert [c["text"] for c in got["choices"]] == [c.text for c in want.choices]
    assert [c["finish_reason"] for c in got["choices"]] == ["length", "length"]
    assert all(len(c["logprobs"]) == 10 for c in got["choices"])
    assert got["usage"] == {"prompt_tokens": want.prompt_tokens, "completion_tokens": 20}
    text = want.choices[0].text
    stop = text[3:5]
    proc = _cli(server, "--url", server.grpc_url, "--usage", "--stop", stop, "--stop", "zzz",
                "--max-tokens", "10", "--temperature", "1", "--seed", "5", "--ignore-eos",
                "--presence-penalty", "0.5", Q1)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == text[: text.index(stop)] + "\n"
    assert proc.stderr.startswith("finish_reason: stop; usage: prompt_tokens ")
