"""An OpenAI-compatible API in front of the Triton server (docs/openai.md).

- ``protocol``: the OpenAI parameter table onto the request contract, validation, the
  chat prompt;
- ``upstream``: chatglm_decoder over Triton's HTTP /generate_stream (SSE);
- ``render``: decoder responses -> OpenAI objects and stream chunks;
- ``asgi``: disconnect watching, the event-stream response, the API key;
- ``errors``: OpenAI's error object and statuses;
- ``config``: settings and the served model (tokenizer, limits);
- ``app``: the Starlette app; ``__main__``: the command line (uvicorn).
"""
