"""The house rules that keep the code findable: what each package may import, and folders of a readable size."""

import ast
import sys
from collections import defaultdict
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parents[1]
LAB = REPO_ROOT / "diffclip_lab"
# What a checkpoint's code may need on a user's machine (pyproject's core dependencies), besides the standard library
MODEL_DEPENDENCIES = {"torch", "transformers", "safetensors", "huggingface_hub", "modeling_diffclip"}
MAX_MODULES = 12


def imported_modules(path: Path) -> set[str]:
    """Absolute module names a file imports; relative imports resolved against its package."""
    package = path.relative_to(REPO_ROOT).with_suffix("").parts[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            module = ".".join([*base, *([node.module] if node.module else [])])
            # `from . import x` / `from diffclip_lab.demo import shapes` name modules too
            names.update(f"{module}.{alias.name}" for alias in node.names)
            names.add(module)
    return names


def lab_subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "diffclip_lab" and len(parts) > 1 and (LAB / parts[1]).is_dir() else None


def test_the_model_package_needs_only_what_a_checkpoint_user_has():
    for path in (REPO_ROOT / "modeling_diffclip").rglob("*.py"):
        outside = {
            name.split(".")[0]
            for name in imported_modules(path)
            if name and name.split(".")[0] not in sys.stdlib_module_names
        }
        assert outside <= MODEL_DEPENDENCIES, f"{path.name} imports {sorted(outside - MODEL_DEPENDENCIES)}"


def lab_dependencies() -> dict[str, set[str]]:
    """Sub-package -> the other sub-packages its modules import."""
    graph = defaultdict(set)
    for path in LAB.rglob("*.py"):
        own = path.relative_to(LAB).parts[0]
        if own.endswith(".py"):
            continue
        graph[own] |= {lab_subpackage(name) for name in imported_modules(path)} - {None, own}
    return graph


def test_core_depends_on_no_other_part_of_the_lab():
    assert lab_dependencies()["core"] == set()


def test_the_lab_sub_packages_depend_on_each_other_one_way():
    graph = lab_dependencies()
    done, active = set(), []

    def visit(package):
        if package in active:
            pytest.fail(
                "import cycle between sub-packages: " + " -> ".join([*active[active.index(package) :], package])
            )
        if package not in done:
            active.append(package)
            for dependency in sorted(graph[package]):
                visit(dependency)
            active.pop()
            done.add(package)

    for package in sorted(graph):
        visit(package)


def test_the_lab_is_grouped_in_folders_of_a_readable_size():
    assert [p.name for p in LAB.glob("*.py")] == ["__init__.py"], "modules belong in a sub-package by role"
    for folder in (p for p in LAB.iterdir() if p.is_dir() and p.name != "__pycache__"):
        modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
        assert (folder / "__init__.py").is_file(), folder.name
        assert 0 < len(modules) <= MAX_MODULES, folder.name


@pytest.mark.parametrize("folder", ["examples", "convert", "benchmarks", "diffclip_lab", "modeling_diffclip"])
def test_nothing_edits_the_import_path(folder):
    """Scripts import the lab as an installed package."""
    for path in (REPO_ROOT / folder).rglob("*.py"):
        assert "sys.path" not in path.read_text(), path
