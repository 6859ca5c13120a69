"""A study on a real multi-node Ray cluster (``ray.cluster_utils.Cluster``: one raylet process
per node on this machine) whose nodes die mid-study: trials are re-queued, never lost or
counted twice, and the study goes on with what is left or stops with a clear message."""

from __future__ import annotations

import time

import optuna
import pytest
import ray
from optuna.trial import TrialState
from ray_clusters import remove_node_of
from study_fixtures import write_study

from micro_doe.actors import ActorHealth, CapacityLostError, actor_state
from micro_doe.studies.runner import Study

pytestmark = pytest.mark.filterwarnings("ignore")


def test_actor_health_quarantines_probes_and_gives_up(cluster):
    @ray.remote(num_cpus=1)
    class Sleeper:
        def ping(self) -> int:
            return 1

    placed, healthy = Sleeper.remote(), Sleeper.remote()
    ray.get([placed.ping.remote(), healthy.ping.remote()])
    never = Sleeper.options(num_cpus=8).remote()  # no node has 8 CPUs: pending creation forever
    deadline = time.monotonic() + 30  # DEPENDENCIES_UNREADY for a moment after submission
    while actor_state(never) != "PENDING_CREATION" and time.monotonic() < deadline:
        time.sleep(0.1)
    health = ActorHealth(wait_s=5.0, probe_every_s=0.0, check_every_s=0.0)
    actors = {"placed": placed, "healthy": healthy, "never": never}
    assert health.poll(actors, now=0.0) == ([], [])
    # Only the actor that waits for room counts as waiting: busy ALIVE actors are not a stall.
    assert health.waiting() == {"never": "PENDING_CREATION"}
    # A failed call quarantines an actor; its probe answers, so it is back.
    health.fail("healthy", ray.exceptions.ActorUnavailableError("node gone", None), now=0.0)
    assert health.quarantined == {"healthy": 0.0} and health.poll(actors, now=0.5) == ([], [])
    assert health.waiting() == {"never": "PENDING_CREATION", "healthy": "quarantined"}
    ray.wait(health.probe_refs(), num_returns=1, timeout=30)
    assert health.poll(actors, now=1.0) == (["healthy"], []) and not health.quarantined
    # Ray gives an actor up: lost at once, and reported once; one never placed is not judged.
    ray.kill(placed, no_restart=True)
    deadline = time.monotonic() + 30
    while actor_state(placed) != "DEAD" and time.monotonic() < deadline:
        time.sleep(0.2)
    recovered, lost = health.poll(actors, now=2.0)
    assert recovered == [] and [k for k, _ in lost] == ["placed"] and "Ray gave it up" in lost[0][1]
    assert health.poll(actors, now=100.0) == ([], [])
    # Quarantined without an answer for wait_s: lost.
    health.fail("never", ray.exceptions.ActorUnavailableError("no node", None), now=100.0)
    assert health.poll(actors, now=101.0)[1] == []
    assert [k for k, _ in health.poll(actors, now=106.0)[1]] == ["never"]
    ray.kill(never, no_restart=True)
    ray.kill(healthy, no_restart=True)


@pytest.mark.parametrize("looked_before", [True, False], ids=["seen-alive", "first-read-after-the-loss"])
def test_an_actor_whose_node_died_is_quarantined_at_the_first_gcs_read(cluster, looked_before):
    """Before any call of it fails: its work can go elsewhere while Ray waits for room for it;
    also when the first GCS read comes after the loss (RESTARTING: it was up)."""
    node = cluster.add_node(num_cpus=0, resources={"only_here": 1})
    cluster.wait_for_nodes()

    @ray.remote(num_cpus=0, resources={"only_here": 1}, max_restarts=-1)
    class Pinned:
        def ping(self) -> int:
            return 1

    actor = Pinned.remote()
    ray.get(actor.ping.remote())
    health = ActorHealth(wait_s=3600.0, probe_every_s=3600.0, check_every_s=0.0)
    if looked_before:
        assert health.poll({"pinned": actor}) == ([], []) and health.take_newly_away() == []  # seen ALIVE
    cluster.remove_node(node, allow_graceful=False)  # no other node has `only_here`: it cannot come back
    away: list = []
    deadline = time.monotonic() + 120
    while not away and time.monotonic() < deadline:
        time.sleep(0.5)
        recovered, lost = health.poll({"pinned": actor})
        assert recovered == [] and lost == []  # away, not given up: the hour has not passed
        away = health.take_newly_away()
    assert [k for k, _ in away] == ["pinned"] and "process or node was lost" in away[0][1]
    assert "pinned" in health.quarantined and health.take_newly_away() == []  # reported once
    ray.kill(actor, no_restart=True)


def test_lost_nodes_requeue_their_trials_and_the_budget_stays_exact(tmp_path, tiny_bundle, cluster):
    path = write_study(
        tmp_path, tiny_bundle, budget={"n_trials": 4}, constraints=[],
        search={"n_h": {"int": [2, 3]}, "steps": {"int": [6, 8]}},
        resources={"generators": 1, "evaluators": 2, "placement_timeout_s": 3},
    )  # fmt: skip
    killed: list[str] = []
    notes: list[str] = []

    def kill_after_first_trial(kind: str):  # type: ignore[no-untyped-def]
        first: list[int] = []

        def on_progress(progress) -> None:  # type: ignore[no-untyped-def]
            first[:] = first or [progress.done]  # counted trials when this run started
            if progress.note:
                notes.append(progress.note)
            if not killed and progress.done > first[0]:
                killed.append(remove_node_of(cluster, kind))

        return on_progress

    # 1. The generator's node dies: no node is left for it, so the run stops with the trial in
    #    flight re-queued.
    try:
        Study.from_yaml(path).run(on_progress=kill_after_first_trial("generator"))
        outcome = "the run finished"
    except CapacityLostError as err:
        outcome = str(err)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    trials = optuna.load_study(study_name="e2e", storage=storage).get_trials()
    seen = [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials]
    assert "every generator actor was lost" in outcome, (outcome, killed, notes, seen)
    assert killed and not [t for t in trials if t.state == TrialState.RUNNING]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and all(t.user_attrs.get("requeued") for t in failed)
    assert all("generator actor" in t.user_attrs["fail_reason"] or "lost every generator" in t.user_attrs["fail_reason"]
               for t in failed), [t.user_attrs["fail_reason"] for t in failed]  # fmt: skip

    n_run1 = len(trials)

    # 2. A node joins; the rerun starts with the re-queued trials, loses an evaluator's node
    #    on the way and goes on with the other evaluator.
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    killed.clear()
    result = Study.from_yaml(path).run(on_progress=kill_after_first_trial("evaluator"))
    assert killed  # and the run finished on the evaluator left
    trials = optuna.load_study(study_name="e2e", storage=storage).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    counted_failures = [t for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get("requeued")]
    assert len(complete) == 4 == len(result.completed) and not counted_failures
    assert not counted_failures and not [t for t in trials if t.state == TrialState.RUNNING]
    for t in trials[n_run1:]:  # run 2's failures: only trials whose evaluator's node died
        if t.state == TrialState.FAIL:
            assert t.user_attrs.get("requeued") and "evaluator actor" in t.user_attrs["fail_reason"], t.user_attrs
    seeds = [t.user_attrs["seed"] for t in complete]
    assert len(set(seeds)) == len(seeds)  # nothing ran twice
    for t in (t for t in trials if t.user_attrs.get("requeued")):  # every re-queued trial ran again
        again = [c for c in complete if c.user_attrs.get("requeued_from") == t.number]
        assert len(again) == 1 and again[0].params == t.params and again[0].user_attrs["seed"] == t.user_attrs["seed"]


def test_a_lost_evaluator_node_requeues_its_trial_at_once_to_the_actors_left(tmp_path, tiny_bundle, cluster, monkeypatch,
                                                                            capfd):  # fmt: skip
    """With a placement timeout far longer than the study, the trial whose evaluator's node died
    is re-queued as soon as Ray shows the actor away (or its call fails), not after the timeout;
    Ray's messages about it go to a log file, not the terminal."""
    from micro_doe.actors.cluster import _keep_ray_messages_in_a_log, ray_messages_log

    monkeypatch.setenv("MICRO_DOE_CACHE", str(tmp_path / "cache"))
    _keep_ray_messages_in_a_log()  # what connect() does (this module's fixture called ray.init itself)
    while len(cluster.worker_nodes) < 3:
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    path = write_study(
        tmp_path, tiny_bundle, budget={"n_trials": 4}, constraints=[],
        search={"n_h": {"int": [2, 3]}, "steps": {"int": [6, 8]}},
        resources={"generators": 1, "evaluators": 2, "placement_timeout_s": 3600},
    )  # fmt: skip
    killed: list[str] = []
    notes: list[str] = []

    def on_progress(progress) -> None:  # type: ignore[no-untyped-def]
        if progress.note:
            notes.append(progress.note)
        if not killed and progress.done >= 1:
            killed.append(remove_node_of(cluster, "evaluator"))

    result = Study.from_yaml(path).run(on_progress=on_progress)
    trials = optuna.load_study(study_name="e2e", storage=f"sqlite:///{tmp_path}/optuna.db").get_trials()
    assert killed and len(result.completed) == 4 and not [t for t in trials if t.state == TrialState.RUNNING]
    requeued = [t for t in trials if t.user_attrs.get("requeued")]
    for t in requeued:  # away (the GCS read) or unavailable (its call failed): never the hour's timeout
        reason = t.user_attrs["fail_reason"]
        assert "evaluator actor" in reason and "no answer within" not in reason and "3600" not in reason, reason
    assert len({t.user_attrs["seed"] for t in trials if t.state == TrialState.COMPLETE}) == 4  # nothing ran twice
    time.sleep(1)  # Ray's error thread polls
    printed = capfd.readouterr()
    assert "(raylet)" not in printed.out + printed.err and "will be retried" not in printed.out + printed.err
    if requeued:  # a failed call: Ray told the driver, into the log
        assert "EvaluatorWorker" in ray_messages_log().read_text()
