"""glmserve.http_checks: the answer checks of scripts/gpu.sh's serving tasks."""

from __future__ import annotations

import json

from glmserve import http_checks as hc

CONFIG = {"gmask_token_id": 130001, "bos_token_id": 130004}


def _sse(*events: dict) -> str:
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events)


def test_prompt_ids_end_with_gmask_and_sop():
    assert hc.prompt_ids(CONFIG) == list(range(100, 116)) + [130001, 130004]
    assert hc.prompt_ids(CONFIG, first=5, count=3) == [5, 6, 7, 130001, 130004]


def test_sse_events_reads_only_data_lines():
    text = ": comment\n" + _sse({"a": 1}, {"a": 2}) + "event: x\n"
    assert hc.sse_events(text) == [{"a": 1}, {"a": 2}]


def test_compare_ids_accepts_scalars_and_counts():
    gen = {"output_ids": [4, 5, 6]}
    events = hc.sse_events(_sse({"output_ids": 4}, {"output_ids": [5, 6]}))
    ok, msg = hc.compare_ids(gen, events, expect=3)
    assert ok, msg
    assert "generate returned 3 ids; generate_stream 2 events, 3 ids; same ids: True" in msg
    assert not hc.compare_ids(gen, events, expect=32)[0]
    assert not hc.compare_ids({"output_ids": [4, 5, 7]}, events)[0]


def test_compare_text():
    events = [{"text_output": "你"}, {"text_output": "好"}]
    assert hc.compare_text(events, {"text_output": "你好"}) == (
        True,
        "streamed pieces: 2 | concatenation == /generate text: True",
    )
    assert not hc.compare_text(events, {"text_output": "你"})[0]
    assert not hc.compare_text([], {"text_output": ""})[0]  # no pieces at all fails


def test_cli(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(CONFIG))
    assert hc.main(["prompt-ids", str(cfg), "--count", "2"]) == 0
    assert json.loads(capsys.readouterr().out) == [100, 101, 130001, 130004]

    gen, stream = tmp_path / "generate.json", tmp_path / "stream.txt"
    gen.write_text(json.dumps({"output_ids": [1, 2], "text_output": "ab"}))
    stream.write_text(
        _sse({"output_ids": 1, "text_output": "a"}, {"output_ids": 2, "text_output": "b"})
    )
    assert hc.main(["same-ids", str(gen), str(stream), "--expect", "2", "--label", "x"]) == 0
    assert capsys.readouterr().out.startswith("x: generate returned 2 ids")
    assert hc.main(["same-ids", str(gen), str(stream), "--expect", "3"]) == 1
    assert hc.main(["same-text", str(stream), str(gen)]) == 0
