"""Imports run one way: entry points -> data, evaluation, training -> models; no cycles."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "flan_jax"
# What each package may import from flan_jax, besides itself and the leaf modules.
ALLOWED = {
    "models": set(),
    "data": set(),
    "training": {"models"},
    "evaluation": {"models", "data"},
}
# Import nothing from flan_jax but other leaves.
LEAVES = {"errors", "metrics", "model_dir", "orbax_messages", "paths"}


def _flan_jax_imports(path: pathlib.Path) -> set[str]:
  """The first component after `flan_jax.` of every import in the file."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    names = []
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      assert node.level == 0, f"{path}: relative import (import flan_jax.<package> instead)"
      names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    for name in names:
      parts = name.split(".")
      if parts[0] == "flan_jax" and len(parts) > 1:
        found.add(parts[1])
  return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_downward(package):
  for path in sorted((PACKAGE / package).rglob("*.py")):
    imported = _flan_jax_imports(path) - {package} - LEAVES
    assert imported <= ALLOWED[package], f"{path.name} imports {sorted(imported - ALLOWED[package])}"


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_leaf_modules_import_nothing_from_flan_jax_but_leaves(leaf):
  assert _flan_jax_imports(PACKAGE / f"{leaf}.py") <= LEAVES - {leaf}
