"""ONNX Runtime within the thread budget, and no silent fall-back to the CPU when its CUDA provider cannot load."""

from __future__ import annotations

import pytest

from streamgen.errors import EngineError
from streamgen.runtime.ort_backend import CUDA_PROVIDER, check_providers, session_options


def test_sessions_get_the_budgets_threads_and_do_not_spin():
    options = session_options(3)
    assert options.intra_op_num_threads == 3 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert session_options(0).intra_op_num_threads == 1


class _SessionThatFellBack:
    """A session's provider list as ORT reports it after its CUDA provider failed to load (a stand-in, not ORT)."""

    def get_providers(self):
        return ["CPUExecutionProvider"]


class _SessionOnCuda:
    def get_providers(self):
        return [CUDA_PROVIDER, "CPUExecutionProvider"]


def test_a_session_that_fell_back_to_the_cpu_is_refused_with_the_reason():
    with pytest.raises(EngineError) as refused:
        check_providers(_SessionThatFellBack(), CUDA_PROVIDER, "unet.onnx")
    message = str(refused.value)
    assert "could not use CUDAExecutionProvider for unet.onnx" in message
    assert "session providers: CPUExecutionProvider" in message and "cuDNN" in message


def test_a_session_on_its_cuda_provider_passes():
    check_providers(_SessionOnCuda(), CUDA_PROVIDER, "unet.onnx")
