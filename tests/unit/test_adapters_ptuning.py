"""P-Tuning v2 checkpoints -> OUT/adapters/NAME: the computed prefix, the files, every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.adapters_util import run_convert, small_config, write_small_hub
from safetensors import safe_open
from safetensors.torch import save_file

from glmserve.adapter_fixtures import random_prefix_encoder, write_ptuning_checkpoint
from glmserve.adapters import AdapterError, PrefixKV, list_adapters, load_prefix
from glmserve.config import ChatGLMConfig
from glmserve.convert import convert
from glmserve.tiny import tiny_weights

P = 5


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A converted small model (3 layers, hidden 64, 4 heads)."""
    root = tmp_path_factory.mktemp("ptuning_base")
    hub = write_small_hub(root / "hub", seed=3)
    return convert(hub, root / "out", dtype="fp32", progress=False)


def add(capsys, src: Path, base: Path, name: str, *extra: str) -> tuple[int, str]:  # noqa: ANN001
    return run_convert(
        capsys, "--ptuning", str(src), "--base", str(base), "--adapter-name", name, *extra
    )


def encoder_by_hand(enc: dict[str, torch.Tensor], projection: bool) -> torch.Tensor:
    """PrefixEncoder on 0..P-1 in fp32, plain ops: [P, 2 * L * H]."""
    g = {k.removeprefix("transformer.prefix_encoder."): v.float() for k, v in enc.items()}
    x = g["embedding.weight"][torch.arange(g["embedding.weight"].shape[0])]
    if projection:
        x = torch.tanh(x @ g["trans.0.weight"].T + g["trans.0.bias"])
        x = x @ g["trans.2.weight"].T + g["trans.2.bias"]
    return x


# ---------------------------------------------------------------- the prefix
@pytest.mark.parametrize(
    ("projection", "weights_file"),
    [
        (False, "pytorch_model.bin"),
        (True, "pytorch_model.bin"),
        (False, "model.safetensors"),
        (True, "model.safetensors"),
    ],
)
def test_prefix_equals_encoder_run_by_hand(
    base: Path,
    tmp_path: Path,
    capsys,
    projection: bool,
    weights_file: str,  # noqa: ANN001
) -> None:
    cfg = ChatGLMConfig.from_json(base)
    name = f"a-{int(projection)}-{Path(weights_file).suffix[1:]}"
    src = write_ptuning_checkpoint(tmp_path / "pt", cfg, P, projection, 9, weights_file)
    code, err = add(capsys, src, base, name)
    assert code == 0, err
    d = base / "adapters" / name
    meta = json.loads((d / "adapter.json").read_text())
    assert meta == {
        "glmserve_adapter_format": 1,
        "type": "prefix",
        "pre_seq_len": P,
        "num_layers": 3,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "source": meta["source"],
    }
    assert str(src.resolve()) in meta["source"]
    with safe_open(str(d / "prefix.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == ["prefix.key", "prefix.value"]
        key, value = f.get_tensor("prefix.key"), f.get_tensor("prefix.value")
    assert key.dtype == value.dtype == torch.float32
    assert key.shape == value.shape == (3, P, 64)
    out = encoder_by_hand(random_prefix_encoder(cfg, P, projection, 9), projection)
    h = cfg.hidden_size
    for i in range(cfg.num_layers):  # layer i: [key | value] = slots 2i and 2i + 1
        want_k, want_v = (
            out[:, 2 * i * h : (2 * i + 1) * h],
            out[:, (2 * i + 1) * h : (2 * i + 2) * h],
        )
        if projection:
            assert torch.allclose(key[i], want_k, atol=1e-6) and torch.allclose(
                value[i], want_v, atol=1e-6
            )
        else:  # no projection: the embedding rows themselves
            assert torch.equal(key[i], want_k) and torch.equal(value[i], want_v)
    assert name in list_adapters(base)
    loaded = load_prefix(base, name, cfg)
    assert torch.equal(loaded.key, key) and torch.equal(loaded.value, value)


def test_full_model_file_with_prefix_encoder(base: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    # A checkpoint that saved everything: only transformer.prefix_encoder.* is used, as
    # THUDM's loader does.
    cfg = ChatGLMConfig.from_json(base)
    src = write_ptuning_checkpoint(tmp_path / "pt", cfg, P, False, 4, "model.safetensors")
    sd = {**tiny_weights(cfg, seed=5), **random_prefix_encoder(cfg, P, False, 4)}
    save_file(sd, str(src / "model.safetensors"))
    assert add(capsys, src, base, "full")[0] == 0
    out = encoder_by_hand(random_prefix_encoder(cfg, P, False, 4), False)
    assert torch.equal(load_prefix(base, "full").key[0], out[:, :64])


def test_force_replaces(base: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    cfg = ChatGLMConfig.from_json(base)
    a = write_ptuning_checkpoint(tmp_path / "a", cfg, P, False, 1)
    b = write_ptuning_checkpoint(tmp_path / "b", cfg, 3, True, 2)
    assert add(capsys, a, base, "again")[0] == 0
    first = load_prefix(base, "again")
    code, err = add(capsys, b, base, "again")
    assert code == 1 and "already exists" in err and "--force" in err
    assert torch.equal(load_prefix(base, "again").key, first.key)
    assert add(capsys, b, base, "again", "--force")[0] == 0
    assert load_prefix(base, "again").length == 3
    leftovers = [p.name for p in (base / "adapters").iterdir() if p.name.startswith(".again.")]
    assert not leftovers  # no temporary or replaced directories stay behind


# ---------------------------------------------------------------- bad inputs
def _pt(tmp_path: Path, base: Path, **config: object) -> Path:
    src = write_ptuning_checkpoint(tmp_path / "pt", ChatGLMConfig.from_json(base), P, False, 0)
    conf = json.loads((src / "config.json").read_text())
    conf.update(config)
    (src / "config.json").write_text(json.dumps({k: v for k, v in conf.items() if v != "DEL"}))
    return src


def expect_error(capsys, src: Path, base: Path, *needles: str, name: str = "bad") -> None:  # noqa: ANN001
    code, err = add(capsys, src, base, name)
    assert code != 0
    assert err.count("\n") == 1, err  # one line
    for needle in needles:
        assert needle in err, err
    assert not (base / "adapters" / name).exists()


def test_error_missing_dir(base: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    expect_error(capsys, tmp_path / "nope", base, "nope", "not found")


def test_error_missing_config(base: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    src = _pt(tmp_path, base)
    (src / "config.json").unlink()
    expect_error(capsys, src, base, "config.json", "not found")


def test_error_missing_weights(base: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    src = _pt(tmp_path, base)
    (src / "pytorch_model.bin").unlink()
    expect_error(capsys, src, base, str(src), "no weights found")


@pytest.mark.parametrize("value", [None, 0, "8", "DEL"])
def test_error_pre_seq_len(base: Path, tmp_path: Path, capsys, value: object) -> None:  # noqa: ANN001
    src = _pt(tmp_path, base, pre_seq_len=value)
    expect_error(capsys, src, base, "config.json", "'pre_seq_len'", "not a P-Tuning v2")


@pytest.mark.parametrize(("field", "value"), [("num_layers", 28), ("hidden_size", 4096)])
def test_error_size_mismatch_in_config(
    base: Path,
    tmp_path: Path,
    capsys,
    field: str,
    value: int,  # noqa: ANN001
) -> None:
    src = _pt(tmp_path, base, **{field: value})
    expect_error(capsys, src, base, "config.json", f"'{field}'", str(value), "base model has")


def test_error_tensor_shape_mismatch(base: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    # Sizes not in config.json, tensors for another model: the shape check names the tensor.
    other = small_config(num_layers=2)
    src = write_ptuning_checkpoint(tmp_path / "pt", other, P, False, 0)
    conf = json.loads((src / "config.json").read_text())
    del conf["num_layers"]
    (src / "config.json").write_text(json.dumps(conf))
    expect_error(capsys, src, base, "pytorch_model.bin", "embedding.weight", "[5, 256]", "[5, 384]")


def test_error_projection_flag_disagrees(base: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    cfg = ChatGLMConfig.from_json(base)
    src = write_ptuning_checkpoint(tmp_path / "a", cfg, P, True, 0)
    conf = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**conf, "prefix_projection": False}))
    expect_error(capsys, src, base, "prefix_projection=false", "projection")
    src = write_ptuning_checkpoint(tmp_path / "b", cfg, P, False, 0)
    conf = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**conf, "prefix_projection": True}))
    expect_error(capsys, src, base, "embedding.weight", "prefix_projection=true")


def test_error_missing_projection_tensor(base: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    cfg = ChatGLMConfig.from_json(base)
    src = write_ptuning_checkpoint(tmp_path / "pt", cfg, P, True, 0)
    sd = torch.load(src / "pytorch_model.bin", weights_only=True)
    del sd["transformer.prefix_encoder.trans.2.bias"]
    torch.save(sd, src / "pytorch_model.bin")
    expect_error(capsys, src, base, "missing", "transformer.prefix_encoder.trans.2.bias")


def test_error_no_prefix_encoder(base: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    src = _pt(tmp_path, base)
    torch.save({"lm_head.weight": torch.zeros(2, 2)}, src / "pytorch_model.bin")
    expect_error(capsys, src, base, "no transformer.prefix_encoder.* tensors")


@pytest.mark.parametrize("name", ["", "a/b", ".", "..", "x" * 65, "naïve", "a b"])
def test_error_bad_name(base: Path, tmp_path: Path, capsys, name: str) -> None:  # noqa: ANN001
    code, err = add(capsys, _pt(tmp_path, base), base, name)
    assert code == 1 and "bad adapter name" in err and err.count("\n") == 1


def test_good_names(base: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    src = _pt(tmp_path, base)
    for name in ("A", "x" * 64, "my_adapter-v1.2", ".hidden"):
        assert add(capsys, src, base, name)[0] == 0


def test_error_base_not_converted(base: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    src = _pt(tmp_path, base)
    hub = base.parent / "hub"
    expect_error(capsys, src, hub, "glmserve_format", "converted checkpoint")
    expect_error(capsys, src, tmp_path / "missing", "config.json not found")


def test_error_ptuning_dir_given_as_src(base: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    src = _pt(tmp_path, base)
    conf = json.loads((src / "config.json").read_text())
    code, err = run_convert(capsys, "--src", str(src), "--out", str(tmp_path / "o"))
    assert code == 1 and "P-Tuning v2 prefix encoder tensor" in err and "--ptuning" in err
    assert conf["pre_seq_len"] == P


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--ptuning", "x"], "--ptuning needs --base OUT and --adapter-name NAME"),
        (["--ptuning", "x", "--base", "b"], "--adapter-name"),
        (["--ptuning", "x", "--base", "b", "--adapter-name", "n", "--lora", "l"], "--lora"),
        (["--ptuning", "x", "--base", "b", "--adapter-name", "n", "--int8"], "--int8"),
        (["--src", "x", "--out", "o", "--adapter-name", "n"], "--adapter-name"),
        (["--src", "x", "--out", "o", "--force"], "--force cannot be used with --src"),
        (["--src", "x"], "--src needs --out"),
        (["--src", "x", "--ptuning", "y"], "not allowed with"),
        ([], "one of the arguments --src --ptuning is required"),
    ],
)
def test_cli_usage_errors(capsys, argv: list[str], needle: str) -> None:  # noqa: ANN001
    code, err = run_convert(capsys, *argv)
    assert code == 2 and needle in err and err.count("\n") == 1, err


# ------------------------------------------------------------ reading adapters
def _adapter(base: Path, tmp_path: Path, capsys, name: str) -> Path:  # noqa: ANN001
    assert add(capsys, _pt(tmp_path, base), base, name)[0] == 0
    return base / "adapters" / name


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("glmserve_adapter_format", 2, "only format 1 is known"),
        ("type", "lora", "field 'type' is 'lora'"),
        ("pre_seq_len", 0, "'pre_seq_len' must be an integer > 0"),
        ("hidden_size", 128, "field 'hidden_size' is 128 but the base model has 64"),
        ("num_attention_heads", 8, "'num_attention_heads' is 8"),
    ],
)
def test_read_errors_adapter_json(
    base: Path,
    tmp_path: Path,
    capsys,
    field: str,
    value: object,
    needle: str,  # noqa: ANN001
) -> None:
    d = _adapter(base, tmp_path, capsys, "r" + field)
    meta = json.loads((d / "adapter.json").read_text())
    (d / "adapter.json").write_text(json.dumps({**meta, field: value}))
    with pytest.raises(AdapterError, match="adapter.json") as e:
        load_prefix(base, "r" + field, ChatGLMConfig.from_json(base))
    assert needle in str(e.value)


def test_read_errors_tensors(base: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    d = _adapter(base, tmp_path, capsys, "t")
    f = d / "prefix.safetensors"
    good = {"prefix.key": torch.zeros(3, P, 64), "prefix.value": torch.zeros(3, P, 64)}
    cases = [
        ({**good, "prefix.key": torch.zeros(3, P, 64, dtype=torch.float16)}, "expected float32"),
        ({**good, "prefix.value": torch.zeros(3, P + 1, 64)}, "[3, 6, 64], expected [3, 5, 64]"),
        ({"prefix.key": good["prefix.key"]}, "'prefix.value' is missing"),
    ]
    for tensors, needle in cases:
        save_file(tensors, str(f))
        with pytest.raises(AdapterError, match="prefix.safetensors") as e:
            load_prefix(base, "t")
        assert needle in str(e.value)
    f.unlink()
    with pytest.raises(AdapterError, match="prefix.safetensors: not found"):
        load_prefix(base, "t")


def test_read_unknown_adapter(base: Path) -> None:
    with pytest.raises(AdapterError, match="no adapter 'nope'.*known:"):
        load_prefix(base, "nope")
    with pytest.raises(AdapterError, match="bad adapter name"):
        load_prefix(base, "../out")


def test_prefix_kv_shapes() -> None:
    with pytest.raises(AdapterError, match="num_layers, pre_seq_len, hidden"):
        PrefixKV(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5))


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (Path.touch, (self.marker,))


def test_pickled_callables_are_refused(base: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    # P-Tuning and LoRA .bin files are loaded with weights_only=True, like hub shards.
    marker = tmp_path / "PWNED"
    src = _pt(tmp_path, base)
    torch.save(
        {"transformer.prefix_encoder.embedding.weight": _Payload(marker)}, src / "pytorch_model.bin"
    )
    expect_error(capsys, src, base, "weights_only=True")
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8})
    )
    name = "base_model.model.transformer.layers.0.attention.dense.lora_A.weight"
    torch.save({name: _Payload(marker)}, lora / "adapter_model.bin")
    code, err = run_convert(
        capsys, "--src", str(base.parent / "hub"), "--out", str(tmp_path / "o"), "--lora", str(lora)
    )
    assert code == 1 and "weights_only=True" in err, err
    assert not marker.exists(), "code from a pickle was executed"
