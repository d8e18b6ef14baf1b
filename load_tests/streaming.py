"""One streamed request over tritonclient's gRPC stream, timed token by token.

Usable from Locust (after ``grpc.experimental.gevent.init_gevent()``; tritonclient's
stream thread is then a greenlet and ``queue`` is gevent's) and from plain threads.

Two targets:

- ``chatglm`` (the ensemble, text in and out): each response's ``token_count``
  output says how many generated tokens it carries (usually 1; more when the decoder
  merged steps that piled up while its responder was behind), and the tokens of a
  request are the sum. A response's text may be empty while a multi-byte character
  is held back. Against a server whose ensemble has no ``token_count`` output (older
  model repositories) each response carrying ``text_output`` counts as one token,
  which undercounts merged responses. The empty final response that closes a request
  (``triton_final_response``) carries no output and is not counted.
- ``chatglm_decoder`` (ids in, ids out; what a server without a tokenizer serves):
  tokens are the ``output_ids`` of each response, counted one by one.

All tokens of one response get that response's arrival time (so merged tokens show
up as inter-token gaps of 0).
"""

from __future__ import annotations

import json
import queue
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MODEL = "chatglm"
DECODER = "chatglm_decoder"


@dataclass
class RequestRecord:
    """Timings of one request (``time.perf_counter`` seconds) and what came back."""

    start: float
    token_times: list[float] = field(default_factory=list)
    end: float = 0.0
    text: str = ""
    error: str | None = None

    @property
    def tokens(self) -> int:
        return len(self.token_times)

    @property
    def ttft(self) -> float | None:
        return self.token_times[0] - self.start if self.token_times else None

    @property
    def itls(self) -> list[float]:
        t = self.token_times
        return [b - a for a, b in zip(t, t[1:], strict=False)]

    @property
    def latency(self) -> float:
        return self.end - self.start


def build_inputs(
    grpcclient: Any,
    prompt: str | Sequence[int],
    max_tokens: int,
    ignore_eos: bool,
    history: list[list[str]] | None = None,
    stream: bool = True,
    batched: bool = True,
) -> list[Any]:
    """tritonclient InferInputs for one request: text (``chatglm``) or a list of ids
    (``chatglm_decoder``). Shapes carry a batch dimension of 1 when ``batched``."""
    lead = [1] if batched else []

    def make(name: str, datatype: str, values: list[Any], dtype: Any) -> Any:
        arr = np.array(values, dtype=dtype).reshape([*lead, len(values)])
        inp = grpcclient.InferInput(name, list(arr.shape), datatype)
        inp.set_data_from_numpy(arr)
        return inp

    if isinstance(prompt, str):
        inputs = [make("text_input", "BYTES", [prompt.encode("utf-8")], np.object_)]
    else:
        inputs = [make("input_ids", "INT32", list(prompt), np.int32)]
    inputs += [
        make("max_tokens", "INT32", [max_tokens], np.int32),
        make("ignore_eos", "BOOL", [ignore_eos], np.bool_),
        make("stream", "BOOL", [stream], np.bool_),
    ]
    if history:
        hist = json.dumps(history, ensure_ascii=False).encode("utf-8")
        inputs.append(make("history", "BYTES", [hist], np.object_))
    return inputs


class StreamSession:
    """A gRPC client with one open stream, reused for consecutive requests.

    Not for concurrent requests: one request at a time per session.
    """

    def __init__(self, url: str, timeout: float = 600.0, model: str = MODEL) -> None:
        import tritonclient.grpc as grpcclient

        self._grpcclient = grpcclient
        self.url = url
        self.timeout = timeout
        self.model = model
        self._client = grpcclient.InferenceServerClient(url=url)
        self._queue: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self._open = False
        self.current: RequestRecord | None = None  # the request in flight, if any
        self.batched: bool | None = None  # from the model's max_batch_size, on first use

    def _callback(self, result: Any, error: Any) -> None:
        self._queue.put((result, error))

    def _ensure_stream(self) -> None:
        if not self._open:
            self._queue = queue.Queue()
            self._client.start_stream(callback=self._callback)
            self._open = True

    def _reset(self) -> None:
        if self._open:
            try:
                self._client.stop_stream(cancel_requests=True)
            except Exception:
                pass
            self._open = False

    def request(
        self,
        prompt: str | Sequence[int],
        max_tokens: int,
        ignore_eos: bool,
        history: list[list[str]] | None = None,
    ) -> RequestRecord:
        """Send one streamed request and wait for its final response."""
        rec = RequestRecord(start=time.perf_counter())
        pieces: list[str] = []
        self.current = rec
        try:
            if self.batched is None:
                config = self._client.get_model_config(self.model).config
                self.batched = config.max_batch_size > 0
                rec.start = time.perf_counter()
            inputs = build_inputs(
                self._grpcclient, prompt, max_tokens, ignore_eos, history, batched=self.batched
            )
            self._ensure_stream()
            try:
                self._client.async_stream_infer(
                    self.model,
                    inputs,
                    request_id=uuid.uuid4().hex,
                    enable_empty_final_response=True,
                )
            except Exception as exc:
                # A stream that broke at once (server down) says why through the callback.
                try:
                    _, error = self._queue.get(timeout=1.0)
                except queue.Empty:
                    error = None
                raise RuntimeError(_message(error) if error is not None else str(exc)) from None
            while True:
                try:
                    result, error = self._queue.get(timeout=self.timeout)
                except queue.Empty:
                    raise TimeoutError(f"no response within {self.timeout:g} s") from None
                now = time.perf_counter()
                if error is not None:
                    raise RuntimeError(_message(error))
                _absorb(result, now, rec, pieces)
                if _is_final(result):
                    break
        except Exception as exc:
            plain = isinstance(exc, (RuntimeError, TimeoutError))
            rec.error = str(exc) if plain else f"{type(exc).__name__}: {exc}"
            self._reset()  # a failed stream cannot be reused
        rec.end = time.perf_counter()
        rec.text = "".join(pieces)
        self.current = None
        return rec

    def close(self) -> None:
        self._reset()
        try:
            self._client.close()
        except Exception:
            pass


def _absorb(result: Any, now: float, rec: RequestRecord, pieces: list[str]) -> None:
    """Record one response's tokens (the end of a request is its final flag, not this)."""
    text = result.as_numpy("text_output")
    if text is not None:
        rec.token_times.extend([now] * response_tokens(result))
        if text.size:
            piece = text.reshape(-1)[0]
            pieces.append(
                piece.decode("utf-8", "replace") if isinstance(piece, bytes) else str(piece)
            )
        return
    ids = result.as_numpy("output_ids")
    if ids is not None:
        rec.token_times.extend([now] * int(ids.size))


def response_tokens(result: Any) -> int:
    """Tokens one ``chatglm`` response carries: its ``token_count`` output, or 1 (one
    response per token step) when the server does not send that output."""
    count = result.as_numpy("token_count")
    if count is None or count.size == 0:
        return 1
    return int(count.reshape(-1)[0])


def _is_final(result: Any) -> bool:
    params = result.get_response().parameters
    return "triton_final_response" in params and params["triton_final_response"].bool_param


def _message(error: Any) -> str:
    msg = error.message() if hasattr(error, "message") else str(error)
    status = error.status() if hasattr(error, "status") else None
    return f"{status}: {msg}" if status else str(msg)
