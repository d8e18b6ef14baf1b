"""The converter's --fp8 format (issue 19): F8_E4M3 block linears with F32 per-channel
scales, exactly glmserve.fp8's rule; the C++ loader reads and checks it (the codes' values
and scales as the converter wrote them), the CPU engine refuses it by name, and the
reference loads it dequantized."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.engine_util import engine_module
from helpers.torch_threads import one_thread
from safetensors.torch import load_file, save_file
from test_convert import small_config, write_hub

from glmserve import fp8
from glmserve.convert import convert, main
from glmserve.reference import ChatGLMModel

LINEARS = ("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


@pytest.fixture()
def fp8_ckpt(tmp_path: Path) -> tuple[Path, Path]:
    hub = write_hub(tmp_path / "hub")
    return hub, convert(hub, tmp_path / "f8", dtype="fp32", fp8=True, progress=False)


def test_fp8_conversion_writes_codes_and_scales(fp8_ckpt) -> None:
    hub, out = fp8_ckpt
    assert json.loads((out / "config.json").read_text())["quantization"] == {"fp8": True}
    got = load_file(str(out / "model.safetensors"))
    src = load_file(str(hub / "model.safetensors"))
    for i in range(small_config().num_layers):
        for lin in LINEARS:
            name = f"transformer.layers.{i}.{lin}.weight"
            assert got[name].dtype == torch.float8_e4m3fn
            assert got[name + "_scale"].dtype == torch.float32
            codes, scale = fp8.quantize_rows(src[name].numpy())
            np.testing.assert_array_equal(got[name].view(torch.uint8).numpy(), codes)
            np.testing.assert_array_equal(got[name + "_scale"].numpy(), scale)
    assert got["lm_head.weight"].dtype == torch.float32  # the lm_head stays float
    assert got["transformer.layers.0.attention.dense.bias"].dtype == torch.float32


def test_the_cpp_loader_reads_the_fp8_format(fp8_ckpt) -> None:
    _, out = fp8_ckpt
    loaded = engine_module().checkpoint_weights(str(out))
    raw = load_file(str(out / "model.safetensors"))
    name = "transformer.layers.1.mlp.dense_h_to_4h.weight"
    dtype, values = loaded[name]
    assert dtype == "F8_E4M3"
    np.testing.assert_array_equal(values, fp8.decode(raw[name].view(torch.uint8).numpy()))
    sdtype, scale = loaded[name + "_scale"]
    assert sdtype == "F32"
    np.testing.assert_array_equal(scale, raw[name + "_scale"].numpy())
    assert loaded["lm_head.weight"][0] == "F32"


def test_the_cpp_loader_names_a_wrong_fp8_file(fp8_ckpt, tmp_path: Path) -> None:
    _, out = fp8_ckpt
    _engine = engine_module()
    sd = load_file(str(out / "model.safetensors"))
    name = "transformer.layers.0.attention.dense.weight"
    sd[name + "_scale"] = sd[name + "_scale"].half()  # the int8 format's scale dtype
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(
        _engine.EngineError, match=rf"{name}_scale\" is F16 \[32\], expected F32 \[32\]"
    ):
        _engine.checkpoint_weights(str(out))


def test_the_cpu_engine_refuses_an_fp8_checkpoint(fp8_ckpt) -> None:
    _, out = fp8_ckpt
    _engine = engine_module()
    with pytest.raises(
        _engine.EngineError, match=r"this checkpoint is fp8 .*runs on device \"cuda\""
    ):
        _engine.Engine(str(out))


def test_the_reference_loads_it_dequantized(fp8_ckpt) -> None:
    hub, out = fp8_ckpt
    ref = ChatGLMModel.from_pretrained(out)
    src = load_file(str(hub / "model.safetensors"))
    name = "transformer.layers.0.attention.query_key_value.weight"
    want = fp8.dequantize_rows(*fp8.quantize_rows(src[name].numpy()))
    np.testing.assert_array_equal(ref.w[name].float().numpy(), want)


def test_fp8_and_int8_are_refused_together(tmp_path: Path, capsys) -> None:
    hub = write_hub(tmp_path / "hub")
    with pytest.raises(ValueError, match="--fp8 and --int8 are two formats"):
        convert(hub, tmp_path / "x", int8=True, fp8=True, progress=False)
    with pytest.raises(SystemExit):
        main(["--src", str(hub), "--out", str(tmp_path / "y"), "--int8", "--fp8"])
    assert "--fp8 and --int8 are two formats" in capsys.readouterr().err
