"""The architecture as rules the code must keep: layers import downward only, no import cycles, no design chosen by
name outside its own package, and every lazily named part of a design resolves."""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.designs import DESIGNS

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
DESIGN_PACKAGES = {f"pipelines.{d.name}" for d in DESIGNS}
# What each layer must not import (any module at or below these names).
FORBIDDEN = {
    "pipelines.settings": {"pipelines", "feature_repo"},
    "pipelines.platform": {
        *DESIGN_PACKAGES,
        "pipelines.monitoring",
        "pipelines.cli",
        "pipelines.demo",
        "pipelines.designs",
        "feature_repo",
    },
    **{
        package: {
            *(DESIGN_PACKAGES - {package}),
            "pipelines.monitoring",
            "pipelines.cli",
            "pipelines.demo",
            "pipelines.designs",
        }
        for package in DESIGN_PACKAGES
    },
    "pipelines.monitoring": {"pipelines.cli", "pipelines.demo", *DESIGN_PACKAGES},
    "feature_repo": {"pipelines"},
}
ALLOWED_EXCEPTIONS = {("pipelines.settings", "pipelines.settings")}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def source_modules() -> dict[str, Path]:
    files = [*ROOT.joinpath("pipelines").rglob("*.py"), *ROOT.joinpath("feature_repo").rglob("*.py")]
    return {module_name(path): path for path in sorted(files)}


def imports(path: Path) -> Iterator[tuple[str, int]]:
    """Every module `path` imports, at module level or inside a function, with the line."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
            for alias in node.names:  # `from pipelines.fraud import modeling` imports a module too
                yield f"{node.module}.{alias.name}", node.lineno


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def project_graph() -> dict[str, set[str]]:
    modules = source_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target, _ in imports(path):
            if target in modules and target != name:
                graph[name].add(target)
    return graph


def test_every_layer_imports_only_what_lies_below_it() -> None:
    broken = []
    for name, path in source_modules().items():
        rules = [forbidden for layer, forbidden in FORBIDDEN.items() if within(name, layer)]
        for target, line in imports(path):
            for forbidden in rules:
                if any(within(target, f) for f in forbidden) and (name, target) not in ALLOWED_EXCEPTIONS:
                    broken.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert broken == []


def test_the_rules_catch_an_upward_import(tmp_path: Path) -> None:
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("def f():\n    from pipelines.fraud.model import MODEL_NAME\n    return MODEL_NAME\n")
    assert ("pipelines.fraud.model", 2) in set(imports(sneaky))
    forbidden = FORBIDDEN["pipelines.platform"]
    assert any(within("pipelines.fraud.model", f) for f in forbidden)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_through_others() -> None:
    graph = project_graph()
    # A package's __init__ is imported with every module below it; only module-to-module edges count.
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


DESIGN_WORDS = {d.name for d in DESIGNS} | {d.model_name for d in DESIGNS}


def name_branches(path: Path) -> Iterator[str]:
    """Comparisons with a design's name, and mappings keyed by one: how code chooses a design by name."""
    tree = ast.parse(path.read_text(), str(path))
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path

    def is_name(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant) and node.value in DESIGN_WORDS:
            return True
        return isinstance(node, ast.Tuple | ast.List | ast.Set) and any(is_name(e) for e in node.elts)

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(is_name(n) for n in (node.left, *node.comparators)):
            yield f"{where}:{node.lineno} compares with a design name"
        elif isinstance(node, ast.Dict) and any(k is not None and is_name(k) for k in node.keys):
            yield f"{where}:{node.lineno} keys a mapping by design name"
        elif isinstance(node, ast.MatchValue) and is_name(node.value):
            yield f"{where}:{node.lineno} matches a design name"


def test_no_code_outside_a_design_package_chooses_a_design_by_name() -> None:
    found = [
        branch
        for name, path in source_modules().items()
        if not any(within(name, package) for package in DESIGN_PACKAGES) and not within(name, "feature_repo")
        for branch in name_branches(path)
    ]
    assert found == []


def test_the_branch_finder_sees_a_branch(tmp_path: Path) -> None:
    code = tmp_path / "branchy.py"
    code.write_text('def f(d):\n    if d == "fraud":\n        return {"recsys": 1}\n')
    assert len(list(name_branches(code))) == 2


def lazy_targets() -> Iterator[tuple[str, str]]:
    for design in DESIGNS:
        stack: list[object] = [design]
        while stack:
            value = stack.pop()
            target = getattr(value, "target", None)
            if isinstance(target, str):
                yield design.name, target
            elif hasattr(value, "__dataclass_fields__"):
                stack.extend(getattr(value, field) for field in value.__dataclass_fields__)  # type: ignore[attr-defined]


def test_every_lazily_named_part_of_a_design_resolves_to_a_function() -> None:
    targets = list(lazy_targets())
    assert len(targets) >= 10 * len(DESIGNS)
    for design, target in targets:
        module, _, name = target.partition(":")
        assert callable(getattr(importlib.import_module(module), name, None)), f"{design}: {target}"


def test_listing_the_designs_imports_no_heavy_library() -> None:
    import subprocess
    import sys

    heavy = ("pandas", "feast", "mlflow", "xgboost", "bentoml", "evidently")
    code = f"import sys, pipelines.designs; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert loaded.stdout.strip() == ""
