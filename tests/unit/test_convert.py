"""The converter: formats in, one streamed model.safetensors out, int8, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.torch_threads import one_thread
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from glmserve._checkpoint import CheckpointError, StreamingSafetensorsWriter
from glmserve.convert import convert, main, quantize_int8
from glmserve.reference import ChatGLMModel, chunked_logits, generate
from glmserve.tiny import tiny_config, tiny_weights


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


SPECIAL = {
    "mask_token_id": 60,
    "gmask_token_id": 61,
    "bos_token_id": 62,
    "eos_token_id": 63,
    "pad_token_id": 0,
}
PROMPTS = [[5, 9, 17, 61, 62], [33, 61, 62], [7, 8, 9, 10, 11, 12, 61, 62]]


def small_config():
    cfg = tiny_config(64, SPECIAL)
    d = cfg.to_dict()
    d.update(hidden_size=32, num_attention_heads=2, inner_hidden_size=64)
    return type(cfg).from_dict(d)


def write_hub(path: Path, sd: dict[str, torch.Tensor] | None = None, cfg=None) -> Path:
    cfg = cfg or small_config()
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "chatglm", **cfg.to_dict()}))
    if sd is None:
        sd = tiny_weights(cfg, seed=1)
    save_file(sd, str(path / "model.safetensors"))
    return path


def write_bin_shards(path: Path, sd: dict[str, torch.Tensor], n: int = 3) -> None:
    names = list(sd)
    weight_map = {}
    for i in range(n):
        fname = f"pytorch_model-{i + 1:05d}-of-{n:05d}.bin"
        part = {k: sd[k].clone() for k in names[i::n]}
        if i == 0:  # hub .bin files carry the rotary buffer; it must be ignored
            part["transformer.layers.0.attention.rotary_emb.inv_freq"] = torch.ones(8)
        torch.save(part, path / fname)
        weight_map.update({k: fname for k in part})
    (path / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
    )


@pytest.fixture()
def hub(tmp_path: Path) -> Path:
    return write_hub(tmp_path / "hub")


def test_converted_logits_equal_unconverted(hub: Path, tmp_path: Path) -> None:
    out = convert(hub, tmp_path / "out", dtype="fp32", progress=False)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["glmserve_format"] == 1 and cfg["torch_dtype"] == "float32"
    assert "quantization" not in cfg
    a = ChatGLMModel.from_pretrained(hub)
    b = ChatGLMModel.from_pretrained(out)
    chunks = [PROMPTS[2], [3, 4], [5]]
    assert torch.equal(chunked_logits(a, chunks), chunked_logits(b, chunks))
    # One file, hub names, readable by the safetensors library.
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" in f.keys()
        assert f.metadata()["glmserve_format"] == "1"


def test_bin_shards_with_index(tmp_path: Path) -> None:
    cfg = small_config()
    sd = tiny_weights(cfg, seed=2)
    src = tmp_path / "binhub"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(cfg.to_dict()))
    write_bin_shards(src, sd)
    out = convert(src, tmp_path / "out", dtype="fp32", progress=False)
    got = load_file(str(out / "model.safetensors"))
    assert set(got) == set(sd)
    assert all(torch.equal(got[k], sd[k]) for k in sd)


def test_safetensors_preferred_over_bin(tmp_path: Path) -> None:
    cfg = small_config()
    sd = tiny_weights(cfg, seed=3)
    src = write_hub(tmp_path / "both", sd, cfg)
    write_bin_shards(src, {k: torch.zeros_like(v) for k, v in sd.items()})
    got = load_file(str(convert(src, tmp_path / "out", progress=False) / "model.safetensors"))
    assert torch.equal(got["lm_head.weight"], sd["lm_head.weight"])


def test_fp16_output_and_tokenizer_copy(hub: Path, tmp_path: Path) -> None:
    from glmserve.token_texts import decode_table
    from glmserve.tokenizer import ChatGLMTokenizer, train_tiny_tokenizer

    train_tiny_tokenizer(hub / "ice_text.model")
    out = convert(hub, tmp_path / "out", dtype="fp16", progress=False)
    got = load_file(str(out / "model.safetensors"))
    src = load_file(str(hub / "model.safetensors"))
    assert all(t.dtype == torch.float16 for t in got.values())
    assert torch.equal(got["lm_head.weight"], src["lm_head.weight"].half())
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float16"
    assert (out / "ice_text.model").read_bytes() == (hub / "ice_text.model").read_bytes()
    # The engine's token texts (stop strings) come with the tokenizer.
    table = decode_table((out / "token_bytes.bin").read_bytes())
    assert table == ChatGLMTokenizer(hub / "ice_text.model").token_texts()


def test_broken_tokenizer_is_a_clear_error(hub: Path, tmp_path: Path) -> None:
    (hub / "ice_text.model").write_bytes(b"not really a sentencepiece model")
    with pytest.raises(CheckpointError, match="ice_text.model: not a sentencepiece model"):
        convert(hub, tmp_path / "out", progress=False)


def test_ids_only_checkpoint_has_no_tokenizer(hub: Path, tmp_path: Path) -> None:
    out = convert(hub, tmp_path / "out", progress=False)
    assert not (out / "ice_text.model").exists()
    assert generate(ChatGLMModel.from_pretrained(out), [PROMPTS[0]], 4)[0]


def test_streaming_writer_any_order(tmp_path: Path) -> None:
    a, b = torch.arange(6, dtype=torch.float32).view(2, 3), torch.tensor([1, -2], dtype=torch.int8)
    w = StreamingSafetensorsWriter(
        tmp_path / "x.safetensors", [("a", a.dtype, (2, 3)), ("b", b.dtype, (2,))]
    )
    w.write("b", b)
    w.write("a", a)
    w.close()
    got = load_file(str(tmp_path / "x.safetensors"))
    assert torch.equal(got["a"], a) and torch.equal(got["b"], b)


# ------------------------------------------------------------------- errors
def _sd(seed: int = 4) -> dict[str, torch.Tensor]:
    return tiny_weights(small_config(), seed=seed)


def _expect_error(src: Path, out: Path, *needles: str) -> str:
    with pytest.raises((CheckpointError, ValueError)) as exc:
        convert(src, out, progress=False)
    msg = str(exc.value)
    for needle in needles:
        assert needle in msg, msg
    assert not (out / "model.safetensors").exists()
    assert not (out / "model.safetensors.partial").exists()
    assert not (out / "config.json").exists()
    return msg


def test_error_missing_directory(tmp_path: Path) -> None:
    _expect_error(tmp_path / "nope", tmp_path / "out", "not found")


def test_error_missing_config(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    _expect_error(tmp_path / "src", tmp_path / "out", "config.json")


def test_error_no_weights(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(small_config().to_dict()))
    _expect_error(src, tmp_path / "out", "no weights found")


def test_error_shard_missing(tmp_path: Path) -> None:
    cfg = small_config()
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(cfg.to_dict()))
    write_bin_shards(src, _sd())
    (src / "pytorch_model-00002-of-00003.bin").unlink()
    _expect_error(src, tmp_path / "out", "pytorch_model-00002-of-00003.bin", "missing")


def test_error_unknown_name(tmp_path: Path) -> None:
    sd = _sd()
    sd["transformer.layers.0.attention.extra.weight"] = torch.zeros(2)
    _expect_error(write_hub(tmp_path / "src", sd), tmp_path / "out", "unknown tensor name")


def test_error_missing_name(tmp_path: Path) -> None:
    sd = _sd()
    del sd["transformer.layers.1.mlp.dense_4h_to_h.bias"]
    _expect_error(
        write_hub(tmp_path / "src", sd),
        tmp_path / "out",
        "missing",
        "layers.1.mlp.dense_4h_to_h.bias",
    )


def test_error_missing_name_bin_without_index(tmp_path: Path) -> None:
    # A single pytorch_model.bin: names are only known while streaming; the error comes at
    # the end and the partial output is removed.
    sd = _sd()
    del sd["lm_head.weight"]
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(small_config().to_dict()))
    torch.save(sd, src / "pytorch_model.bin")
    _expect_error(src, tmp_path / "out", "missing", "lm_head.weight")


def test_error_wrong_shape(tmp_path: Path) -> None:
    sd = _sd()
    sd["transformer.layers.0.attention.dense.weight"] = torch.zeros(32, 31)
    _expect_error(
        write_hub(tmp_path / "src", sd),
        tmp_path / "out",
        "attention.dense.weight",
        "[32, 31]",
        "[32, 32]",
    )


def test_error_wrong_dtype(tmp_path: Path) -> None:
    sd = _sd()
    sd["transformer.final_layernorm.bias"] = torch.zeros(32, dtype=torch.int32)
    _expect_error(
        write_hub(tmp_path / "src", sd), tmp_path / "out", "final_layernorm.bias", "torch.int32"
    )


def test_error_bad_config_names_field(tmp_path: Path) -> None:
    src = write_hub(tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    del cfg["inner_hidden_size"]
    (src / "config.json").write_text(json.dumps(cfg))
    _expect_error(src, tmp_path / "out", "inner_hidden_size")


def test_cli_error_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--src", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("convert: error:") and err.count("\n") == 1


# --------------------------------------------------------------------- int8
def test_quantize_int8_rows() -> None:
    w = torch.tensor([[1.0, -0.5, 0.25], [0.0, 0.0, 0.0], [-2.0, 1.0, 0.0]])
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float16
    assert q[0].tolist() == [127, -64, 32] or q[0].tolist() == [127, -63, 32]
    assert q[1].tolist() == [0, 0, 0]
    assert q[2, 0] == -127
    assert torch.allclose(q.float() * scale.float()[:, None], w, atol=2.0 / 127)


def test_int8_conversion(hub: Path, tmp_path: Path) -> None:
    a = convert(hub, tmp_path / "a", dtype="fp32", int8=True, progress=False)
    b = convert(hub, tmp_path / "b", dtype="fp32", int8=True, progress=False)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    cfg = json.loads((a / "config.json").read_text())
    assert cfg["quantization"] == {"int8": True, "lm_head": False}
    got = load_file(str(a / "model.safetensors"))
    src = load_file(str(hub / "model.safetensors"))
    for i in range(2):
        for lin in (
            "attention.query_key_value",
            "attention.dense",
            "mlp.dense_h_to_4h",
            "mlp.dense_4h_to_h",
        ):
            name = f"transformer.layers.{i}.{lin}.weight"
            assert got[name].dtype == torch.int8
            assert got[name + "_scale"].dtype == torch.float16
            assert got[name + "_scale"].shape == (src[name].shape[0],)
            deq = got[name].float() * got[name + "_scale"].float()[:, None]
            row_max = src[name].abs().amax(1, keepdim=True)
            assert ((deq - src[name]).abs() <= row_max / 127 * 0.51 + 1e-6).all()
    assert got["lm_head.weight"].dtype == torch.float32
    assert got["transformer.layers.0.attention.query_key_value.bias"].dtype == torch.float32

    c = convert(hub, tmp_path / "c", int8=True, int8_lm_head=True, progress=False)
    got_c = load_file(str(c / "model.safetensors"))
    assert got_c["lm_head.weight"].dtype == torch.int8
    assert json.loads((c / "config.json").read_text())["quantization"]["lm_head"] is True


def test_int8_reference_close_to_fp32(hub: Path, tmp_path: Path) -> None:
    fp = ChatGLMModel.from_pretrained(hub)
    q8 = ChatGLMModel.from_pretrained(convert(hub, tmp_path / "q", int8=True, progress=False))
    lf, lq = chunked_logits(fp, [PROMPTS[2]]), chunked_logits(q8, [PROMPTS[2]])
    rel = float((lf - lq).norm() / lf.norm())
    assert 0 < rel < 0.05, rel
    assert generate(fp, PROMPTS, 8) == generate(q8, PROMPTS, 8)


def test_error_corrupt_safetensors(tmp_path: Path) -> None:
    src = write_hub(tmp_path / "src")
    (src / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    _expect_error(src, tmp_path / "out", "model.safetensors", "cannot read")


class _NotATensor:
    pass


def test_error_pickle_refused_by_weights_only(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(small_config().to_dict()))
    torch.save({"lm_head.weight": _NotATensor()}, src / "pytorch_model.bin")
    _expect_error(src, tmp_path / "out", "pytorch_model.bin", "weights_only=True")
