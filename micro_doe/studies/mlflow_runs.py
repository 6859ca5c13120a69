"""MLflow tracking of studies: one experiment per study, a parent run per ``run``, a child per trial.

What is logged where (experiment = the study's name, artifacts under
``<artifact_root>/<experiment>/``):

- parent run ``invocation-YYYYmmdd-HHMMSS`` (:meth:`StudyTracker.start_invocation`): params =
  the flattened spec (``search.n_h.int = [0, 4]``, ``sampler.kind = tpe``, ``budget.n_trials``…),
  artifact ``study.json`` (the spec as given), tags ``micro_doe.role = invocation`` and the
  caller's; :meth:`~StudyTracker.finish_invocation` adds the summary (numbers as metrics, all
  of it as ``summary.json``) and ends it FINISHED / FAILED / KILLED;
- child run ``trial-N`` (:meth:`StudyTracker.log_trial`), tags ``mlflow.parentRunId`` (the UI
  nests on it), ``optuna_trial_number``, ``optuna_state``, ``micro_doe.role = trial``; params =
  the trial's params; metrics = the objective values and every scalar metric (plus
  ``trial_seconds`` and, for a model that predicts, ``predicted.<name>``: the mean over the
  samples of each prediction, e.g. the LDM's φ, χ, log_time); artifacts ``volumes/sample-{i}.nc``, ``montage.png``, ``curves.png``
  (pooled S2 / lineal path vs the model's reference), ``predicted.json`` (every sample's predictions, when the
  generator predicts anything); a failed trial also
  gets tag ``reason`` and ``reason.txt``. An artifact that cannot be rendered leaves a tag
  ``warning.<artifact>`` (and a log warning) instead of stopping the study.

Every run carries ``micro_doe.driver``, the id of the driver that logged it (the id its lease in
the Optuna storage has); :meth:`StudyTracker.fail_stale_runs` ends the runs that a driver without
a live lease left RUNNING. One ``MlflowClient`` per store and process, no
fluent (global) MLflow state; MLflow itself is imported on first use of a tracker.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from micro_doe.platform.descriptors import Descriptors
from micro_doe.tracking.registry import (
    LOCAL_UI,
    ML_LAYOUT,
    TRIALS_VIEW,
    TRIALS_VIEW_QUERY,
    absolute_tracking_uri,
    ensure_experiment,
    mlflow_client,
    ui_hint,
)

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
DRIVER_TAG = "micro_doe.driver"
MAX_PARAM_LENGTH = 6000  # MLflow's limit for a param value
MAX_TAG_LENGTH = 8000  # ... and for a tag value
_FINISHED = {"COMPLETE", "FINISHED", "PRUNED"}
_FAILED = {"FAIL", "FAILED"}
# MLflow's runs page nests trial runs under collapsed parents and hides metric columns; its
# "shared view" (an experiment tag read through ?viewStateShareKey=) can filter, sort and pick
# columns, so the study writes one: the trials flat, best first, what was searched and measured.
SHARED_VIEW_TAG = "mlflow.sharedViewState."  # MLflow 3.17's prefix for a shared view of the runs page


def trials_view(objectives: Sequence[tuple[str, str]], metrics: Sequence[str] = (), params: Sequence[str] = ()) -> dict:
    """The runs page's state for the trials view: trial runs only (flat), sorted by the first
    objective (best first), columns: the objectives, ``metrics``, the trial number, ``params``."""
    names = [n for n, _ in objectives] + [m for m in metrics if m not in {n for n, _ in objectives}]
    view: dict[str, Any] = {"searchFilter": "tags.`micro_doe.role` = 'trial'",
                            "selectedColumns": [f"metrics.`{n}`" for n in names] + ["tags.`optuna_trial_number`"]
                            + [f"params.`{p}`" for p in params]}  # fmt: skip
    if objectives:
        view |= {"orderByKey": f"metrics.`{objectives[0][0]}`", "orderByAsc": objectives[0][1] != "maximize"}
    return view


def trial_note(number: int, state: str, values: Mapping[str, float], params: Mapping[str, Any], n_volumes: int) -> str:
    """A trial run's description: its objectives with units, and where its volumes come from."""
    from micro_doe.studies.objectives import UNITS

    shown = ", ".join(f"`{k}` = {v:.4g}{' ' + UNITS[k] if k in UNITS else ''}" for k, v in values.items()) or "none measured"
    seed = params.get("seed")
    seeds = f"seeds {seed} … {int(seed) + n_volumes - 1} (volume i from seed + i)" if seed is not None and n_volumes else "no volumes"
    return (f"Trial {number} ({_OPTUNA_STATE.get(state, state)}): {shown}. Its {n_volumes} volume(s): {seeds}. "
            "With the parameters of this run (the searched and fixed ones; for a shipped generator also the model, "
            "`model_sha256` and every sampler setting, `setting.*`) they reproduce the volumes.")


_OPTUNA_STATE = {"FINISHED": "COMPLETE", "FAILED": "FAIL"}  # MLflow's run status → Optuna's trial state


class StudyTracker:
    """MLflow logging of one study (experiment ``experiment`` in the store ``tracking_uri``)."""

    def __init__(
        self, tracking_uri: str, experiment: str, artifact_root: str | os.PathLike[str], driver: str | None = None
    ) -> None:
        self.tracking_uri = absolute_tracking_uri(tracking_uri)
        self.experiment = experiment
        self.artifact_root = Path(artifact_root).expanduser().resolve()
        self.client = mlflow_client(self.tracking_uri)
        self.experiment_id = ensure_experiment(self.client, experiment, self.artifact_location(experiment))
        self.driver = driver or uuid.uuid4().hex  # the study driver's id: one id in both stores
        self.parent_run_id: str | None = None
        self.example_image: xr.DataArray | None = None  # a training image shown atop every montage
        self.pictures = True  # montage.png and curves.png per trial (a study's `pictures: false` turns them off)

    def artifact_location(self, experiment: str) -> str | None:
        """Where a new experiment keeps its artifacts: for a tracking server, its own default
        (``mlflow-artifacts:/…`` — every driver and worker uploads through the server, which
        stores under its ``--artifacts-destination``; no ``file://`` path of one machine's
        disk); for a database store, ``ARTIFACTS/<experiment>`` beside the study."""
        if self.tracking_uri.startswith(("http://", "https://")):
            return None
        return (self.artifact_root / _safe_path(experiment)).as_uri()

    @property
    def run_url_hint(self) -> str:
        """How to look at the runs: ``mlflow ui`` bound to this machine for a database store,
        the server's own UI for a tracking server."""
        return ui_hint(self.tracking_uri, self.experiment_id)

    def run_url(self, run_id: str) -> str:
        """Where a person sees run ``run_id``: on the tracking server, or on ``mlflow ui``'s
        default address for a database store (:attr:`run_url_hint` starts it). It asks for the
        model-training layout: MLflow 3.17 opens a run in its GenAI layout otherwise."""
        return f"{self.ui_base}/#/experiments/{self.experiment_id}/runs/{run_id}?{ML_LAYOUT}"

    @property
    def ui_base(self) -> str:
        return self.tracking_uri.rstrip("/") if self.tracking_uri.startswith(("http://", "https://")) else LOCAL_UI

    def describe_experiment(self, objectives: Sequence[tuple[str, str]], glossary: Mapping[str, str], purpose: str = "",
                            columns: Sequence[str] = (), params: Sequence[str] = ()) -> None:  # fmt: skip
        """What the MLflow UI shows about the experiment: the model-training kind (runs, not
        traces), the first objective as its primary metric, a description (the tag
        ``mlflow.note.content``) with the objectives and every metric's definition and unit,
        since MLflow has no per-metric descriptions, and the trials view (:func:`trials_view`)."""
        view = f"{self.ui_base}/#/experiments/{self.experiment_id}/runs?{TRIALS_VIEW_QUERY}"
        # The experiments list shows the description's start as raw text: it opens in plain words.
        lines = [f"micro-doe study {self.experiment}: {_cell(purpose) if purpose else 'no purpose given'}", "",
                 f"One run per `micro-doe run` (parent), one child run per trial; [every trial in one table]({view}), "
                 "best first, with the objectives and searched settings as columns.",
                 "", "Objectives: " + ", ".join(f"`{n}` ({d})" for n, d in objectives), "", "| metric | definition |", "|---|---|"]
        lines += [f"| `{name}` | {_cell(text)} |" for name, text in glossary.items()]
        lines += ["| `trial_seconds` | wall time of the trial, generation to logging [s] |",
                  "| `predicted.<name>` | mean over the samples of a model's prediction (the LDM's recipe) |"]
        tags = {
            "mlflow.experimentKind": "custom_model_development",
            "mlflow.note.content": _clip("\n".join(lines), MAX_TAG_LENGTH),
            SHARED_VIEW_TAG + TRIALS_VIEW: json.dumps(trials_view(objectives, columns, params)),
        }
        if objectives:
            tags |= {"mlflow.experiment.primaryMetric.name": objectives[0][0],
                     "mlflow.experiment.primaryMetric.greaterIsBetter": str(objectives[0][1] == "maximize").lower()}
        for key, value in tags.items():
            self.client.set_experiment_tag(self.experiment_id, key, value)

    # ------------------------------------------------------------ invocation (parent run)

    def start_invocation(self, spec: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> str:
        """Open the parent run of one ``run`` invocation; returns its run id.

        ``spec`` is the study spec as a dict (a pydantic model is dumped first)."""
        from mlflow.entities import Param

        if hasattr(spec, "model_dump"):
            spec = spec.model_dump(mode="json")

        run = self.client.create_run(
            self.experiment_id,
            run_name=time.strftime("invocation-%Y%m%d-%H%M%S"),
            tags={"micro_doe.role": "invocation", DRIVER_TAG: self.driver}
            | {k: str(v) for k, v in (tags or {}).items()},
        )
        run_id = run.info.run_id
        self.parent_run_id = run_id
        params = [Param(k, v) for k, v in flatten_params(spec).items()]
        self.client.log_batch(run_id, params=params)
        self.client.log_dict(run_id, _jsonable(spec), "study.json")
        return run_id

    def finish_invocation(self, status: str = "FINISHED", summary: Mapping[str, Any] | None = None) -> None:
        """End the parent run; numeric summary entries become metrics, all of it ``summary.json``."""
        if self.parent_run_id is None:
            return
        run_id, self.parent_run_id = self.parent_run_id, None
        try:
            if summary:
                self.client.log_batch(run_id, metrics=_metrics(_numbers(summary)))
                self.client.log_dict(run_id, _jsonable(summary), "summary.json")
        finally:
            self.client.set_terminated(run_id, status.upper())

    def log_outcome(self, trials: Sequence[Mapping[str, Any]], names: Sequence[str], directions: Sequence[str]) -> dict[str, float]:
        """What the study found so far, on the parent run: ``pareto.csv`` (the Pareto trials'
        numbers, parameters and values), ``pareto.png`` (objective pairs; feasible, infeasible
        and Pareto trials marked), the tag ``micro_doe.pareto`` ("true"/"false") on every
        finished trial's run of the experiment, and the returned summary: counts of complete,
        feasible, failed and Pareto trials and the best feasible value of each objective.

        ``trials``: one mapping per finished trial with ``number``, ``state`` ("COMPLETE"/"FAIL"),
        ``values``, ``params``, ``feasible`` and ``pareto``.
        """
        from micro_doe.platform.plots import pareto_plot

        complete = [t for t in trials if t["state"] == "COMPLETE" and t.get("values")]
        pareto = [t for t in complete if t["pareto"]]
        summary: dict[str, float] = {
            "trials_complete": len(complete),
            "trials_feasible": sum(bool(t["feasible"]) for t in complete),
            "trials_failed": sum(t["state"] == "FAIL" for t in trials),
            "trials_pruned": sum(t["state"] == "PRUNED" for t in trials),
            "trials_pareto": len(pareto),
        }
        for i, (name, direction) in enumerate(zip(names, directions)):
            feasible = [t["values"][i] for t in complete if t["feasible"]]
            if feasible:
                summary[f"best_{name}"] = float(min(feasible) if direction == "minimize" else max(feasible))
        run_id = self.parent_run_id
        if run_id is None:
            return summary
        note = [f"**{len(complete)} trials complete** ({summary['trials_feasible']} feasible), "
                f"{summary['trials_failed']} failed, {summary['trials_pruned']} pruned, **{len(pareto)} on the Pareto front** "
                "(tag `micro_doe.pareto = true`; table `pareto.csv`, plot `pareto.png`).", ""]
        note += [f"- best feasible `{n}` ({d}): {summary[f'best_{n}']:.4g}" for n, d in zip(names, directions)
                 if f"best_{n}" in summary]
        self.client.set_tag(run_id, "mlflow.note.content", _clip("\n".join(note), MAX_TAG_LENGTH))
        with tempfile.TemporaryDirectory(prefix="micro-doe-outcome-") as tmp:
            out = Path(tmp)
            params = sorted({k for t in pareto for k in t["params"]})
            lines = [",".join(["trial", *names, *params])]
            lines += [",".join([str(t["number"]), *(f"{v:.6g}" for v in t["values"]), *(str(t["params"].get(p, "")) for p in params)])
                      for t in sorted(pareto, key=lambda t: t["number"])]
            (out / "pareto.csv").write_text("\n".join(lines) + "\n")
            if complete:
                try:
                    pareto_plot(np.array([t["values"] for t in complete]), [t["feasible"] for t in complete],
                                [t["pareto"] for t in complete], names, directions, out / "pareto.png",
                                title=f"{self.experiment}: {len(pareto)} Pareto trials of {len(complete)}")
                except Exception as err:  # noqa: BLE001 — a picture never stops a study
                    self.client.set_tag(run_id, "warning.pareto.png", _clip(f"{type(err).__name__}: {err}", MAX_TAG_LENGTH))
            self.client.log_artifacts(run_id, tmp)
        on_front = {int(t["number"]) for t in pareto}
        for run in self._trial_runs_of_experiment():
            number = int(run.data.tags.get("optuna_trial_number", -1))
            flag = "true" if number in on_front else "false"
            if run.data.tags.get("micro_doe.pareto") != flag:
                self.client.set_tag(run.info.run_id, "micro_doe.pareto", flag)
        return summary

    def _trial_runs_of_experiment(self) -> list[Any]:
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string="tags.`micro_doe.role` = 'trial' "
                                           "and attributes.status = 'FINISHED'", max_results=1000, page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                return runs

    # ------------------------------------------------------------ trials (child runs)

    def log_trial(
        self,
        *,
        trial_number: int,
        params: Mapping[str, Any],
        values: Mapping[str, float],
        metrics: Mapping[str, float],
        volumes: Sequence[xr.DataArray],
        reference: Descriptors | None,
        predicted: Sequence[Mapping[str, Any]],
        state: str,
        reason: str | None = None,
        seconds: float | None = None,
        started_at: float | None = None,
        montage: str | os.PathLike[str] | None = None,
    ) -> str:
        """One child run for a finished trial (see the module docstring); returns its run id.

        ``state``: FINISHED/COMPLETE/PRUNED end the run FINISHED, FAIL/FAILED end it FAILED
        (Optuna's ``TrialState`` works too). ``started_at`` (seconds since the epoch) is the
        trial's real start, so the run shows the trial's duration, not the logging's. Artifact
        failures become ``warning.*`` tags; only a failing tracking store raises. ``montage``:
        the trial's montage already drawn (for the dashboard), logged as it is instead of drawn again.
        """
        state_name = str(getattr(state, "name", state)).upper()
        if state_name not in _FINISHED | _FAILED:
            raise ValueError(f"state: expected one of {sorted(_FINISHED | _FAILED)}, got {state!r}")
        from mlflow.entities import Param, RunTag

        tags = {
            "micro_doe.role": "trial",
            "optuna_trial_number": str(trial_number),
            "optuna_state": _OPTUNA_STATE.get(state_name, state_name),  # Optuna's word, whichever was given
            DRIVER_TAG: self.driver,
        }
        if self.parent_run_id is not None:
            tags[PARENT_TAG] = self.parent_run_id
        start_ms = int(1000 * started_at) if started_at is not None else None
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{trial_number}", tags=tags, start_time=start_ms)
        run_id = run.info.run_id
        status = "FAILED" if state_name in _FAILED else "FINISHED"
        try:
            scalars = _numbers(metrics) | _numbers(values) | predicted_means(predicted)
            if seconds is not None:
                scalars["trial_seconds"] = float(seconds)
            extra_tags = [RunTag("mlflow.note.content", trial_note(trial_number, state_name, values, params, len(volumes)))]
            if reason:
                extra_tags.append(RunTag("reason", _clip(reason, MAX_TAG_LENGTH)))
            logged = flatten_params(volume_provenance(volumes) | dict(params))
            self.client.log_batch(
                run_id,
                metrics=_metrics(scalars),
                params=[Param(k, v) for k, v in logged.items()],
                tags=extra_tags,
            )
            warnings = self._log_trial_artifacts(run_id, trial_number, volumes, reference, predicted, scalars, reason,
                                                 montage)
            for name, message in warnings.items():
                self.client.set_tag(run_id, f"warning.{name}", _clip(message, MAX_TAG_LENGTH))
        except Exception:
            status = "FAILED"
            raise
        finally:
            self.client.set_terminated(run_id, status, end_time=self._trial_end_ms(started_at, seconds))
        return run_id

    @staticmethod
    def _trial_end_ms(started_at: float | None, seconds: float | None) -> int | None:
        """When the trial ended (its start plus its duration), else now (MLflow's default)."""
        if started_at is None or seconds is None:
            return None
        return int(1000 * (started_at + seconds))

    def _log_trial_artifacts(
        self,
        run_id: str,
        number: int,
        volumes: Sequence[xr.DataArray],
        reference: Descriptors | None,
        predicted: Sequence[Mapping[str, Any]],
        scalars: Mapping[str, float],
        reason: str | None,
        montage: str | os.PathLike[str] | None = None,
    ) -> dict[str, str]:
        """Render the artifacts into a temporary folder and upload it in one call; returns
        ``{artifact: error}`` for those that failed."""
        from micro_doe.platform.descriptors.reference_error import pooled_curves, reference_curves
        from micro_doe.platform.plots import curves_plot
        from micro_doe.platform.volumes import write_netcdf

        warnings: dict[str, str] = {}

        def attempt(name: str, make: Any) -> None:
            try:
                make()
            except Exception as err:  # noqa: BLE001 - a picture must never stop a study
                warnings[name] = f"{type(err).__name__}: {err}"
                log.warning("trial %s: could not write %s: %s", number, name, err)

        with tempfile.TemporaryDirectory(prefix=f"micro-doe-trial-{number}-") as tmp:
            out = Path(tmp)
            vols = list(volumes)
            for i, vol in enumerate(vols):
                attempt(f"sample-{i}.nc", lambda i=i, vol=vol: write_netcdf(vol, out / "volumes" / f"sample-{i}.nc"))
            if montage is not None and Path(montage).is_file():
                attempt("montage.png", lambda: shutil.copyfile(montage, out / "montage.png"))
            elif vols and self.pictures:
                attempt("montage.png", lambda: self.montage_png(vols, out / "montage.png", title=f"trial {number}"))
            if vols and reference is not None and self.pictures:

                def curves() -> None:
                    ref = reference_curves(reference)
                    gen = pooled_curves(vols, r_max=len(ref["S2"]) - 1, phase=reference.phase)
                    errors = {
                        label: scalars[key]
                        for label, key in (("S2", "s2_error"), ("lineal path", "lineal_path_error"))
                        if key in scalars and math.isfinite(scalars[key])
                    }
                    curves_plot(ref, gen, out / "curves.png", title=f"trial {number}", errors=errors)

                attempt("curves.png", curves)
            if any(predicted):  # a generator that predicts nothing (Micro3Diff) gets no file of empty dicts
                attempt(
                    "predicted.json",
                    lambda: (out / "predicted.json").write_text(json.dumps(_jsonable(list(predicted)), indent=1)),
                )
            if reason:
                (out / "reason.txt").write_text(reason + "\n")
            try:
                self.client.log_artifacts(run_id, tmp)
            except Exception as err:  # noqa: BLE001
                warnings["artifacts"] = f"{type(err).__name__}: {err}"
                log.warning("trial %s: could not upload artifacts: %s", number, err)
        return warnings

    def montage_png(
        self, volumes: xr.DataArray | Sequence[xr.DataArray], path: str | os.PathLike[str], *, title: str = ""
    ) -> Path:
        """Middle xy/xz/yz slices, one row per volume (a ``sample`` dim is split into rows), below
        a training image when :attr:`example_image` is set, with a phase legend. The same picture
        goes to MLflow and to the Optuna dashboard."""
        from micro_doe.studies.dashboard import trial_montage

        return trial_montage(volumes, path, self.example_image, title=title)

    # ------------------------------------------------------------ recovery

    def fail_stale_runs(self, live_drivers: Collection[str] = ()) -> int:
        """Mark RUNNING runs of this experiment FAILED (tag ``reason = driver died``).

        Skipped: this tracker's own runs, and runs of ``live_drivers`` (the drivers with a live
        lease in the study's storage, on any host:
        :func:`~micro_doe.studies.study_storage.live_drivers`). Returns how many runs were failed.
        """
        count = 0
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=500, page_token=token
            )
            for run in page:
                driver = run.data.tags.get(DRIVER_TAG, "")
                if driver == self.driver or driver in live_drivers:
                    continue
                self.client.set_tag(run.info.run_id, "reason", "driver died")
                self.client.set_terminated(run.info.run_id, "FAILED")
                count += 1
            token = page.token
            if not token:
                return count


# ---------------------------------------------------------------- helpers


PROVENANCE_SKIPPED = ("seconds", "target_fractions", "verification", "targets", "model", "model_sha256")


def volume_provenance(volumes: Sequence[xr.DataArray]) -> dict[str, Any]:
    """What made a trial's volumes, from the first one's ``generator_params``: the model and the
    SHA-256 of its weights, and every setting it was sampled with (searched, fixed or the
    bundle's default) as ``setting.<name>``; with the trial's seed, enough to sample them again."""
    if not volumes:
        return {}
    try:
        made = json.loads(volumes[0].attrs.get("generator_params", "{}"))
    except ValueError:
        return {}
    out = {key: made[key] for key in ("model", "model_sha256") if key in made}
    return out | {f"setting.{k}": v for k, v in made.items() if k not in PROVENANCE_SKIPPED}


def _cell(text: str) -> str:
    """Text for a Markdown table cell: a bare ``|`` (as in ``|x|``) would end the cell."""
    return text.replace("|", "\\|")


def flatten_params(spec: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings → dotted keys; lists of mappings → ``key.0.field``; other lists and
    values → JSON/str (clipped to MLflow's 6000 characters). Keys keep only characters
    MLflow accepts."""
    out: dict[str, str] = {}
    for key, value in spec.items():
        name = f"{prefix}{_safe_key(str(key))}"
        if isinstance(value, Mapping) and value:
            out |= flatten_params(value, f"{name}.")
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                out |= flatten_params(item, f"{name}.{i}.")
        else:
            text = value if isinstance(value, str) else json.dumps(_jsonable(value))
            out[name[:250]] = _clip(text, MAX_PARAM_LENGTH)
    return out


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The entries that are real numbers (bools and non-numbers dropped), keys made MLflow-safe."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            continue
        out[_safe_key(str(key))] = float(value)
    return out


def _metrics(values: Mapping[str, float]) -> list[Any]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key, value, now, 0) for key, value in values.items()]


def _safe_key(key: str) -> str:
    """Keep MLflow's allowed key characters (letters, digits, ``_ - . space``)."""
    cleaned = re.sub(r"[^\w.\- ]", "_", key).strip(" ")
    return cleaned.lstrip(".") or "_"


def _safe_path(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "_"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 20] + " … [truncated]"


def _jsonable(value: Any) -> Any:
    """Make numpy scalars/arrays, paths, tuples and pydantic models JSON-serialisable."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "model_dump"):
        return _jsonable(value.model_dump())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def predicted_means(predicted: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``{"predicted.<name>": mean}`` over the samples' finite predictions (the LDM's φ, χ,
    annealing time, descriptors), so runs can be compared and charted in the MLflow UI;
    every sample's own values are in ``predicted.json``.

    Verified generation's ``verify.*`` values keep their names: ``verify.met`` (share of the
    volumes within tolerance), ``verify.candidates`` (mean candidates per volume),
    ``verify.distance``, ``verify.measured.<label>``, plus ``verify.acceptance_rate`` =
    volumes within tolerance / candidates spent."""
    columns: dict[str, list[float]] = {}
    for row in predicted:
        for name, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                columns.setdefault(name, []).append(float(value))
    out = {(name if name.startswith("verify.") else f"predicted.{name}"): sum(v) / len(v)
           for name, v in columns.items()}  # fmt: skip
    if columns.get("verify.candidates"):
        out["verify.acceptance_rate"] = sum(columns["verify.met"]) / sum(columns["verify.candidates"])
    return out
