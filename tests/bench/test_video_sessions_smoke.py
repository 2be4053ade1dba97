"""``python -m bench.video_sessions`` runs end to end and writes the JSON it promises (structure, not speed)."""

from __future__ import annotations

import json

from bench import video_sessions


def test_two_sessions_run_batched_and_one_by_one(tmp_path, capsys):
    out = tmp_path / "video_sessions.json"
    argv = ["--models", "tiny-video", "--modes", "mixed", "--sessions", "2", "--chunks", "1", "--warmup", "1",
            "--repeats", "1", "--out", str(out)]
    assert video_sessions.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "video_sessions" and report["machine"]["torch_threads"] >= 1
    batched, alone = report["results"]
    assert (batched["way"], alone["way"]) == ("batched", "one by one")
    assert batched["frames_timed"] == alone["frames_timed"] > 0  # the same chunks come out either way
    assert batched["dit_calls"] < alone["dit_calls"] and batched["vae_calls"] < alone["vae_calls"]
    assert batched["rows"] > alone["rows"]
    assert batched["speedup"] > 0 and "speedup" not in alone
    assert f"wrote {out}" in capsys.readouterr().out
