"""The project's modules import one another without circles, counting the imports
inside function bodies, which would otherwise hide one."""

import ast
from pathlib import Path

from tests.conftest import REPOSITORY

PACKAGES = ("artifacts", "benchmarks", "commandline", "loadtest", "scoring", "service",
            "training", "uncertainty")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPOSITORY).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path
            for package in PACKAGES for path in (REPOSITORY / package).rglob("*.py")}


def imported(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules that the module ``name`` at ``path`` imports, anywhere in it:
    ``from package import submodule`` counts as the submodule."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:  # the project's imports are absolute
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
    return found & modules.keys()


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_circles_are_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": set()}
    assert circles(graph) == [["a", "b", "c"]]


def test_an_import_inside_a_function_counts(tmp_path):
    path = tmp_path / "evaluate_auto.py"
    path.write_text("def report():\n    from training.evaluate import flag_fractions\n")
    modules = {"training.evaluate": path, "training.evaluate_auto": path}
    assert imported(path, "training.evaluate_auto", modules) == {"training.evaluate"}


def test_no_module_imports_itself_through_others():
    modules = project_modules()
    graph = {name: imported(path, name, modules) - {name} for name, path in modules.items()}
    assert circles(graph) == []

