"""Imports run one way: entry points -> data, evaluation, training -> models; no cycles.

The task library (`tasks/`, installed as `flan_jax_tasks`) sits above the library
packages, beside the entry points: it builds on `flan_jax`'s packages, and only entry
points register it, so nothing below them imports `flan_jax_tasks`.
"""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "flan_jax"
TASKS = REPO / "tasks"
# What each package may import from flan_jax, besides itself and the leaf modules.
ALLOWED = {
    "models": set(),
    "data": set(),
    "training": {"models"},
    "evaluation": {"models", "data"},
}
# Import nothing from flan_jax but other leaves.
LEAVES = {"errors", "metrics", "model_dir", "orbax_messages", "paths"}


def _imports(path: pathlib.Path, top: str) -> set[str]:
  """The first component after `top.` of every import in the file (`top` itself for
  `import top`)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    names = []
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      assert node.level == 0, f"{path}: relative import (import {top}.<package> instead)"
      names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    for name in names:
      parts = name.split(".")
      if parts[0] == top:
        found.add(parts[1] if len(parts) > 1 else top)
  return found


def _flan_jax_imports(path: pathlib.Path) -> set[str]:
  return _imports(path, "flan_jax") - {"flan_jax"}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_downward(package):
  for path in sorted((PACKAGE / package).rglob("*.py")):
    imported = _flan_jax_imports(path) - {package} - LEAVES
    assert imported <= ALLOWED[package], f"{path.name} imports {sorted(imported - ALLOWED[package])}"


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_leaf_modules_import_nothing_from_flan_jax_but_leaves(leaf):
  assert _flan_jax_imports(PACKAGE / f"{leaf}.py") <= LEAVES - {leaf}


def _below_the_entry_points() -> list[pathlib.Path]:
  files = [PACKAGE / f"{leaf}.py" for leaf in sorted(LEAVES)]
  return files + [path for package in sorted(ALLOWED)
                  for path in sorted((PACKAGE / package).rglob("*.py"))]


def test_nothing_below_the_entry_points_imports_the_task_library():
  for path in _below_the_entry_points():
    assert not _imports(path, "flan_jax_tasks"), (
        f"{path.relative_to(REPO)} imports flan_jax_tasks; let an entry point register it")


def test_the_task_library_imports_only_flan_jax_packages_and_leaves():
  files = sorted(TASKS.rglob("*.py"))
  assert files, f"no task library under {TASKS}"
  for path in files:
    imported = _flan_jax_imports(path) - set(ALLOWED) - LEAVES
    assert not imported, f"{path.relative_to(REPO)} imports the entry point(s) {sorted(imported)}"


def test_the_rules_catch_an_upward_import(tmp_path):
  upward = tmp_path / "upward.py"
  upward.write_text("import flan_jax_tasks.default_mixture\nfrom flan_jax import train\n")
  assert _imports(upward, "flan_jax_tasks") == {"default_mixture"}
  assert _flan_jax_imports(upward) - set(ALLOWED) - LEAVES == {"train"}
