"""The fake Triton servers of the client and load-tool tests speak the real protocol."""

from __future__ import annotations

import threading
from typing import Any

from helpers.client_fakes import FakeGrpcServer, Script


def test_fake_grpc_speaks_the_stream_protocol() -> None:
    import tritonclient.grpc as grpcclient

    got: list[Any] = []
    done = threading.Event()

    def callback(result: Any, error: Any) -> None:
        got.append((result, error))
        if (
            error is not None
            or result.get_response().parameters["triton_final_response"].bool_param
        ):
            done.set()

    with FakeGrpcServer(Script(pieces=["a", "b"])) as fake:
        c = grpcclient.InferenceServerClient(fake.url)
        c.start_stream(callback)
        inp = grpcclient.InferInput("text_input", [1], "BYTES")
        import numpy as np

        inp.set_data_from_numpy(np.array([b"x"], dtype=np.object_))
        c.async_stream_infer("chatglm", [inp], enable_empty_final_response=True)
        assert done.wait(10)
        c.stop_stream()
        c.close()
    texts = [r.as_numpy("text_output") for r, _ in got[:2]]
    assert [t[0] for t in texts] == [b"a", b"b"]
    assert got[2][0].as_numpy("text_output") is None
