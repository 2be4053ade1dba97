"""The CPU thread budget: how many threads the model may use, and how they wait.

Two facts measured on a 2-core machine shape this:

- torch's OpenMP threads *spin* while they wait for work. With two of them
  beside one other busy process, one tiny UNet call went from 60 ms to
  1900 ms; with ``OMP_WAIT_POLICY=PASSIVE`` it took about 90 ms. The policy
  is read once, when the OpenMP runtime loads with torch, so it must be in
  the environment before torch is imported: :func:`prefer_passive_waiting`
  runs at ``import streamgen`` (first thing) and does nothing if torch is
  already loaded or the user chose a policy.
- the model is not the only thing that needs a core: video decoding and
  encoding (libvpx/x264 threads), the asyncio event loop and the frame
  conversion threads do too. A model that takes every core starves them and
  the frame rate collapses; the default budget leaves one core free.
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger(__name__)

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"


def prefer_passive_waiting() -> bool:
    """Ask OpenMP to sleep instead of spin while idle, if it is still time to ask; True when set here."""
    if "torch" in sys.modules or WAIT_POLICY_ENV in os.environ:
        return False
    os.environ[WAIT_POLICY_ENV] = "PASSIVE"
    return True


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_model_threads(cores: int | None = None) -> int:
    """One core for codecs, conversions and the event loop; the rest for the model (at least one)."""
    cores = available_cores() if cores is None else cores
    return max(1, cores - 1)


def resolve_model_threads(requested: int | None, environ: dict[str, str] | None = None) -> int:
    """``--threads`` wins, then an explicit ``OMP_NUM_THREADS``, then :func:`default_model_threads`."""
    if requested is not None:
        if requested < 1:
            from .errors import ConfigError  # noqa: PLC0415

            raise ConfigError(f"--threads must be at least 1, got {requested}")
        return requested
    env = os.environ if environ is None else environ
    value = env.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) >= 1:
        return int(value)
    return default_model_threads()


def apply_thread_budget(requested: int | None = None) -> int:
    """Set torch's intra-op threads to the budget (and one inter-op thread); returns the count."""
    import torch  # noqa: PLC0415

    threads = resolve_model_threads(requested)
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already ran: harmless
        pass
    logger.debug(  # shown with -v: every command would otherwise start with this line
        "model threads: %d of %d cores (OMP_WAIT_POLICY=%s)", threads, available_cores(), os.environ.get(WAIT_POLICY_ENV, "unset")
    )
    return threads
