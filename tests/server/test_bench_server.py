"""``python -m bench.server`` runs end to end (briefly) and writes its JSON report."""

from __future__ import annotations

import json

from bench.server import main


def test_bench_measures_glass_to_glass_latency_through_a_real_server(tmp_path, capsys):
    out = tmp_path / "server.json"
    assert main(["--models", "identity", "--clients", "1", "--duration", "1", "--warmup", "0.5", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    (result,) = report["results"]
    assert result["model"] == "identity" and result["latency_method"] == "marker"
    assert result["latency_samples"] > 0 and result["latency_ms_p50"] is not None and result["ttff_ms_client_max"] is not None
    # the output timestamp identifies the input frame exactly as the marker does (less than half a frame apart)
    assert result["marker_vs_pts_ms"] is not None and result["marker_vs_pts_ms"] < 1000 / 30 / 2
    assert "g2g p50 ms" in capsys.readouterr().out
