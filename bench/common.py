"""Helpers shared by the benchmarks: timing, percentiles, tables, JSON reports, the machine.

- :func:`measure` times a callable after warm-up calls (synchronising CUDA);
- :func:`percentile` / :func:`ms` / :func:`median` summarise samples;
- :func:`table` renders rows of dicts as an aligned text table;
- :func:`write_json` writes ``bench/out/<name>.json`` (or a given path);
- :func:`machine` describes where the numbers came from (CPU model, cores,
  torch version and threads, CUDA device).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent / "out"

Column = tuple[str, str]  # (key in the row dict, title)


# ---------------------------------------------------------------------- timing
def sync(device: Any = None) -> None:
    """Wait for queued CUDA work (no-op on the CPU or without torch)."""
    if device is None or getattr(device, "type", str(device).split(":")[0]) != "cuda":
        return
    import torch  # noqa: PLC0415

    torch.cuda.synchronize(device)


def measure(fn: Callable[[], Any], *, iterations: int, warmup: int = 0, device: Any = None) -> list[float]:
    """Seconds per call of ``fn`` over ``iterations`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        sync(device)
        samples.append(time.perf_counter() - start)
    return samples


# ------------------------------------------------------------------ statistics
def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank on the sorted values), None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def median(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def ms(seconds: float | None, digits: int = 1) -> float | None:
    """Seconds → milliseconds, rounded; None stays None."""
    return None if seconds is None else round(seconds * 1000, digits)


# ---------------------------------------------------------------------- output
def table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """An aligned text table of ``rows`` (missing values shown as –), one line per row."""
    cells = [[_cell(r.get(key)) for key, _ in columns] for r in rows]
    widths = [max([len(title), *(len(row[i]) for row in cells)]) for i, (_, title) in enumerate(columns)]
    line = lambda values: "  ".join(v.rjust(w) for v, w in zip(values, widths))  # noqa: E731
    return "\n".join([line([t for _, t in columns]), line(["-" * w for w in widths]), *map(line, cells)])


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """The same table in Markdown (for RESULTS.md)."""
    head = "| " + " | ".join(t for _, t in columns) + " |"
    rule = "|" + "|".join(" --- " for _ in columns) + "|"
    body = ["| " + " | ".join(_cell(r.get(key)) for key, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def write_json(name: str, report: dict[str, Any], out: Path | str | None = None) -> Path:
    """Write ``report`` to ``out`` (default ``bench/out/<name>.json``); returns the path."""
    path = Path(out) if out is not None else OUT_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


# --------------------------------------------------------------------- machine
def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo, else what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int | None:
    """Cores this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def machine(device: Any = None) -> dict[str, Any]:
    """Where the numbers came from: OS, Python, CPU, torch and (when used) the CUDA device."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "usable_cpus": usable_cores(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return info
    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        index = torch.device(device).index if device is not None and str(device).startswith("cuda") else None
        index = torch.cuda.current_device() if index is None else index
        props = torch.cuda.get_device_properties(index)
        info["cuda_device"] = props.name
        info["cuda_capability"] = f"{props.major}.{props.minor}"
        info["cuda_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda_version"] = torch.version.cuda
    return info


def describe_machine(info: dict[str, Any]) -> str:
    """One line for humans: CPU, cores, torch and GPU."""
    parts = [f"{info.get('cpu')} ({info.get('usable_cpus')} of {info.get('cpus')} cores usable)"]
    if "torch" in info:
        parts.append(f"torch {info['torch']} ({info['torch_threads']} threads)")
    if info.get("cuda_device"):
        parts.append(f"{info['cuda_device']} (CUDA {info.get('cuda_version')}, {info.get('cuda_memory_gib')} GiB)")
    else:
        parts.append("no CUDA")
    parts.append(f"Python {info.get('python')}, {info.get('platform')}")
    return "; ".join(parts)


# ------------------------------------------------------------- call accounting
class CallTimer:
    """Wall time and count of wrapped calls, per label (synchronising CUDA around each call).

    ``wrap(fn, label)`` returns a drop-in replacement for ``fn``; ``reset()``
    starts a new window; ``seconds`` / ``calls`` are the window's totals and
    ``by_label`` the per-label ones. Synchronising makes each call's time its
    real device time, at the price of the overlap between host and GPU.
    """

    def __init__(self, device: Any = None) -> None:
        self.device = device
        self.by_label: dict[str, list[float]] = {}  # label -> [seconds, calls, rows]

    def reset(self) -> None:
        self.by_label = {}

    @property
    def seconds(self) -> float:
        return sum(v[0] for v in self.by_label.values())

    @property
    def calls(self) -> int:
        return int(sum(v[1] for v in self.by_label.values()))

    def wrap(self, fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            sync(self.device)
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            sync(self.device)
            entry = self.by_label.setdefault(label, [0.0, 0, 0])
            entry[0] += time.perf_counter() - start
            entry[1] += 1
            first = args[0] if args else None
            entry[2] += int(first.shape[0]) if hasattr(first, "shape") and len(first.shape) else 0
            return out

        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed
