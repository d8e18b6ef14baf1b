"""The engine's CUDA tuning options (EngineOptions.cuda) on their Python surfaces, without
a GPU: the module's keywords and their validation, the CLI flags built from the engine's
own list, glmserve.bench's A/B variants, and the table in docs/cuda_notes.md."""

from __future__ import annotations

import re

import pytest
from helpers.engine_util import REPO, engine_module, tiny_dir

NAMES = {
    "rotary_fp16": ("bool", False),
    "pdl": ("bool", True),
    "attention_warp": ("bool", False),
    "attention_one_pass": ("int", 0),
    "attention_split_min_keys": ("int", 64),
    "gemv_max_tokens": ("int", 4),
    "gemv_mma_max_tokens": ("int", 16),
    "gemm_gelu_epilogue": ("bool", True),
    "int8_lm_head": ("bool", False),
    "int8_packed": ("bool", True),
    "int8_gemv_max_tokens": ("int", -1),
    "int8_mma_max_tokens": ("int", 256),
    "int8_w8a8_min_tokens": ("int", 0),
    "fp8_gemv_max_tokens": ("int", 2),
    "graphs_at_start": ("bool", True),
    "poison": ("int", 0),
    "timing": ("bool", False),
}


def test_fields_and_defaults():
    fields = engine_module().cuda_tuning_fields()
    assert {f["name"]: (f["type"], f["default"]) for f in fields} == NAMES
    assert all(f["min"] <= f["max"] and f["help"] for f in fields)
    # only values of a number field (within its range); the others take any in range
    assert {f["name"]: f["choices"] for f in fields if f["choices"]} == {
        "attention_one_pass": [0, 2, 4, 8]
    }


def test_documented_in_cuda_notes():
    """docs/cuda_notes.md lists every option with its default."""
    text = (REPO / "docs" / "cuda_notes.md").read_text()
    section = text.split("## Tuning options", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", section, re.M))
    assert set(rows) == set(NAMES)
    for name, (_, default) in NAMES.items():
        assert rows[name].split()[0] == str(default).lower(), name


def test_engine_keywords_are_validated():
    _engine = engine_module()
    d = str(tiny_dir())
    # the cpu back-end ignores them, but they are validated all the same
    eng = _engine.Engine(d, cuda_pdl=False, cuda_gemv_max_tokens="2", cuda_rotary_fp16="on")
    assert eng.model_info()["vocab_size"] > 0
    del eng
    cases = [
        ({"cuda_pdl": "maybe"}, 'engine option cuda.pdl must be true or false, got "maybe"'),
        ({"cuda_poison": 4}, r"engine option cuda.poison must be an integer in \[0, 3\]"),
        ({"cuda_gemv_max_tokens": 9}, r"cuda.gemv_max_tokens must be an integer in \[0, 8\]"),
        ({"cuda_mma_variant": 4}, "engine option cuda.mma_variant does not exist"),
        ({"cuda_attention_one_pass": 3}, 'cuda.attention_one_pass must be 0, 2, 4 or 8, got "3"'),
    ]
    for kw, msg in cases:
        with pytest.raises(_engine.EngineError, match=msg):
            _engine.Engine(d, **kw)
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        _engine.Engine(d, bogus=1)
    with pytest.raises(TypeError, match="must be a bool, an int or a str"):
        _engine.Engine(d, cuda_poison=1.5)


def test_cli_flags(capsys):
    engine_module()
    from glmserve import cli, cuda_tuning

    p = cli.build_parser()
    args = p.parse_args(
        ["--checkpoint", "x", "--input-ids", "1", "--cuda-pdl", "off", "--cuda-poison", "2"]
    )
    assert cuda_tuning.kwargs(args) == {"cuda_pdl": False, "cuda_poison": 2}
    help_text = p.format_help()
    for name in NAMES:
        assert "--cuda-" + name.replace("_", "-") in help_text
    with pytest.raises(SystemExit):
        p.parse_args(["--checkpoint", "x", "--input-ids", "1", "--cuda-pdl", "maybe"])
    with pytest.raises(SystemExit):  # the engine's choices for this option: 0, 2, 4, 8
        p.parse_args(["--checkpoint", "x", "--input-ids", "1", "--cuda-attention-one-pass", "3"])
    assert "invalid choice: 3" in capsys.readouterr().err
    # tuning is for --engine cuda
    rc = cli.main(["--checkpoint", str(tiny_dir()), "--input-ids", "1,2", "--cuda-pdl", "0"])
    assert rc == cli.EXIT_USAGE
    assert "--cuda-pdl: CUDA tuning needs --engine cuda" in capsys.readouterr().err


def test_bench_variants_are_engine_options(capsys):
    engine_module()
    from glmserve import bench, cuda_tuning

    assert cuda_tuning.parse_setting("cuda_pdl=false") == ("cuda_pdl", "false")
    for bad in ("GLM_CUDA_PDL=0", "cuda_pdl", "cuda_pdl=", "cuda_pdl=0,gemv_max_tokens=2"):
        with pytest.raises(SystemExit):
            bench.main(["--variant", bad])
        assert "expected cuda_<name>=VALUE" in capsys.readouterr().err
    # several options in one variant (one engine, one row per batch)
    both = "cuda_gemv_max_tokens=2, cuda_gemv_mma_max_tokens=16"
    assert cuda_tuning.parse_variant(both) == {
        "cuda_gemv_max_tokens": "2",
        "cuda_gemv_mma_max_tokens": "16",
    }
    with pytest.raises(SystemExit):
        bench.main(["--variant", "cuda_pdl=0,cuda_pdl=1"])
    assert "cuda_pdl set twice" in capsys.readouterr().err


def test_fp8_reference_follows_the_engine_gemv_default():
    """glmserve.fp8_reference keeps activations unquantized up to the engine's default
    fp8_gemv_max_tokens (the CPU reference of the FP8 mode as it runs by default)."""
    from glmserve.fp8_reference import GEMV_MAX_TOKENS

    fields = {f["name"]: f for f in engine_module().cuda_tuning_fields()}
    assert fields["fp8_gemv_max_tokens"]["default"] == GEMV_MAX_TOKENS
    assert fields["fp8_gemv_max_tokens"]["max"] == 8  # Fp8Reference.wrap's range
