"""The Optuna side of a study: storage, sampler, initial design, resume bookkeeping, and the
lease that lets one driver at a time run a study."""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from micro_doe.studies import trial_attrs as attrs
from micro_doe.studies.pareto_pruner import ParetoHalvingPruner
from micro_doe.studies.pruned_observations import LearnFromPruned
from micro_doe.studies.spec import MEMORY_STORAGE, GPSamplerSpec, SamplerSpec, StudySpec, TPESamplerSpec
from micro_doe.studies.trial_attrs import uses_budget
from micro_doe.tracking.registry import sqlite_creation_lock, sqlite_path

_MEMORY: optuna.storages.InMemoryStorage | None = None  # storage: memory (one per process)


def memory_storage() -> optuna.storages.InMemoryStorage:
    """This process's in-memory storage (``storage: memory``): every such study of the process
    lives here, found again by name (a second ``run()`` resumes), and is gone when it ends."""
    global _MEMORY
    if _MEMORY is None:
        _MEMORY = optuna.storages.InMemoryStorage()
    return _MEMORY


def open_study(spec: StudySpec) -> optuna.Study:
    """Create or load the study in its storage; sqlite gets WAL and a generous lock timeout."""
    url = spec.storage
    engine_kwargs: dict[str, Any] = {}
    db = sqlite_path(url) if url != MEMORY_STORAGE else None
    if db is not None:
        engine_kwargs = {"connect_args": {"timeout": 30}}
    with sqlite_creation_lock(db) if db is not None else nullcontext():  # several drivers may start at once
        storage: optuna.storages.BaseStorage
        storage = memory_storage() if url == MEMORY_STORAGE else optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        if db is not None:
            from sqlalchemy import text

            assert isinstance(storage, optuna.storages.RDBStorage)

            with storage.engine.connect() as conn:  # readers never block the writer; persists in the file
                conn.execute(text("PRAGMA journal_mode=WAL"))
        directions = spec.directions()
        study = optuna.create_study(
            storage=storage,
            study_name=spec.name,
            directions=directions,
            sampler=make_sampler(spec.sampler),
            pruner=make_pruner(spec),
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

    with warnings.catch_warnings():  # experimental since Optuna 3.2 and still so; we rely on it knowingly
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(objective_names)
    text = json.dumps(spec.model_dump(mode="json", by_alias=True), sort_keys=True)
    attrs = {
        "purpose": spec.purpose or "(not given: add purpose to the study file)",
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


def set_constraints(
    study: optuna.Study, trial: optuna.trial.Trial, constraints: Sequence[tuple[str, float, float | None]]
) -> None:
    """Store a RUNNING trial's constraints: (description, violation, measured value) each;
    feasible when every violation ≤ 0. A value not measured (None: a trial skipped before it
    made volumes) shows no attribute, and its violation is given as 0.

    Optuna 5 reads constraints from the system attr ``constraints`` (a list, the form its
    deprecated ``constraints_func`` writes) and from ``constraints:<name>`` (what
    ``Trial.set_constraint`` writes); optuna-dashboard 0.21 reads only the list. So the list is
    written, once (writing both would count every constraint twice), in the spec's order; the
    readable side, ``constraint: <bound>`` = the measured value (not the violation, which reads
    as a value of its own) and ``feasible``, goes to user attrs, which the dashboard shows on
    the trial page and as columns.
    """
    values = [float(v) for _, v, _ in constraints]
    if not constraints:
        return
    study._storage.set_trial_system_attr(trial._trial_id, CONSTRAINTS_KEY, values)
    for name, _, measured in constraints:
        if measured is not None:
            trial.set_user_attr(f"{attrs.CONSTRAINT_PREFIX}{name}", float(measured))
    trial.set_user_attr(attrs.FEASIBLE, all(v <= 0.0 for v in values))


PRUNING_SUFFIX = ":pruning"  # the single-objective companion study of a multi-objective one


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The ``pruner:`` block as an Optuna pruner; steps are volumes generated so far."""
    p = spec.pruner
    if p is None:
        return optuna.pruners.NopPruner()
    if p.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    if p.kind == "pareto_halving":
        names = spec.objective_names()
        ranked = [names.index(n) for n in p.objectives] if p.objectives else None
        return ParetoHalvingPruner(spec.directions(), min_resource=p.min_resource, reduction_factor=p.reduction_factor,
                                   ranked=ranked, margin=p.margin, margin_errors=p.margin_errors)  # fmt: skip
    return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, max_resource=spec.samples_per_trial,
                                          reduction_factor=p.reduction_factor)  # fmt: skip


def open_pruning_study(spec: StudySpec, study: optuna.Study) -> optuna.Study:
    """Where a trial's intermediate values go and its pruner decides.

    Optuna 5 refuses ``Trial.report`` and ``should_prune`` in multi-objective studies, and its
    pruners read ``study.direction``; so a study with several objectives prunes on its
    *first* objective through a single-objective companion study ``NAME:pruning`` in the same
    storage (one companion trial per trial, told COMPLETE, PRUNED or FAIL with it). A
    single-objective study prunes on itself.
    """
    if len(study.directions) == 1:
        return study
    return optuna.create_study(storage=study._storage, study_name=spec.name + PRUNING_SUFFIX,
                               direction=spec.directions()[0], pruner=make_pruner(spec),
                               sampler=optuna.samplers.RandomSampler(), load_if_exists=True)  # fmt: skip


def make_sampler(s: SamplerSpec) -> optuna.samplers.BaseSampler:
    """The study's ``sampler:`` block as an Optuna sampler, seeded.

    Constraints reach the samplers that use them through :func:`set_constraints` (Optuna 5
    reads them from every trial, no ``constraints_func`` needed): TPE (infeasible trials
    ranked by total violation), GP (constrained expected improvement) and NSGA-II
    (constrained domination). Random search ignores them.

    With ``learn_from_pruned``, TPE and GP see pruned trials as complete ones with the values
    measured before they were stopped (:mod:`micro_doe.studies.pruned_observations`).

    TPE and GP sample at random for their first ``n_startup_trials`` trials; by default that is
    the Sobol initial design itself, so the model takes over right after it
    (``benchmarks/search.py`` measures the choice).
    """
    if isinstance(s, (TPESamplerSpec, GPSamplerSpec)):
        model: optuna.samplers.BaseSampler
        if isinstance(s, TPESamplerSpec):  # constant liar: trials in flight (several generators/drivers) repel new points
            model = optuna.samplers.TPESampler(seed=s.seed, multivariate=True, constant_liar=s.constant_liar,
                                               n_startup_trials=s.startup_trials())  # fmt: skip
        else:
            model = optuna.samplers.GPSampler(seed=s.seed, n_startup_trials=s.startup_trials())
        return LearnFromPruned(model) if s.learn_from_pruned else model
    if s.kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=s.seed, population_size=getattr(s, "population_size", 50))
    return optuna.samplers.RandomSampler(seed=s.seed)


DESIGN_CLAIM = "micro_doe:initial_design"  # study system attr: the driver that enqueued the design


def enqueue_initial_design(study: optuna.Study, spec: StudySpec, driver: str = "") -> int:
    """On a study's first run, enqueue n scrambled-Sobol points of the search space (a
    space-filling start, seeded by the sampler's seed); returns how many were enqueued.

    Once per study, whatever the drivers: the first to claim :data:`DESIGN_CLAIM`
    (:func:`claim_once`) enqueues, the others go on with the sampler. A study that already has
    trials (one from before the claim existed) gets no design."""
    design = spec.sampler.initial_design
    if design is None or not claim_once(study, DESIGN_CLAIM, driver):
        return 0
    if study.get_trials(deepcopy=False):
        return 0
    from scipy.stats import qmc

    names = list(spec.search)
    points = qmc.Sobol(d=len(names), scramble=True, seed=spec.sampler.seed).random(design.n)
    for row in points:
        params = {name: _from_unit(spec.search[name].distribution(), u) for name, u in zip(names, row)}
        study.enqueue_trial(params, user_attrs={attrs.INITIAL_DESIGN: "sobol"})
    return design.n


def claim_once(study: optuna.Study, key: str, value: str) -> bool:
    """Whether this call is the first ever to claim ``key`` on ``study`` (then ``value`` is stored
    under it). Atomic across processes and hosts in a database storage: an INSERT under the
    table's unique (study, key) constraint, which a second driver's INSERT violates. In memory
    (one process) a plain check."""
    backend = getattr(study._storage, "_backend", study._storage)
    if isinstance(backend, optuna.storages.RDBStorage):
        from optuna.storages._rdb import models
        from sqlalchemy.exc import IntegrityError

        session = backend.scoped_session()
        try:
            session.add(models.StudySystemAttributeModel(study_id=study._study_id, key=key, value_json=json.dumps(value)))
            session.commit()
            return True
        except IntegrityError:
            session.rollback()
            return False
        finally:
            session.close()
    if key in study._storage.get_study_system_attrs(study._study_id):
        return False
    study._storage.set_study_system_attr(study._study_id, key, value)
    return True


def _from_unit(dist: optuna.distributions.BaseDistribution, u: float) -> Any:
    """Map u in [0, 1) onto a distribution (log-uniformly for log scales)."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return dist.choices[min(int(u * len(dist.choices)), len(dist.choices) - 1)]
    lo, hi = float(dist.low), float(dist.high)  # type: ignore[attr-defined]
    if getattr(dist, "log", False):
        value = float(np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo))))
    else:
        value = lo + u * (hi - lo)
    if isinstance(dist, optuna.distributions.IntDistribution):
        step = dist.step
        return int(min(hi, lo + step * np.floor((value - lo) / step + 0.5)))
    return value


def requeue_stale_trials(study: optuna.Study, driver: str) -> int:
    """Trials left RUNNING by a driver that died (its lease expired, released or absent; never a
    live driver's): FAIL them ("driver died", marked requeued) and enqueue their parameters and
    seed again. Returns how many.

    A trial with no owner yet was asked by a driver that had not written its name: one that died
    right after asking, or another live driver about to write it. With no other live driver it
    is stale at once (every driver takes its lease before it asks a trial); otherwise only once
    it is older than :data:`LEASE_TTL_S`. A trial that finishes while this runs (another driver
    re-queued or told it first) is left alone."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    leases = live_drivers(study)  # read after the trials: whoever asked one of them holds a lease by now
    others = leases - {driver}
    now = datetime.datetime.now()  # Optuna stores naive local times
    stale = []
    for t in running:
        owner = t.user_attrs.get(attrs.OWNER)
        if owner is None:
            age = (now - t.datetime_start).total_seconds() if t.datetime_start else float("inf")
            if not others or age > LEASE_TTL_S:
                stale.append(t)
        elif owner != driver and owner not in leases:
            stale.append(t)
    requeued = 0
    for t in stale:
        try:  # the trial object of a dead driver is gone: write through the storage, then tell by number
            study._storage.set_trial_user_attr(t._trial_id, attrs.FAIL_REASON, "driver died; parameters re-queued")
            study._storage.set_trial_user_attr(t._trial_id, attrs.REQUEUED, True)
            study.tell(t.number, state=TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            continue  # finished meanwhile (Optuna: "Cannot tell a COMPLETE trial"): not ours to re-queue
        again = {attrs.REQUEUED_FROM: t.number}
        if attrs.SEED in t.user_attrs:
            again[attrs.SEED] = t.user_attrs[attrs.SEED]
        study.enqueue_trial(t.params, user_attrs=again)
        requeued += 1
    return requeued


def claim_requeued_trial(study: optuna.Study) -> optuna.trial.Trial | None:
    """The oldest WAITING trial that re-queues an interrupted one, set RUNNING; ``None`` if none.

    ``study.ask()`` takes WAITING trials in creation order, so an interrupted trial re-queued
    behind a not-yet-run initial design would wait for all of it (and never run under a small
    budget). Claiming goes through the storage's compare-and-set, as ``ask()`` does, so two
    drivers never claim the same trial.
    """
    storage = study._storage
    for t in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
        if attrs.REQUEUED_FROM in t.user_attrs and storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
            return optuna.trial.Trial(study, t._trial_id)
    return None


LEASE_PREFIX = "micro_doe:lease:"  # one study system attr per driver: {host, pid, heartbeat}
LEASE_TTL_S = 60.0  # a lease not renewed for this long belongs to a dead driver
LEASE_RENEW_S = 10.0


def acquire_lease(study: optuna.Study, driver: str) -> None:
    """Register ``driver`` as running ``study`` (a heartbeat in the storage).

    Several drivers may run one study (e.g. one per node of a cluster): each holds its own
    lease, renews it while it runs and releases it at the end. Stale-trial detection
    (:func:`requeue_stale_trials`) fails only trials whose driver has no live lease, and the
    budget is shared through :func:`claim_budget_slot`.
    """
    study._storage.set_study_system_attr(study._study_id, LEASE_PREFIX + driver, _my_lease())


def renew_lease(study: optuna.Study, driver: str, last: float) -> float:
    """Refresh the heartbeat every :data:`LEASE_RENEW_S`; returns when it was last written."""
    now = time.time()
    if now - last < LEASE_RENEW_S:
        return last
    study._storage.set_study_system_attr(study._study_id, LEASE_PREFIX + driver, _my_lease())
    return now


def release_lease(study: optuna.Study, driver: str) -> None:
    """Mark this driver's lease released (a released lease is never live)."""
    study._storage.set_study_system_attr(study._study_id, LEASE_PREFIX + driver, None)


def live_drivers(study: optuna.Study) -> set[str]:
    """Ids of the drivers whose lease is live (renewed within :data:`LEASE_TTL_S`, and on this
    host held by a running process)."""
    attrs = study._storage.get_study_system_attrs(study._study_id)
    return {key[len(LEASE_PREFIX) :] for key, lease in attrs.items()
            if key.startswith(LEASE_PREFIX) and isinstance(lease, dict) and _live(lease)}  # fmt: skip


def _my_lease() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}


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


def trials_using_budget(study: optuna.Study) -> int:
    """Trials that hold a budget slot, every driver's: finished ones that count and running ones."""
    return sum(uses_budget(t) for t in study.get_trials(deepcopy=False))


def claim_budget_slot(study: optuna.Study, trial: optuna.trial.Trial, budget: int) -> bool:
    """Whether ``trial`` (just started: RUNNING) fits in the budget; run it only then.

    Slots go by start order: the trial's slot is the number of budget-using trials that
    started before it (``datetime_start``, then trial number). Each driver checks after its
    trial is RUNNING in the storage, so of two trials started at once the later one sees the
    earlier one and only it can be over: two drivers never overrun the budget. A trial over
    the budget is released by :func:`release_surplus_trial`.
    """
    mine = study._storage.get_trial(trial._trial_id)
    key = (mine.datetime_start, mine.number)
    earlier = sum(uses_budget(t) and (t.datetime_start, t.number) < key
                  for t in study.get_trials(deepcopy=False) if t.datetime_start is not None)  # fmt: skip
    return earlier < budget


def release_surplus_trial(study: optuna.Study, trial: optuna.trial.Trial, params: dict, user_attrs: dict,
                          from_queue: bool) -> None:
    """FAIL a trial that did not get a budget slot (marked surplus: it counts nowhere); a trial
    taken from the queue (initial design, re-queued) is enqueued again so its point is not lost."""
    trial.set_user_attr(attrs.SURPLUS, True)
    trial.set_user_attr(attrs.FAIL_REASON, "the budget was taken by other drivers' trials; not run")
    study.tell(trial, state=TrialState.FAIL)
    if from_queue:
        study.enqueue_trial(params, user_attrs=user_attrs)
