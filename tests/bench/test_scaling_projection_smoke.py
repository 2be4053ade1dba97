"""``python -m bench.scaling_projection`` runs end to end, writes the JSON it promises, and derives its inputs consistently."""

from __future__ import annotations

import json

import pytest

from bench import scaling_projection as sp
from streamgen.sched.blocks import BlockSplit


def test_quick_run_writes_the_report(tmp_path, capsys):
    out = tmp_path / "scaling_projection.json"
    argv = ["--models", "wan-1.3b", "--steps", "1", "--stages", "1,2,4", "--links", "nvlink", "--chunks", "40", "--out", str(out)]
    assert sp.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "scaling_projection" and report["kind"].startswith("projection")
    assert report["command"].startswith("python -m bench.scaling_projection")
    assert report["assumptions"]["vae_share"] == 0.30 and set(report["assumptions"]["links"]) == {"nvlink", "pcie"}
    rows = report["results"]
    assert [r["stages"] for r in rows] == [1, 2, 4]
    for row in rows:
        split = BlockSplit.from_json(row["bounds"])
        assert split.stages == row["stages"] == len(row["stage_ms"]) == len(row["rank_weights_gib"])
        assert row["fps"] > 0 and row["latency_ms_p99"] >= row["latency_ms_p50"] > 0
        assert row["published_4gpu_fps"] == 64.52 and row["inputs"]["dit_params"] > 1.4e9
    assert rows[0]["speedup"] == 1.0 and rows[0]["fps"] == pytest.approx(26.21, rel=1e-3)  # one stage = the published call
    assert rows[1]["speedup"] > 1.9 and rows[2]["speedup"] > rows[1]["speedup"]
    assert report["target"]["stages"] == 4 and len(report["target"]["rows"]) == 1
    printed = capsys.readouterr().out
    assert "PROJECTION" in printed and f"wrote {out}" in printed


def test_bad_arguments_are_reported_not_raised(capsys):
    with pytest.raises(SystemExit):
        sp.main(["--models", "wan-7b", "--out", "/dev/null"])
    assert "no published figures" in capsys.readouterr().err


def test_four_stages_of_the_published_model_meet_the_target():
    row = sp.project("wan-1.3b", 1, 4, settings=sp.ProjectionSettings(chunks=60))
    assert row["speedup"] >= 3.6 and row["misses"] == 0
    assert row["max_rank_share"] < 0.4  # each rank holds a fraction of the DiT, not all of it


def test_inputs_add_up_to_the_published_call():
    inputs, derived = sp.published_inputs("wan-14b", 2)
    call = 4 / sp.PUBLISHED_ONE_GPU_FPS["wan-14b"][2]
    assert inputs.num_blocks * inputs.block_seconds + inputs.encode_seconds + inputs.decode_seconds == pytest.approx(call)
    vae = 0.30 * 4 / sp.PUBLISHED_ONE_GPU_FPS["wan-1.3b"][1]
    assert derived["vae_ms"] == pytest.approx(vae * 1e3, abs=0.01)
    assert inputs.transfer_seconds == pytest.approx(10e-6 + 2 * 1024 * (5120 + 7 * 5120 / 1024) * 2 / 450e9)
    one = sp.StageInputs("one", 40, 2, inputs.block_seconds, inputs.encode_seconds, inputs.decode_seconds)
    assert sum(t.fixed_seconds + t.block_seconds for t in one.timings(BlockSplit.even(40, 1))) == pytest.approx(call)


def test_measured_inputs_project_too():
    """What bench/scaling.py does with CPU measurements of a small model."""
    measured = sp.StageInputs("cpu", num_blocks=8, steps=2, block_seconds=0.004, encode_seconds=0.006,
                              decode_seconds=0.014, transfer_seconds=0.0005, return_seconds=0.0002, block_bytes=1e6)
    one = sp.project_inputs(measured, 1, sp.ProjectionSettings(chunks=40))
    two = sp.project_inputs(measured, 2, sp.ProjectionSettings(chunks=40))
    assert one["fps"] == pytest.approx(4 / (8 * 0.004 + 0.020), abs=0.01)  # one stage: no transfer
    assert 1.5 < two["fps"] / one["fps"] <= 2.0
    assert two["split"] == "5/3"  # the decoding rank takes fewer blocks: 26.5 ms and 26.2 ms (4/4: 30.2 ms)
    assert two["stage_ms"] == pytest.approx([26.5, 26.2])


def test_parameter_counts_match_diffusers():
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from importlib import resources

    for name in ("wan-1.3b", "wan-14b"):
        config = json.loads((resources.files("streamgen") / "models" / "configs" / name / "transformer" / "config.json").read_text())
        with torch.device("meta"):
            model = diffusers.WanTransformer3DModel(**{k: v for k, v in config.items() if not k.startswith("_")})
        shape = sp.WanShape.shipped(name)
        assert sum(p.numel() for p in model.blocks[0].parameters()) == shape.block_params
        assert sum(p.numel() for p in model.parameters()) == shape.dit_params
