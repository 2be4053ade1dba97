"""``python -m bench.soak`` runs end to end on loopback and writes the JSON it promises (structure, not endurance)."""

from __future__ import annotations

import json

from bench import soak


def test_two_identity_sessions_come_steer_leave_and_vanish(tmp_path, capsys):
    out = tmp_path / "soak.json"
    argv = ["--model", "identity", "--sessions", "2", "--minutes", "0.1", "--warmup", "1", "--lifetime", "2,3",
            "--peer-timeout", "1.5", "--sample-every", "2", "--settle", "1", "--control-every", "0.7", "--out", str(out)]
    assert soak.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "soak" and report["settings"]["sessions"] == 2
    result = report["results"][0]
    assert result["connections"] >= 2 and result["vanished"] >= 1  # slot 0's first connection always vanishes
    assert result["reaped"] == result["vanished"] and result["unreaped"] == 0
    assert result["reap_s_max"] < 1.5 + 3.0
    assert result["client_errors"] == 0 and result["server_log_errors"] == 0, (result["errors"], result["server_log_error_lines"])
    assert result["acks_failed"] == 0
    assert result["timeline"] and all(k in result["timeline"][0] for k in ("rss_mib", "fds", "threads", "sessions"))
    assert result["rss_mib_end_idle"] > 0 and result["fds_end_idle"] > 0 and result["threads_end_idle"] > 0
    assert isinstance(result["memory_returned"], bool)
    assert f"wrote {out}" in capsys.readouterr().out


def test_adversarial_mode_runs_both_phases_and_counts_what_the_adversaries_got(tmp_path, capsys):
    out = tmp_path / "soak.json"
    argv = ["--model", "identity", "--sessions", "1", "--minutes", "0.15", "--warmup", "1", "--lifetime", "3,4", "--vanish", "0",
            "--peer-timeout", "1.5", "--sample-every", "3", "--settle", "1", "--control-every", "1", "--adversarial", "--out", str(out)]
    assert soak.main(argv) == 0
    alone, beside = json.loads(out.read_text())["results"]
    assert (alone["adversarial"], beside["adversarial"]) == (False, True) and not alone["adversaries"]
    hostile = beside["adversaries"]
    assert any(k.startswith("bare offer:") for k in hostile) and any(k.startswith("slow reader:") for k in hostile)
    assert any(k.startswith("key churn:") for k in hostile) and any(k.startswith("thin ") for k in hostile)
    for phase in (alone, beside):  # the well-behaved client streamed, and the server logged no error
        assert phase["fps_out_mean"] and phase["server_log_errors"] == 0, phase["server_log_error_lines"]
    assert "beside the adversaries" in capsys.readouterr().out
