"""Chaos: a 20-trial study on a 3-node local Ray cluster while worker nodes are killed and
replaced again and again. It must end with the exact budget, nothing RUNNING and no trial lost
or run twice. A few minutes on 2 cores, so it runs as ``make chaos-test``
(``MICRO_DOE_CHAOS=1``), not in ``make test``; it prints its figures (docs/explanation/studies.md)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState
from study_fixtures import write_study

pytestmark = [
    pytest.mark.filterwarnings("ignore"),
    pytest.mark.skipif(not os.environ.get("MICRO_DOE_CHAOS"), reason="minutes long: `make chaos-test` runs it"),
]

TRIALS = 20
EVERY_S = 30.0  # a worker node is killed (and a fresh one added) this often


def test_a_study_survives_nodes_killed_and_replaced_again_and_again(tmp_path, tiny_bundle, cluster):
    """The driver is `micro-doe run` in a process of its own (as an operator runs it); this test's
    main thread is the chaos (Ray starts a node only from a main thread)."""
    path = write_study(
        tmp_path, tiny_bundle, budget={"n_trials": TRIALS}, constraints=[],
        search={"n_h": {"int": [1, 3]}, "steps": {"int": [6, 10]}},
        resources={"generators": 1, "evaluators": 2, "placement_timeout_s": 120},
    )  # fmt: skip
    env = os.environ | {"RAY_ADDRESS": cluster.address, "PYTHONUNBUFFERED": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    rng = random.Random(0)
    kills, runs, codes = 0, 0, []
    start = time.monotonic()
    while runs < 10:  # a run that lost every actor of a kind stops (exit 1); the operator reruns it
        runs += 1
        with open(tmp_path / f"run-{runs}.log", "w") as log:
            driver = subprocess.Popen([sys.executable, "-m", "micro_doe.cli.app", "run", path], env=env,
                                      stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
            while driver.poll() is None:
                try:
                    driver.wait(timeout=EVERY_S)
                except subprocess.TimeoutExpired:
                    victim = rng.choice(sorted(cluster.worker_nodes, key=lambda n: n.unique_id))
                    cluster.remove_node(victim, allow_graceful=False)
                    cluster.add_node(num_cpus=1)  # a replacement: the study's actors restart there
                    kills += 1
        codes.append(driver.returncode)
        if driver.returncode == 0:
            break
        assert driver.returncode == 1 and "actor was lost" in (tmp_path / f"run-{runs}.log").read_text(), codes
    wall = time.monotonic() - start

    trials = optuna.load_study(study_name="e2e", storage=f"sqlite:///{tmp_path}/optuna.db").get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    requeued = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("requeued")]
    counted_failures = [t for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get("requeued")]
    assert codes[-1] == 0 and len(complete) == TRIALS and not counted_failures
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    seeds = [t.user_attrs["seed"] for t in complete]
    assert len(set(seeds)) == TRIALS  # nothing ran twice
    by_number = {t.number: t for t in trials}
    copies = {t.user_attrs["requeued_from"]: t for t in trials if t.user_attrs.get("requeued_from") is not None}
    for t in requeued:  # every re-queued trial ran again (a copy may itself be re-queued), same parameters and seed
        chain = [t]
        while chain[-1].state != TrialState.COMPLETE:
            assert chain[-1].number in copies, f"trial {t.number} was re-queued but never ran to the end"
            chain.append(copies[chain[-1].number])
        assert all(c.params == t.params and c.user_attrs["seed"] == t.user_attrs["seed"] for c in chain)
        assert by_number[chain[-1].number] in complete
    print(f"\nchaos: {TRIALS} trials complete in {wall:.0f} s over {runs} run(s) (exit codes {codes}); {kills} worker "
          f"nodes killed (one every {EVERY_S:g} s, each replaced); {len(requeued)} trials re-queued and run again; "
          f"{len(trials)} trial records in all; nothing RUNNING, nothing lost, nothing run twice")
