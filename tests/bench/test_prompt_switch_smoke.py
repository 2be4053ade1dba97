"""``python -m bench.prompt_switch`` runs end to end and writes the JSON it promises (structure, not speed)."""

from __future__ import annotations

import json

from bench import prompt_switch


def test_each_switch_method_is_measured_and_only_recache_runs_extra_forwards(tmp_path, capsys):
    out = tmp_path / "prompt_switch.json"
    assert prompt_switch.main(["--tiny-size", "64", "--chunks", "4", "--steps", "2", "--no-wan", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {(r["switch"], r["mode"]): r for r in report["results"]}
    assert set(rows) == {("blend", "batch"), ("blend", "sequential"), ("recache", "batch"), ("recache", "sequential")}
    assert all(r["recache_forwards"] == 0 and r["recaches"] == 0 for k, r in rows.items() if k[0] == "blend")
    assert all(r["recache_forwards"] > 0 and r["recaches"] == 1 for k, r in rows.items() if k[0] == "recache")
    assert all(r["switch_ms"] > 0 and r["chunk_ms_p50"] > 0 for r in rows.values())
    assert f"wrote {out}" in capsys.readouterr().out
