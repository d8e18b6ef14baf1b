"""gRPC transport: the decoupled ``chatglm`` ensemble over Triton's bidirectional stream."""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple

from .errors import ClientError, ServerUnavailable, error_from_message
from .params import (
    COMPLETION_TOKENS,
    FINISH_REASON,
    INDEX,
    MODEL_NAME,
    PROMPT_TOKENS,
    TEXT_INPUT,
    TEXT_OUTPUT,
    TOKEN_COUNT,
    TOKEN_LOGPROBS,
    Chunk,
    TensorValue,
    parse_logprobs,
)

# gRPC status codes that mean "the server is not there" rather than "it said no".
_UNAVAILABLE = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")
_DONE = object()


def map_grpc_error(error: Any, url: str = "") -> ClientError:
    """Turn a tritonclient ``InferenceServerException`` into our exception types."""
    status = error.status() if hasattr(error, "status") else None
    message = error.message() if hasattr(error, "message") else str(error)
    message = (message or str(error)).strip()
    if status in _UNAVAILABLE:
        where = f" at {url}" if url else ""
        return ServerUnavailable(f"server unavailable{where} (gRPC {status[11:]}): {message}")
    if status == "StatusCode.CANCELLED":
        return ClientError(f"request cancelled: {message}")
    return error_from_message(message)


class TimedResult(NamedTuple):
    """One response of a streamed request and when it arrived."""

    time: float  # time.perf_counter() when the stream delivered it
    result: Any  # the tritonclient InferResult


def is_final(result: Any) -> bool:
    """Whether a response carries Triton's ``triton_final_response`` flag."""
    params = result.get_response().parameters
    return "triton_final_response" in params and params["triton_final_response"].bool_param


def response_text(result: Any) -> str | None:
    """The response's text delta, or None when it carries no ``text_output``."""
    arr = result.as_numpy(TEXT_OUTPUT)
    if arr is None:
        return None
    if arr.size == 0:
        return ""
    piece = arr.reshape(-1)[0]
    return piece.decode("utf-8", "replace") if isinstance(piece, bytes) else str(piece)


def response_tokens(result: Any) -> int:
    """The response's ``token_count`` (1 when the server does not send it)."""
    arr = result.as_numpy(TOKEN_COUNT)
    if arr is None or arr.size == 0:
        return 1
    return int(arr.reshape(-1)[0])


def _output(result: Any, name: str, default: Any) -> Any:
    arr = result.as_numpy(name)
    if arr is None or arr.size == 0:
        return default
    value = arr.reshape(-1)[0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def response_chunk(result: Any, text: str) -> Chunk:
    """The response's text with its choice, finish reason, usage and log-probabilities
    (defaults when a server does not send them)."""
    return Chunk(
        text,
        response_tokens(result),
        int(_output(result, INDEX, 0)),
        str(_output(result, FINISH_REASON, "")),
        int(_output(result, PROMPT_TOKENS, 0)),
        int(_output(result, COMPLETION_TOKENS, 0)),
        parse_logprobs(_output(result, TOKEN_LOGPROBS, "")),
    )


class GrpcTransport:
    """Sends one request per stream and yields its text pieces as they arrive."""

    def __init__(self, url: str, model: str = MODEL_NAME, timeout: float | None = None) -> None:
        import tritonclient.grpc as grpcclient  # imported late: heavy

        self._grpcclient = grpcclient
        self.url = url
        self.model = model
        self.timeout = timeout
        try:
            self._client = grpcclient.InferenceServerClient(url=url)
        except Exception as exc:  # bad URL syntax and similar
            raise ClientError(f"cannot create a gRPC client for {url!r}: {exc}") from None
        self._batched: bool | None = None

    def close(self) -> None:
        self._client.close()

    def batched(self) -> bool:
        """Whether the model takes a batch dimension (max_batch_size > 0): shapes [1, 1]."""
        if self._batched is None:
            try:
                meta = self._client.get_model_metadata(self.model)
            except Exception as exc:
                raise map_grpc_error(exc, self.url) from None
            shapes = {i.name: list(i.shape) for i in meta.inputs}
            # text_input for the ensemble; the first input for other models (chatglm_decoder).
            shape = shapes.get(TEXT_INPUT) or next(iter(shapes.values()), [1])
            self._batched = len(shape) == 2
        return self._batched

    def _inputs(self, tensors: list[TensorValue]) -> list[Any]:
        batched = self.batched()
        inputs = []
        for t in tensors:
            arr = t.array.reshape(1, -1) if batched else t.array
            inp = self._grpcclient.InferInput(t.name, list(arr.shape), t.datatype)
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        return inputs

    def stream(self, tensors: list[TensorValue]) -> Iterator[str]:
        """Yield the text pieces of every response of one request, until its final one."""
        chunks = self.chunks(tensors)
        try:
            for chunk in chunks:
                yield chunk.text
        finally:
            chunks.close()

    def chunks(self, tensors: list[TensorValue]) -> Iterator[Chunk]:
        """Yield (text, tokens) of every response of one request, until its final one."""
        responses = self.responses(tensors)
        try:
            for _, result in responses:
                text = response_text(result)
                if text is not None:
                    yield response_chunk(result, text)
        finally:
            responses.close()

    def responses(self, tensors: list[TensorValue]) -> Iterator[TimedResult]:
        """Yield every response of one request that carries outputs, with its arrival time,
        until the final one (the empty final response itself is not yielded).

        The lower level under :meth:`chunks`, for callers that read other outputs (e.g.
        ``chatglm_decoder``'s ``output_ids``) or time the responses (the load tests).
        Errors raise as in :meth:`chunks`; stopping early cancels the request.
        """
        responses: queue.Queue[tuple[Any, Any, float]] = queue.Queue()

        def callback(result: Any, error: Any) -> None:
            responses.put((result, error, time.perf_counter()))

        inputs = self._inputs(tensors)
        try:
            self._client.start_stream(callback=callback)
        except Exception as exc:
            raise map_grpc_error(exc, self.url) from None
        finished = False
        try:
            try:
                self._client.async_stream_infer(
                    self.model,
                    inputs,
                    request_id=uuid.uuid4().hex,
                    enable_empty_final_response=True,
                )
            except Exception as exc:
                # A stream that broke at once (server down) reports why through the callback.
                try:
                    _, error, _ = responses.get(timeout=1.0)
                except queue.Empty:
                    error = None
                raise map_grpc_error(error or exc, self.url) from None
            while True:
                try:
                    result, error, arrived = responses.get(timeout=self.timeout)
                except queue.Empty:
                    raise ClientError(
                        f"no response from {self.url} within {self.timeout:g} s"
                    ) from None
                if error is not None:
                    # An error ends its request: the server (our decoder, the ensemble) sends
                    # errors as the final response, and a broken stream has nothing left to
                    # cancel. Cancelling anyway races the completed request in tritonserver
                    # 2.51's gRPC front end, whose stream handler then waits forever and keeps
                    # the ensemble from unloading at shutdown (docs/reliability_requests.md, R5).
                    finished = True
                    raise map_grpc_error(error, self.url)
                final = is_final(result)
                if len(result.get_response().outputs):
                    if final:
                        finished = True
                    yield TimedResult(arrived, result)
                if final:
                    finished = True
                    return
        finally:
            # Cancel what is still running when the caller stopped early or failed.
            self._client.stop_stream(cancel_requests=not finished)
