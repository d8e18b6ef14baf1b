"""The issue's "must show": `chatglm-generate --engine cpu --dtype fp32` gives the same
greedy ids as `--engine reference` for a batch of prompts of a hub-style checkpoint
(the tiny demo model's hub copy, converted by the CLI on the way)."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers.engine_util import TINY, engine_module


def run_cli(capsys, args: list[str]) -> dict:
    from glmserve.cli import main

    rc = main(args)
    out = capsys.readouterr().out
    assert rc == 0, out
    return json.loads(out.strip().splitlines()[-1])


def test_cli_cpu_engine_equals_reference(tmp_path, capsys):
    engine_module()
    hub = TINY / "hub"
    if not (hub / "config.json").exists():
        pytest.skip(f"{hub} is missing (run: make demo-model)")
    import torch

    torch.set_num_threads(1)
    ckpt = tmp_path / "hub"
    shutil.copytree(hub, ckpt)
    common = ["--checkpoint", str(ckpt), "--max-tokens", "16", "--json"]
    for text in ["Hello", "What is ChatGLM?", "Write a poem about the sea.\nThen stop."]:
        common += ["--text", text]
    ref = run_cli(capsys, [*common, "--engine", "reference"])
    cpu = run_cli(capsys, [*common, "--engine", "cpu", "--dtype", "fp32"])
    assert len(ref["output_ids"]) == 3
    assert cpu["output_ids"] == ref["output_ids"]
    assert cpu["text"] == ref["text"]
