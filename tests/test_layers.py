"""The package's import layering, and which imports its entry points need.

``LAYERS`` below is the import order, bottom to top: a module may import only from its own layer
or a lower one, and no set of modules may import each other in a cycle. The tests read every
module's source with ``ast`` (imports inside functions included; nothing is imported), so they
see an upward or cyclic import even where a deferred import hides it at run time.

A new module must be placed: add its name (or its package's) to the right layer of ``LAYERS``;
e.g. ``("auxsurgery.export",),`` sits on its own between checkpoint/cost and attacks. One line.

The last tests run a subprocess each way a user meets the package: ``import auxsurgery`` loads only
``auxsurgery.version``; ``auxsurgery.attacks`` and ``auxsurgery.model`` import and run without the
optional stack (timm, safetensors, matplotlib, rich, typer); every public name resolves.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "auxsurgery"

# The import order, bottom to top. An entry is a module, or a package covering its submodules (the
# longest matching entry wins); the package root "auxsurgery" covers its own __init__ only.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("auxsurgery.version",),
    ("auxsurgery._utils", "auxsurgery.provenance"),
    ("auxsurgery._output",),
    ("auxsurgery.backbones", "auxsurgery.synthetic", "auxsurgery.data"),
    ("auxsurgery.graph",),
    ("auxsurgery.heads",),
    ("auxsurgery.rules",),
    ("auxsurgery.model",),
    ("auxsurgery.surgery",),
    ("auxsurgery.checkpoint", "auxsurgery.cost"),
    ("auxsurgery.export",),
    ("auxsurgery.attacks",),
    ("auxsurgery.train",),
    ("auxsurgery.evaluation",),
    ("auxsurgery.studies",),
    ("auxsurgery.cli", "auxsurgery.__main__"),
    ("auxsurgery",),  # the lazy public API: imports only .version eagerly
)


# ---- the checker (pure functions of a source tree and an order, so the tests below can feed it a toy package)


@dataclass(frozen=True)
class Edge:
    """One import: ``source`` imports ``target`` at ``path:line``."""

    source: str
    target: str
    path: Path
    line: int
    type_only: bool = False  # under ``if TYPE_CHECKING:``: a dependency, but never run

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root.parent)}:{self.line}"


def find_modules(src: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under ``src`` (a package's ``__init__`` names the package)."""
    modules = {}
    for path in sorted(src.rglob("*.py")):
        parts = [package, *path.relative_to(src).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST, type_only: bool = False):
    """``(node, type_only)`` for every import statement, and every ``import_module``/``__import__``
    call with a literal name, anywhere in ``node`` (function bodies included)."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node, type_only
    elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str) \
            and getattr(node.func, "id", getattr(node.func, "attr", None)) in ("import_module", "__import__"):
        yield node, type_only
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        for child in node.body:
            yield from _import_nodes(child, True)
        for child in node.orelse:
            yield from _import_nodes(child, type_only)
        return
    for child in ast.iter_child_nodes(node):
        yield from _import_nodes(child, type_only)


def _anchor(module: str, is_package: bool, level: int) -> str:
    """The package a relative import of ``level`` dots starts from."""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    return ".".join(parts[: len(parts) - (level - 1)])


def _targets(node: ast.AST, module: str, is_package: bool, modules: dict[str, Path]) -> list[str]:
    """The module names an import node loads (``from P import x`` loads ``P.x`` when that is a module, else ``P``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.Call):  # import_module("name") or import_module(".name", __package__)
        name = node.args[0].value
        if name.startswith("."):
            level = len(name) - len(name.lstrip("."))
            base = _anchor(module, is_package, level)
            return [f"{base}.{name[level:]}" if name[level:] else base]
        return [name]
    base = _anchor(module, is_package, node.level) if node.level else ""
    if node.module:
        base = f"{base}.{node.module}" if base else node.module
    targets = []
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        targets.append(submodule if submodule in modules else base)
    return targets


def import_edges(src: Path, package: str) -> tuple[dict[str, Path], list[Edge]]:
    """The package's modules and every import edge between them (imports of other packages dropped)."""
    modules = find_modules(src, package)
    edges = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node, type_only in _import_nodes(tree):
            for target in dict.fromkeys(_targets(node, module, is_package, modules)):
                if target == package or target.startswith(package + "."):
                    edges.append(Edge(module, target, path, node.lineno, type_only))
    return modules, edges


def layer_of(module: str, layers, package: str) -> int | None:
    """Index of the layer whose longest entry covers ``module``; None if no entry does."""
    best = None
    for index, layer in enumerate(layers):
        for entry in layer:
            covers = module == entry or (entry != package and module.startswith(entry + "."))
            if covers and (best is None or len(entry) > len(best[1])):
                best = (index, entry)
    return None if best is None else best[0]


def describe(index: int | None, layers) -> str:
    return "no layer" if index is None else f"layer {index} ({', '.join(layers[index])})"


def placement_problems(modules: dict[str, Path], layers, package: str) -> list[str]:
    """Modules no entry covers, entries that cover no module, and entries listed twice."""
    problems = [f"{module} ({path}) is in no layer: add it to LAYERS" for module, path in modules.items()
                if layer_of(module, layers, package) is None]
    entries = [entry for layer in layers for entry in layer]
    for entry in dict.fromkeys(entries):
        if entries.count(entry) > 1:
            problems.append(f"LAYERS lists {entry} {entries.count(entry)} times")
        covered = [m for m in modules if m == entry or (entry != package and m.startswith(entry + "."))]
        if not covered:
            problems.append(f"LAYERS lists {entry}, which is no module of the package")
    return problems


def upward_edges(edges: list[Edge], layers, package: str) -> list[Edge]:
    """Edges into a higher layer (edges of a module in no layer are left to :func:`placement_problems`)."""
    bad = []
    for edge in edges:
        source, target = layer_of(edge.source, layers, package), layer_of(edge.target, layers, package)
        if source is not None and target is not None and target > source:
            bad.append(edge)
    return bad


def import_cycles(edges: list[Edge]) -> list[tuple[list[str], list[Edge]]]:
    """Each set of modules that import each other in a cycle (Tarjan's SCCs): its members, and the
    edges of one shortest cycle among them (one back edge can pull in half the package; the short
    cycle names the import to change).

    Run-time edges only (``TYPE_CHECKING`` imports never run); a module importing itself is ignored.
    A package ``__init__`` is a node like any module, so ``pkg -> pkg.sub`` alone is fine, but
    ``pkg.sub`` taking names from ``pkg`` (``from . import name``) closes a cycle.
    """
    graph: dict[str, list[str]] = {}
    for edge in edges:
        if not edge.type_only and edge.source != edge.target:
            graph.setdefault(edge.source, []).append(edge.target)
            graph.setdefault(edge.target, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [(sorted(c), shortest_cycle(c, edges)) for c in components]


def shortest_cycle(members: set[str], edges: list[Edge]) -> list[Edge]:
    """Edges of a shortest cycle within ``members`` (breadth-first from each member back to itself)."""
    out: dict[str, list[Edge]] = {}
    for edge in sorted(edges, key=lambda e: (e.source, e.line)):
        if not edge.type_only and edge.source != edge.target and {edge.source, edge.target} <= members:
            out.setdefault(edge.source, []).append(edge)
    best: list[Edge] = []
    for start in sorted(members):
        paths = {start: []}  # module -> the edges of a shortest path from start to it
        frontier, found = [start], None
        while frontier and found is None:
            next_frontier = []
            for node in frontier:
                for edge in out.get(node, []):
                    if edge.target == start:
                        found = found or paths[node] + [edge]
                    elif edge.target not in paths:
                        paths[edge.target] = paths[node] + [edge]
                        next_frontier.append(edge.target)
            frontier = next_frontier
        if found and (not best or len(found) < len(best)):
            best = found
    return best


# ---- the package itself


@pytest.fixture(scope="module")
def package_graph():
    return import_edges(REPO / PACKAGE, PACKAGE)


def test_every_module_is_placed_in_the_order(package_graph):
    modules, _ = package_graph
    problems = placement_problems(modules, LAYERS, PACKAGE)
    assert not problems, "tests/test_layers.py LAYERS and the package disagree:\n" + "\n".join(problems)


def test_no_import_points_up_the_order(package_graph):
    _, edges = package_graph
    bad = [f"{e.where(REPO / PACKAGE)}: {e.source} [{describe(layer_of(e.source, LAYERS, PACKAGE), LAYERS)}] imports "
           f"{e.target} [{describe(layer_of(e.target, LAYERS, PACKAGE), LAYERS)}]"
           + (" (under TYPE_CHECKING)" if e.type_only else "")
           for e in upward_edges(edges, LAYERS, PACKAGE)]
    assert not bad, "imports that point up the layer order (tests/test_layers.py LAYERS):\n" + "\n".join(bad)


def test_no_import_cycles(package_graph):
    _, edges = package_graph
    cycles = import_cycles(edges)
    report = [f"{len(members)} modules import each other ({', '.join(members)}); a shortest cycle:\n"
              + "\n".join(f"  {e.where(REPO / PACKAGE)}: {e.source} imports {e.target}" for e in cycle)
              for members, cycle in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(report)


def test_every_import_of_the_package_names_a_module(package_graph):
    modules, edges = package_graph
    unknown = [f"{e.where(REPO / PACKAGE)}: {e.source} imports {e.target}, which is no module of the package"
               for e in edges if e.target not in modules]
    assert not unknown, "\n".join(unknown)


# ---- the checker, on a toy package


def write_package(root: Path, files: dict[str, str]) -> Path:
    src = root / "toy"
    for name, text in files.items():
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return src


TOY_LAYERS = (("toy.low",), ("toy.mid",), ("toy.high",), ("toy",))


def test_checker_resolves_every_import_form_and_finds_upward_edges(tmp_path):
    src = write_package(tmp_path, {
        "__init__.py": "from .low import a\n",
        "low.py": "import os\n\ndef late():\n    import toy.high.deep\n",  # function-level, absolute
        "mid/__init__.py": "from . import core\nfrom .core import thing\n",
        "mid/core.py": "from ..low import a\nfrom ..high import deep\n",  # relative, up
        "mid/typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from toy.high import deep\n",
        "high/__init__.py": "", "high/deep.py": "import importlib\nimportlib.import_module('toy.mid.core')\n",
    })
    modules, edges = import_edges(src, "toy")
    assert set(modules) == {"toy", "toy.low", "toy.mid", "toy.mid.core", "toy.mid.typed", "toy.high", "toy.high.deep"}
    found = {(e.source, e.target, e.line, e.type_only) for e in edges}
    assert found == {
        ("toy", "toy.low", 1, False),
        ("toy.low", "toy.high.deep", 4, False),
        ("toy.mid", "toy.mid.core", 1, False), ("toy.mid", "toy.mid.core", 2, False),
        ("toy.mid.core", "toy.low", 1, False), ("toy.mid.core", "toy.high.deep", 2, False),
        ("toy.mid.typed", "toy.high.deep", 3, True),
        ("toy.high.deep", "toy.mid.core", 2, False),
    }
    assert {(e.source, e.target, e.line) for e in upward_edges(edges, TOY_LAYERS, "toy")} == {
        ("toy.low", "toy.high.deep", 4), ("toy.mid.core", "toy.high.deep", 2), ("toy.mid.typed", "toy.high.deep", 3)}
    # low -> high.deep (deferred) -> mid.core -> low, and mid.core <-> high.deep; not the TYPE_CHECKING edge.
    [(members, cycle)] = import_cycles(edges)
    assert members == ["toy.high.deep", "toy.low", "toy.mid.core"]
    assert [(e.source, e.target, e.line) for e in cycle] == [("toy.high.deep", "toy.mid.core", 2),
                                                             ("toy.mid.core", "toy.high.deep", 2)]


def test_checker_allows_a_package_importing_its_submodules_but_not_the_way_back(tmp_path):
    files = {"__init__.py": "", "low.py": "",
             "mid/__init__.py": "from .a import f\nfrom .b import g\nNAME = 1\n",
             "mid/a.py": "from .b import g\n", "mid/b.py": "", "high.py": ""}
    _, edges = import_edges(write_package(tmp_path / "ok", files), "toy")
    assert import_cycles(edges) == []
    files["mid/b.py"] = "def g():\n    from . import NAME\n"  # deferred, but a cycle all the same
    _, edges = import_edges(write_package(tmp_path / "cycle", files), "toy")
    cycles = import_cycles(edges)
    assert [members for members, _ in cycles] == [["toy.mid", "toy.mid.a", "toy.mid.b"]]
    assert [(e.source, e.target) for e in cycles[0][1]] == [("toy.mid", "toy.mid.b"), ("toy.mid.b", "toy.mid")]


def test_checker_needs_every_module_placed_and_every_entry_real(tmp_path):
    src = write_package(tmp_path, {"__init__.py": "", "low.py": "", "mid.py": "", "high.py": "", "extra.py": ""})
    modules, _ = import_edges(src, "toy")
    layers = (*TOY_LAYERS, ("toy.gone", "toy.low"))
    problems = placement_problems(modules, layers, "toy")
    assert any(p.startswith("toy.extra") and "in no layer" in p for p in problems)
    assert "LAYERS lists toy.low 2 times" in problems
    assert "LAYERS lists toy.gone, which is no module of the package" in problems
    # The root entry covers the root __init__ only, and the longest entry wins.
    assert layer_of("toy.extra", TOY_LAYERS, "toy") is None
    assert layer_of("toy.mid.x", (("toy.mid",), ("toy.mid.x",)), "toy") == 1


# ---- what each entry point imports, in a fresh interpreter

OPTIONAL = ("timm", "safetensors", "matplotlib", "rich", "typer")

# One interpreter for all three checks (each costs a torch import, seconds on a shared machine):
# the optional stack is blocked until the last phase, which lifts the block to resolve every name.
PROBE = r'''
import importlib.abc, json, sys, traceback

OPTIONAL = set(sys.argv[1].split(","))
HEAVY = OPTIONAL | {"torch", "torchvision", "numpy"}


class Unavailable(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in OPTIONAL:
            raise ImportError(f"No module named {name!r} (blocked by test_layers)", name=name)
        return None


blocker = Unavailable()
sys.meta_path.insert(0, blocker)
results = {}


def phase(name, check):
    try:
        results[name] = {"ok": True, "detail": check()}
    except BaseException:
        results[name] = {"ok": False, "detail": traceback.format_exc()}


def bare_import():
    preloaded = sorted(m for m in sys.modules if m.partition(".")[0] in HEAVY | {"auxsurgery"})
    before = set(sys.modules)
    import auxsurgery  # noqa: F401
    new = set(sys.modules) - before
    return {"preloaded": preloaded,
            "package": sorted(m for m in new if m.partition(".")[0] == "auxsurgery"),
            "heavy": sorted({m.partition(".")[0] for m in new} & HEAVY)}


def without_optional():
    for name in OPTIONAL:
        try:
            __import__(name)
        except ImportError:
            continue
        raise AssertionError(f"the blocker let {name} through")
    import torch
    from torch import nn

    import auxsurgery.attacks
    import auxsurgery.model
    from auxsurgery.attacks import PGD, is_adversarial
    from auxsurgery.model import AuxModel

    class Trunk(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 3))

        def forward(self, x):
            features = self.features(x)
            return {"output": self.classifier(features), "features": features}

    torch.manual_seed(0)
    trunk = Trunk()
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    backbone = nn.Sequential(trunk.features, trunk.classifier)
    model = AuxModel(trunk, heads=[head], attach_points=["features"], backbone=backbone).eval()
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    assert model(x).shape == (2, 6, 3) and model.predict(x, "vote").shape == (6,)
    eps = 8 / 255
    x_adv = PGD(model, objective="joint", eps=eps, steps=3, random_start=False)(x, y)
    assert x_adv.shape == x.shape and (x_adv - x).abs().max() <= eps + 1e-6
    assert 0 <= x_adv.min() and x_adv.max() <= 1
    joint = auxsurgery.attacks.get_objective("joint")
    with torch.no_grad():
        before, after = joint(model(x), y, model.alpha).sum(), joint(model(x_adv), y, model.alpha).sum()
    assert after > before, f"PGD did not raise the joint loss: {before} -> {after}"
    assert is_adversarial(model, x_adv, y, rule="vote").shape == (6,)
    return sorted(m for m in sys.modules if m.partition(".")[0] in OPTIONAL)


def public_names():
    sys.meta_path.remove(blocker)
    import auxsurgery
    failures = {}
    for name in auxsurgery.__all__:
        try:
            getattr(auxsurgery, name)
        except BaseException as err:
            failures[name] = f"{type(err).__name__}: {err}"
    return {"names": len(auxsurgery.__all__), "failures": failures}


phase("bare_import", bare_import)
phase("without_optional", without_optional)
phase("public_names", public_names)
print(json.dumps(results))
'''


@pytest.fixture(scope="module")
def probe():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", PROBE, ",".join(OPTIONAL)], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=300)
    assert run.returncode == 0 and run.stdout.strip(), f"probe failed ({run.returncode}):\n{run.stderr}"
    return json.loads(run.stdout.strip().splitlines()[-1])


def phase_detail(probe, name):
    result = probe[name]
    assert result["ok"], result["detail"]
    return result["detail"]


def test_bare_import_loads_only_the_version(probe):
    detail = phase_detail(probe, "bare_import")
    assert detail["preloaded"] == [], "the interpreter had these before the import; the check proves nothing"
    assert detail["package"] == ["auxsurgery", "auxsurgery.version"]
    assert detail["heavy"] == []


def test_attacks_and_model_need_none_of_the_optional_stack(probe):
    assert phase_detail(probe, "without_optional") == []


def test_every_public_name_resolves(probe):
    detail = phase_detail(probe, "public_names")
    assert detail["names"] > 1 and detail["failures"] == {}
