"""Layers point one way (docs/architecture.md, "Layers"): every package and top-level module of ``streamgen``.

Checked on the source, statically: every ``import``/``from`` (function-level
ones included; ``if TYPE_CHECKING:`` blocks left out, they run no code),
resolved to an absolute module name, must go to the same layer or one below.
A new package or module must be given a layer here; a new upward import
fails. Modules inside one package may not import each other in a loop.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "streamgen"

# Bottom to top: a unit may import units of its own layer and of the layers below it.
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("config", "preset_names", "threads"),
    ("params", "frames", "control_params", "preprocessor_settings"),
    ("models",),
    ("runtime", "sched"),
    ("parallel",),
    ("pipeline",),
    ("stream", "video_stream"),
    ("outputs",),
    ("server",),
    ("commands", "client"),
    ("cli", "__main__", "__init__"),
]
LAYER_OF = {unit: index for index, units in enumerate(LAYERS) for unit in units}
SCHED_FORBIDDEN_LIBS = ("torch", "asyncio", "numpy", "aiohttp", "aiortc")


def _module_name(path: Path) -> str:
    return ("streamgen." + ".".join(path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[str]:
    """Absolute names of every module ``path`` imports (TYPE_CHECKING blocks excluded)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    names = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.append(target)
            names += [f"{target}.{a.name}" for a in node.names]  # ``from . import x`` imports the module x
    return names


FILES = sorted(ROOT.rglob("*.py"))
MODULES = {_module_name(p) for p in FILES}


def test_every_unit_has_a_layer():
    units = {_unit(_module_name(p)) for p in FILES}
    assert sorted(units - set(LAYER_OF)) == [], "give the new package or module a layer in LAYERS"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_upward_import(path):
    unit = _unit(_module_name(path))
    offences = []
    for name in _imports(path):
        if name.startswith("streamgen.") and name in MODULES | {n.rsplit(".", 1)[0] for n in MODULES}:
            target = _unit(name)
            if target in LAYER_OF and LAYER_OF[target] > LAYER_OF[unit]:
                offences.append(f"{unit} (layer {LAYER_OF[unit]}) imports {name} (layer {LAYER_OF[target]})")
        if unit == "sched" and name.split(".")[0] in SCHED_FORBIDDEN_LIBS:
            offences.append(f"imports {name} (policy is pure)")
    assert offences == []


def test_no_import_loops_between_modules():
    graph: dict[str, set[str]] = defaultdict(set)
    for path in FILES:
        module = _module_name(path)
        graph[module] |= {n for n in _imports(path) if n in MODULES and n != module and not module.startswith(n + ".")}
    loops = [component for component in _strongly_connected(graph) if len(component) > 1]
    assert loops == []


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, ()):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def test_models_are_grouped_by_family():
    flat = sorted(p.name for p in (ROOT / "models").glob("*.py") if p.name != "__init__.py")
    assert flat == [], f"model files belong in models/image, models/video or models/loading: {flat}"


def test_no_private_name_is_imported_across_modules():
    offences = []
    for path in FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                offences += [f"{path.relative_to(ROOT)}: {a.name}" for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert offences == []
