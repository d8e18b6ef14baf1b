"""chatglm-generate: the reference engine on the tiny model, JSON output, argument errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.torch_threads import one_thread

from glmserve.cli import main
from glmserve.convert import convert
from glmserve.tiny import make_tiny


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("cli") / "tiny")


@pytest.fixture(scope="module")
def ids_only(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The tiny hub checkpoint without its tokenizer, converted: an ids-only checkpoint.
    hub = tmp_path_factory.mktemp("idsonly") / "hub"
    hub.mkdir()
    for f in ("config.json", "model.safetensors"):
        (hub / f).write_bytes((tiny / "hub" / f).read_bytes())
    return convert(hub, hub.parent / "conv", progress=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse errors
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def prompt_ids(tiny: Path, *texts: str) -> list[list[int]]:
    from glmserve.tokenizer import ChatGLMTokenizer

    tok = ChatGLMTokenizer(tiny / "ice_text.model")
    return [tok.encode(t) for t in texts]


def test_reference_text_greedy_not_degenerate(tiny: Path, capsys) -> None:
    code, out, err = run(capsys, "--checkpoint", str(tiny), "--text", "Hello", "--max-tokens", "48")
    assert code == 0, err
    text = out.rstrip("\n")
    assert len(set(text.replace(" ", ""))) >= 16, text  # many different characters


def test_json_batch_equals_single_runs(tiny: Path, capsys) -> None:
    prompts = prompt_ids(tiny, "Hello", "What is ChatGLM?")
    spec = ";".join(",".join(map(str, p)) for p in prompts)
    args = ["--checkpoint", str(tiny), "--max-tokens", "12", "--json"]
    code, out, err = run(capsys, *args, "--input-ids", spec)
    assert code == 0, err
    result = json.loads(out)
    assert len(result["output_ids"]) == 2 and all(len(o) == 12 for o in result["output_ids"])
    assert len(result["text"]) == 2 and all(isinstance(t, str) and t for t in result["text"])
    for p, expected in zip(prompts, result["output_ids"], strict=True):
        code, out, _ = run(capsys, *args, "--input-ids", ",".join(map(str, p)))
        assert json.loads(out)["output_ids"] == [expected]


def test_hub_dir_gives_same_ids(tiny: Path, capsys) -> None:
    spec = ",".join(map(str, prompt_ids(tiny, "你好")[0]))
    outs = []
    for ckpt in (tiny, tiny / "hub"):
        code, out, err = run(
            capsys, "--checkpoint", str(ckpt), "--input-ids", spec, "--max-tokens", "8", "--json"
        )
        assert code == 0, err
        outs.append(json.loads(out)["output_ids"])
    assert outs[0] == outs[1]


def test_sampling_seeded(tiny: Path, capsys) -> None:
    args = ["--checkpoint", str(tiny), "--text", "Hello", "--max-tokens", "16", "--json"]
    sample = ["--temperature", "1.5", "--top-k", "50", "--top-p", "0.95"]
    runs = [run(capsys, *args, *sample, "--seed", s)[1] for s in ("1", "1", "2")]
    a, b, c = (json.loads(r)["output_ids"] for r in runs)
    assert a == b
    assert a != c
    greedy = json.loads(run(capsys, *args)[1])["output_ids"]
    assert a != greedy


def test_ids_only_checkpoint(ids_only: Path, capsys) -> None:
    cfg = json.loads((ids_only / "config.json").read_text())
    ids = f"5,6,{cfg['gmask_token_id']},{cfg['bos_token_id']}"
    code, out, err = run(
        capsys, "--checkpoint", str(ids_only), "--input-ids", ids, "--max-tokens", "4", "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert "text" not in result and len(result["output_ids"][0]) == 4
    code, out, _ = run(
        capsys, "--checkpoint", str(ids_only), "--input-ids", ids, "--max-tokens", "3"
    )
    assert code == 0 and len(out.strip().split(",")) == 3
    code, _, err = run(capsys, "--checkpoint", str(ids_only), "--text", "hi")
    assert code == 2 and "tokenizer" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv, needle",
    [
        ([], "--checkpoint"),
        (["--checkpoint", "X"], "--text"),
        (["--checkpoint", "TINY", "--text", "a", "--input-ids", "1"], "not allowed"),
        (["--checkpoint", "TINY", "--input-ids", "1,x"], "non-integer"),
        (["--checkpoint", "TINY", "--input-ids", "1,2;"], "empty"),
        (["--checkpoint", "TINY", "--text", "a", "--top-p", "0"], "--top-p"),
        (["--checkpoint", "TINY", "--text", "a", "--max-tokens", "0"], "--max-tokens"),
        (["--checkpoint", "TINY", "--text", "a", "--temperature", "-1"], "--temperature"),
        (["--checkpoint", "TINY", "--text", "a", "--engine", "gpu"], "invalid choice"),
        (["--checkpoint", "TINY", "--text", "a", "--random-weights"], "--random-weights"),
        (["--checkpoint", "NOPE", "--text", "a"], "config.json"),
        (["--checkpoint", "TINY", "--input-ids", "1,2,3"], "<sop>"),
        (["--checkpoint", "TINY", "--input-ids", "5,99999,GMASK,BOS"], "vocabulary"),
        (["--checkpoint", "TINY", "--text", "a", "--int8", "--fp8"], "--fp8 and --int8"),
    ],
)
def test_argument_errors_exit_2(tiny: Path, capsys, argv: list[str], needle: str) -> None:
    cfg = json.loads((tiny / "config.json").read_text())
    subst = {
        "TINY": str(tiny),
        "NOPE": str(tiny / "nope"),
    }
    argv = [subst.get(a, a) for a in argv]
    argv = [
        a.replace("GMASK", str(cfg["gmask_token_id"])).replace("BOS", str(cfg["bos_token_id"]))
        for a in argv
    ]
    code, out, err = run(capsys, *argv)
    assert code == 2, (out, err)
    assert needle in err, err
    assert err.count("\n") == 1, err  # one line
    assert out == ""


def test_engine_not_built_is_clear(tiny: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import glmserve

    monkeypatch.setitem(sys.modules, "glmserve._engine", None)  # import now fails
    # ... also when an earlier test of this process imported it: `from glmserve import
    # _engine` takes the package attribute that the first import left behind.
    monkeypatch.delattr(glmserve, "_engine", raising=False)
    code, _, err = run(capsys, "--checkpoint", str(tiny), "--text", "a", "--engine", "cpu")
    assert code == 2 and "make build" in err and err.count("\n") == 1


def test_engine_cpu_matches_reference(tiny: Path, capsys) -> None:
    pytest.importorskip(
        "glmserve._engine",
        reason="the C++ engine module is not built (make build)",
        exc_type=ImportError,
    )
    spec = ";".join(",".join(map(str, p)) for p in prompt_ids(tiny, "Hello", "What is ChatGLM?"))
    outs = []
    for engine in ("reference", "cpu"):
        code, out, err = run(
            capsys, "--checkpoint", str(tiny), "--engine", engine, "--input-ids", spec,
            "--max-tokens", "16", "--json",
        )  # fmt: skip
        assert code == 0, err
        outs.append(json.loads(out)["output_ids"])
    assert outs[0] == outs[1]


def test_fp8_on_the_reference_runs_the_fp8_reference(tiny: Path, capsys) -> None:
    """--fp8 with the reference engine decodes through glmserve.fp8_reference (FP8 block
    linears): the same ids as that model directly; the CPU engine refuses it by name."""
    import torch

    from glmserve import reference
    from glmserve.fp8_reference import Fp8Reference

    (ids,) = prompt_ids(tiny, "Hello")
    spec = ",".join(map(str, ids))
    code, out, err = run(
        capsys, "--checkpoint", str(tiny), "--fp8", "--input-ids", spec, "--max-tokens", "8",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    model = Fp8Reference.wrap(
        reference.ChatGLMModel.from_pretrained(tiny, dtype=torch.float32), fp8_linears=True
    )
    want = reference.generate(model, [ids], max_tokens=8)
    assert json.loads(out)["output_ids"] == want
    pytest.importorskip(
        "glmserve._engine",
        reason="the C++ engine module is not built (make build)",
        exc_type=ImportError,
    )
    code, _, err = run(
        capsys, "--checkpoint", str(tiny), "--engine", "cpu", "--fp8", "--input-ids", spec
    )
    assert code != 0 and "fp8" in err and err.count("\n") == 1, err


def test_kv_cache_dtype_fp8_on_the_cpu_engine_and_the_reference(tiny: Path, capsys) -> None:
    """--kv-cache-dtype fp8: the CPU engine's FP8 cache and the reference's (fp8_kv) decode
    the same ids."""
    pytest.importorskip(
        "glmserve._engine",
        reason="the C++ engine module is not built (make build)",
        exc_type=ImportError,
    )
    (ids,) = prompt_ids(tiny, "What is ChatGLM?")
    spec = ",".join(map(str, ids))
    outs = []
    for engine in ("reference", "cpu"):
        code, out, err = run(
            capsys, "--checkpoint", str(tiny), "--engine", engine, "--kv-cache-dtype", "fp8",
            "--input-ids", spec, "--max-tokens", "12", "--json",
        )  # fmt: skip
        assert code == 0, err
        outs.append(json.loads(out)["output_ids"])
    assert outs[0] == outs[1]


def test_module_help_runs() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(
        [sys.executable, "-m", "glmserve.cli", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert r.returncode == 0 and "--input-ids" in r.stdout
