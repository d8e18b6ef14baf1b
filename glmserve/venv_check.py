"""Checks that a Python environment has what a GPU task needs (``scripts/gpu.sh``).

    python -m glmserve.venv_check --need ensemble --need clients

Needs: ``server`` (the repository's glmserve package), ``ensemble`` (the Triton Python
models preprocessing / postprocessing: numpy < 2, which the r24.10 Python-backend stub
requires, sentencepiece, glmserve.tokenizer), ``clients`` (Locust and the load-test
modules: locust, gevent, grpcio, tritonclient, numpy, psutil), ``openai`` (the
OpenAI-compatible API: starlette, uvicorn, uvloop, httptools, orjson, aiohttp). Prints the versions found,
or the modules that do not import, and exits 1 when one is missing.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

NEEDS: dict[str, list[str]] = {
    "server": ["glmserve.config_only"],
    "ensemble": ["numpy", "sentencepiece", "glmserve.tokenizer"],
    "clients": [
        "locust.main",
        "gevent",
        "grpc",
        "tritonclient.grpc",
        "numpy",
        "psutil",
        "load_tests.streaming",
        "glmserve.bench",
    ],
    "openai": [
        "starlette",
        "uvicorn",
        "uvloop",
        "httptools",
        "orjson",
        "aiohttp",
        "glmserve.openai_api.app",
        "load_tests.openai_stream",
    ],
}
# (module, how it shows in the versions line)
VERSIONS = [
    ("locust", "locust"),
    ("gevent", "gevent"),
    ("grpc", "grpcio"),
    ("numpy", "numpy"),
    ("sentencepiece", "sentencepiece"),
    ("starlette", "starlette"),
    ("uvicorn", "uvicorn"),
]


def modules(needs: list[str]) -> list[str]:
    """The modules to import for these needs, each once, in order."""
    out: list[str] = []
    for n in needs:
        out += [m for m in NEEDS[n] if m not in out]
    return out


def problems(needs: list[str]) -> list[str]:
    """What is wrong: modules that do not import, numpy 2 where the ensemble runs."""
    bad = []
    for m in modules(needs):
        try:
            importlib.import_module(m)
        except Exception as e:  # noqa: BLE001 - any import failure is reported
            bad.append(f"{m}: {type(e).__name__}: {e}")
    if "ensemble" in needs and "numpy" in sys.modules:
        version = sys.modules["numpy"].__version__
        if not version.startswith("1."):
            bad.append(f"numpy {version}: the Python-backend stub needs numpy < 2 (1.26.4)")
    return bad


def versions() -> str:
    """Python and the versions of the imported modules that carry one."""
    parts = [f"python {sys.version.split()[0]}"]
    for mod, name in VERSIONS:
        if mod in sys.modules:
            parts.append(f"{name} {getattr(sys.modules[mod], '__version__', '?')}")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--need", action="append", choices=sorted(NEEDS), default=[])
    args = p.parse_args(argv)
    bad = problems(args.need or ["server"])
    if bad:
        print("venv check: cannot use this environment\n  " + "\n  ".join(bad), flush=True)
        return 1
    print(f"venv check: {versions()}", flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    # No interpreter teardown: after gevent's monkey-patching (locust) it is noisy, and harmless.
    sys.stdout.flush()
    os._exit(code)
