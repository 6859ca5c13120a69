"""The Optuna side of a study: storage, sampler, initial design, resume bookkeeping, and the
lease that lets one driver at a time run a study."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from micro_doe.studies.spec import StudySpec

optuna.logging.set_verbosity(optuna.logging.WARNING)


def open_study(spec: StudySpec) -> optuna.Study:
    """Create or load the study in its RDB storage; sqlite gets WAL and a generous lock timeout."""
    url = spec.storage
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 30}}
    storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    if url.startswith("sqlite:///"):
        from sqlalchemy import text

        with storage.engine.connect() as conn:  # readers never block the writer; persists in the file
            conn.execute(text("PRAGMA journal_mode=WAL"))
    directions = spec.directions()
    study = optuna.create_study(
        storage=storage,
        study_name=spec.name,
        directions=directions,
        sampler=make_sampler(spec),
        load_if_exists=True,
    )
    found = [d.name.lower() for d in study.directions]
    if found != directions:  # load_if_exists ignores `directions` for an existing study
        raise ValueError(
            f"study {spec.name!r} in {url} has directions {found}, but the spec asks for {directions}; "
            "rename the study or use another storage"
        )
    return study


def describe_study(study: optuna.Study, spec: StudySpec, objective_names: list[str]) -> None:
    """What optuna-dashboard shows about the study: objective names (axis titles, columns) and
    user attributes: the generator, the model, the objectives with their directions, the
    constraints, and a hash of the spec (a changed spec under the same name shows)."""
    import hashlib
    import json

    study.set_metric_names(objective_names)
    text = json.dumps(spec.model_dump(mode="json", by_alias=True), sort_keys=True)
    attrs = {
        "generator": spec.generator.kind,
        "model": spec.generator.model,
        "objectives": ", ".join(f"{n} ({d})" for n, d in zip(objective_names, spec.directions())),
        "constraints": ", ".join(c.describe() for c in spec.constraints) or "none",
        "samples_per_trial": spec.samples_per_trial,
        "spec_sha256": hashlib.sha256(text.encode()).hexdigest()[:16],
    }
    for key, value in attrs.items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)


CONSTRAINTS_KEY = "constraints"  # the list Optuna's samplers and optuna-dashboard both read


def set_constraints(study: optuna.Study, trial: optuna.trial.Trial, constraints: list[tuple[str, float]]) -> None:
    """Store a RUNNING trial's constraint values (feasible when every value ≤ 0).

    Optuna 5 reads constraints from the system attr ``constraints`` (a list, the form its
    deprecated ``constraints_func`` writes) and from ``constraints:<name>`` (what
    ``Trial.set_constraint`` writes); optuna-dashboard 0.21 reads only the list. So the list is
    written, once (writing both would count every constraint twice), in the spec's order; the
    readable side, ``constraint: <bound>`` = value and ``feasible``, goes to user attrs, which
    the dashboard shows on the trial page and as columns.
    """
    values = [float(v) for _, v in constraints]
    if not constraints:
        return
    study._storage.set_trial_system_attr(trial._trial_id, CONSTRAINTS_KEY, values)
    for name, value in constraints:
        trial.set_user_attr(f"constraint: {name}", value)
    trial.set_user_attr("feasible", all(v <= 0.0 for v in values))


def make_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded. Constraints reach every sampler through :func:`set_constraints`."""
    s = spec.sampler
    if s.kind == "tpe":
        return optuna.samplers.TPESampler(seed=s.seed, multivariate=True)
    if s.kind == "gp":
        return optuna.samplers.GPSampler(seed=s.seed)
    if s.kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=s.seed, population_size=getattr(s, "population_size", 50))
    return optuna.samplers.RandomSampler(seed=s.seed)


def enqueue_initial_design(study: optuna.Study, spec: StudySpec) -> int:
    """On a study's first run, enqueue n scrambled-Sobol points of the search space (a
    space-filling start, seeded by the sampler's seed); returns how many were enqueued."""
    design = spec.sampler.initial_design
    if design is None or study.get_trials(deepcopy=False):
        return 0
    from scipy.stats import qmc

    names = list(spec.search)
    points = qmc.Sobol(d=len(names), scramble=True, seed=spec.sampler.seed).random(design.n)
    for row in points:
        params = {name: _from_unit(spec.search[name].distribution(), u) for name, u in zip(names, row)}
        study.enqueue_trial(params, user_attrs={"initial_design": "sobol"})
    return design.n


def _from_unit(dist: optuna.distributions.BaseDistribution, u: float) -> Any:
    """Map u in [0, 1) onto a distribution (log-uniformly for log scales)."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return dist.choices[min(int(u * len(dist.choices)), len(dist.choices) - 1)]
    lo, hi = float(dist.low), float(dist.high)
    if getattr(dist, "log", False):
        value = float(np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo))))
    else:
        value = lo + u * (hi - lo)
    if isinstance(dist, optuna.distributions.IntDistribution):
        step = dist.step
        return int(min(hi, lo + step * np.floor((value - lo) / step + 0.5)))
    return value


def requeue_stale_trials(study: optuna.Study, driver: str, owner_attr: str, seed_attr: str, reason_attr: str) -> int:
    """Trials left RUNNING by a driver that died: FAIL them ("driver died", marked requeued)
    and enqueue their parameters and seed again. Returns how many."""
    stale = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.user_attrs.get(owner_attr) != driver]
    for t in stale:
        # The trial object of a dead driver is gone: write through the storage, then tell by number.
        study._storage.set_trial_user_attr(t._trial_id, reason_attr, "driver died; parameters re-queued")
        study._storage.set_trial_user_attr(t._trial_id, "requeued", True)
        study.tell(t.number, state=TrialState.FAIL)
        attrs = {"requeued_from": t.number}
        if seed_attr in t.user_attrs:
            attrs[seed_attr] = t.user_attrs[seed_attr]
        study.enqueue_trial(t.params, user_attrs=attrs)
    return len(stale)


def claim_requeued_trial(study: optuna.Study) -> optuna.trial.Trial | None:
    """The oldest WAITING trial that re-queues an interrupted one, set RUNNING; ``None`` if none.

    ``study.ask()`` takes WAITING trials in creation order, so an interrupted trial re-queued
    behind a not-yet-run initial design would wait for all of it (and never run under a small
    budget). Claiming goes through the storage's compare-and-set, as ``ask()`` does, so two
    drivers never claim the same trial.
    """
    storage = study._storage
    for t in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
        if "requeued_from" in t.user_attrs and storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
            return optuna.trial.Trial(study, t._trial_id)
    return None


LEASE_ATTR = "micro_doe:driver_lease"
LEASE_TTL_S = 60.0  # a lease not renewed for this long belongs to a dead driver
LEASE_RENEW_S = 10.0


class StudyBusyError(ValueError):
    """Another live driver is running this study."""


def acquire_lease(study: optuna.Study, driver: str, *, settle_s: float = 1.0) -> None:
    """Make ``driver`` the one driver of ``study``, or raise :class:`StudyBusyError`.

    The lease (a study system attr: driver id, host, pid, heartbeat) is free when absent,
    released, not renewed for :data:`LEASE_TTL_S`, or held by a dead process on this host.
    Storages offer no compare-and-set on attributes, so the lease is written, then read back
    after ``settle_s``: of two drivers starting together, the last writer keeps it and the
    other stops before touching any trial.
    """
    held = _lease(study)
    if held is not None and held.get("driver") != driver and _live(held):
        raise StudyBusyError(_busy_message(study, held))
    study._storage.set_study_system_attr(study._study_id, LEASE_ATTR, _my_lease(driver))
    time.sleep(settle_s)
    held = _lease(study)
    if held is None or held.get("driver") != driver:
        raise StudyBusyError(_busy_message(study, held or {}) + " (both started at once; this one yields)")


def renew_lease(study: optuna.Study, driver: str, last: float) -> float:
    """Refresh the heartbeat every :data:`LEASE_RENEW_S`; returns when it was last written."""
    now = time.time()
    if now - last < LEASE_RENEW_S:
        return last
    study._storage.set_study_system_attr(study._study_id, LEASE_ATTR, _my_lease(driver))
    return now


def release_lease(study: optuna.Study, driver: str) -> None:
    """Give the study back (only a lease this driver still holds)."""
    held = _lease(study)
    if held is not None and held.get("driver") == driver:
        study._storage.set_study_system_attr(study._study_id, LEASE_ATTR, None)


def _lease(study: optuna.Study) -> dict | None:
    value = study._storage.get_study_system_attrs(study._study_id).get(LEASE_ATTR)
    return value if isinstance(value, dict) else None


def _my_lease(driver: str) -> dict:
    return {"driver": driver, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}


def _live(lease: dict) -> bool:
    if time.time() - float(lease.get("heartbeat", 0.0)) > LEASE_TTL_S:
        return False
    if lease.get("host") == socket.gethostname():  # on this host a dead pid frees it at once
        try:
            os.kill(int(lease.get("pid", -1)), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError, OSError):
            return True
    return True


def _busy_message(study: optuna.Study, lease: dict) -> str:
    age = time.time() - float(lease.get("heartbeat", time.time()))
    return (f"study {study.study_name!r} is being run by another driver (host {lease.get('host', '?')}, "
            f"pid {lease.get('pid', '?')}, seen {age:.0f} s ago); wait for it to finish or stop it — "
            f"a driver that died frees the study after {LEASE_TTL_S:.0f} s, or at once on the same host")


def counted_trials(study: optuna.Study, reason_attr: str) -> int:
    """Trials that use up the budget: COMPLETE ones, and FAIL ones that were not re-queued."""
    return sum(
        t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and not t.user_attrs.get("requeued"))
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
    )
