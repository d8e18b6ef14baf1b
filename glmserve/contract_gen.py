"""Writes what is generated from the request contract (glmserve/contract.py).

- ``backend_src/engine/request_fields.gen.h``: the table for the C++ engine and backend;
- ``docs/request_fields.md``: the reference table for users;
- the request-field parts of the model configs (between ``# BEGIN request fields`` and
  ``# END request fields`` lines): the input lists of ``chatglm``, ``preprocessing`` and
  ``chatglm_decoder`` (every config variant) and the ensemble's tensor maps.

    python -m glmserve.contract_gen --write    # regenerate after editing the table
    python -m glmserve.contract_gen --check    # exit 1 if anything is out of date (CI)
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from glmserve.contract import (
    CONTEXT,
    DECODER,
    ENSEMBLE,
    FIELDS,
    PREPROCESSING,
    VOCAB,
    Field,
    Limits,
    fields_of,
    forwarded,
)

REPO = Path(__file__).resolve().parents[1]
HEADER = Path("backend_src/engine/request_fields.gen.h")
DOC = Path("docs/request_fields.md")
GENERATED_BY = "python -m glmserve.contract_gen --write"
BEGIN, END = "# BEGIN request fields", "# END request fields"


def _camel(name: str) -> str:
    return "k" + "".join(p.capitalize() for p in name.split("_"))


def _cpp_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _cpp_num(v: float | str | None) -> str:
    return "0.0" if v is None or v in (CONTEXT, VOCAB) else repr(float(v))


_BOUNDS = {CONTEXT: "MaxBound::kContext", VOCAB: "MaxBound::kVocab"}
_MARKS = Limits(context=987654321, vocab=987654322)


def symbolic_requirement(f: Field) -> str:
    """The requirement with ``{context}`` / ``{vocab}`` where the model's values go."""
    text = f.requirement(_MARKS)
    return text.replace(str(_MARKS.context), "{context}").replace(str(_MARKS.vocab), "{vocab}")


def render_header() -> str:
    out = [
        f"// GENERATED from glmserve/contract.py by `{GENERATED_BY}`. Do not edit:",
        "// edit the table there and regenerate; CI fails when this file is out of date.",
        "#pragma once",
        "",
        '#include "request_field.h"',
        "",
        "namespace glm::fields {",
        "",
    ]
    for f in FIELDS:
        max_items = f.max_items if f.max_items is not None else 0
        bound = _BOUNDS.get(f.maximum, "MaxBound::kFixed")  # type: ignore[arg-type]
        out += [
            f"// {f.doc}",
            f"inline constexpr RequestField {_camel(f.name)}{{",
            f"    {_cpp_str(f.name)}, FieldType::k{f.dtype.value.capitalize()}, "
            f"/*is_list=*/{str(f.is_list).lower()}, /*max_items=*/{max_items},",
            f"    /*required=*/{str(f.required).lower()}, "
            f"/*has_min=*/{str(f.minimum is not None).lower()}, "
            f"/*min=*/{_cpp_num(f.minimum)}, "
            f"/*min_exclusive=*/{str(f.minimum_exclusive).lower()},",
            f"    /*has_max=*/{str(f.maximum is not None).lower()}, "
            f"/*max=*/{_cpp_num(f.maximum)}, /*max_bound=*/{bound}, "
            f"/*max_exclusive=*/{str(f.maximum_exclusive).lower()},",
            f"    /*max_bytes=*/{f.max_bytes or 0}, "
            f"/*requirement=*/{_cpp_str(symbolic_requirement(f))},",
            f"    /*member=*/{_cpp_str(f.engine_member) if f.engine_member else 'nullptr'}}};",
            "",
        ]
    decoder = ", ".join(f"&{_camel(f.name)}" for f in fields_of(DECODER))
    out += [
        "// The decoder's inputs, in table order.",
        f"inline constexpr const RequestField* kDecoderInputs[] = {{{decoder}}};",
        "",
        "}  // namespace glm::fields",
        "",
        "namespace glm {",
        "",
        "// Calls f(field, member) for every decoder field that sets a SamplingParams member,",
        "// in table order (Params is SamplingParams or const SamplingParams).",
        "template <class Params, class F>",
        "void for_each_sampling_field(Params& p, F&& f) {",
    ]
    for f in fields_of(DECODER):
        if f.engine_member:
            out.append(f"  f(fields::{_camel(f.name)}, p.{f.engine_member});")
    out += ["}", "", "}  // namespace glm", ""]
    return "\n".join(out)


def render_doc() -> str:
    lines = [
        "# Request fields",
        "",
        f"Generated from `glmserve/contract.py` by `{GENERATED_BY}`; do not edit by hand.",
        "Every field is one input tensor of dims `[1]` (a list: `[-1]`), with a batch",
        "dimension in front on models with batching. `chatglm` is the ensemble (text in,",
        "text out); `chatglm_decoder` is the decoder alone (ids in, ids out). A bad value",
        "gets INVALID_ARG (HTTP 400) with a message that names the field.",
        "",
        "| field | type | models | default | allowed | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for f in FIELDS:
        models = ", ".join(m for m in (ENSEMBLE, DECODER) if m in f.models)
        kind = f"{f.dtype.value}[]" if f.is_list else f.dtype.value
        if f.required:
            default = "required"
        elif f.default is None:
            default = "see meaning"
        elif isinstance(f.default, tuple):
            default = "none"
        else:
            default = f"`{str(f.default).lower() if isinstance(f.default, bool) else f.default}`"
        allowed = symbolic_requirement(f).replace("{context}", "context")
        allowed = allowed.replace("{vocab}", "vocab_size")
        if f.is_list and f.max_items is not None and f.max_items < 2**31 - 1:
            allowed += f"; at most {f.max_items} values"
        if f.max_bytes:
            allowed += f"; at most {f.max_bytes} bytes each"
        lines.append(f"| `{f.name}` | {kind} | {models} | {default} | {allowed} | {f.doc} |")
    lines += [
        "",
        "`context` is the model's `max_sequence_length` (2048 for ChatGLM-6B); prompt",
        "tokens + `max_tokens` must fit in it. `vocab_size` is 130528 for ChatGLM-6B.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- model configs


def _input_line(f: Field, model: str, last: bool) -> str:
    dims = "[ -1 ]" if f.is_list else "[ 1 ]"
    extra = ""
    if f.is_list and model != ENSEMBLE:
        extra += " allow_ragged_batch: true"
    # The ensemble declares every input optional, so that preprocessing (not Triton) refuses a
    # request without text_input, naming it (Triton 2.51 checks only the number of inputs of an
    # ensemble and would end such a stream empty, with no error).
    if not f.required or model == ENSEMBLE:
        extra += " optional: true"
    comma = "" if last else ","
    return f'  {{ name: "{f.name}" data_type: {f.dtype.pbtxt} dims: {dims}{extra} }}{comma}'


def _inputs(model: str) -> list[str]:
    fs = fields_of(model)
    return [_input_line(f, model, i == len(fs) - 1) for i, f in enumerate(fs)]


def _preprocessing_outputs() -> list[str]:
    outs = ['  { name: "input_ids" data_type: TYPE_INT32 dims: [ -1 ] }']
    for f in forwarded():
        dims = "[ -1 ]" if f.is_list else "[ 1 ]"
        outs.append(f'  {{ name: "out_{f.name}" data_type: {f.dtype.pbtxt} dims: {dims} }}')
    return [o + ("," if i < len(outs) - 1 else "") for i, o in enumerate(outs)]


def _ensemble_preprocessing_maps() -> list[str]:
    lines = [
        f'      input_map {{ key: "{f.name}" value: "{f.name}" }}' for f in fields_of(ENSEMBLE)
    ]
    lines.append('      output_map { key: "input_ids" value: "_input_ids" }')
    lines += [f'      output_map {{ key: "out_{f.name}" value: "_{f.name}" }}' for f in forwarded()]
    return lines


def _ensemble_decoder_maps() -> list[str]:
    lines = ['      input_map { key: "input_ids" value: "_input_ids" }']
    lines += [f'      input_map {{ key: "{f.name}" value: "_{f.name}" }}' for f in forwarded()]
    return lines


# Which generated block goes where: (config path, block name) -> lines.
BLOCKS: dict[str, Callable[[], list[str]]] = {
    "chatglm inputs": lambda: _inputs(ENSEMBLE),
    "preprocessing inputs": lambda: _inputs(PREPROCESSING),
    "preprocessing outputs": _preprocessing_outputs,
    "decoder inputs": lambda: _inputs(DECODER),
    "ensemble preprocessing maps": _ensemble_preprocessing_maps,
    "ensemble decoder maps": _ensemble_decoder_maps,
}

_BLOCK_RE = re.compile(
    r"^(?P<indent>[ \t]*)" + re.escape(BEGIN) + r": (?P<name>[a-z ]+)\n.*?^[ \t]*" + re.escape(END),
    re.S | re.M,
)


def config_paths() -> list[Path]:
    """Every model config that holds generated blocks."""
    base = REPO / "model_repository"
    paths = []
    for model in ("chatglm", "preprocessing", "chatglm_decoder"):
        paths.append(base / model / "config.pbtxt")
        paths += sorted((base / model / "configs").glob("*.pbtxt"))
    return [p.relative_to(REPO) for p in paths if p.exists()]


def render_config(text: str, origin: str) -> str:
    """``text`` with every generated block brought up to date."""

    def repl(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in BLOCKS:
            raise SystemExit(f"{origin}: unknown generated block {name!r} (known: {list(BLOCKS)})")
        indent = m.group("indent")
        body = "\n".join(BLOCKS[name]())
        return f"{indent}{BEGIN}: {name}\n{body}\n{indent}{END}"

    new, count = _BLOCK_RE.subn(repl, text)
    if count == 0:
        raise SystemExit(f"{origin}: no '{BEGIN}: <name>' block")
    return new


def outputs() -> dict[Path, str]:
    """Every generated file or config, path relative to the repository -> its content."""
    out = {HEADER: render_header(), DOC: render_doc()}
    for path in config_paths():
        out[path] = render_config((REPO / path).read_text(encoding="utf-8"), str(path))
    return out


def stale(root: Path | None = None) -> list[Path]:
    """The generated paths whose content differs from what the table gives."""
    root = root or REPO
    return [
        p
        for p, text in outputs().items()
        if not (root / p).exists() or (root / p).read_text(encoding="utf-8") != text
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate every output")
    mode.add_argument("--check", action="store_true", help="exit 1 if an output is out of date")
    args = ap.parse_args(argv)
    if args.check:
        old = stale(REPO)
        for p in old:
            print(f"out of date: {p} (run: {GENERATED_BY})", file=sys.stderr)
        return 1 if old else 0
    for p, text in outputs().items():
        target = REPO / p
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
            print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
