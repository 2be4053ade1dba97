"""``bench/gpu.sh``: the plan it runs on a GPU, rehearsed here with only the packages the GPU machine would have.

The GPU minutes are scarce; these keep the script from rotting between
them: the lock parses and pins exact versions, a wheel folder is checked
against it, the simulated GPU site refuses what is neither on the machine
nor locked, and ``--dry-run`` runs the quick rows at tiny sizes in it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.gpu_plan import LockedWheel, check_wheel_folder, read_lock, requirements, simulated_site

ROOT = Path(__file__).resolve().parents[2]


def test_the_lock_pins_exact_versions_and_quick_is_part_of_full():
    wheels = read_lock()
    assert {w.group for w in wheels} == {"quick", "full"}
    assert all("==" in w.requirement and w.import_name for w in wheels)
    assert "diffusers" in {w.name for w in wheels if w.group == "quick"}
    assert set(requirements("quick")) < set(requirements("full"))


def test_a_wheel_folder_is_checked_against_the_lock(tmp_path):
    lock = [LockedWheel("quick", "diffusers==0.42.1", "diffusers"), LockedWheel("full", "av==18.1.0", "av")]
    (tmp_path / "diffusers-0.41.0-py3-none-any.whl").write_bytes(b"")
    problems = check_wheel_folder(tmp_path, "full", lock)
    assert any("holds diffusers 0.41.0, the lock pins 0.42.1" in p for p in problems)
    assert any(p.startswith("av==18.1.0 is missing") for p in problems)
    (tmp_path / "diffusers-0.41.0-py3-none-any.whl").unlink()
    (tmp_path / "diffusers-0.42.1-py3-none-any.whl").write_bytes(b"")
    assert check_wheel_folder(tmp_path, "quick", lock) == []


def test_the_simulated_gpu_site_has_torch_but_not_what_is_neither_on_the_machine_nor_locked(tmp_path):
    site = simulated_site(tmp_path / "site", "quick", lock=[LockedWheel("quick", "importlib-metadata==10.2.0", "importlib_metadata")])
    probe = "import importlib.util, torch; print(importlib.util.find_spec('diffusers') is None, importlib.util.find_spec('aiortc') is None)"
    done = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(site)}, check=True)
    assert done.stdout.split() == ["True", "True"]  # diffusers unlocked here: gone, as it would be on the GPU machine


def test_dry_run_prints_the_plan_and_rehearses_the_quick_rows(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(ROOT / "bench" / "gpu.sh"), "--dry-run"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "image-compile" in done.stdout and "kv-no-sync" in done.stdout  # the whole plan is shown, skipped rows with why
    report = json.loads((tmp_path / "gpu-quick-rehearsal.json").read_text())
    status = {r["row"]: r["status"] for r in report["results"]}
    assert status == {"image-eager": "ok", "image-compile": "skipped", "image-steered": "ok", "video": "ok", "kv-no-sync": "skipped", "stages": "ok"}
    assert all(r.get("note") for r in report["results"] if r["status"] == "skipped")
