"""Python client of the ChatGLM-6B Triton server (gRPC stream and HTTP generate endpoints).

>>> from client import ChatGLMClient
>>> with ChatGLMClient("127.0.0.1:8001") as c:          # doctest: +SKIP
...     print(c.generate("你好", max_tokens=32))
...     for piece in c.stream("Hello", temperature=0.8, top_p=0.7):
...         print(piece, end="", flush=True)
"""

from .api import ChatGLMClient
from .errors import ClientError, ServerUnavailable
from .params import Chunk

__all__ = ["ChatGLMClient", "Chunk", "ClientError", "ServerUnavailable"]
