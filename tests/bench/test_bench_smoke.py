"""``python -m bench.image --quick`` runs end to end and writes the JSON it promises (structure, not speed)."""

from __future__ import annotations

import json

import pytest
import torch

from bench import image as bench_image
from bench.common import CallTimer, percentile, table

RESULT_KEYS = {
    "group", "model", "size", "config", "cfg_type", "steps", "denoising_batch", "sessions", "batched_sessions",
    "width", "height", "lag_calls", "frames", "fps", "latency_ms_p50", "latency_ms_p95", "frame_ms",
    "model_ms_per_frame", "model_ms_per_frame_by_call", "unet_calls_per_frame", "unet_rows_per_frame",
    "outside_model_ms_per_frame", "outside_model_pct",
}


def test_quick_run_writes_the_report(tmp_path, capsys):
    out = tmp_path / "image.json"
    argv = ["--quick", "--device", "cpu", "--out", str(out)]
    cuda = torch.cuda.is_available()
    if not cuda:
        argv.append("--dummy-sd-turbo")  # no CUDA: skipped with a message, not an error
    assert bench_image.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "image" and report["date"] and report["command"].startswith("python -m bench.image")
    assert {"cpu", "cpus", "torch", "torch_threads", "device"} <= report["machine"].keys()
    assert report["machine"]["device"] == "cpu"
    assert set(report["target"]) == {"size", "outside_model_pct_max_allowed", "outside_model_pct_worst", "met"}
    (row,) = report["results"]
    assert RESULT_KEYS <= row.keys()
    assert row["model"] == "tiny" and row["group"] == "steps" and row["denoising_batch"] and row["sessions"] == 1
    assert row["frames"] >= 1 and row["fps"] > 0
    assert row["latency_ms_p95"] >= row["latency_ms_p50"] > 0
    assert row["unet_calls_per_frame"] == 1 and row["unet_rows_per_frame"] == row["steps"]  # stream batch: one call, n rows
    assert set(row["model_ms_per_frame_by_call"]) == set(bench_image.MODEL_LABELS)
    assert row["model_ms_per_frame_by_call"]["unet"] > 0 and row["model_ms_per_frame_by_call"]["vae_decode"] > 0
    assert 0 <= row["outside_model_pct"] <= 100
    printed = capsys.readouterr().out
    assert "outside %" in printed and f"wrote {out}" in printed
    if not cuda:
        assert report["skipped"] and "needs a CUDA device" in report["skipped"][0]
        assert "--dummy-sd-turbo skipped" in printed


def test_instrumentation_counts_model_calls_and_restores_the_model(tiny_model):
    pipeline = bench_image.ImagePipeline(tiny_model)
    before = (tiny_model.unet_forward, tiny_model.vae_encode_forward, tiny_model.vae_decode_forward)
    timer = CallTimer()
    with bench_image.instrumented(tiny_model, timer):
        runner = bench_image.Runner(pipeline, bench_image.Case(64, cfg_type="full", sessions=2, batched_sessions=False))
        tally = bench_image.Tally()
        bench_image.run_block(runner, timer, tally, frames=2)
    assert (tiny_model.unet_forward, tiny_model.vae_encode_forward, tiny_model.vae_decode_forward) == before
    assert all("forward" not in encoder.__dict__ for encoder in tiny_model.text_encoders)
    assert tally.frames == 2 and len(tally.latencies) == 2
    assert tally.latencies[1] > tally.latencies[0]  # one after another: the second session waits for the first
    seconds, calls, rows = tally.model["unet"]
    # first frame of a stream-batch stream: prefill (1 call) + batch call; cfg full doubles the rows
    assert calls == 2 * 2 and rows == 2 * (2 * 1 + 2 * 2) and seconds > 0


def test_helpers():
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0 and percentile([1.0, 2.0, 3.0], 100) == 3.0
    text = table([{"a": 1, "b": None}], [("a", "A"), ("b", "B")])
    assert text.splitlines()[0].split() == ["A", "B"] and "–" in text


@pytest.mark.parametrize("argv", [["--quick"], ["--quick", "--sizes", "64,128", "--frames", "3"]])
def test_quick_settings_stay_small(argv):
    settings = bench_image.parse_args(argv)
    assert settings.quick and settings.frames <= 4 and settings.repeats == 1 and settings.sizes[0] == 64


def test_control_rows_run_every_preprocessor_and_report_a_ratio_to_plain():
    pipeline = bench_image.control_pipeline(torch.device("cpu"))
    plan = bench_image.control_plan(64, 2)
    results = bench_image.run_plan(pipeline, "tiny+control", plan, bench_image.Settings(frames=1, warmup=1, repeats=1))
    bench_image.add_cost_ratios(results)
    assert [r["controlnets"] for r in results[1:10]] == [(p,) for p in bench_image.CONTROL_PREPROCESSORS]
    assert results[0]["x_plain"] == 1.0 and all(r["x_plain"] > 0 for r in results)
    assert results[0]["model_ms_per_frame_by_call"]["controlnet"] == 0
    assert all(r["model_ms_per_frame_by_call"]["controlnet"] > 0 for r in results if r["controlnets"])
    assert any(r["ip_adapter"] for r in results) and "IP-Adapter" in results[-1]["config"]


def test_control_flags_reach_the_settings():
    assert bench_image.parse_args([]).control is True
    assert bench_image.parse_args(["--no-control"]).control is False
    assert bench_image.parse_args(["--control-only"]).control_only is True
