"""Ctrl-C and SIGTERM on a real ``micro-doe run`` (a local Ray instance, sqlite stores): the
driver exits 130 / 143 with one line, fails and re-queues the running trial, and a rerun
runs that trial's parameters and seed before anything else."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

import optuna
import pytest
import yaml
from live_processes import start_driver, wait_for_trials
from optuna.trial import TrialState

from micro_doe.studies.runner import Study

pytestmark = pytest.mark.filterwarnings("ignore")
T = TypeVar("T")


def write_study(tmp_path, model) -> str:  # type: ignore[no-untyped-def]
    spec = {
        "name": "interrupted",
        "generator": {"kind": "micro3diff", "model": str(model)},
        # Steps enough that a trial's generation outlasts the second the test waits inside it
        # (the actors boot while the stores are set up, so the first one starts at once).
        "search": {"n_h": {"int": [2, 3]}, "steps": {"int": [30, 40]}},
        "samples_per_trial": 2,
        "objectives": [{"name": "s2_error"}],
        # A two-point initial design: the interrupted first trial is re-queued *behind* the
        # second Sobol point, so running it first is the runner's doing, not Optuna's order.
        "sampler": {"kind": "tpe", "seed": 0, "initial_design": {"kind": "sobol", "n": 2}},
        "budget": {"n_trials": 4},
        "resources": {"generators": 1, "evaluators": 1},
        "storage": f"sqlite:///{tmp_path}/optuna.db",
        "tracking": f"sqlite:///{tmp_path}/mlflow.db",
        "artifacts": f"{tmp_path}/artifacts",
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def interrupt(driver: subprocess.Popen, signum: int, when: Callable[[], T]) -> tuple[str, T]:
    """Wait for ``when()``, then send ``signum`` to the driver only (as `kill` or a scheduler
    would); its stderr once it has exited, and what ``when`` returned. Whatever is left of it
    is killed at the end."""
    try:
        ready = when()
        driver.send_signal(signum)
        _, err = driver.communicate(timeout=120)
        return err, ready
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=30)


@pytest.mark.parametrize(("signum", "code", "how"), [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_an_interrupted_run_exits_with_the_signal_code_and_resumes_requeued_first(signum, code, how, tmp_path, tiny_bundle):
    path = write_study(tmp_path, tiny_bundle)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    driver = start_driver(path, stderr=subprocess.PIPE, text=True)

    def trial_running() -> None:
        wait_for_trials(storage, "interrupted", driver, lambda trials: any(t.state == TrialState.RUNNING for t in trials))
        time.sleep(1.0)  # inside the generator call

    err, _ = interrupt(driver, signum, trial_running)
    assert driver.returncode == code, err
    assert re.search(rf"interrupted \({how}\); \d+ trials complete, run the same command to resume", err), err
    assert "Traceback" not in err and "*** " not in err and "core dumped" not in err.lower(), err

    study = optuna.load_study(study_name="interrupted", storage=storage)
    trials = study.get_trials(deepcopy=False)
    assert not [t for t in trials if t.state == TrialState.RUNNING]  # nothing left hanging
    interrupted = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("requeued")]
    assert len(interrupted) == 1 and how in interrupted[0].user_attrs["fail_reason"]
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert waiting and waiting[0].user_attrs.get("initial_design") == "sobol"  # queued before the re-queued one

    done_before = {t.number for t in trials if t.state == TrialState.COMPLETE}
    Study.from_yaml(path).run(n_trials=len(done_before) + 1)  # room for exactly one more trial
    complete = optuna.load_study(study_name="interrupted", storage=storage).get_trials(states=(TrialState.COMPLETE,))
    new = [t for t in complete if t.number not in done_before]
    assert len(new) == 1
    assert new[0].user_attrs["requeued_from"] == interrupted[0].number
    assert new[0].params == interrupted[0].params and new[0].user_attrs["seed"] == interrupted[0].user_attrs["seed"]


@pytest.mark.parametrize(("signum", "code", "how"), [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_an_interrupt_while_ray_starts_exits_with_the_signal_code_and_stops_ray(signum, code, how, tmp_path, tiny_bundle):
    import psutil

    path = write_study(tmp_path, tiny_bundle)
    driver = start_driver(path, stderr=subprocess.PIPE, text=True)

    def ray_starting() -> list[psutil.Process]:
        """Once Ray's first server is up: everything the driver has started so far."""
        me = psutil.Process(driver.pid)
        deadline = time.time() + 120
        started: list[psutil.Process] = []
        while time.time() < deadline and driver.poll() is None and not started:
            started = [p for p in me.children(recursive=True) if "gcs_server" in " ".join(p.cmdline())]
            time.sleep(0.05)
        assert started, "ray never started"
        return me.children(recursive=True)

    err, children = interrupt(driver, signum, ray_starting)
    assert driver.returncode == code, err
    assert f"interrupted ({how})" in err and "Traceback" not in err, err
    _, alive = psutil.wait_procs(children, timeout=30)  # what the driver started stops with it
    assert not alive, [" ".join(p.cmdline())[:80] for p in alive]
