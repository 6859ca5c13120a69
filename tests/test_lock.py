"""The lock (requirements.lock) against the package's ranges and the environment the tests run in.

pyproject.toml keeps compatible ranges; requirements.lock pins every package at the version the
test suite passed with (``make lock`` refreshes it), and ``make install`` installs from it."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
UNLOCKED = {"torch"}  # each machine or image brings its own build (CPU or CUDA)


def locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, pinned = line.split("==")
            pins[canonicalize_name(name)] = pinned
    return pins


def package_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return [Requirement(r) for r in names]


def test_the_lock_pins_every_requirement_within_the_package_ranges():
    pins = locked()
    for requirement in package_requirements():
        name = canonicalize_name(requirement.name)
        if name in UNLOCKED:
            assert name not in pins, f"{name} is left to the machine and must not be locked"
            continue
        assert name in pins, f"requirements.lock does not pin {name}"
        assert requirement.specifier.contains(pins[name]), f"locked {name}=={pins[name]} is outside {requirement}"


def test_the_lock_pins_exact_versions_and_pip_and_setuptools():
    text = (ROOT / "requirements.lock").read_text().splitlines()
    assert all(line.count("==") == 1 for line in text if line and not line.startswith("#"))
    assert {"pip", "setuptools", "optuna", "ray", "mlflow", "psycopg"} <= set(locked())


def test_this_environment_is_the_lock():
    installed = {}
    for name in locked():
        try:
            installed[name] = version(name)
        except PackageNotFoundError:  # the cluster extra (psycopg) is locked but not installed by `make install`
            continue
    wrong = {name: (installed[name], pinned) for name, pinned in locked().items() if installed.get(name, pinned) != pinned}
    assert not wrong, f"installed (version, locked version): {wrong}; run make install"
    assert {"optuna", "ray", "mlflow", "numpy", "pytest"} <= set(installed)


def test_pip_check_is_clean():
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
