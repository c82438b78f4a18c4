"""The package's shape: imports point one way, and the parts that must stay light stay light.

Read from the sources (every import statement, also those inside functions), so an import
circle or a forbidden dependency fails here even where it would only bite at run time."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_deeplab"
NAME = PACKAGE.name


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (``from x import y`` counts x, and x.y
    when that is a module of the package)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
GRAPH = {
    name: {target for target in _imports(path) if target in MODULES and target != name}
    for name, path in MODULES.items()
}


def _without_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    # A package's __init__ re-exports its modules; the arrows that matter are between modules.
    return {name: {t for t in targets if not MODULES[t].name == "__init__.py"} for name, targets in graph.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return components


def test_no_module_imports_one_that_imports_it_back():
    assert _cycles(_without_packages(GRAPH)) == []


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _foreign_imports(subpackage: str) -> set[str]:
    names = set()
    for name, path in MODULES.items():
        if name == f"{NAME}.{subpackage}" or name.startswith(f"{NAME}.{subpackage}."):
            names |= {t.split(".")[0] for t in _imports(path)}
            names |= {
                t for t in _imports(path) if t.startswith(f"{NAME}.") and not t.startswith(f"{NAME}.{subpackage}")
            }
    return names


@pytest.mark.parametrize("subpackage", ["crf", "models"])
def test_the_layers_and_networks_know_nothing_of_lightning(subpackage):
    foreign = _foreign_imports(subpackage)
    assert not foreign & {"pytorch_lightning", "lightning", "lightning_fabric", "jsonargparse", "wandb"}


def test_the_crf_needs_nothing_but_torch_and_the_standard_library():
    foreign = {name for name in _foreign_imports("crf") if name.startswith(f"{NAME}.")}
    assert foreign == set()
    assert not _foreign_imports("crf") & {"numpy", "PIL", "albumentations", "torchvision"}


def test_the_top_level_holds_at_most_eight_loose_modules():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(loose) <= 8, loose


def test_the_command_dispatcher_imports_neither_torch_nor_lightning():
    # `deeplab --help` answers at once: the dispatcher and what it imports at module level
    # stay free of the heavy libraries.
    light = {f"{NAME}.commands.main", f"{NAME}.commands.registry", f"{NAME}.commands", NAME}
    for name in light:
        tree = ast.parse(MODULES[name].read_text())
        top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        roots = {alias.name.split(".")[0] for n in top_level if isinstance(n, ast.Import) for alias in n.names}
        roots |= {(n.module or "").split(".")[0] for n in top_level if isinstance(n, ast.ImportFrom) and not n.level}
        assert not roots & {"torch", "pytorch_lightning", "lightning", "numpy"}, name


LIGHTNING = ("pytorch_lightning", "lightning", "lightning_fabric")


def test_no_private_name_of_lightning_is_imported():
    private = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in LIGHTNING:
                private += [f"{name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
                private += [f"{name}: {node.module}" for part in (node.module or "").split(".") if part.startswith("_")]
    assert private == []


def test_the_cli_overrides_no_private_method_of_lightning_cli():
    from pytorch_lightning.cli import LightningCLI

    from lightning_deeplab.commands.cli import DeepLabCLI

    overridden = {
        n for n in vars(DeepLabCLI) if n.startswith("_") and not n.startswith("__") and hasattr(LightningCLI, n)
    }
    assert overridden == set()
    # nor calls one: every self._name the CLI uses is its own
    tree = ast.parse(MODULES[f"{NAME}.commands.cli"].read_text())
    used = {
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self"
    }
    assert {n for n in used if n.startswith("_") and hasattr(LightningCLI, n)} == set()


def test_the_data_knows_nothing_of_the_networks():
    # padding is marked by the data and filled by the network's normalisation (PAD_VALUE)
    assert not {name for name in _foreign_imports("data") if name.startswith(f"{NAME}.models")}


def test_the_formatter_is_skipped_rarely_and_each_time_with_its_reason():
    root = PACKAGE.parent
    skips = [
        (path, line)
        for folder in ("lightning_deeplab", "tests", "benchmarks")
        for path in (root / folder).rglob("*.py")
        for line in path.read_text().splitlines()
        if "fmt: skip" in line and path.name != "test_package_layout.py"
    ]
    assert len(skips) <= 10
    for path, line in skips:  # "... # <why>  # fmt: skip"
        assert line.count("#") >= 2, f"{path}: {line.strip()}"


def test_numbers_are_told_from_bools_in_one_place():
    guard = re.compile(
        r"isinstance\((\w+), bool\) or not isinstance\(\1|not isinstance\((\w+), int\) or isinstance\(\2, bool\)"
    )
    found = [name for name, path in MODULES.items() if guard.search(path.read_text())]
    assert found == []  # crf.values.is_integer / is_real
