"""The folder tree is the architecture: imports go down the layers only, no import cycle (imports inside
functions count), modules and functions stay small enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "segdeploy"
# lowest first; a module may import from its own layer and the layers below it
LAYERS = ["core", "data", "models", "training", "export", "engines", "runtime", "evaluation", "bench", "deploy", "study",
          "cli"]
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 8


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # segdeploy/__init__.py: the version, below everything
        return -1
    return LAYERS.index("cli") if parts[1] == "__main__" else LAYERS.index(parts[1])


def imported_modules(module: str) -> set[str]:
    """segdeploy modules that `module` imports anywhere in its body (functions and TYPE_CHECKING included)."""
    tree = ast.parse(MODULES[module].read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("segdeploy")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("segdeploy"):
            for alias in node.names:  # `from segdeploy.core import fileio` imports the module segdeploy.core.fileio
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
    return {name for name in found if name in MODULES and name != module}


GRAPH = {module: imported_modules(module) for module in MODULES}


def test_the_layers_are_the_ones_the_readme_shows():
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()} == set(LAYERS)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module):
    upward = sorted(target for target in GRAPH[module] if layer(target) > layer(module))
    assert not upward, f"{module} (layer {LAYERS[layer(module)]}) imports higher layers: {upward}"


def test_no_import_cycle():
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                cycle = stack[stack.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    source = "def f():\n    from segdeploy.cli import app\n"
    nodes = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)]
    assert nodes and nodes[0].module == "segdeploy.cli"  # the same walk as imported_modules
    assert "segdeploy.cli" in imported_modules("segdeploy.__main__")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_and_functions_stay_small(module):
    path = MODULES[module]
    lines = path.read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{path.name}: {lines} lines (at most {MAX_MODULE_LINES})"
    if module.startswith("segdeploy.cli"):  # Typer commands: one parameter per flag
        return
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{module}.{node.name}: {length} lines"
            args = node.args
            count = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs)
            count -= 1 if args.args and args.args[0].arg in ("self", "cls") else 0
            assert count <= MAX_PARAMETERS, f"{module}.{node.name}: {count} parameters"
