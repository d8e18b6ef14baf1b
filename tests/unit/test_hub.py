"""make model's script, offline: --source conversion, tokenizer check, fast failure without network."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
from helpers.torch_threads import one_thread

from glmserve.hub import HubError, main, sha256_of, verify_tokenizer
from glmserve.reference import ChatGLMModel, chunked_logits
from glmserve.tiny import write_hub


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def tiny_hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hub(tmp_path_factory.mktemp("hubsrc") / "hub")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_source_offline_converts(tiny_hub: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "model"
    assert main(["--out", str(out), "--source", str(tiny_hub), "--int8"]) == 0
    assert (out / "model.safetensors").is_file() and (out / "ice_text.model").is_file()
    assert not (out / "hub").exists()  # nothing downloaded
    a, b = ChatGLMModel.from_pretrained(tiny_hub), ChatGLMModel.from_pretrained(out)
    la = chunked_logits(a, [[5, 6, a.cfg.gmask_token_id, a.cfg.bos_token_id]])
    lb = chunked_logits(b, [[5, 6, b.cfg.gmask_token_id, b.cfg.bos_token_id]])
    assert float((la - lb).norm() / la.norm()) < 0.05  # int8 close to fp32
    assert "converted checkpoint" in capsys.readouterr().out


def test_tokenizer_sha256(tiny_hub: Path, tmp_path: Path, capsys) -> None:
    verify_tokenizer(tiny_hub, expected=sha256_of(tiny_hub / "ice_text.model"))
    with pytest.raises(HubError, match="does not match"):
        verify_tokenizer(tiny_hub)  # the tiny tokenizer is not THUDM's ice_text.model
    code = main(["--out", str(tmp_path / "o"), "--source", str(tiny_hub), "--verify-tokenizer"])
    err = capsys.readouterr().err
    assert code == 1 and "sha256" in err and err.count("\n") == 1
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_missing_source(tmp_path: Path, capsys) -> None:
    assert main(["--out", str(tmp_path / "o"), "--source", str(tmp_path / "none")]) == 1
    assert "not found" in capsys.readouterr().err


def test_no_network_fails_fast(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    t0 = time.monotonic()
    code = main(["--out", str(tmp_path / "model")])
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert code == 1
    assert elapsed < 20, elapsed
    assert err.startswith("hub: error: cannot reach http://127.0.0.1:") and err.count("\n") == 1
    assert "--source" in err
    assert not (tmp_path / "model" / "model.safetensors").exists()


def test_converted_equals_source_fp32(tiny_hub: Path, tmp_path: Path) -> None:
    out = tmp_path / "fp32"
    assert main(["--out", str(out), "--source", str(tiny_hub), "--dtype", "fp32"]) == 0
    a, b = ChatGLMModel.from_pretrained(tiny_hub), ChatGLMModel.from_pretrained(out)
    ids = [[7, a.cfg.gmask_token_id, a.cfg.bos_token_id]]
    assert torch.equal(chunked_logits(a, ids), chunked_logits(b, ids))


def test_download_flow_with_fake_hub(
    tiny_hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The download path end to end, with snapshot_download replaced by a local copy."""
    import shutil

    import huggingface_hub

    import glmserve.hub as hub

    calls = {}

    def fake_snapshot_download(repo_id: str, **kw) -> str:
        calls.update(kw, repo_id=repo_id)
        shutil.copytree(tiny_hub, kw["local_dir"], dirs_exist_ok=True)
        return kw["local_dir"]

    monkeypatch.setattr(hub, "probe", lambda url: None)
    monkeypatch.setattr(hub, "resolve_revision", lambda repo, rev: "8b7d335" + "0" * 33)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(hub, "TOKENIZER_SHA256", sha256_of(tiny_hub / "ice_text.model"))
    out = tmp_path / "model"
    assert hub.main(["--out", str(out)]) == 0
    assert calls["repo_id"] == "THUDM/chatglm-6b" and calls["revision"].startswith("8b7d335")
    assert calls["local_dir"] == str(out / "hub")
    assert (out / "model.safetensors").is_file() and (out / "hub" / "config.json").is_file()
    # a download whose tokenizer does not match is refused before conversion
    monkeypatch.setattr(hub, "TOKENIZER_SHA256", "0" * 64)
    assert hub.main(["--out", str(tmp_path / "bad")]) == 1
    assert not (tmp_path / "bad" / "model.safetensors").exists()
