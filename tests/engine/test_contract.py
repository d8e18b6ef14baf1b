"""The request contract (glmserve/contract.py): the table, its checks, and that everything
generated from it is current and agrees across Python and C++."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
from helpers.engine_util import BOS, GMASK, engine_module, write_checkpoint

from glmserve import contract, contract_gen
from glmserve.contract import CONTEXT, DECODER, ENSEMBLE, FIELDS, ErrorCode, RequestError


def test_generated_outputs_are_current() -> None:
    """The C++ header, docs/request_fields.md and the model configs' generated blocks."""
    assert contract_gen.stale() == [], "run: python -m glmserve.contract_gen --write"
    assert contract_gen.main(["--check"]) == 0


def test_check_mode_reports_a_stale_output(tmp_path, monkeypatch, capsys) -> None:
    """--check fails (exit 1) and names the file when an output differs from the table."""
    header = contract_gen.REPO / contract_gen.HEADER
    stale_copy = tmp_path / "repo"
    for rel in contract_gen.outputs():
        (stale_copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (stale_copy / rel).write_text((contract_gen.REPO / rel).read_text())
    (stale_copy / contract_gen.HEADER).write_text(header.read_text().replace("kTopP", "kTopQ"))
    assert contract_gen.stale(stale_copy) == [contract_gen.HEADER]
    monkeypatch.setattr(contract_gen, "REPO", stale_copy)
    assert contract_gen.main(["--check"]) == 1
    assert "request_fields.gen.h" in capsys.readouterr().err


def test_every_model_config_variant_is_generated() -> None:
    paths = {str(p) for p in contract_gen.config_paths()}
    assert "model_repository/chatglm/config.pbtxt" in paths
    assert "model_repository/chatglm_decoder/configs/gpu.pbtxt" in paths
    assert "model_repository/preprocessing/configs/gpu.pbtxt" in paths


def test_table_is_consistent() -> None:
    names = [f.name for f in FIELDS]
    assert len(names) == len(set(names))
    for f in FIELDS:
        assert f.models <= {ENSEMBLE, DECODER}, f.name
        assert f.doc and f.doc[0].isupper(), f.name
        if f.forward:  # preprocessing forwards it: the decoder must take it
            assert {ENSEMBLE, DECODER} <= f.models, f.name
        if f.engine_member:
            assert DECODER in f.models, f.name
        if f.default is not None:  # defaults are allowed values
            want = list(f.default) if f.is_list else f.default
            assert f.check(f.default) == want, f.name


@pytest.mark.parametrize(
    "name, value, words",
    [
        ("temperature", -0.5, "temperature must be a finite number >= 0 (0 = greedy), got -0.5"),
        ("temperature", math.nan, "temperature must be a finite number >= 0 (0 = greedy), got nan"),
        ("top_p", 0.0, "top_p must be in (0, 1] (1 = off), got 0"),
        ("top_p", 1.5, "top_p must be in (0, 1] (1 = off), got 1.5"),
        ("top_k", -1, "top_k must be >= 0 (0 = off), got -1"),
        ("repetition_penalty", math.inf, "repetition_penalty must be a finite number > 0"),
        ("max_tokens", 0, "max_tokens must be in [1, 64], got 0"),
        ("max_tokens", 65, "max_tokens must be in [1, 64], got 65"),
    ],
)
def test_range_errors_name_the_field_and_the_range(name, value, words) -> None:
    with pytest.raises(RequestError) as e:
        contract.field(name).check(value, contract.Limits(context=64))
    assert str(e.value).startswith(words)
    assert e.value.field == name and e.value.code is ErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "name, value, words",
    [
        ("max_tokens", 1.5, "must be an integer"),
        ("max_tokens", True, "must be a number"),
        ("max_tokens", 2**31, "does not fit INT32"),
        ("random_seed", -1, "does not fit UINT64"),
        ("random_seed", 2**64, "does not fit UINT64"),
        ("temperature", "hot", "must be a number"),
        ("ignore_eos", 1, "must be a bool"),
        ("text_input", b"\xff", "not valid UTF-8"),
    ],
)
def test_types_are_checked(name, value, words) -> None:
    with pytest.raises(RequestError, match=words) as e:
        contract.field(name).coerce(value)
    assert str(e.value).startswith(name)


def test_allowed_values_pass_and_are_converted() -> None:
    assert contract.field("temperature").check(1) == 1.0
    assert contract.field("random_seed").check(np.uint64(2**64 - 1)) == 2**64 - 1
    assert contract.field("top_k").check(np.int32(5)) == 5
    assert contract.field("ignore_eos").check(np.bool_(True)) is True
    assert contract.field("text_input").check("你好".encode()) == "你好"
    # Without a context, a field bounded by it checks only its minimum.
    assert contract.field("max_tokens").check(10**6) == 10**6


@pytest.mark.parametrize(
    "array, batched, words",
    [
        (np.array([[0.5]], dtype=np.float64), True, "temperature: expected FP32, got FP64"),
        (np.array([[0.5, 0.6]], dtype=np.float32), True, "expected a single value (shape [1, 1])"),
        (np.array([0.5, 0.6], dtype=np.float32), False, "expected a single value (shape [1])"),
    ],
)
def test_arrays_are_checked_for_type_and_shape(array, batched, words) -> None:
    with pytest.raises(RequestError) as e:
        contract.from_array(contract.field("temperature"), array, batched)
    assert words in str(e.value)


def test_list_fields_take_one_row() -> None:
    f = contract.field("input_ids")
    assert contract.from_array(f, np.array([[1, 2, 3]], dtype=np.int32)) == [1, 2, 3]
    with pytest.raises(RequestError, match=r"expected shape \[1, n\]"):
        contract.from_array(f, np.array([[1], [2]], dtype=np.int32))
    with pytest.raises(RequestError, match=r"expected shape \[n\]"):
        contract.from_array(f, np.array([[1, 2]], dtype=np.int32), batched=False)


def test_cli_options_come_from_the_table() -> None:
    p = argparse.ArgumentParser()
    contract.add_cli_options(p, ["max_tokens", "top_p", "random_seed", "ignore_eos"])
    a = p.parse_args(["--max-tokens", "3", "--top-p", "0.5", "--seed", "7", "--ignore-eos"])
    assert (a.max_tokens, a.top_p, a.seed, a.ignore_eos) == (3, 0.5, 7, True)
    assert p.parse_args([]).max_tokens is None
    for bad in (["--top-p", "0"], ["--max-tokens", "x"], ["--seed", "-1"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)


def test_context_bound_is_symbolic_in_the_table() -> None:
    f = contract.field("max_tokens")
    assert f.maximum == CONTEXT
    assert f.requirement(contract.Limits(context=2048)) == "in [1, 2048]"


# ------------------------------------------------------------------ C++ agrees with Python


@pytest.fixture(scope="module")
def eng(tmp_path_factory):
    _engine = engine_module()
    d = write_checkpoint(tmp_path_factory.mktemp("contract"))
    return _engine, _engine.Engine(str(d), num_threads=1, num_kv_blocks=64)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -0.5},
        {"temperature": math.nan},
        {"top_p": 1.5},
        {"top_p": 0.0},
        {"top_k": -3},
        {"repetition_penalty": 0.0},
        {"max_tokens": 0},
        {"max_tokens": 1000},
    ],
    ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()),
)
def test_engine_range_errors_equal_the_contracts(eng, kwargs) -> None:
    """The engine checks sampling fields with the generated table: same words, typed."""
    _engine, e = eng
    ((name, value),) = kwargs.items()
    limits = contract.Limits(context=256, vocab=64)  # write_checkpoint's config
    expected = contract.field(name).range_error(value, limits)
    assert expected is not None
    with pytest.raises(_engine.EngineError) as info:
        e.submit(1, [5, 6, GMASK, BOS], None, **kwargs)
    assert str(info.value) == f"request 1: {expected}"
    assert info.value.code == "invalid_argument" and info.value.field == name


def test_engine_queue_full_is_typed_unavailable(tmp_path) -> None:
    _engine = engine_module()
    d = write_checkpoint(tmp_path / "c")
    e = _engine.Engine(str(d), num_threads=1, num_kv_blocks=64, max_queue=1)
    e.submit(1, [5, GMASK, BOS], None, max_tokens=2)
    with pytest.raises(_engine.EngineError) as info:
        e.submit(2, [5, GMASK, BOS], None, max_tokens=2)
    assert info.value.code == "unavailable" and info.value.field == ""
    e.cancel(1)
    while e.step():
        pass
