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
(so ``stage="ldm"`` can retrain the diffusion model of a finished bundle, and
``stage="fp"`` its feature predictor). Each summary
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

import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import xarray as xr

from micro_doe.platform.diffusion.training import default_device
from micro_doe.platform.ldm.bundle import LDMConfig, LDMRecipe, reference_labels, write_ldm_bundle
from micro_doe.platform.ldm.dataset import label_ranges
from micro_doe.platform.ldm.feature_predictor import FeaturePredictorConfig, Normaliser
from micro_doe.platform.ldm.latent_unet import LatentUNetConfig
from micro_doe.platform.ldm.stages_common import _Run, encode_means, symmetry
from micro_doe.platform.ldm.train_config import (
    DEFAULT_CONDITIONING,
    FP_EXTRAS,
    STAGES,
    SYMMETRIES,
    FPStage,
    LDMStage,
    LDMTrainConfig,
    OnLog,
    StageConfig,
    VAEStage,
    inverse_names,
    staging_dir,
)
from micro_doe.platform.ldm.train_fp import _train_fp
from micro_doe.platform.ldm.train_ldm_stage import _train_ldm
from micro_doe.platform.ldm.train_vae import _train_vae
from micro_doe.platform.ldm.vae import VAE3DConfig
from micro_doe.platform.volumes import check_bundle_target

__all__ = [
    "DEFAULT_CONDITIONING",
    "FP_EXTRAS",
    "STAGES",
    "SYMMETRIES",
    "FPStage",
    "LDMStage",
    "LDMTrainConfig",
    "OnLog",
    "StageConfig",
    "VAEStage",
    "encode_means",
    "inverse_names",
    "ldm_card",
    "staging_dir",
    "symmetry",
    "train_ldm",
]



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
    overwrite: bool = False,
) -> Path:
    """Train ``stage`` (or all three in turn) on an OPV data set; return the bundle path
    (stages "ldm" and "all", and "fp" when a diffusion model of the same VAE is already
    trained: retraining the feature predictor rewrites the bundle) or the staging
    directory (stages "vae" and "fp" otherwise).

    ``dataset``: an OPV data set (:mod:`micro_doe.platform.ldm.dataset`) or its NetCDF path;
    ``on_log(stage, step, loss)`` is called after every optimiser step (e.g. MLflow);
    ``device``: cuda when available unless given. ``out`` is checked before training starts:
    new, an empty folder, or (with ``overwrite``) an existing bundle.
    """
    if stage not in (*STAGES, "all"):
        raise ValueError(f"stage: expected one of {[*STAGES, 'all']}, got {stage!r}")
    if stage != "vae":  # the stages that (re)write the bundle at OUT; "vae" writes only OUT.staging
        check_bundle_target(out, overwrite=overwrite)
    run = _Run.open(dataset, Path(out), config, device or default_device(), progress, on_log, data_label)
    stages = STAGES if stage == "all" else (stage,)
    has_checkpoint = {s: run.checkpoint(s).exists() for s in stages}
    if resume and not any(has_checkpoint.values()):
        raise FileNotFoundError(f"{run.work}: no checkpoint to resume from for stage {stage!r}")
    for s in stages:
        {"vae": _train_vae, "fp": _train_fp, "ldm": _train_ldm}[s](run, resume and has_checkpoint[s])
    if "ldm" in stages or (stage == "fp" and _has_ldm_of_current_vae(run)):
        return _write_bundle(run, overwrite)
    return run.work


def _has_ldm_of_current_vae(run: _Run) -> bool:
    try:
        (_, vae), (_, ldm) = run.previous("vae"), run.previous("ldm")
    except (FileNotFoundError, ValueError):
        return False
    return ldm.upstream == vae.weights


# ---------------------------------------------------------------- the bundle and its card


def _write_bundle(run: _Run, overwrite: bool) -> Path:
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
    return write_ldm_bundle(run.out, config, weights, reference_labels(run.ds), card, overwrite=overwrite)


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
            f"{c['batch_size']}, AdamW lr {c['lr']}{', bf16 forward' if c.get('precision') == 'bf16' else ''}, "
            f"{_duration(summary.seconds)} on {summary.device} "
            f"({summary.threads} threads, {per_step:.3f} s/step), final loss (running mean) {summary.final_loss:.4f}"
        )
    lines.append(f"- condition dropout: the whole condition with p = {config.unet.cfg_dropout}, each label with "
                 f"p = {config.unet.label_dropout}"
                 + (" (any subset of the labels is a condition)" if config.unet.label_dropout > 0 else ""))
    vae_extra = config.stages["vae"].extra if "vae" in config.stages else {}
    if "voxel_accuracy" in vae_extra:
        lines.append(f"- VAE reconstruction ({vae_extra.get('reconstruction_split')}): voxel accuracy "
                     f"{vae_extra['voxel_accuracy']:.3f}, volume-fraction error {vae_extra['vf_mae']:.4f}")
    lines += ["", "## Feature predictor: validation R² (normalised scale; 1/τ for τ)"]
    lines += [f"- {name}: {value:.3f}" for name, value in config.val_r2.items()]
    lines += ["", f"Default sampling: {config.sampling.sampler}, {config.sampling.steps} steps, "
              f"guidance {config.sampling.guidance}.", ""]
    return "\n".join(lines)
