"""Layers point one way (DESIGN.md): a lower layer never imports a higher one.

Checked on the source, statically: every ``import``/``from`` in a package,
resolved to an absolute module name, must stay inside what that layer may use.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "streamgen"

# layer → streamgen subpackages it must never import
FORBIDDEN = {
    "models": ("pipeline", "runtime", "server", "sched", "commands", "parallel", "stream", "video_stream", "cli"),
    "runtime": ("pipeline", "server", "sched", "commands", "stream", "video_stream", "cli"),
    "pipeline": ("server", "sched", "commands", "stream", "video_stream", "cli"),
    "sched": ("models", "pipeline", "runtime", "server", "commands", "stream", "video_stream", "cli"),
}
SCHED_FORBIDDEN_LIBS = ("torch", "asyncio", "numpy", "aiohttp", "aiortc")


def _imports(path: Path) -> list[str]:
    module = "streamgen." + ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                names.append(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                names.append(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_never_imports_one_above_it(layer):
    folder = ROOT / layer
    if not folder.exists():
        pytest.skip(f"streamgen/{layer} does not exist yet")
    offences = []
    for path in sorted(folder.rglob("*.py")):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "streamgen" and len(parts) > 1 and parts[1] in FORBIDDEN[layer]:
                offences.append(f"{path.relative_to(ROOT.parent)} imports {name}")
            if layer == "sched" and parts[0] in SCHED_FORBIDDEN_LIBS:
                offences.append(f"{path.relative_to(ROOT.parent)} imports {name} (policy is pure)")
    assert offences == []


def test_models_are_grouped_by_family():
    flat = sorted(p.name for p in (ROOT / "models").glob("*.py") if p.name != "__init__.py")
    assert flat == [], f"model files belong in models/image, models/video or models/loading: {flat}"
