"""The CPU thread budget: passive OpenMP waiting before torch loads, one core left for codecs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from streamgen.errors import ConfigError
from streamgen.threads import default_model_threads, resolve_model_threads


def test_importing_streamgen_makes_openmp_wait_passively():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import os, streamgen, torch; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "PASSIVE", out.stderr


def test_a_policy_the_user_chose_is_kept():
    env = {**os.environ, "OMP_WAIT_POLICY": "ACTIVE"}
    code = "import os, streamgen; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ACTIVE", out.stderr


def test_default_budget_leaves_a_core_free():
    assert default_model_threads(2) == 1
    assert default_model_threads(1) == 1
    assert default_model_threads(16) == 15


def test_flag_beats_environment_beats_default():
    assert resolve_model_threads(3, {"OMP_NUM_THREADS": "5"}) == 3
    assert resolve_model_threads(None, {"OMP_NUM_THREADS": "5"}) == 5
    assert resolve_model_threads(None, {"OMP_NUM_THREADS": "lots"}) == default_model_threads()
    with pytest.raises(ConfigError, match="at least 1"):
        resolve_model_threads(0)
