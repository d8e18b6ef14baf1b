"""``python -m glmserve.openai_api``: the OpenAI-compatible server (uvicorn).

    python -m glmserve.openai_api --checkpoint models/chatglm-6b --triton-url 127.0.0.1:8000
    python -m glmserve.openai_api ... --workers 4 --api-key "$KEY"   # or GLM_OPENAI_API_KEY

Binds 127.0.0.1:9000 by default. ``make serve`` starts it beside tritonserver
(scripts/serve.sh, ``OPENAI_PORT``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from glmserve.openai_api.config import (
    API_KEY_ENV,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_PORT,
    SETTINGS_ENV,
    Settings,
    load_model,
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m glmserve.openai_api",
        description="OpenAI-compatible API (chat completions, completions, models) in front of "
        "a Triton server that serves chatglm_decoder. See docs/openai.md.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="the served checkpoint's folder: its ice_text.model (tokenizer) and config.json "
        "(context length) must be the ones Triton's decoder runs",
    )
    p.add_argument(
        "--triton-url",
        default="127.0.0.1:8000",
        help="Triton's HTTP endpoint (default %(default)s)",
    )
    p.add_argument(
        "--decoder-model", default="chatglm_decoder", help="the decoder's model name in Triton"
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default %(default)s)")
    p.add_argument(
        "--served-model-name",
        action="append",
        default=[],
        help="a model id clients send (repeat for aliases; default: the checkpoint folder's name)",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' on every request but /health (default: the "
        f"environment variable {API_KEY_ENV}; unset: no key)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="largest request body; larger ones get 413 (default %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="uvicorn worker processes (each holds its own tokenizer; default %(default)s)",
    )
    p.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        help="exit when this process (our parent) exits (scripts/serve.sh passes its own "
        "pid, which becomes tritonserver's: the API stops together with the server)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--no-access-log", action="store_true", help="no line per HTTP request")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if not 0 < args.port < 65536:
        p.error("--port must be in [1, 65535]")
    if args.max_body_bytes < 1024:
        p.error("--max-body-bytes must be at least 1024")
    return args


def watch_parent(pid: int, interval: float = 0.5) -> None:
    """A daemon thread: SIGTERM to this process once ``pid`` is no longer its parent
    (it exited and this process was re-parented), at once if that is so already."""

    def loop() -> None:
        while os.getppid() == pid:
            time.sleep(interval)
        logging.getLogger("glmserve.openai_api").info("parent %d exited: stopping", pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=loop, name="parent-watch", daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = Settings(
        checkpoint=str(Path(args.checkpoint).resolve()),
        triton_url=args.triton_url,
        decoder_model=args.decoder_model,
        served_model_names=tuple(args.served_model_name),
        max_body_bytes=args.max_body_bytes,
    )
    try:
        load_model(settings)  # fail here, with one line, rather than in every worker
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"openai_api: {e}", file=sys.stderr)
        return 2
    os.environ[SETTINGS_ENV] = settings.to_json()
    if args.api_key:
        os.environ[API_KEY_ENV] = args.api_key
    if args.parent_pid is not None:
        watch_parent(args.parent_pid)
    import uvicorn

    log = logging.getLogger("glmserve.openai_api")
    log.info(
        "OpenAI-compatible API on http://%s:%d/v1 -> Triton %s (%s), models %s, API key %s",
        args.host,
        args.port,
        settings.triton_url,
        settings.decoder_model,
        ", ".join(settings.model_names()),
        "required" if os.environ.get(API_KEY_ENV) else "off",
    )
    uvicorn.run(
        "glmserve.openai_api.app:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        access_log=not args.no_access_log,
        timeout_graceful_shutdown=5,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
