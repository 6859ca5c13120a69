"""``micro-doe train ldm`` and the LDM half of ``micro-doe generate``: the conditional LDM from the command line.

Command functions only (typer annotations); the app wires them. Bad input raises
``ValueError`` naming the option, which ``micro_doe.cli.app.main`` reports as one line.
With ``--tracking URI`` training logs every step's loss as the metric ``<stage>_loss`` of
one MLflow run (experiment ``micro-doe-training``, run ``train-ldm-OUT``), plus each stage's
final loss, wall time and the feature predictor's validation R², and the card as ``card.md``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from micro_doe.cli.options import OptionError, Overwrite, check_count, option_errors, tracking_option
from micro_doe.platform.diffusion.training import TrainingInterrupted, check_device
from micro_doe.platform.interrupts import interrupt_name, mark_reported
from micro_doe.platform.ldm.generator import DEFAULT_BATCH_SIZE, LDMGenerator, LDMSample
from micro_doe.platform.ldm.training import STAGES, LDMTrainConfig, staging_dir, train_ldm
from micro_doe.platform.ldm.verify import DEFAULT_MAX_CANDIDATES, DEFAULT_ROUND_SIZE, DEFAULT_TOLERANCE, VerifySettings
from micro_doe.platform.volumes import check_bundle_target, stack_volumes, why_missing, write_volume

TRAINING_EXPERIMENT = "micro-doe-training"
RECIPE_COLUMNS = ("phi", "chi", "time")  # shown first in the predictions table


def parse_targets(items: list[str] | None, option: str = "--target") -> dict[str, float]:
    """``["vf_donor=0.4", "tau_donor=inf"]`` → ``{"vf_donor": 0.4, "tau_donor": inf}``."""
    targets: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not name or math.isnan(number):
            raise ValueError(f"{option}: expected NAME=VALUE with a number (or inf), got {item!r}")
        if name in targets:
            raise ValueError(f"{option}: {name} given twice")
        targets[name] = number
    return targets


def training_config(
    config: Path | None,
    *,
    vae_steps: int | None = None,
    fp_steps: int | None = None,
    ldm_steps: int | None = None,
    conditioning: str | None = None,
    fp_outputs: str | None = None,
    seed: int | None = None,
    label_dropout: float | None = None,
    precision: str | None = None,
) -> LDMTrainConfig:
    """An LDMTrainConfig from a JSON file (or the defaults), with the command-line overrides applied."""
    data: dict[str, Any] = {}
    if config is not None:
        if not config.is_file():
            raise FileNotFoundError(f"--config: {config}: {why_missing(config) or 'not a file'}")
        try:
            data = json.loads(config.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"--config: {config} is not JSON ({err})") from None
    for stage, steps in (("vae", vae_steps), ("fp", fp_steps), ("ldm", ldm_steps)):
        if steps is not None:
            data.setdefault(stage, {})["steps"] = steps
    for option, field, text in (("--conditioning", "conditioning", conditioning), ("--fp-outputs", "fp_outputs",
                                                                                   fp_outputs)):
        if text is not None:
            names = tuple(n.strip() for n in text.split(",") if n.strip())
            if not names:
                raise ValueError(f"{option}: expected comma-separated label names, got {text!r}")
            data[field] = names
    if seed is not None:
        data["seed"] = seed
    if label_dropout is not None:
        data.setdefault("ldm", {})["label_dropout"] = label_dropout
    if precision is not None:
        for stage in ("vae", "fp", "ldm"):
            data.setdefault(stage, {})["precision"] = precision
    return LDMTrainConfig.model_validate(data)


class MLflowLossLogger:
    """``on_log(stage, step, loss)`` for :func:`train_ldm`: metrics ``<stage>_loss``, logged in batches."""

    def __init__(self, client: Any, run_id: str, flush_every: int = 100) -> None:
        self.client, self.run_id, self.flush_every = client, run_id, flush_every
        self.buffer: list[Any] = []

    def __call__(self, stage: str, step: int, loss: float) -> None:
        from mlflow.entities import Metric

        self.buffer.append(Metric(f"{stage}_loss", float(loss), int(time.time() * 1000), int(step)))
        if len(self.buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.client.log_batch(self.run_id, metrics=self.buffer)
            self.buffer = []


def _open_tracking(tracking: str, out: Path, config: LDMTrainConfig, stage: str) -> tuple[Any, str]:
    from mlflow.entities import Param

    from micro_doe.studies.mlflow_runs import flatten_params
    from micro_doe.tracking.registry import absolute_tracking_uri, ensure_experiment, mlflow_client, sqlite_path

    uri = absolute_tracking_uri(tracking)
    client = mlflow_client(uri)
    db = sqlite_path(uri)
    location = (db.parent / "artifacts" / TRAINING_EXPERIMENT).as_uri() if db is not None else None
    experiment_id = ensure_experiment(client, TRAINING_EXPERIMENT, location)
    run = client.create_run(experiment_id, run_name=f"train-ldm-{out.name}",
                            tags={"micro_doe.role": "training", "micro_doe.kind": "ldm", "micro_doe.stage": stage})
    params = flatten_params(config.model_dump(mode="json"))  # keys made safe, values clipped to MLflow's limit
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    return client, run.info.run_id


def _stage_metrics(out: Path) -> dict[str, float]:
    """Final loss, seconds and (FP) validation R² of every finished stage in the staging dir."""
    from micro_doe.platform.ldm.bundle import StageSummary

    metrics: dict[str, float] = {}
    for stage in STAGES:
        path = staging_dir(out) / f"{stage}.json"
        if not path.exists():
            continue
        summary = StageSummary.model_validate_json(path.read_text())
        metrics[f"{stage}_final_loss"] = summary.final_loss
        metrics[f"{stage}_seconds"] = summary.seconds
        for name, r2 in summary.extra.get("val_r2", {}).items():
            metrics[f"fp_val_r2_{name}"] = r2
    return {k: v for k, v in metrics.items() if math.isfinite(v)}


def train_ldm_command(
    data: Annotated[Path, typer.Option(help="OPV data set (.nc) from `micro-doe data make cahn-hilliard`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory to write (work in OUT.staging).")],
    stage: Annotated[str, typer.Option(help="vae, fp, ldm or all (in turn).")] = "all",
    vae_steps: Annotated[int | None, typer.Option(help="VAE optimiser steps (default: the config's).")] = None,
    fp_steps: Annotated[int | None, typer.Option(help="Feature-predictor steps.")] = None,
    ldm_steps: Annotated[int | None, typer.Option(help="Latent diffusion steps.")] = None,
    conditioning: Annotated[str | None, typer.Option(help="Conditioning labels, comma-separated.")] = None,
    fp_outputs: Annotated[
        str | None,
        typer.Option(help="Feature-predictor outputs, comma-separated (default: the conditioning labels, "
                     "interfacial_area, phi, chi, log_time; add phi_mixed for data with --phi-mixed low:high)."),
    ] = None,
    config: Annotated[Path | None, typer.Option(help="LDMTrainConfig as JSON (options above override it).")] = None,
    seed: Annotated[int | None, typer.Option(help="Training seed.")] = None,
    label_dropout: Annotated[
        float | None, typer.Option(help="LDM: probability in [0, 1) of freeing each label of a training item "
                                        "(any subset becomes a condition; 0: every label required).")
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help="Every stage's forward pass: fp32 or bf16 (mixed precision; about half a "
                                      "CPU step at 64³). May change between --resume pieces.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoints in OUT.staging.")] = False,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
    tracking: Annotated[str | None, typer.Option(help="MLflow tracking URI: log losses there.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    overwrite: Overwrite = False,
) -> None:
    """Train the conditional LDM (VAE → feature predictor → latent diffusion) and write a bundle."""
    if stage not in (*STAGES, "all"):
        raise ValueError(f"--stage: expected one of {[*STAGES, 'all']}, got {stage!r}")
    if not data.is_file():
        raise FileNotFoundError(f"--data: {data}: {why_missing(data) or 'not a file'}")
    try:
        recipe = training_config(config, vae_steps=vae_steps, fp_steps=fp_steps, ldm_steps=ldm_steps,
                                 conditioning=conditioning, fp_outputs=fp_outputs, seed=seed,
                                 label_dropout=label_dropout, precision=precision)  # fmt: skip
    except ValidationError as err:  # the options override the config file's fields of the same name
        where = f"--config {config}: " if config is not None else ""
        raise OptionError(where + str(option_errors(err, {"steps": "--<stage>-steps", "fp_outputs": "--fp-outputs",
                                                            "label_dropout": "--label-dropout",
                                                            "precision": "--precision"}))) from None
    if stage != "vae":  # the stages that (re)write the bundle at --out
        check_bundle_target(out, overwrite=overwrite)
    check_device(device)
    if tracking:
        tracking_option(tracking)
    client, run_id, logger = None, None, None
    if tracking:
        client, run_id = _open_tracking(tracking, out, recipe, stage)
        logger = MLflowLossLogger(client, run_id)
    status = "FAILED"
    try:
        result = train_ldm(data, out, recipe, stage=stage, resume=resume, device=device,  # type: ignore[arg-type]
                           progress=progress, on_log=logger, overwrite=overwrite)
        status = "FINISHED"
    except KeyboardInterrupt as stopped:  # Ctrl-C or SIGTERM: the run ends KILLED, then exit 130 / 143
        status = "KILLED"
        if isinstance(stopped, TrainingInterrupted):  # say where the checkpoint is
            Console(stderr=True).print(f"interrupted ({interrupt_name()}): {stopped}", highlight=False, soft_wrap=True)
            mark_reported()
        raise
    finally:
        if client is not None and logger is not None:
            try:
                logger.flush()
            except Exception:  # noqa: BLE001 — the run is still ended below; the losses logged so far stay
                logging.getLogger(__name__).warning("could not log the last losses to MLflow", exc_info=True)
            if status == "FINISHED":
                from mlflow.entities import Metric

                now = int(time.time() * 1000)
                metrics = [Metric(k, v, now, 0) for k, v in _stage_metrics(out).items()]
                if metrics:
                    client.log_batch(run_id, metrics=metrics)
                if (out / "card.md").exists() and stage in ("fp", "ldm", "all"):
                    client.log_text(run_id, (out / "card.md").read_text(), "card.md")
            client.set_terminated(run_id, status)
    console = Console(stderr=True)
    if result == out:  # stage ldm / all, or fp retrained under a finished diffusion model
        console.print(f"wrote bundle {result}")
        Console().print((result / "card.md").read_text())
    else:
        console.print(f"stage {stage} done; weights in {result}")


def predictions_table(samples: list[LDMSample], title: str = "") -> Table:
    """One row per sample: the predicted manufacturing recipe (φ, χ, annealing time) and descriptors."""
    names = list(samples[0].predicted)
    columns = [c for c in RECIPE_COLUMNS if c in names] + [c for c in names if c not in RECIPE_COLUMNS]
    table = Table(title=title or "predicted by the feature predictor")
    table.add_column("seed", justify="right")
    for column in columns:
        table.add_column(column, justify="right")
    table.add_column("seconds", justify="right")
    for s in samples:
        table.add_row(str(s.seed), *(f"{s.predicted[c]:.4g}" for c in columns), f"{s.seconds:.2f}")
    return table


def verification_table(samples: list[LDMSample], title: str = "") -> Table:
    """One row per verified sample: measured value of each target, candidates, within tolerance."""
    names = list(samples[0].targets)
    table = Table(title=title or "measured by the evaluators")
    table.add_column("seed", justify="right")
    for name in names:
        table.add_column(f"{name} (target {samples[0].targets[name]:.4g})", justify="right")
    table.add_column("candidates", justify="right")
    table.add_column("met", justify="center")
    for s in samples:
        v = s.verification
        if v is None:
            continue
        table.add_row(str(s.seed), *(f"{v.measured[n]:.4g}" for n in names), str(v.candidates),
                      "yes" if v.met else "[red]no[/red]")  # fmt: skip
    return table


def verify_options(
    verify: bool, tolerance: float | None, max_candidates: int | None, correct_requests: bool
) -> VerifySettings | None:
    """The verification the options ask for (None: raw samples), checked."""
    given = {"--tolerance": tolerance, "--max-candidates": max_candidates,
             "--correct-requests": True if correct_requests else None}  # fmt: skip
    if not verify:
        conflicts = [name for name, value in given.items() if value is not None]
        if conflicts:
            raise ValueError(f"--no-verify: conflicts with {', '.join(conflicts)} (options of verified generation)")
        return None
    chosen = {"tolerance": tolerance, "max_candidates": max_candidates}
    try:  # VerifySettings checks its own bounds; the message names the option
        return VerifySettings(**{k: v for k, v in chosen.items() if v is not None}, correct=correct_requests)
    except ValidationError as err:
        raise option_errors(err) from None


def generate_ldm(
    model: Annotated[str, typer.Argument(help="An LDM bundle: pretrained:NAME or a directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file: .nc (any n) or .tif (n = 1).")],
    target: Annotated[
        list[str] | None, typer.Option("--target", "-t", help="NAME=VALUE, once per conditioning label.")
    ] = None,
    n: Annotated[int, typer.Option(help="Number of volumes.")] = 1,
    steps: Annotated[int | None, typer.Option(help="Sampling steps S ≤ T (default: the bundle's).")] = None,
    guidance: Annotated[
        float | None, typer.Option(help="Classifier-free guidance w (1: none; default: the bundle's).")
    ] = None,
    sampler: Annotated[str | None, typer.Option(help="ddpm or ddim (default: the bundle's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the first volume; volume i uses seed + i.")] = 0,
    allow_extrapolation: Annotated[bool, typer.Option(help="Allow targets outside the training range.")] = False,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
    overwrite: Overwrite = False,
    guidance_rescale: Annotated[float | None, typer.Option(help="Guidance rescale φ in [0, 1] (0: none).")] = None,
    feature_guidance: Annotated[
        float | None, typer.Option(help="Feature-predictor gradient guidance scale (0: none).")
    ] = None,
    tolerance: Annotated[
        float | None, typer.Option(help=f"Verify: max |measured − target| per label, vf and 1/τ (default {DEFAULT_TOLERANCE}).")
    ] = None,
    max_candidates: Annotated[
        int | None, typer.Option(help=f"Verify: candidates per volume (default {DEFAULT_MAX_CANDIDATES}).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Candidates denoised together.")] = DEFAULT_BATCH_SIZE,
    correct_requests: Annotated[
        bool, typer.Option(help=f"Verify with request correction: rounds of {DEFAULT_ROUND_SIZE} candidates, each "
                                "later round conditioned on the request shifted by the measured miss.")
    ] = False,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Verified generation (default) or raw samples.")
    ] = True,
) -> list[LDMSample]:
    """Sample volumes with targeted descriptors; print the predicted manufacturing recipe of each.

    Verified generation by default: each volume is measured and kept only within
    ``--tolerance`` of every target (else the closest of ``--max-candidates``, marked);
    ``--no-verify`` returns the raw samples."""
    from micro_doe.cli.generate import check_generate_options

    check_generate_options(out, n, overwrite, device)
    if steps is not None:
        check_count(steps, "--steps")
    check_count(batch_size, "--batch-size", high=1024)
    if guidance is not None and not (math.isfinite(guidance) and guidance >= 0):
        raise ValueError(f"--guidance: expected a finite number ≥ 0 (1: no guidance), got {guidance}")
    if guidance_rescale is not None and not 0 <= guidance_rescale <= 1:
        raise ValueError(f"--guidance-rescale: expected a number in [0, 1], got {guidance_rescale}")
    if feature_guidance is not None and not (math.isfinite(feature_guidance) and feature_guidance >= 0):
        raise ValueError(f"--feature-guidance: expected a finite number ≥ 0, got {feature_guidance}")
    if sampler is not None and sampler not in ("ddpm", "ddim"):
        raise ValueError(f"--sampler: expected ddpm or ddim, got {sampler!r}")
    settings = verify_options(verify, tolerance, max_candidates, correct_requests)
    targets = parse_targets(target)
    generator = LDMGenerator(model, device=device)
    checked = generator.check_targets(targets, allow_extrapolation)  # every mistake reported before sampling
    if settings is not None:
        generator.check_verify(settings, checked)
    total = n if settings is None else None  # verified: candidates until each volume is accepted
    columns = (TextColumn("sampling"), BarColumn(), MofNCompleteColumn(), TextColumn("candidates"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("sampling", total=total)
        samples = generator.generate(
            targets, n, steps=steps, guidance=guidance, sampler=sampler, seed=seed,  # type: ignore[arg-type]
            allow_extrapolation=allow_extrapolation, guidance_rescale=guidance_rescale,
            feature_guidance=feature_guidance, verify=settings, batch_size=batch_size,
            on_candidates=lambda k: bar.advance(task, k),
        )  # fmt: skip
    stacked = stack_volumes([s.volume for s in samples])
    if n > 1:  # one entry per volume (a stack keeps the first volume's attrs otherwise)
        stacked.attrs["predicted"] = json.dumps([s.predicted for s in samples])
        if settings is not None:
            stacked.attrs["verification"] = json.dumps([s.verification.as_attrs() for s in samples])  # type: ignore[union-attr]
    write_volume(stacked, out)
    note = ""
    if settings is not None:
        met = sum(s.verification.met for s in samples)  # type: ignore[union-attr]
        spent = sum(s.verification.candidates for s in samples)  # type: ignore[union-attr,misc]
        note = f"; {met}/{n} within tolerance, {spent} candidates"
    Console(stderr=True).print(f"wrote {out} ({n} × {generator.size}³, targets {json.dumps(targets)}{note})")
    Console().print(predictions_table(samples, title=f"{out}: predicted recipe and descriptors"))
    if settings is not None:
        Console().print(verification_table(samples, title=f"{out}: measured (verified generation)"))
    return samples
