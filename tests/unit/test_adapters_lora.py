"""peft LoRA adapters merged by the converter, full fine-tunes, and every bad LoRA input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.adapters_util import run_convert, small_config, write_small_hub
from helpers.torch_threads import one_thread
from safetensors.torch import load_file, save_file

from glmserve.adapter_fixtures import (
    LORA_TARGETS,
    random_lora,
    write_full_finetune,
    write_lora_adapter,
)
from glmserve.config import ChatGLMConfig
from glmserve.convert import quantize_int8
from glmserve.reference import ChatGLMModel, chunked_logits, generate
from glmserve.tiny import make_tiny


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small hub-style model (3 layers, hidden 64, inner 96: every linear has its own shape)."""
    return write_small_hub(tmp_path_factory.mktemp("lora") / "hub", seed=11)


def convert_lora(capsys, hub: Path, lora: Path, out: Path, *extra: str) -> Path:  # noqa: ANN001
    code, err = run_convert(
        capsys, "--src", str(hub), "--out", str(out), "--lora", str(lora), *extra
    )
    assert code == 0, err
    return out


def numpy_merge(hub: Path, lora: Path) -> dict[str, np.ndarray]:
    """W + B @ A * (lora_alpha / r) in float64 numpy, per adapted weight (hub names)."""
    conf = json.loads((lora / "adapter_config.json").read_text())
    scale = conf["lora_alpha"] / (math.sqrt(conf["r"]) if conf.get("use_rslora") else conf["r"])
    base = {k: v.double().numpy() for k, v in load_file(str(hub / "model.safetensors")).items()}
    f = lora / "adapter_model.safetensors"
    ad = load_file(str(f)) if f.is_file() else torch.load(lora / "adapter_model.bin")
    merged = {}
    for name, a in ad.items():
        if ".lora_A." not in name:
            continue
        module = name.removeprefix("base_model.model.").split(".lora_A.")[0]
        b = ad[name.replace(".lora_A.", ".lora_B.")].double().numpy()
        merged[module + ".weight"] = base[module + ".weight"] + (b @ a.double().numpy()) * scale
    return merged


# -------------------------------------------------------------------- merging
@pytest.mark.parametrize("targets", [(t,) for t in LORA_TARGETS] + [tuple(LORA_TARGETS)])
def test_merge_equals_numpy(hub: Path, tmp_path: Path, capsys, targets: tuple[str, ...]) -> None:  # noqa: ANN001
    cfg = ChatGLMConfig.from_json(hub)
    lora = write_lora_adapter(tmp_path / "lora", cfg, r=4, lora_alpha=12, targets=targets, seed=3)
    out = convert_lora(capsys, hub, lora, tmp_path / "out", "--dtype", "fp32")
    got = load_file(str(out / "model.safetensors"))
    base = load_file(str(hub / "model.safetensors"))
    want = numpy_merge(hub, lora)
    assert len(want) == cfg.num_layers * len(targets)
    for name, w in want.items():
        assert np.allclose(got[name].numpy(), w, atol=1e-6, rtol=0), name
        assert not torch.equal(got[name], base[name])
    for name in base.keys() - want.keys():  # everything else untouched
        assert torch.equal(got[name], base[name]), name


def test_merge_fp16_old_peft_bin_and_rslora(hub: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    cfg = ChatGLMConfig.from_json(hub)
    old = write_lora_adapter(tmp_path / "old", cfg, r=8, lora_alpha=32, seed=4, old_peft=True)
    assert (old / "adapter_model.bin").is_file() and "enable_lora" in (
        old / "adapter_config.json"
    ).read_text()
    got = load_file(
        str(
            convert_lora(capsys, hub, old, tmp_path / "o1", "--dtype", "fp16") / "model.safetensors"
        )
    )
    for name, w in numpy_merge(hub, old).items():  # merged in fp32, then cast once
        assert got[name].dtype == torch.float16
        assert np.allclose(got[name].float().numpy(), w.astype(np.float16), atol=0, rtol=1e-3)
    rs = write_lora_adapter(tmp_path / "rs", cfg, r=4, lora_alpha=8, seed=5, use_rslora=True)
    got = load_file(str(convert_lora(capsys, hub, rs, tmp_path / "o2") / "model.safetensors"))
    for name, w in numpy_merge(hub, rs).items():  # scale = alpha / sqrt(r)
        assert np.allclose(got[name].numpy(), w, atol=1e-6, rtol=0)


def test_int8_quantizes_the_merged_weight(hub: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    cfg = ChatGLMConfig.from_json(hub)
    lora = write_lora_adapter(tmp_path / "l", cfg, targets=tuple(LORA_TARGETS), seed=6)
    got = load_file(
        str(convert_lora(capsys, hub, lora, tmp_path / "o", "--int8") / "model.safetensors")
    )
    ad, base = (
        load_file(str(lora / "adapter_model.safetensors")),
        load_file(str(hub / "model.safetensors")),
    )
    for i in range(cfg.num_layers):
        for module in LORA_TARGETS.values():
            name = f"transformer.layers.{i}.{module}.weight"
            p = f"base_model.model.transformer.layers.{i}.{module}."
            merged = base[name].float() + (ad[p + "lora_B.weight"] @ ad[p + "lora_A.weight"]) * 2.0
            q, scale = quantize_int8(merged)
            assert torch.equal(got[name], q) and torch.equal(got[name + "_scale"], scale)


def test_rank_pattern_allows_per_module_rank(hub: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    cfg = ChatGLMConfig.from_json(hub)
    lora = write_lora_adapter(
        tmp_path / "l",
        cfg,
        r=4,
        lora_alpha=8,
        seed=7,
        rank_pattern={"layers.1.attention.query_key_value": 2},
    )
    sd = load_file(str(lora / "adapter_model.safetensors"))
    p = "base_model.model.transformer.layers.1.attention.query_key_value."
    sd.update({k: v for k, v in random_lora(cfg, 2, seed=8, layers=[1]).items() if k.startswith(p)})
    save_file(sd, str(lora / "adapter_model.safetensors"))
    got = load_file(str(convert_lora(capsys, hub, lora, tmp_path / "o") / "model.safetensors"))
    name = "transformer.layers.1.attention.query_key_value.weight"
    want = load_file(str(hub / "model.safetensors"))[name] + (
        sd[p + "lora_B.weight"] @ sd[p + "lora_A.weight"]
    ) * (8 / 2)
    assert torch.allclose(got[name], want, atol=1e-6)


def test_lora_changes_greedy_ids_as_a_scratch_merge_does(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    tiny = make_tiny(tmp_path / "tiny")  # the demo model, hub copy in tiny/hub
    cfg = ChatGLMConfig.from_json(tiny)
    lora = write_lora_adapter(
        tmp_path / "l", cfg, r=8, lora_alpha=16, targets=tuple(LORA_TARGETS), seed=1
    )
    merged = ChatGLMModel.from_pretrained(convert_lora(capsys, tiny / "hub", lora, tmp_path / "m"))
    base = ChatGLMModel.from_pretrained(tiny)
    scratch = {**base.w}
    scratch.update(
        {k: torch.from_numpy(v).float() for k, v in numpy_merge(tiny / "hub", lora).items()}
    )
    by_hand = ChatGLMModel(cfg, scratch, torch.float32, "cpu")
    g, b = cfg.gmask_token_id, cfg.bos_token_id
    prompts = [[20, 31, 42, g, b], [7, 8, 9, 10, 11, g, b]]
    ids = generate(merged, prompts, 12)
    assert ids != generate(base, prompts, 12)
    assert ids == generate(by_hand, prompts, 12)


# ------------------------------------------------------------- full fine-tune
def test_full_finetune_is_the_base_conversion_path(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    tiny = make_tiny(tmp_path / "tiny")
    ft = write_full_finetune(tmp_path / "ft", tiny / "hub", seed=3, std=0.5)
    assert (ft / "pytorch_model.bin.index.json").is_file()
    assert json.loads((ft / "config.json").read_text())["pre_seq_len"] is None
    code, err = run_convert(capsys, "--src", str(ft), "--out", str(tmp_path / "out"))
    assert code == 0, err
    out = tmp_path / "out"
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"
    got = load_file(str(out / "model.safetensors"))
    src = {}
    for f in sorted(ft.glob("pytorch_model-*.bin")):
        src.update(torch.load(f, weights_only=True))
    assert got.keys() == src.keys() and all(torch.equal(got[k], src[k]) for k in src)
    assert (out / "ice_text.model").is_file() and (out / "token_bytes.bin").is_file()
    a, b = ChatGLMModel.from_pretrained(ft), ChatGLMModel.from_pretrained(out)
    cfg = a.cfg
    p = [20, 31, 42, cfg.gmask_token_id, cfg.bos_token_id]
    assert torch.equal(chunked_logits(a, [p, [5, 6]]), chunked_logits(b, [p, [5, 6]]))
    assert generate(b, [p], 10) != generate(ChatGLMModel.from_pretrained(tiny), [p], 10)


# ------------------------------------------------------------------ bad input
def _lora(tmp_path: Path, hub: Path, **config: object) -> Path:
    return write_lora_adapter(tmp_path / "l", ChatGLMConfig.from_json(hub), seed=0, **config)


def expect_error(capsys, hub: Path, lora: Path, out: Path, *needles: str) -> None:  # noqa: ANN001
    code, err = run_convert(capsys, "--src", str(hub), "--out", str(out), "--lora", str(lora))
    assert code == 1 and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    assert not out.exists() or not (out / "config.json").exists()
    assert not (out / "model.safetensors").exists()


@pytest.mark.parametrize(
    ("config", "needles"),
    [
        ({"peft_type": "PREFIX_TUNING"}, ["'peft_type' is 'PREFIX_TUNING'", "--ptuning"]),
        ({"r": 0}, ["field 'r' must be an integer > 0"]),
        ({"lora_alpha": "8"}, ["'lora_alpha' must be a number"]),
        ({"bias": "all"}, ["'bias' = 'all' is not supported", "full fine-tune"]),
        ({"use_dora": True}, ["'use_dora' = True"]),
        ({"modules_to_save": ["lm_head"]}, ["'modules_to_save'"]),
        ({"alpha_pattern": {"dense": 4}}, ["'alpha_pattern'"]),
        ({"fan_in_fan_out": True}, ["'fan_in_fan_out'"]),
        ({"enable_lora": [True, False, True]}, ["'enable_lora'"]),
        ({"use_rslora": "yes"}, ["'use_rslora' must be true or false"]),
    ],
)
def test_error_config(hub: Path, tmp_path: Path, capsys, config: dict, needles: list[str]) -> None:  # noqa: ANN001
    lora = _lora(tmp_path, hub)
    conf = json.loads((lora / "adapter_config.json").read_text())
    (lora / "adapter_config.json").write_text(json.dumps({**conf, **config}))
    expect_error(capsys, hub, lora, tmp_path / "out", "adapter_config.json", *needles)


def test_error_missing_files(hub: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    expect_error(capsys, hub, tmp_path / "nope", tmp_path / "out", "nope", "not found")
    lora = _lora(tmp_path, hub)
    (lora / "adapter_model.safetensors").unlink()
    expect_error(
        capsys, hub, lora, tmp_path / "out", "adapter_model.safetensors or adapter_model.bin"
    )
    (lora / "adapter_config.json").unlink()
    expect_error(capsys, hub, lora, tmp_path / "out", "adapter_config.json", "not found")


def test_error_adapter_for_another_model_size(hub: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    other = small_config(hidden_size=128)
    lora = write_lora_adapter(tmp_path / "l", other, seed=0)
    expect_error(
        capsys,
        hub,
        lora,
        tmp_path / "out",
        "adapter_model.safetensors",
        "query_key_value",
        "[4, 128]",
        "[192, 64]",
    )
    deeper = write_lora_adapter(tmp_path / "d", small_config(num_layers=5), seed=0)
    expect_error(capsys, hub, deeper, tmp_path / "out", "layer 3", "num_layers 3")


def _edit_weights(lora: Path, edit) -> None:  # noqa: ANN001
    f = lora / "adapter_model.safetensors"
    sd = load_file(str(f))
    edit(sd)
    save_file(sd, str(f))


def test_error_tensors(hub: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    p = "base_model.model.transformer.layers.0.attention.query_key_value."
    cases = [
        (lambda sd: sd.pop(p + "lora_B.weight"), [p + "lora_B.weight is missing"]),
        (
            lambda sd: sd.update({"base_model.model.lm_head.lora_A.weight": torch.zeros(4, 64)}),
            ["unexpected tensor 'base_model.model.lm_head.lora_A.weight'"],
        ),
        (
            lambda sd: sd.update(
                {"base_model.model.transformer.layers.0.mlp.gate.lora_A.weight": torch.zeros(4, 64)}
            ),
            ["adapts 'mlp.gate'", "query_key_value, dense, dense_h_to_4h, dense_4h_to_h"],
        ),
        (
            lambda sd: sd.update(
                {p + "lora_A.weight": torch.zeros(2, 64), p + "lora_B.weight": torch.zeros(192, 2)}
            ),
            ["rank 2 (lora_A rows) differs from field 'r' = 4"],
        ),
        (
            lambda sd: sd.update({p + "lora_A.weight": torch.zeros(4, 64, dtype=torch.int8)}),
            ["2-D float matrix"],
        ),
    ]
    for i, (edit, needles) in enumerate(cases):
        lora = write_lora_adapter(tmp_path / f"l{i}", ChatGLMConfig.from_json(hub), seed=0)
        _edit_weights(lora, edit)
        expect_error(capsys, hub, lora, tmp_path / f"out{i}", "adapter_model.safetensors", *needles)
