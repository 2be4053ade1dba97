"""``streamgen doctor`` always exits 0 and prints every section, on any machine."""

from __future__ import annotations

import json

SECTIONS = ("Python", "Platform", "torch", "CUDA devices", "Acceleration backends", "Media and outputs", "Libraries")


def test_doctor_prints_every_section(cli):
    code, out, _ = cli("doctor")
    assert code == 0
    for section in SECTIONS:
        assert f"\n{section}\n" in f"\n{out}"
    for probe in ("torch.compile", "onnxruntime", "tensorrt", "triton", "aiortc", "av (PyAV)", "pyvirtualcam"):
        assert probe in out


def test_doctor_json(cli):
    code, out, _ = cli("doctor", "--json")
    assert code == 0
    report = json.loads(out)
    assert set(report) == set(SECTIONS)
    assert report["torch"]["version"]


def test_a_failing_probe_does_not_crash_the_report(monkeypatch):
    from streamgen.commands import doctor

    def broken() -> list:
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(doctor, "cuda_device_rows", broken)
    sections = dict(doctor.collect_report())
    assert sections["CUDA devices"] == [("error", "RuntimeError: driver exploded")]
    assert sections["torch"]
