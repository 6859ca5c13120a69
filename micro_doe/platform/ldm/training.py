"""Training the conditional LDM in three stages, start to bundle (paper sec. 4.3 and appendix A.1).

    data set (OPV, split by trajectory)
      │ stage "vae": VAE3D on the training volumes, loss = reconstruction + KL (vae_loss)
      ▼
    vae.pt ──► μ = encoder mean of every training / validation volume (VAE frozen, eval mode)
      │ stage "fp": FeaturePredictor μ → normalised labels (MSE); R² per output on "val"
      ▼
    fp.pt
      │ stage "ldm": LatentUNet3D, ε-MSE on z0 = latent_scale · μ, conditioned on the
      ▼              normalised labels, classifier-free dropout; EMA of the weights
    ldm.pt ──► the bundle (micro_doe.platform.ldm.bundle)

**Conditioning: measured labels, not FP predictions.** The paper trains the LDM on the
features the FP predicts from each training latent. When the data set carries measured
labels (the OPV data set always does: vf and τ are computed by the evaluators on every
snapshot) we condition on those instead (``condition_on="labels"``, the default):
the user's target is a *measured* descriptor and generated samples are judged by the same
evaluators, so training on measurements teaches the LDM the map it is judged on, not the
FP's approximation of it (FP errors, R² < 1, would otherwise become systematic
conditioning bias); a non-percolating phase has exactly 1/τ = 0; and the LDM then depends
on the VAE only, so retraining the FP does not invalidate it. ``condition_on="predictions"``
reproduces the paper (for data sets whose labels are incomplete or noisy).

**Normalisation.** Labels enter the FP and the LDM through
:class:`~micro_doe.platform.ldm.feature_predictor.Normaliser` fitted on the training split,
with every ``tau_*`` label as 1/τ ∈ [0, 1] (τ = inf → 0). ``latent_scale`` = 1 / std(μ)
(population std over every number of the training means) makes the diffusion data unit
variance.

**Stages and files.** Work happens in ``OUT.staging/`` beside the bundle: per stage
``NAME.checkpoint.pt`` (model, EMA, optimiser, torch generator and global RNG state, step,
running loss; written atomically every ``checkpoint_every`` steps and at the end),
``NAME.pt`` (the finished weights, a plain state dict) and ``NAME.json``
(:class:`~micro_doe.platform.ldm.bundle.StageSummary`). A stage reads the weights of the
stages before it from the staging directory, or else from an existing bundle at ``OUT``
(so ``stage="ldm"`` can retrain the diffusion model of a finished bundle). Each summary
records the hash of the VAE weights it was trained on; the bundle is only written when the
FP and LDM agree on their VAE. The bundle is written when stage "ldm" finishes.

**Resume.** ``resume=True`` continues each requested stage from its checkpoint with the
model, EMA, optimiser and random state restored, so 5 + 5 steps give the same weights as
10 straight; only ``steps`` (and ``checkpoint_every``) may change. For ``stage="all"`` a
stage without a checkpoint starts afresh (at least one stage must have one).

**Deviations from the paper** (appendix A.1): AdamW at a constant learning rate with
gradient clipping instead of cosine annealing (resumable with a longer ``steps``), an EMA
of the LDM weights, batches drawn with replacement by step count rather than epochs, and
augmentation by the 16 symmetries that keep z the film normal (flips of z, y, x and the y–x
transpose; every OPV label is invariant under them): a random one per VAE batch, and the
feature predictor and the LDM train on the latents of all 16 copies of every training volume
(``augment``), which the small data sets here need (without it the FP memorises its few
hundred training latents).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field, model_validator

from micro_doe.platform.diffusion import NoiseSchedule
from micro_doe.platform.ldm.bundle import (
    LDMConfig,
    LDMRecipe,
    StageSummary,
    load_weights,
    reference_labels,
    write_ldm_bundle,
)
from micro_doe.platform.ldm.feature_predictor import FeaturePredictor, FeaturePredictorConfig, Normaliser, r2_scores
from micro_doe.platform.ldm.latent_unet import LatentUNet3D, LatentUNetConfig, conditional_diffusion_loss
from micro_doe.platform.ldm.vae import VAE3D, VAE3DConfig, labels_to_input, vae_loss
from micro_doe.platform.opv_dataset import label_ranges, read_opv_dataset, split, validate_opv_dataset
from micro_doe.platform.training import _ema_update, _progress, default_device
from micro_doe.platform.unet import parameter_count
from micro_doe.platform.volumes import atomic_path

STAGES = ("vae", "fp", "ldm")
SYMMETRIES = range(16)  # indices of the maps of :func:`symmetry`
DEFAULT_CONDITIONING = ("vf_donor", "tau_donor", "tau_acceptor")
FP_EXTRAS = ("interfacial_area", "phi", "chi", "log_time")  # predicted besides the conditioning labels
OnLog = Callable[[str, int, float], None]
_SHARED = {  # the LDMTrainConfig fields besides its own config that each stage's weights depend on
    "vae": {"seed"},
    "fp": {"seed", "fp_outputs", "normaliser"},
    "ldm": {"seed", "conditioning", "condition_on", "normaliser"},
}


class StageConfig(BaseModel):
    """Optimiser settings shared by the stages (AdamW, constant learning rate, gradient clipping)."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(ge=1, description="optimiser steps")
    batch_size: int = Field(ge=1, description="items per step, drawn with replacement")
    lr: float = Field(gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0, description="max global gradient norm")
    checkpoint_every: int = Field(250, ge=1)


class VAEStage(StageConfig):
    """Stage "vae": recipe and architecture of the VAE (``VAE3DConfig`` without in_channels)."""

    steps: int = Field(1500, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    augment: bool = Field(True, description="one of the 16 symmetries per batch (z stays the film normal)")
    base_channels: int = Field(16, ge=1)
    channel_mults: tuple[int, ...] = Field((1, 2, 4), min_length=1)
    latent_channels: int = Field(8, ge=1)
    kl_weight: float = Field(1e-2, ge=0.0, description="weight of the KL term per voxel (vae.py)")

    def architecture(self, in_channels: int) -> VAE3DConfig:
        return VAE3DConfig(
            in_channels=in_channels, base_channels=self.base_channels, channel_mults=self.channel_mults,
            latent_channels=self.latent_channels, kl_weight=self.kl_weight,
        )  # fmt: skip


class FPStage(StageConfig):
    """Stage "fp": recipe and hidden layers of the feature predictor (MSE on normalised labels)."""

    steps: int = Field(2000, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    augment: bool = Field(True, description="train on the latents of all 16 symmetric copies of each volume")
    hidden: tuple[int, ...] = (256, 64)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class LDMStage(StageConfig):
    """Stage "ldm": recipe and architecture of the latent denoiser (linear β schedule, paper's T = 1000)."""

    steps: int = Field(4000, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-4, gt=0)
    ema_decay: float = Field(0.995, ge=0, lt=1)
    augment: bool = Field(True, description="train on the latents of all 16 symmetric copies of each volume")
    cfg_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="probability of training an item unconditionally")
    T: int = Field(1000, ge=2, description="diffusion steps of the linear β schedule (1e-4 … 1e-2)")
    base_channels: int = Field(32, ge=1)
    channel_mults: tuple[int, ...] = Field((1, 2), min_length=1)
    num_res_blocks: int = Field(1, ge=1)
    attention: bool = True
    groups: int = Field(8, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    def architecture(self, latent_channels: int, context_dim: int) -> LatentUNetConfig:
        return LatentUNetConfig(
            latent_channels=latent_channels, context_dim=context_dim, base_channels=self.base_channels,
            channel_mults=self.channel_mults, num_res_blocks=self.num_res_blocks, attention=self.attention,
            groups=self.groups, dropout=self.dropout, cfg_dropout=self.cfg_dropout,
        )  # fmt: skip


class LDMTrainConfig(BaseModel):
    """Recipe for :func:`train_ldm`: one config per stage plus what conditions and what is predicted.

    ``conditioning``: the labels the LDM is conditioned on (the user's targets);
    ``fp_outputs``: what the feature predictor predicts, empty = ``conditioning`` +
    interfacial_area, phi, chi, log_time (must include every conditioning label).
    Every ``tau_*`` name is normalised as 1/τ. Defaults: the 32³ two-phase CPU model.
    """

    model_config = ConfigDict(extra="forbid")
    vae: VAEStage = VAEStage()
    fp: FPStage = FPStage()
    ldm: LDMStage = LDMStage()
    conditioning: tuple[str, ...] = Field(DEFAULT_CONDITIONING, min_length=1)
    fp_outputs: tuple[str, ...] = ()
    condition_on: Literal["labels", "predictions"] = "labels"
    normaliser: Literal["standard", "minmax"] = "standard"
    seed: int = 0
    log_every: int = Field(50, ge=1, description="steps between the loss values kept in the summaries")

    @model_validator(mode="after")
    def _outputs_cover_conditioning(self) -> LDMTrainConfig:
        if len(set(self.conditioning)) != len(self.conditioning):
            raise ValueError(f"conditioning: names must be distinct, got {self.conditioning}")
        if not self.fp_outputs:
            self.fp_outputs = self.conditioning + tuple(n for n in FP_EXTRAS if n not in self.conditioning)
        missing = [n for n in self.conditioning if n not in self.fp_outputs]
        if missing:
            raise ValueError(f"fp_outputs: must include every conditioning label; missing {missing}")
        if len(set(self.fp_outputs)) != len(self.fp_outputs):
            raise ValueError(f"fp_outputs: names must be distinct, got {self.fp_outputs}")
        return self


def inverse_names(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The labels normalised as 1/v: every tortuosity ``tau_*`` (inf for a non-percolating phase)."""
    return tuple(n for n in names if n.startswith("tau_"))


def staging_dir(out: str | Path) -> Path:
    """``OUT.staging``: checkpoints and finished stage weights beside the bundle ``OUT``."""
    out = Path(out)
    return out.with_name(out.name + ".staging")


# ---------------------------------------------------------------- the entry point


def train_ldm(
    dataset: xr.Dataset | str | Path,
    out: str | Path,
    config: LDMTrainConfig = LDMTrainConfig(),
    stage: Literal["vae", "fp", "ldm", "all"] = "all",
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    on_log: OnLog | None = None,
    data_label: str | None = None,
) -> Path:
    """Train ``stage`` (or all three in turn) on an OPV data set; return the bundle path
    (stages "ldm" and "all") or the staging directory (stages "vae" and "fp").

    ``dataset``: an OPV data set (:mod:`micro_doe.platform.opv_dataset`) or its NetCDF path;
    ``on_log(stage, step, loss)`` is called after every optimiser step (e.g. MLflow);
    ``device``: cuda when available unless given.
    """
    if stage not in (*STAGES, "all"):
        raise ValueError(f"stage: expected one of {[*STAGES, 'all']}, got {stage!r}")
    run = _Run.open(dataset, Path(out), config, device or default_device(), progress, on_log, data_label)
    stages = STAGES if stage == "all" else (stage,)
    has_checkpoint = {s: run.checkpoint(s).exists() for s in stages}
    if resume and not any(has_checkpoint.values()):
        raise FileNotFoundError(f"{run.work}: no checkpoint to resume from for stage {stage!r}")
    for s in stages:
        {"vae": _train_vae, "fp": _train_fp, "ldm": _train_ldm}[s](run, resume and has_checkpoint[s])
    if "ldm" in stages:
        return _write_bundle(run)
    return run.work


# ---------------------------------------------------------------- shared state of one call


@dataclass
class _LoopState:
    step: int = 0
    seconds: float = 0.0
    running: float = math.nan
    losses: list[float] = field(default_factory=list)


@dataclass
class _Run:
    """The data and settings one :func:`train_ldm` call shares between its stages."""

    ds: xr.Dataset
    train: xr.Dataset
    val: xr.Dataset
    out: Path
    work: Path
    config: LDMTrainConfig
    device: str
    progress: bool
    on_log: OnLog | None
    data_label: str
    fingerprint: str
    _means: dict[tuple[str, bool], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @classmethod
    def open(cls, dataset, out, config, device, progress, on_log, data_label) -> _Run:  # type: ignore[no-untyped-def]
        if isinstance(dataset, (str, Path)):
            data_label = data_label or str(dataset)
            ds = read_opv_dataset(dataset)
        else:
            ds = validate_opv_dataset(dataset, data_label or "dataset")
        train, val = split(ds, "train"), split(ds, "val")
        if train.sizes["sample"] == 0:
            raise ValueError(f"{data_label or 'dataset'}: the training split is empty")
        sides = tuple(ds.sizes[d] for d in ("z", "y", "x"))
        if len(set(sides)) != 1:
            raise ValueError(f"{data_label or 'dataset'}: volumes must be cubes for the VAE, got (z, y, x) = {sides}")
        available = sorted(str(v) for v in ds.data_vars if ds[v].dims == ("sample",) and ds[v].dtype.kind == "f")
        for option, names in (("conditioning", config.conditioning), ("fp_outputs", config.fp_outputs)):
            missing = [n for n in names if n not in available]
            if missing:
                raise ValueError(f"config.{option}: labels {missing} are not in the data set; available: {available}")
        config.vae.architecture(1).latent_shape(sides[0])  # side divisible by the VAE's downsampling
        work = staging_dir(out)
        work.mkdir(parents=True, exist_ok=True)
        label = data_label or str(ds.attrs.get("source", "dataset"))
        return cls(ds, train, val, out, work, config, device, progress, on_log, label, _fingerprint(ds))

    @property
    def names(self) -> list[str]:
        return [str(n) for n in np.atleast_1d(self.ds["phase"].attrs.get("phase_names", self.ds.attrs["phase_names"]))]

    @property
    def side(self) -> int:
        return int(self.ds.sizes["z"])

    def checkpoint(self, stage: str) -> Path:
        return self.work / f"{stage}.checkpoint.pt"

    def labels(self, part: xr.Dataset, names: tuple[str, ...]) -> torch.Tensor:
        """Physical labels (N, F) float64 of ``part``."""
        return torch.as_tensor(np.stack([part[n].values.astype(np.float64) for n in names], axis=1))

    def normaliser(self, names: tuple[str, ...]) -> Normaliser:
        return Normaliser.fit(self.labels(self.train, names), names, inverse_names(names), self.config.normaliser)

    def previous(self, stage: str) -> tuple[dict[str, torch.Tensor], StageSummary]:
        """Weights and summary of a finished stage: the staging dir first, else the bundle at ``out``."""
        weights, summary = self.work / f"{stage}.pt", self.work / f"{stage}.json"
        if weights.exists() and summary.exists():
            state, record = load_weights(weights), StageSummary.model_validate_json(summary.read_text())
        elif (self.out / "config.json").exists():
            bundle = LDMConfig.model_validate_json((self.out / "config.json").read_text())
            if stage not in bundle.stages:
                raise FileNotFoundError(f"{self.out}: the bundle records no stage {stage!r}")
            state, record = load_weights(self.out / "model.pt")[stage], bundle.stages[stage]
        else:
            raise FileNotFoundError(f"stage {stage!r}: no trained {stage} in {self.work} or {self.out}; "
                                    f"train stage {stage!r} first")
        if _state_hash(state) != record.weights:
            raise ValueError(f"{self.work}: the {stage} weights do not match their summary (hash differs)")
        return state, record

    def frozen_vae(self) -> tuple[VAE3D, str]:
        state, record = self.previous("vae")
        vae = VAE3D(VAE3DConfig.model_validate(record.architecture))
        vae.load_state_dict(state)
        return vae.to(self.device).eval().requires_grad_(False), record.weights

    def train_means(self, vae: VAE3D, vae_hash: str, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """μ of the training volumes (N rows, or 16·N with ``augment``: symmetry-major) on the device,
        and the training-sample index of each row; cached per VAE within the call."""
        key = (vae_hash, augment)
        if key not in self._means:
            volumes = torch.as_tensor(self.train["phase"].values.astype(np.int64))
            maps = range(len(SYMMETRIES)) if augment else range(1)
            mu = torch.cat([encode_means(vae, symmetry(volumes, k), device=self.device) for k in maps])
            self._means[key] = (mu, torch.arange(volumes.shape[0]).repeat(len(maps)).to(self.device))
        return self._means[key]

    def identity(self, stage: str, upstream: str) -> str:
        """What a checkpoint must agree on to be resumed (all but steps and checkpoint_every)."""
        c = self.config
        stage_config = getattr(c, stage).model_dump(exclude={"steps", "checkpoint_every"})
        shared = c.model_dump(include=_SHARED[stage])
        return json.dumps({"stage": stage_config, **shared, "data": self.fingerprint, "upstream": upstream},
                          sort_keys=True)


# ---------------------------------------------------------------- the three stages


def _train_vae(run: _Run, resume: bool) -> None:
    cfg, names = run.config.vae, run.names
    n_phases = len(names)
    arch = cfg.architecture(1 if n_phases == 2 else n_phases)
    torch.manual_seed(run.config.seed)
    model = VAE3D(arch).to(run.device)
    volumes = torch.as_tensor(run.train["phase"].values.astype(np.int64), device=run.device)
    generator = torch.Generator().manual_seed(run.config.seed)

    def loss() -> torch.Tensor:
        idx = torch.randint(0, volumes.shape[0], (cfg.batch_size,), generator=generator).to(run.device)
        batch = _augment(volumes[idx], generator) if cfg.augment else volumes[idx]
        logits, mu, logvar = model(labels_to_input(batch, n_phases), generator=generator)
        return vae_loss(logits, batch, mu, logvar, arch.kl_weight).total

    state = _optimise(run, "vae", model, loss, generator, "", resume)
    part = run.val if run.val.sizes["sample"] else run.train
    extra = {"reconstruction_split": "val" if run.val.sizes["sample"] else "train", **_reconstruction(model, part, run)}
    _finish(run, "vae", model.state_dict(), arch.model_dump(), state, "", extra)


def _train_fp(run: _Run, resume: bool) -> None:
    cfg, outputs = run.config.fp, run.config.fp_outputs
    vae, upstream = run.frozen_vae()
    mu, index = run.train_means(vae, upstream, cfg.augment)
    normaliser = run.normaliser(outputs)
    target = normaliser.transform(run.labels(run.train, outputs)).float().to(run.device)[index]
    arch = FeaturePredictorConfig(latent_dim=mu[0].numel(), outputs=outputs, hidden=cfg.hidden, dropout=cfg.dropout)
    torch.manual_seed(run.config.seed + 1)
    model = FeaturePredictor(arch).to(run.device)
    generator = torch.Generator().manual_seed(run.config.seed + 1)

    def loss() -> torch.Tensor:
        idx = torch.randint(0, mu.shape[0], (cfg.batch_size,), generator=generator).to(run.device)
        return torch.mean((model(mu[idx]) - target[idx]) ** 2)

    state = _optimise(run, "fp", model, loss, generator, upstream, resume)
    model.eval()
    extra: dict[str, Any] = {"normaliser": normaliser.to_dict(), "val_r2": {n: math.nan for n in outputs}}
    with torch.no_grad():
        extra["train_r2"] = r2_scores(torch.cat([model(m) for m in mu.split(256)]).cpu(), target.cpu(), outputs)
        if run.val.sizes["sample"]:
            mu_val = encode_means(vae, run.val["phase"].values, device=run.device)
            pred = model(mu_val).cpu()
            true = normaliser.transform(run.labels(run.val, outputs)).float()
            extra["val_r2"] = r2_scores(pred, true, outputs)
            extra["val_loss"] = float(torch.mean((pred - true) ** 2))
    _finish(run, "fp", model.state_dict(), arch.model_dump(), state, upstream, extra)


def _train_ldm(run: _Run, resume: bool) -> None:
    cfg, conditioning = run.config.ldm, run.config.conditioning
    vae, upstream = run.frozen_vae()
    mu, index = run.train_means(vae, upstream, cfg.augment)
    latent_scale = 1.0 / float(mu.double().std(unbiased=False))
    z0 = mu * latent_scale
    normaliser = run.normaliser(conditioning)
    extra: dict[str, Any] = {"latent_scale": latent_scale, "condition_normaliser": normaliser.to_dict()}
    depends_on = upstream  # what a checkpoint must have been trained on: the VAE (and the FP for predictions)
    if run.config.condition_on == "labels":
        context = normaliser.transform(run.labels(run.train, conditioning)).float().to(run.device)[index]
    else:  # the paper: the FP's predictions (its conditioning columns share this normaliser's scale)
        fp_state, fp_record = run.previous("fp")
        if fp_record.upstream != upstream:
            raise ValueError("stage ldm: condition_on='predictions' needs an FP trained on the current VAE; "
                             "train stage 'fp' again")
        fp = FeaturePredictor(FeaturePredictorConfig.model_validate(fp_record.architecture))
        fp.load_state_dict(fp_state)
        fp.to(run.device).eval()
        with torch.no_grad():
            columns = [fp.config.outputs.index(n) for n in conditioning]
            context = torch.cat([fp(m)[:, columns] for m in mu.split(256)]).float()
        extra["fp_weights"] = fp_record.weights
        depends_on = f"{upstream}+fp:{fp_record.weights}"
    arch = cfg.architecture(int(mu.shape[1]), len(conditioning))
    if int(mu.shape[2]) % arch.downsampling:
        raise ValueError(f"ldm.channel_mults: the latent side {int(mu.shape[2])} must be divisible by "
                         f"{arch.downsampling} (2^(len(channel_mults) - 1))")
    schedule = NoiseSchedule.linear(cfg.T)
    extra["schedule"] = schedule.to_dict()
    torch.manual_seed(run.config.seed + 2)
    model = LatentUNet3D(arch).to(run.device)
    ema = copy.deepcopy(model).requires_grad_(False)
    generator = torch.Generator().manual_seed(run.config.seed + 2)

    def loss() -> torch.Tensor:
        idx = torch.randint(0, z0.shape[0], (cfg.batch_size,), generator=generator).to(run.device)
        return conditional_diffusion_loss(model, z0[idx], context[idx], schedule, generator=generator)

    state = _optimise(run, "ldm", model, loss, generator, depends_on, resume, ema=ema, ema_decay=cfg.ema_decay)
    _finish(run, "ldm", ema.state_dict(), arch.model_dump(), state, upstream, extra)


# ---------------------------------------------------------------- the loop and its files


def _optimise(
    run: _Run,
    stage: str,
    model: torch.nn.Module,
    loss_fn: Callable[[], torch.Tensor],
    generator: torch.Generator,
    upstream: str,
    resume: bool = False,
    *,
    ema: torch.nn.Module | None = None,
    ema_decay: float = 0.0,
) -> _LoopState:
    """AdamW steps of ``loss_fn`` up to the stage's ``steps``, checkpointing atomically; resumable."""
    cfg: StageConfig = getattr(run.config, stage)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    path, identity = run.checkpoint(stage), run.identity(stage, upstream)
    state = _load_checkpoint(path, identity, model, ema, optimiser, generator) if resume else _LoopState()
    if state.step > cfg.steps:
        raise ValueError(f"{stage}.steps: the checkpoint in {path} is at step {state.step}, beyond steps={cfg.steps}")
    start = time.perf_counter() - state.seconds
    model.train()
    with _progress(run.progress, cfg.steps, state.step, f"{stage} {run.out.name}") as advance:
        for step in range(state.step, cfg.steps):
            loss = loss_fn()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimiser.step()
            if ema is not None:
                _ema_update(ema, model, ema_decay)
            value = float(loss.detach())
            state.running = value if math.isnan(state.running) else 0.98 * state.running + 0.02 * value
            state.step = step + 1
            if run.on_log is not None:
                run.on_log(stage, state.step, value)
            if state.step % run.config.log_every == 0:  # at fixed steps, so resumed histories match
                state.losses.append(state.running)
            if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
                state.seconds = time.perf_counter() - start
                _save_checkpoint(path, identity, model, ema, optimiser, generator, state)
            advance(state.running)
    model.eval()
    return state


def _save_checkpoint(path, identity, model, ema, optimiser, generator, state) -> None:  # type: ignore[no-untyped-def]
    payload = {
        "identity": identity,
        "model": model.state_dict(),
        "ema": None if ema is None else ema.state_dict(),
        "optimiser": optimiser.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "step": state.step,
        "seconds": state.seconds,
        "running": state.running,
        "losses": list(state.losses),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load_checkpoint(path, identity, model, ema, optimiser, generator) -> _LoopState:  # type: ignore[no-untyped-def]
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    payload = load_weights(path)
    if payload["identity"] != identity:
        raise ValueError(f"{path}: checkpoint was made with a different recipe, data set or upstream stage; "
                         "only steps and checkpoint_every may change on resume")
    model.load_state_dict(payload["model"])
    if ema is not None:
        ema.load_state_dict(payload["ema"])
    optimiser.load_state_dict(payload["optimiser"])
    generator.set_state(payload["generator"])
    torch.set_rng_state(payload["torch_rng"])
    return _LoopState(int(payload["step"]), float(payload["seconds"]), float(payload["running"]),
                      [float(v) for v in payload["losses"]])


def _finish(
    run: _Run,
    stage: str,
    state_dict: dict[str, torch.Tensor],
    architecture: dict[str, Any],
    loop: _LoopState,
    upstream: str,
    extra: dict[str, Any],
) -> None:
    """Write ``NAME.pt`` then ``NAME.json`` (its presence marks the stage finished), both atomically."""
    weights = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    summary = StageSummary(
        stage=stage,  # type: ignore[arg-type]
        config=getattr(run.config, stage).model_dump(mode="json"),
        architecture=json.loads(json.dumps(architecture, default=list)),
        steps=loop.step, seconds=loop.seconds, final_loss=loop.running, losses=loop.losses,
        upstream=upstream, weights=_state_hash(weights), device=str(run.device),
        threads=torch.get_num_threads(), extra=extra,
    )  # fmt: skip
    (run.work / f"{stage}.json").unlink(missing_ok=True)
    with atomic_path(run.work / f"{stage}.pt") as tmp:
        torch.save(weights, tmp)
    with atomic_path(run.work / f"{stage}.json") as tmp:
        tmp.write_text(summary.model_dump_json(indent=2) + "\n")


def _write_bundle(run: _Run) -> Path:
    (vae_sd, vae), (fp_sd, fp), (ldm_sd, ldm) = (run.previous(s) for s in STAGES)
    if fp.upstream != vae.weights:
        raise ValueError("stage fp was trained on other VAE weights than the current ones; train stage 'fp' again")
    if ldm.upstream != vae.weights:
        raise ValueError("stage ldm was trained on other VAE weights than the current ones; train stage 'ldm' again")
    if ldm.extra.get("fp_weights", fp.weights) != fp.weights:
        raise ValueError("stage ldm was conditioned on another FP's predictions; train stage 'ldm' again")
    conditioning = list(run.config.conditioning)
    condition = Normaliser.from_dict(ldm.extra["condition_normaliser"])
    if list(condition.names) != conditioning:
        raise ValueError(f"stage ldm was conditioned on {list(condition.names)}, config.conditioning is "
                         f"{conditioning}; train stage 'ldm' again")
    train_labels = run.labels(run.train, tuple(conditioning))
    medians = condition.inverse_transform(condition.transform(train_labels).median(0).values[None])[0]
    infinite = [str(v) for v in run.ds.data_vars if run.ds[v].dims == ("sample",) and run.ds[v].dtype.kind == "f"
                and bool(np.isinf(run.train[v].values).any())]
    config = LDMConfig(
        volume_size=run.side,
        phase_names=run.names,
        tortuosity_axis=str(run.ds.attrs.get("tortuosity_axis", "z")),
        vae=VAE3DConfig.model_validate(vae.architecture),
        fp=FeaturePredictorConfig.model_validate(fp.architecture),
        unet=LatentUNetConfig.model_validate(ldm.architecture),
        schedule=ldm.extra["schedule"],
        latent_scale=ldm.extra["latent_scale"],
        conditioning=conditioning,
        condition_on=run.config.condition_on,
        feature_normaliser=fp.extra["normaliser"],
        condition_normaliser=ldm.extra["condition_normaliser"],
        label_ranges=label_ranges(run.ds),
        infinite_labels=infinite,
        condition_medians={n: float(v) for n, v in zip(conditioning, medians.tolist())},
        val_r2=fp.extra["val_r2"],
        recipe=LDMRecipe(
            train=run.config.model_dump(mode="json"),
            data=run.data_label,
            data_config=json.loads(run.ds.attrs.get("config", "{}")),
            data_fingerprint=run.fingerprint,
            n_train=run.train.sizes["sample"],
            n_val=run.val.sizes["sample"],
        ),
        stages={"vae": vae, "fp": fp, "ldm": ldm},
    )
    counts = {"vae": _count(vae_sd), "fp": _count(fp_sd), "ldm": _count(ldm_sd)}
    card = ldm_card(run.out.name, config, counts)
    weights = {"vae": vae_sd, "fp": fp_sd, "ldm": ldm_sd}
    return write_ldm_bundle(run.out, config, weights, reference_labels(run.ds), card)


# ---------------------------------------------------------------- helpers


def encode_means(
    vae: VAE3D, volumes: np.ndarray | torch.Tensor, *, device: str | torch.device = "cpu", batch_size: int = 16
) -> torch.Tensor:
    """Encoder means μ (N, C, d, d, d) float32 on ``device`` of int phase labels (N, z, y, x), VAE in eval mode."""
    labels = volumes.long() if isinstance(volumes, torch.Tensor) else torch.as_tensor(np.asarray(volumes, np.int64))
    was_training = vae.training
    vae.eval()
    out = []
    try:
        with torch.no_grad():
            for lo in range(0, labels.shape[0], batch_size):
                x = labels_to_input(labels[lo : lo + batch_size].to(device), vae.config.n_phases)
                out.append(vae.encode(x)[0])
    finally:
        vae.train(was_training)
    return torch.cat(out)


def symmetry(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Symmetry ``k`` (0..15, 0 the identity) of volumes (B, z, y, x) that keeps z the film normal.

    Bits 0, 1, 2 of k flip z, y, x; bit 3 transposes y and x. Every OPV label (vf, τ and
    percolation along z, face-counted interfacial area) is invariant under all 16.
    """
    if k not in SYMMETRIES:
        raise ValueError(f"k: expected a symmetry index in 0..{len(SYMMETRIES) - 1}, got {k}")
    dims = [d for bit, d in enumerate((1, 2, 3)) if k >> bit & 1]
    out = torch.flip(labels, dims) if dims else labels
    return out.transpose(2, 3) if k >> 3 & 1 else out


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random :func:`symmetry` of the whole batch."""
    return symmetry(batch, int(torch.randint(0, len(SYMMETRIES), (1,), generator=generator)))


def _reconstruction(model: VAE3D, part: xr.Dataset, run: _Run) -> dict[str, float]:
    """Voxel accuracy and volume-fraction error of μ → decoder reconstructions of ``part``."""
    from micro_doe.platform.micro3diff import to_labels

    labels = part["phase"].values
    mu = encode_means(model, labels, device=run.device)
    with torch.no_grad():
        recon = np.concatenate([to_labels(model.decode(mu[lo : lo + 16]), channel_dim=1)
                                for lo in range(0, mu.shape[0], 16)])
    vf_true = (labels == 1).mean(axis=(1, 2, 3))
    vf_recon = (recon == 1).mean(axis=(1, 2, 3))
    return {"voxel_accuracy": float((recon == labels).mean()), "vf_mae": float(np.abs(vf_true - vf_recon).mean())}


def _state_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 (first 16 hex digits) of a state dict's names and tensor bytes: identifies weights."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16 else tensor.float().numpy().tobytes())
    return digest.hexdigest()[:16]


def _fingerprint(ds: xr.Dataset) -> str:
    """sha256 (16 hex digits) of the volumes, the split and every float per-sample label."""
    digest = hashlib.sha256(np.ascontiguousarray(ds["phase"].values).tobytes())
    digest.update("".join(map(str, ds["split"].values)).encode())
    for name in sorted(str(v) for v in ds.data_vars if ds[v].dims == ("sample",) and ds[v].dtype.kind == "f"):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(ds[name].values, dtype=np.float64).tobytes())
    return digest.hexdigest()[:16]


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _count(state: dict[str, torch.Tensor]) -> int:
    return int(sum(t.numel() for t in state.values() if t.is_floating_point()))


def ldm_card(name: str, config: LDMConfig, parameters: dict[str, int]) -> str:
    """card.md: data, per-stage recipe, losses, wall times, validation R²."""
    r = config.recipe
    lines = [
        f"# {name}",
        "",
        f"Conditional latent diffusion model (VAE → feature predictor → latent DDPM), "
        f"{config.volume_size}³ volumes, phases {config.phase_names}, conditioned on {config.conditioning} "
        f"({config.condition_on}).",
        "",
        "## Data",
        f"- {r.data} ({r.n_train} training / {r.n_val} validation volumes, fingerprint {r.data_fingerprint})",
        f"- data set config: {json.dumps(r.data_config)}",
        f"- latent {list(config.latent_shape())}, latent_scale {config.latent_scale:.4g}",
        "",
        "## Training",
    ]
    for stage, summary in config.stages.items():
        per_step = summary.seconds / summary.steps if summary.steps else math.nan
        c = summary.config
        lines.append(
            f"- {stage}: {parameters.get(stage, 0) / 1e6:.3f} M parameters, {summary.steps} steps, batch "
            f"{c['batch_size']}, AdamW lr {c['lr']}, {_duration(summary.seconds)} on {summary.device} "
            f"({summary.threads} threads, {per_step:.3f} s/step), final loss (running mean) {summary.final_loss:.4f}"
        )
    vae_extra = config.stages["vae"].extra if "vae" in config.stages else {}
    if "voxel_accuracy" in vae_extra:
        lines.append(f"- VAE reconstruction ({vae_extra.get('reconstruction_split')}): voxel accuracy "
                     f"{vae_extra['voxel_accuracy']:.3f}, volume-fraction error {vae_extra['vf_mae']:.4f}")
    lines += ["", "## Feature predictor: validation R² (normalised scale; 1/τ for τ)"]
    lines += [f"- {name}: {value:.3f}" for name, value in config.val_r2.items()]
    lines += ["", f"Default sampling: {config.sampling.sampler}, {config.sampling.steps} steps, "
              f"guidance {config.sampling.guidance}.", ""]
    return "\n".join(lines)
