"""The virtual camera's failures say what to do on the user's operating system."""

from __future__ import annotations

import sys

import pytest

from streamgen.errors import ConfigError
from streamgen.outputs.virtualcam import check_virtual_camera, load_pyvirtualcam, setup_steps


def test_linux_steps_load_v4l2loopback():
    steps = setup_steps("Linux")
    assert 'sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label="streamgen"' in steps
    assert "v4l2loopback-dkms" in steps


@pytest.mark.parametrize("system", ["Windows", "Darwin"])
def test_windows_and_macos_steps_start_the_obs_virtual_camera_once(system):
    steps = setup_steps(system)
    assert "OBS Studio" in steps and "Start Virtual Camera" in steps and "modprobe" not in steps


def test_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyvirtualcam", None)
    with pytest.raises(ConfigError, match=r"pip install 'streamgen\[virtualcam\]'"):
        load_pyvirtualcam()


def test_no_device_gives_the_setup_steps():
    pytest.importorskip("pyvirtualcam", reason="pyvirtualcam is not installed (pip install 'streamgen[virtualcam]')")
    try:
        device = check_virtual_camera(30)
    except ConfigError as error:
        assert str(error).startswith("no virtual camera device")
        assert setup_steps() in str(error)
    else:
        pytest.skip(f"this machine has a virtual camera ({device})")
