"""The house rules of the science core, checked on the source: no Ray, Optuna or MLflow inside
``micro_doe/platform``, and the two generator packages do not import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import micro_doe

PLATFORM = Path(micro_doe.__file__).parent / "platform"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_science_core_imports_no_orchestration_or_tracking() -> None:
    offenders = {
        str(p.relative_to(PLATFORM)): sorted(m for m in imported_modules(p) if m.split(".")[0] in {"ray", "optuna", "mlflow"})
        for p in PLATFORM.rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_science_core_imports_nothing_above_it() -> None:
    above = ("micro_doe.actors", "micro_doe.studies", "micro_doe.cli", "micro_doe.tracking")
    offenders = [str(p) for p in PLATFORM.rglob("*.py") if any(m.startswith(above) for m in imported_modules(p))]
    assert offenders == []


def test_generator_packages_do_not_import_each_other() -> None:
    for own, other in (("micro3diff", "ldm"), ("ldm", "micro3diff")):
        for p in (PLATFORM / own).rglob("*.py"):
            assert not any(m.startswith(f"micro_doe.platform.{other}") for m in imported_modules(p)), p
