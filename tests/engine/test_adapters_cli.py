"""chatglm-generate --adapter NAME: the reference engine with a P-Tuning v2 prefix; the C++ engines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.torch_threads import one_thread

from glmserve.adapter_fixtures import write_ptuning_checkpoint
from glmserve.adapters import load_prefix
from glmserve.cli import main
from glmserve.config import ChatGLMConfig
from glmserve.convert import main as convert_main
from glmserve.reference import ChatGLMModel, generate
from glmserve.tiny import make_tiny


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny demo model (converted, fp32) with adapter 'style' (projection, P = 8)."""
    root = tmp_path_factory.mktemp("adapters_cli")
    out = make_tiny(root / "tiny")
    cfg = ChatGLMConfig.from_json(out)
    src = write_ptuning_checkpoint(root / "pt", cfg, 8, True, seed=5)
    args = ["--ptuning", str(src), "--base", str(out), "--adapter-name", "style", "--quiet"]
    assert convert_main(args) == 0
    return out


def run(capsys, *argv: str) -> tuple[int, str, str]:  # noqa: ANN001
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def ids_arg(prompts: list[list[int]]) -> str:
    return ";".join(",".join(map(str, p)) for p in prompts)


def prompts_for(cfg: ChatGLMConfig) -> list[list[int]]:
    g, b = cfg.gmask_token_id, cfg.bos_token_id
    return [[20, 31, 42, g, b], [7, 8, 9, 10, 11, g, b]]


def test_reference_with_adapter(tiny: Path, capsys) -> None:  # noqa: ANN001
    model = ChatGLMModel.from_pretrained(tiny)
    prompts = prompts_for(model.cfg)
    common = ["--checkpoint", str(tiny), "--input-ids", ids_arg(prompts), "--max-tokens", "8"]
    code, out, err = run(capsys, *common, "--adapter", "style", "--json")
    assert code == 0, err
    got = json.loads(out)["output_ids"]
    assert got == generate(model, prompts, 8, prefix=load_prefix(tiny, "style"))
    code, out, _ = run(capsys, *common, "--json")
    assert code == 0 and json.loads(out)["output_ids"] != got  # the adapter has an effect


def test_reference_text_with_adapter(tiny: Path, capsys) -> None:  # noqa: ANN001
    code, out, err = run(
        capsys,
        "--checkpoint",
        str(tiny),
        "--text",
        "Hello",
        "--adapter",
        "style",
        "--max-tokens",
        "4",
    )
    assert code == 0 and out.strip(), err


@pytest.mark.parametrize(
    ("adapter", "needle"),
    [("nope", "no adapter 'nope'"), ("../x", "bad adapter name"), ("", "bad adapter name")],
)
def test_adapter_errors(tiny: Path, capsys, adapter: str, needle: str) -> None:  # noqa: ANN001
    code, _, err = run(
        capsys, "--checkpoint", str(tiny), "--input-ids", "5,1,2", "--adapter", adapter
    )
    assert code == 2 and needle in err and err.count("\n") == 1, err


def test_engine_adapter_needs_converted_checkpoint(tiny: Path, capsys) -> None:  # noqa: ANN001
    from helpers.engine_util import engine_module

    engine_module()
    hub_ids = ids_arg(prompts_for(ChatGLMConfig.from_json(tiny)))
    code, _, err = run(
        capsys,
        "--checkpoint",
        str(tiny / "hub"),
        "--engine",
        "cpu",
        "--input-ids",
        hub_ids,
        "--adapter",
        "style",
    )
    assert code == 2 and "needs a converted checkpoint" in err, err


def test_cpu_engine_with_adapter_equals_reference(tiny: Path, capsys) -> None:  # noqa: ANN001
    from helpers.engine_util import engine_module

    engine_module()
    prompts = prompts_for(ChatGLMConfig.from_json(tiny))
    common = ["--checkpoint", str(tiny), "--input-ids", ids_arg(prompts), "--max-tokens", "8"]
    common += ["--adapter", "style", "--json"]
    code, ref, err = run(capsys, *common)
    assert code == 0, err
    code, cpu, err = run(capsys, *common, "--engine", "cpu", "--dtype", "fp32")
    assert code == 0, err
    assert json.loads(cpu)["output_ids"] == json.loads(ref)["output_ids"]
