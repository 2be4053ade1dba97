"""What ``bench/gpu.sh`` runs, what the GPU machine has, and what must be carried there as wheels.

The GPU machine we measure on (KINDS.md of the device tool, read 2026-11-17)
has Python 3.12, torch 2.11 + CUDA 13, transformers, onnxruntime (CPU only),
no TensorRT, no diffusers/PyAV/aiortc, and no network. The gaps are filled
with the wheels pinned in ``bench/gpu-wheels.lock``: the ``quick`` group for
``--quick`` (the headline rows), ``full`` on top for everything else.

:func:`simulated_site` builds a site-packages of what is importable there;
``python -m bench.gpu_quick --rehearse`` runs the quick rows on this CPU at
tiny sizes with every other third-party import *refused*, so an import the
GPU machine could not satisfy fails here, in CI, and not in a scarce GPU
minute.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

LOCK = Path(__file__).resolve().parent / "gpu-wheels.lock"

# Import names of the packages on the GPU machine's image (a subset of its list: what streamgen and the benches could touch).
MACHINE_PACKAGES = frozenset(
    """
    torch torchgen functorch triton numpy transformers tokenizers safetensors huggingface_hub hf_xet onnx onnxruntime accelerate
    peft PIL tqdm regex requests urllib3 idna certifi charset_normalizer filelock fsspec yaml packaging psutil jinja2 markupsafe
    sympy mpmath networkx typing_extensions zipp aiohttp aiosignal aiohappyeyeballs multidict yarl frozenlist propcache attrs
    hypothesis pytest sentencepiece cuda cupy numba scipy tiktoken rich pygments mdurl markdown_it typer click shellingham
    annotated_doc anyio h11 httpcore httpx sortedcontainers google protobuf opt_einsum einops
    """.split()
)


@dataclass(frozen=True)
class LockedWheel:
    group: str
    requirement: str  # name==version
    import_name: str

    @property
    def name(self) -> str:
        return self.requirement.split("==")[0]

    @property
    def version(self) -> str:
        return self.requirement.split("==")[1]


def read_lock(path: Path = LOCK) -> list[LockedWheel]:
    """The lock file's wheels (ValueError naming the line when one is not ``group name==version import``)."""
    wheels = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        if len(parts) != 3 or parts[0] not in ("quick", "full") or not re.fullmatch(r"[A-Za-z0-9._-]+==[0-9][A-Za-z0-9.]*", parts[1]):
            raise ValueError(f"{path.name} line {number}: expected 'quick|full name==version import_name', got {line!r}")
        wheels.append(LockedWheel(*parts))
    return wheels


def requirements(group: str, lock: list[LockedWheel] | None = None) -> list[str]:
    """``name==version`` of every wheel ``group`` needs (``full`` includes ``quick``'s)."""
    wheels = read_lock() if lock is None else lock
    groups = ("quick",) if group == "quick" else ("quick", "full")
    return [w.requirement for w in wheels if w.group in groups]


def check_wheel_folder(folder: Path, group: str, lock: list[LockedWheel] | None = None) -> list[str]:
    """What is wrong with the wheels in ``folder`` for ``group``: a locked one missing or of another version (empty: fine)."""
    import re as _re  # noqa: PLC0415

    found: dict[str, str] = {}
    for wheel in folder.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        found[_re.sub(r"[-_.]+", "-", name).lower()] = version
    problems = []
    for requirement in requirements(group, lock):
        name, version = requirement.split("==")
        have = found.get(_re.sub(r"[-_.]+", "-", name).lower())
        if have is None:
            problems.append(f"{requirement} is missing from {folder}/ (scripts/fetch_gpu_wheels.sh fetches it)")
        elif have != version:
            problems.append(f"{folder}/ holds {name} {have}, the lock pins {version}")
    return problems


def simulated_site(into: Path, group: str = "quick", lock: list[LockedWheel] | None = None) -> Path:
    """A site-packages folder holding only what the GPU machine would: links to installed distributions, nothing else.

    It holds the distributions that provide :data:`MACHINE_PACKAGES` *with what they require* (a package on the
    machine came with its own requirements), and the locked wheels of ``group`` *without* theirs (gpu.sh installs
    them with ``--no-deps``: a requirement missing from the lock must fail here). Run with ``python -S`` and
    ``PYTHONPATH=<this>:<repository>``, code sees exactly these packages: any other import fails as it would
    there, and probes of optional packages (``importlib.util.find_spec``, ``importlib.metadata``) say "not installed".
    """
    import re as _re  # noqa: PLC0415
    from importlib import metadata  # noqa: PLC0415

    def norm(name: str) -> str:
        return _re.sub(r"[-_.]+", "-", name).lower()

    wheels = read_lock() if lock is None else lock
    groups = ("quick",) if group == "quick" else ("quick", "full")
    dists = {norm(d.metadata["Name"] or ""): d for d in metadata.distributions()}
    provides = metadata.packages_distributions()
    machine = {norm(name) for module in MACHINE_PACKAGES for name in provides.get(module, [])}
    pending, machine_side = list(machine), set()
    while pending:  # the machine's packages and, transitively, what they require
        name = pending.pop()
        if name in machine_side or name not in dists:
            continue
        machine_side.add(name)
        for requirement in dists[name].requires or []:
            if "extra ==" in requirement:
                continue
            match = _re.match(r"[A-Za-z0-9._-]+", requirement)
            if match:
                pending.append(norm(match.group(0)))
    carried = {norm(w.name) for w in wheels if w.group in groups}
    into.mkdir(parents=True, exist_ok=True)
    for name in sorted((machine_side | carried) & set(dists)):
        dist = dists[name]
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if Path(str(f)).parts}:
            source, target = Path(str(dist.locate_file(top))), into / top
            if top == ".." or top == "__pycache__" or source.suffix == ".pth" or not source.exists() or target.exists():
                continue
            target.symlink_to(source)
    return into


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_plan", description="the GPU machine's wheels: list them or check a folder of them")
    parser.add_argument("command", choices=("requirements", "check"))
    parser.add_argument("--group", choices=("quick", "full"), default="full")
    parser.add_argument("--folder", type=Path, default=Path(".whl"))
    args = parser.parse_args(argv)
    if args.command == "requirements":
        print("\n".join(requirements(args.group)))
        return 0
    problems = check_wheel_folder(args.folder, args.group)
    for problem in problems:
        print(f"gpu wheels: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
