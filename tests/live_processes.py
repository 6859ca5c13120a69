"""Helpers for tests that drive real processes: a ``micro-doe run`` driver, and servers
(optuna-dashboard, ``mlflow server``) asked through their HTTP APIs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import optuna
import pytest


def start_driver(study_yaml: str, **popen: object) -> subprocess.Popen:
    """``micro-doe run STUDY`` on a local Ray (``RAY_ADDRESS`` dropped), in its own session
    (``os.killpg`` stops it and all it started)."""
    env = os.environ | {"PYTHONUNBUFFERED": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    options = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL} | popen
    return subprocess.Popen([sys.executable, "-m", "micro_doe.cli.app", "run", study_yaml], env=env,
                            start_new_session=True, **options)  # type: ignore[call-overload]


def wait_for_trials(
    storage: str,
    study_name: str,
    driver: subprocess.Popen,
    condition: Callable[[list[optuna.trial.FrozenTrial]], bool],
    timeout: float = 240,
) -> list[optuna.trial.FrozenTrial]:
    """Poll the study's trials until ``condition`` holds; fail if the driver exits first."""
    deadline = time.time() + timeout
    while time.time() < deadline and driver.poll() is None:
        time.sleep(0.3)
        try:
            trials = optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
        except Exception:  # noqa: BLE001 — the study does not exist yet
            continue
        if condition(trials):
            return trials
    pytest.fail(f"the trials never reached the awaited state (driver exit code {driver.poll()})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, body: dict | None = None) -> dict:
    """GET (or POST ``body``) and decode the JSON answer."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@contextmanager
def serving(command: list[str], probe: str, timeout: float = 90) -> Iterator[None]:
    """Run a server until the block ends; enter once ``probe`` answers with JSON."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                get_json(probe)
                break
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"{command[0]} did not answer: {process.stderr.read().decode()[-2000:]}") from None
                time.sleep(0.3)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stderr.close()
