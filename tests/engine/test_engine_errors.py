"""Clear errors: bad requests name the field and its range; bad checkpoints
(config.json, model.safetensors) name the file, the tensor and what was expected."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
from helpers.engine_util import BOS, GMASK, MASK, engine_module, write_checkpoint


@pytest.fixture(scope="module")
def _engine():
    return engine_module()


@pytest.fixture(scope="module")
def eng(_engine, tmp_path_factory):
    return _engine.Engine(str(write_checkpoint(tmp_path_factory.mktemp("ok"))), num_threads=1)


GOOD = [5, 6, GMASK, BOS]


@pytest.mark.parametrize(
    "ids,kwargs,message",
    [
        ([], {}, "input_ids is empty"),
        ([5, 64, GMASK, BOS], {}, r"input_ids\[1\] = 64 is out of the vocabulary \[0, 64\)"),
        ([-1, GMASK, BOS], {}, r"input_ids\[0\] = -1"),
        ([5, 6, GMASK], {}, "must end with <sop>"),
        ([5, 6, BOS], {}, r"\[gMASK\].*\[MASK\]"),
        (GOOD, {"max_tokens": 0}, r"max_tokens must be in \[1, 256\], got 0"),
        (
            GOOD,
            {"max_tokens": 253},
            "prompt length 4 \\+ max_tokens 253 exceeds .* max_sequence_length 256",
        ),
        (GOOD, {"temperature": -0.5}, "temperature must be a finite number >= 0"),
        (GOOD, {"temperature": math.nan}, "temperature"),
        (GOOD, {"temperature": math.inf}, "temperature"),
        (GOOD, {"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        (GOOD, {"top_p": 1.5}, "top_p"),
        (GOOD, {"top_k": -1}, "top_k must be >= 0"),
        (GOOD, {"repetition_penalty": 0.0}, "repetition_penalty must be a finite number > 0"),
    ],
)
def test_bad_requests(_engine, eng, ids, kwargs, message):
    with pytest.raises(_engine.EngineError, match=message):
        eng.submit(7, ids, None, **kwargs)
    assert eng.stats()["waiting"] == 0


def test_mask_instead_of_gmask_and_longest_request_accepted(eng):
    eng.submit(1, [5, MASK, BOS], None, max_tokens=2)
    eng.submit(2, GOOD, None, max_tokens=252)  # 4 + 252 = 256 = max_sequence_length
    eng.cancel(2)
    while eng.step():
        pass
    assert eng.stats()["kv_blocks_used"] == 0


def test_engine_error_is_a_value_error(_engine):
    assert issubclass(_engine.EngineError, ValueError)


# ------------------------------------------------------------------ options
@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"device": "tpu"}, 'device must be "cpu" or "cuda"'),
        ({"dtype": "fp16"}, 'dtype "fp16" is not supported on device cpu'),
        ({"block_size": 0}, r"block_size must be in \[1, 1024\]"),
        ({"num_kv_blocks": -1}, "num_kv_blocks must be >= 0"),
        ({"max_running_seqs": 0}, "max_running_seqs must be >= 1"),
        ({"max_queue": -2}, "max_queue"),
        ({"kv_cache_bytes": 10}, "less than one KV block"),
    ],
)
def test_bad_options(_engine, tmp_path, kwargs, message):
    d = write_checkpoint(tmp_path / "c")
    with pytest.raises(_engine.EngineError, match=message):
        _engine.Engine(str(d), num_threads=1, **kwargs)


def test_cuda_device_without_a_cuda_build_or_gpu(_engine, tmp_path):
    d = write_checkpoint(tmp_path / "c")
    try:
        _engine.Engine(str(d), device="cuda", dtype="fp16")
    except (ValueError, RuntimeError) as e:
        assert "cuda" in str(e).lower() or "gpu" in str(e).lower()
    else:
        pytest.skip("this build has CUDA and a GPU is present: nothing to refuse")


# ------------------------------------------------------------------ config.json
def edit_config(d, **fields):
    cfg = json.loads((d / "config.json").read_text())
    for k, v in fields.items():
        if v is None:
            cfg.pop(k)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"hidden_size": None}, r'"hidden_size" is missing'),
        ({"num_attention_heads": 5}, "must be divisible by num_attention_heads"),
        ({"vocab_size": "64"}, r'"vocab_size" must be an integer'),
        ({"num_layers": 0}, r'"num_layers" must be in \[1, '),
        ({"layernorm_epsilon": -1}, "layernorm_epsilon"),
        ({"eos_token_id": 64}, r'"eos_token_id" must be in \[0, 63\], got 64'),
        ({"position_encoding_2d": False}, "position_encoding_2d"),
        ({"quantization": {"int8": "yes"}}, "quantization.int8"),
    ],
)
def test_bad_config(_engine, tmp_path, fields, message):
    d = write_checkpoint(tmp_path / "c")
    edit_config(d, **fields)
    with pytest.raises(_engine.EngineError, match=message) as e:
        _engine.Engine(str(d), num_threads=1)
    assert "config.json" in str(e.value)


def test_config_not_json_or_missing(_engine, tmp_path):
    d = write_checkpoint(tmp_path / "c")
    (d / "config.json").write_text('{"vocab_size": 64,')
    with pytest.raises(_engine.EngineError, match=r"config.json: not valid JSON.*line 1"):
        _engine.Engine(str(d))
    (d / "config.json").unlink()
    with pytest.raises(_engine.EngineError, match="config.json: cannot open"):
        _engine.Engine(str(d))


# ------------------------------------------------------------------ model.safetensors
def read_st(path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_st(path, header, data):
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def test_truncated_file(_engine, tmp_path):
    d = write_checkpoint(tmp_path / "c")
    st = d / "model.safetensors"
    raw = st.read_bytes()
    st.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(_engine.EngineError, match=r"model.safetensors: tensor .*data ends at byte"):
        _engine.Engine(str(d))
    st.write_bytes(raw[:5])
    with pytest.raises(_engine.EngineError, match="truncated safetensors file"):
        _engine.Engine(str(d))


def test_corrupt_header(_engine, tmp_path):
    d = write_checkpoint(tmp_path / "c")
    st = d / "model.safetensors"
    raw = bytearray(st.read_bytes())
    bad = bytearray(raw)
    bad[8:12] = b"}}}}"
    st.write_bytes(bytes(bad))
    with pytest.raises(_engine.EngineError, match="corrupt safetensors header"):
        _engine.Engine(str(d))
    bad = bytearray(raw)
    bad[0:8] = struct.pack("<Q", 1 << 40)
    st.write_bytes(bytes(bad))
    with pytest.raises(_engine.EngineError, match="header length .* exceeds the file size"):
        _engine.Engine(str(d))
    st.write_bytes(b"\0" * 64)  # header length 0: empty JSON
    with pytest.raises(_engine.EngineError, match="model.safetensors"):
        _engine.Engine(str(d))


def test_inconsistent_offsets(_engine, tmp_path):
    d = write_checkpoint(tmp_path / "c")
    st = d / "model.safetensors"
    header, data = read_st(st)
    name = "transformer.final_layernorm.bias"
    b, e = header[name]["data_offsets"]
    header[name]["data_offsets"] = [b, e - 4]
    write_st(st, header, data)
    with pytest.raises(_engine.EngineError, match=f'tensor "{name}": data_offsets .* needs 128'):
        _engine.Engine(str(d))


def test_missing_tensor(_engine, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = write_checkpoint(tmp_path / "c")
    t = load_file(str(d / "model.safetensors"))
    del t["transformer.layers.1.mlp.dense_4h_to_h.bias"]
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(
        _engine.EngineError, match=r'missing tensor "transformer.layers.1.mlp.dense_4h_to_h.bias"'
    ):
        _engine.Engine(str(d))


def test_config_and_weights_disagree(_engine, tmp_path):
    d = write_checkpoint(tmp_path / "c")
    edit_config(d, inner_hidden_size=128)
    with pytest.raises(
        _engine.EngineError,
        match=r'"transformer.layers.0.mlp.dense_h_to_4h.weight" has shape \[64, 32\], expected \[128, 32\]',
    ):
        _engine.Engine(str(d))
    d2 = write_checkpoint(tmp_path / "c2", num_layers=3)
    edit_config(d2, num_layers=2)
    with pytest.raises(_engine.EngineError, match='unexpected tensor "transformer.layers.2.'):
        _engine.Engine(str(d2))


def test_wrong_dtypes(_engine, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = write_checkpoint(tmp_path / "c")
    t = load_file(str(d / "model.safetensors"))
    t["lm_head.weight"] = t["lm_head.weight"].astype(np.float16)
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(_engine.EngineError, match="one float dtype per file"):
        _engine.Engine(str(d))
    t["lm_head.weight"] = t["lm_head.weight"].astype(np.float64)
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(_engine.EngineError, match="unsupported dtype F64"):
        _engine.Engine(str(d))


def test_int8_layout_checked(_engine, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = write_checkpoint(tmp_path / "c", int8=True)
    t = load_file(str(d / "model.safetensors"))
    del t["transformer.layers.0.attention.dense.weight_scale"]
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(_engine.EngineError, match=r"missing tensor .*dense.weight_scale"):
        _engine.Engine(str(d))
    d2 = write_checkpoint(tmp_path / "c2", int8=True)
    edit_config(d2, quantization=None)
    with pytest.raises(_engine.EngineError, match="is I8 but config.json has no quantization"):
        _engine.Engine(str(d2))
    d3 = write_checkpoint(tmp_path / "c3")
    edit_config(d3, quantization={"int8": True, "lm_head": False})
    with pytest.raises(_engine.EngineError, match="expected I8"):
        _engine.Engine(str(d3))


def test_debug_forward_errors(_engine, eng):
    with pytest.raises(_engine.EngineError, match="non-empty"):
        eng.debug_forward([])
    with pytest.raises(_engine.EngineError, match="out of the vocabulary"):
        eng.debug_forward([[5, GMASK, 99]])
    with pytest.raises(_engine.EngineError, match=r"\[gMASK\] or \[MASK\]"):
        eng.debug_forward([[5, 6, BOS]])


def test_generate_names_the_prompt(_engine, eng):
    with pytest.raises(_engine.EngineError, match=r"^generate: prompt 0: top_k must be >= 0"):
        eng.generate([GOOD, GOOD], max_tokens=2, top_k=-3)
    with pytest.raises(
        _engine.EngineError, match=r"^generate: prompt 1: input_ids must end with <sop>"
    ):
        eng.generate([GOOD, [5, GMASK]], max_tokens=2)
    assert eng.stats()["kv_blocks_used"] == 0 and eng.stats()["running"] == 0
