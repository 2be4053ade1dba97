"""``python -m bench.scaling`` runs: the projection for both VAE placements, and a small measured run over 2 CPU ranks."""

from __future__ import annotations

import json

from bench import scaling


def test_scaling_measures_two_cpu_ranks_with_equal_frames_and_projects(tmp_path, capsys) -> None:
    out = tmp_path / "scaling.json"
    assert scaling.main(["--layers", "2", "--size", "64", "--frames", "21", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    measured = report["measured"]
    assert [row["ranks"] for row in measured] == [1, 2]
    assert measured[1]["equal"] is True and measured[1]["split"] == [0, 1, 2]
    assert sum(measured[1]["rank_params"]) == measured[0]["rank_params"][0]  # every weight held once, nowhere twice
    placements = {(r["model"], r["vae"], r["stages"]) for r in report["projected"]}
    assert ("wan-14b", "rank0-vae", 4) in placements and ("wan-1.3b", "decode-last", 8) in placements
    assert "projected" in capsys.readouterr().out
