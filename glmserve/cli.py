"""``chatglm-generate``: run one batch of prompts through the reference model or the engine.

    chatglm-generate --checkpoint DIR [--engine reference|cpu|cuda] [--dtype fp32|fp16] [--int8]
                     (--text "..." | --input-ids "1,2,3;4,5,6") [--max-tokens N] [--temperature T]
                     [--top-k K] [--top-p P] [--repetition-penalty R] [--seed S] [--ignore-eos]
                     [--json] [--random-weights] [--adapter NAME] [--cuda-<option> VALUE ...]

DIR is a hub-style or a converted checkpoint. ``--text`` may be repeated; ``;`` separates
``--input-ids`` prompts; all prompts run as one batch. Id prompts must end with
``[gMASK] <sop>`` (``--text`` adds them). Output: the generated text (or ids when the
checkpoint has no tokenizer), one line per prompt; ``--json`` prints
``{"output_ids": [[...], ...], "text": [...]}`` (``text`` only with a tokenizer).
Missing or invalid arguments print one line and exit with code 2.

``--adapter NAME`` runs with the adapter ``DIR/adapters/NAME`` of a converted checkpoint
(a P-Tuning v2 prefix, docs/adapters.md): the reference engine loads it here; the
C++ engines get ``adapter=NAME`` in ``generate()``.

``--engine cpu|cuda`` uses the C++ engine (``glmserve._engine``, built by ``make build``);
it loads converted checkpoints, so a hub-style DIR is converted once into
``DIR.glmserve-<dtype>[-int8]`` next to it. ``--cuda-<option> VALUE`` sets one of the
engine's CUDA tuning options (``EngineOptions.cuda``; listed by ``--help``) for
``--engine cuda``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import NoReturn

from glmserve import cuda_tuning

EXIT_USAGE = 2
EXIT_FAILURE = 1


class UsageError(Exception):
    """Invalid arguments: one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + error
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="chatglm-generate",
        description="Generate with ChatGLM-6B (reference PyTorch model or the C++ engine).",
    )
    p.add_argument("--checkpoint", required=True, help="hub-style or converted checkpoint dir")
    p.add_argument("--engine", choices=["reference", "cpu", "cuda"], default="reference")
    p.add_argument(
        "--dtype",
        choices=["fp32", "fp16"],
        default=None,
        help="compute dtype (default fp32; fp16 for --engine cuda)",
    )
    p.add_argument("--int8", action="store_true", help="INT8 weight-only linear layers")
    p.add_argument(
        "--fp8",
        action="store_true",
        help="FP8 E4M3 layer linears, weights and activations (--engine cuda on a GPU with FP8 "
        "tensor cores; the reference engine runs glmserve.fp8_reference)",
    )
    p.add_argument(
        "--kv-cache-dtype",
        choices=["auto", "fp8"],
        default="auto",
        help="fp8: the KV cache as E4M3 with a scale per token and head (--engine cpu or cuda; "
        "the reference engine runs glmserve.fp8_reference's fp8_kv)",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="a prompt (repeat for a batch)")
    src.add_argument("--input-ids", help='prompt ids, e.g. "1,2,3;4,5,6" (";" separates prompts)')
    p.add_argument("--max-tokens", type=int, default=64, help="new tokens per prompt (default 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (per request)")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at <eop>")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--adapter",
        metavar="NAME",
        help="use adapter NAME of the converted checkpoint (DIR/adapters/NAME, a P-Tuning v2 "
        "prefix added with python -m glmserve.convert --ptuning)",
    )
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="engine only: real shapes from config.json, random weights",
    )
    cuda_tuning.add_flags(p)
    return p


# ------------------------------------------------------------------ helpers
def parse_input_ids(spec: str) -> list[list[int]]:
    prompts = []
    for i, part in enumerate(spec.split(";")):
        items = [x.strip() for x in part.split(",") if x.strip()]
        if not items:
            raise UsageError(f"--input-ids: prompt {i} is empty")
        try:
            prompts.append([int(x) for x in items])
        except ValueError:
            raise UsageError(f"--input-ids: prompt {i} has a non-integer id in {part!r}") from None
    return prompts


def validate_args(args: argparse.Namespace) -> None:
    if args.max_tokens < 1:
        raise UsageError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if args.temperature < 0:
        raise UsageError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k < 0:
        raise UsageError(f"--top-k must be >= 0, got {args.top_k}")
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.repetition_penalty <= 0:
        raise UsageError(f"--repetition-penalty must be > 0, got {args.repetition_penalty}")
    if args.seed is not None and not 0 <= args.seed < 2**64:
        raise UsageError(f"--seed must be in [0, 2^64), got {args.seed}")
    ckpt = Path(args.checkpoint)
    if not (ckpt / "config.json").is_file():
        raise UsageError(f"--checkpoint {ckpt}: no config.json there")
    if args.fp8 and args.int8:
        raise UsageError("--fp8 and --int8 are two modes: choose one")
    if args.random_weights and args.engine == "reference":
        raise UsageError("--random-weights needs --engine cpu or cuda")
    if args.adapter is not None:
        from glmserve.adapters import check_adapter_name

        check_adapter_name(args.adapter)
    tuning = cuda_tuning.kwargs(args)
    if tuning and args.engine != "cuda":
        flags = ", ".join("--" + k.replace("_", "-") for k in tuning)
        raise UsageError(f"{flags}: CUDA tuning needs --engine cuda")


def load_tokenizer(ckpt: Path):  # -> ChatGLMTokenizer | None
    for d in (ckpt, ckpt / "hub"):
        f = d / "ice_text.model"
        if f.is_file():
            from glmserve.tokenizer import ChatGLMTokenizer

            return ChatGLMTokenizer(str(f))
    return None


def is_converted(ckpt: Path) -> bool:
    try:
        return "glmserve_format" in json.loads((ckpt / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False


def converted_for_engine(ckpt: Path, dtype: str, int8: bool) -> Path:
    """A converted checkpoint for the engine: DIR itself, or a cached conversion next to it."""
    if is_converted(ckpt):
        return ckpt
    from glmserve.convert import convert

    cache = ckpt.parent / f"{ckpt.name}.glmserve-{dtype}{'-int8' if int8 else ''}"
    cfg = cache / "config.json"
    if cfg.is_file() and cfg.stat().st_mtime >= (ckpt / "config.json").stat().st_mtime:
        return cache
    print(f"chatglm-generate: converting {ckpt} into {cache} (once)", file=sys.stderr)
    return convert(ckpt, cache, dtype=dtype, int8=int8)


def run_reference(args: argparse.Namespace, prompts: list[list[int]]) -> list[list[int]]:
    import torch

    from glmserve.reference import ChatGLMModel, generate

    dtype = {"fp32": torch.float32, "fp16": torch.float16}[args.dtype or "fp32"]
    model = ChatGLMModel.from_pretrained(args.checkpoint, dtype=dtype)
    if model.cfg.hidden_size <= 512:
        torch.set_num_threads(1)  # small models: ops too small to split, threads only cost
    if args.int8 and not model.cfg.int8:
        fake_quantize_int8(model)
    fp8_kv = args.kv_cache_dtype == "fp8"
    if args.fp8 or model.cfg.fp8 or fp8_kv:
        from glmserve.fp8_reference import Fp8Reference

        model = Fp8Reference.wrap(model, fp8_linears=args.fp8 or model.cfg.fp8, fp8_kv=fp8_kv)
    prefix = None
    if args.adapter is not None:
        from glmserve.adapters import load_prefix

        prefix = load_prefix(args.checkpoint, args.adapter, model.cfg)
    return generate(
        model,
        prompts,
        args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        ignore_eos=args.ignore_eos,
        prefix=prefix,
    )


def fake_quantize_int8(model) -> None:  # noqa: ANN001 - ChatGLMModel, imported lazily
    """Rounds the layer linears through the converter's int8 scheme (what --int8 converts)."""
    from glmserve._checkpoint import quantized_names
    from glmserve.convert import quantize_int8
    from glmserve.reference import dequantize_int8

    for name in quantized_names(model.cfg, lm_head=False):
        q, scale = quantize_int8(model.w[name])
        model.w[name] = dequantize_int8(q, scale).to(model.w[name].dtype)


def run_engine(args: argparse.Namespace, prompts: list[list[int]]) -> list[list[int]]:
    try:  # import_module honours sys.modules even once the package has the attribute
        _engine = importlib.import_module("glmserve._engine")
    except ImportError as e:
        raise UsageError(
            f"--engine {args.engine}: the C++ engine module glmserve._engine is not built "
            f"({e}); build it with `make build`"
        ) from None
    dtype = args.dtype or ("fp16" if args.engine == "cuda" else "fp32")
    ckpt = Path(args.checkpoint)
    if args.adapter is not None and not is_converted(ckpt):
        raise UsageError("--adapter needs a converted checkpoint (adapters live in DIR/adapters)")
    if not args.random_weights:
        ckpt = converted_for_engine(ckpt, dtype, args.int8)
    eng = _engine.Engine(
        checkpoint_dir=str(ckpt),
        device=args.engine,
        dtype=dtype,
        int8=args.int8,
        fp8=args.fp8,
        kv_cache_dtype=args.kv_cache_dtype,
        random_weights=args.random_weights,
        **cuda_tuning.kwargs(args),
    )
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(8), "little")
    extra = {"adapter": args.adapter} if args.adapter is not None else {}
    try:
        out = eng.generate(
            prompts,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            repetition_penalty=args.repetition_penalty,
            seed=seed,
            ignore_eos=args.ignore_eos,
            **extra,
        )
    except TypeError as e:  # an engine build without adapters: "unknown sampling argument"
        if not extra:
            raise
        raise UsageError(f"--adapter: --engine {args.engine} does not support it: {e}") from None
    return [list(map(int, ids)) for ids in out]


def decode_outputs(tok, outputs: list[list[int]]) -> list[str]:  # noqa: ANN001
    texts = []
    for ids in outputs:
        if ids and ids[-1] == tok.eos_token_id:
            ids = ids[:-1]
        texts.append(tok.decode(ids))
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = parser.prog
    try:
        validate_args(args)
        ckpt = Path(args.checkpoint)
        tok = load_tokenizer(ckpt)
        if args.text is not None:
            if tok is None:
                raise UsageError(
                    f"--text needs a tokenizer: no ice_text.model in {ckpt}; use --input-ids"
                )
            prompts = [tok.encode(t) for t in args.text]
        else:
            prompts = parse_input_ids(args.input_ids)
        if args.engine == "reference":
            outputs = run_reference(args, prompts)
        else:
            outputs = run_engine(args, prompts)
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as e:  # bad prompts (no <sop>, ids out of vocab, ...), bad config
        print(f"{prog}: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, RuntimeError) as e:
        print(f"{prog}: error: {type(e).__name__}: {str(e).splitlines()[0]}", file=sys.stderr)
        return EXIT_FAILURE

    texts = decode_outputs(tok, outputs) if tok is not None else None
    if args.json:
        result: dict[str, object] = {"output_ids": outputs}
        if texts is not None:
            result["text"] = texts
        print(json.dumps(result, ensure_ascii=False))
    else:
        for i, ids in enumerate(outputs):
            body = texts[i] if texts is not None else ",".join(map(str, ids))
            print(body if len(outputs) == 1 else f"[{i}] {body}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
