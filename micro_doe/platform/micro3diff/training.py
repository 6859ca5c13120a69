"""Training the Micro3Diff 2D denoiser, start to bundle.

One loop, top to bottom: images → (augment) → channels in [-1, 1] → ε-prediction loss
(eq. 15) → AdamW step with gradient clipping → EMA of the weights. A checkpoint (model,
EMA, optimiser, step, random state) is written atomically every ``checkpoint_every``
steps beside the bundle (``BUNDLE.checkpoint.pt``), and ``resume=True`` continues from
it. The finished bundle holds the EMA weights, the training data's descriptors as
``reference.nc``, and a card with the recipe, time, final loss and a quick 2D quality
check (error rates of images sampled from the model against the reference).

With ``held_out > 0`` the last images of the data (a contiguous block, so that neighbouring
z-slices of one volume do not end up on both sides; crops of one large image cut from a strip
no training crop touches; see :mod:`.training_data`) are set aside before training: the network
never sees them, the bundle records which they were (``config.held_out``) and keeps their
descriptors (``held_out.nc``), and ``micro-doe tune`` judges sampling settings against them.
Ctrl-C or SIGTERM writes a checkpoint at the current step before the process stops.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field

from micro_doe.platform.bundles import N_EXAMPLES
from micro_doe.platform.descriptors import (
    error_rate,
    lineal_path_along_axes,
    s2_along_axes,
)
from micro_doe.platform.diffusion import DDPMSampler, NoiseSchedule, diffusion_loss
from micro_doe.platform.diffusion.channels import labels_to_channels, to_labels
from micro_doe.platform.diffusion.training import (
    TrainingInterrupted,
    TrainingPrecision,
    TrainingProgress,
    check_skipped,
    clipped_step,
    default_device,
    ema_update,
    training_autocast,
)
from micro_doe.platform.interrupts import interrupts_deferred
from micro_doe.platform.micro3diff.bundle import HeldOutRecord, Micro3DiffConfig, TrainingRecipe, write_bundle
from micro_doe.platform.micro3diff.sampler import sample_2d
from micro_doe.platform.micro3diff.training_data import (
    check_training_phases,
    image_autocovariance,
    labels_stack,
    split_held_out,
    training_images,
    training_reference,
)
from micro_doe.platform.micro3diff.unet import UNet2D, UNetConfig, parameter_count
from micro_doe.platform.synthetic.augment import dihedral
from micro_doe.platform.volumes import (
    OutputExistsError,
    atomic_path,
    check_bundle_target,
    generator_params,
    phase_names,
)


class TrainConfig(BaseModel):
    """Recipe for :func:`train_micro3diff`. Defaults: the shipped 32×32 CPU models."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(4000, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-4, gt=0, description="the paper's Adam learning rate")
    weight_decay: float = Field(0.0, ge=0)
    ema_decay: float = Field(0.995, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    checkpoint_every: int = Field(250, ge=1)
    augment: bool = Field(True, description="8-fold dihedral augmentation, a random transform per image")
    seed: int = 0
    schedule: Literal["linear", "cosine"] = "linear"
    T: int = Field(1000, ge=2)
    unet: UNetConfig = UNetConfig()
    held_out: float = Field(0.0, ge=0.0, lt=0.5, description="fraction of the images set aside (never trained on) "
                            "to judge sampling settings (micro-doe tune); the last images, a contiguous block")
    quality_images: int | None = Field(None, ge=0, description="images sampled for the card's 2D quality check; "
                                       "None: 16 per 32² of image area (16 at 32², 64 at 64²). May change on resume")
    quality_steps: int = Field(100, ge=1, description="sampling steps of that check. May change on resume")
    precision: TrainingPrecision = Field(
        "fp32", description="the forward pass: fp32, or bf16 autocast (mixed precision: weights, optimiser and loss "
        "stay fp32; about half a CPU step with bf16 units). May change on resume"
    )


def train_micro3diff(
    data: xr.DataArray,
    out: str | Path,
    config: TrainConfig = TrainConfig(),
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    data_label: str = "array",
    progress: bool = True,
    on_log: Callable[[int, float], None] | None = None,
) -> Path:
    """Train a Micro3Diff denoiser on ``data`` and write a bundle to ``out``; return its path.

    Checked before training starts: ``out`` is new, an empty folder, or (with ``overwrite``)
    an existing bundle; an existing checkpoint ``OUT.checkpoint.pt`` is continued with
    ``resume`` or restarted with ``overwrite``, never silently replaced.
    """
    out = Path(out)
    check_bundle_target(out, overwrite=overwrite)
    checkpoint = out.with_name(out.name + ".checkpoint.pt")
    if checkpoint.exists() and not (resume or overwrite):
        raise OutputExistsError(f"{checkpoint}: a checkpoint of an earlier run exists; pass --resume to continue it "
                                "or --overwrite to start over")
    check_training_phases(data, data_label)
    device = device or default_device()
    stack = training_images(data, data_label)
    names = phase_names(data)
    n_images = int(stack.sizes["sample"])
    stack, held_out = split_held_out(stack, config.held_out, data_label)
    n_phases = max(len(names), int(stack.max()) + 1)
    images = torch.as_tensor(stack.values.astype(np.int64), device=device)
    channels = 1 if n_phases == 2 else n_phases
    unet_config = config.unet.model_copy(update={"in_channels": channels})
    schedule = NoiseSchedule.linear(config.T) if config.schedule == "linear" else NoiseSchedule.cosine(config.T)

    torch.manual_seed(config.seed)
    model = UNet2D(unet_config).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    state = {"step": 0, "seconds": 0.0, "losses": [], "running": math.nan, "skipped": 0}
    if resume and checkpoint.exists():
        state = _load_checkpoint(checkpoint, config, model, ema, optimiser, generator)
    elif resume:
        raise FileNotFoundError(f"{checkpoint}: no checkpoint to resume from")

    start = time.perf_counter() - state["seconds"]  # type: ignore[operator]
    running = state["running"]
    try:
        with TrainingProgress(progress, config.steps, state["step"], f"training {out.name}", running) as advance:  # type: ignore[arg-type]
            running = _train_steps(model, ema, optimiser, generator, images, n_phases, schedule, config, state, start,
                                   checkpoint, advance, on_log, device)
    except KeyboardInterrupt:  # Ctrl-C, and SIGTERM under interrupts_raise: keep every finished step
        with interrupts_deferred():
            state["seconds"] = time.perf_counter() - start
            _save_checkpoint(checkpoint, config, model, ema, optimiser, generator, state)
        raise TrainingInterrupted(
            f"training stopped at step {state['step']} of {config.steps}; checkpoint {checkpoint} written "
            "(run the same command with --resume to continue)"
        ) from None
    seconds = time.perf_counter() - start
    reference = training_reference(data if held_out is None else stack, stack)
    quality = _quality_check(ema, schedule, reference, stack.sizes["y"], channels, config, device)
    held_record = None
    if held_out is not None:
        held_record = HeldOutRecord(source=f"{data_label}: images {n_images - held_out.sizes['sample']}–{n_images - 1} "
                                    "of the data, never trained on", first=n_images - int(held_out.sizes["sample"]),
                                    n_images=int(held_out.sizes["sample"]))
    bundle_config = Micro3DiffConfig(
        image_size=int(stack.sizes["y"]),
        phase_names=list(names) if len(names) >= 2 else ["phase0", "phase1"],
        unet=unet_config,
        schedule=schedule.to_dict(),
        held_out=held_record,
        autocovariance=image_autocovariance(stack, n_phases),
        recipe=TrainingRecipe(
            steps=config.steps,
            batch_size=config.batch_size,
            lr=config.lr,
            weight_decay=config.weight_decay,
            ema_decay=config.ema_decay,
            grad_clip=config.grad_clip,
            augment=config.augment,
            seed=config.seed,
            precision=config.precision,
            data=data_label,
            data_seed=data.attrs.get("seed"),
            data_params=generator_params(data),
            n_images=int(stack.sizes["sample"]),
        ),
    )
    card = _card(out.name, data, bundle_config, parameter_count(model), seconds, running, quality, device,
                 int(state["skipped"]))  # type: ignore[call-overload]
    examples = stack.isel(sample=slice(0, N_EXAMPLES)).astype("int8")
    held_reference = None if held_out is None else training_reference(held_out, held_out)
    return write_bundle(out, bundle_config, ema.state_dict(), reference, card, examples=examples, overwrite=overwrite,
                        held_out=held_reference)


def _train_steps(model, ema, optimiser, generator, images, n_phases, schedule, config, state, start, checkpoint,
                 advance, on_log, device) -> float:
    """The optimisation loop from ``state["step"]`` to ``config.steps``; returns the running loss.
    A signal waits for the step in progress to finish (``interrupts_deferred``), so ``state``
    and the weights always agree and an interrupt's checkpoint resumes exactly."""
    running, in_a_row = state["running"], 0
    for step in range(state["step"], config.steps):
        with interrupts_deferred():
            idx = torch.randint(0, images.shape[0], (config.batch_size,), generator=generator)
            batch = images[idx.to(device)]
            if config.augment:
                batch = _random_dihedral(batch, generator)
            x0 = labels_to_channels(batch, n_phases)
            with training_autocast(device, config.precision):
                loss = diffusion_loss(model, x0, schedule, generator)  # fp32: noise minus the bf16 prediction
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            value = float(loss.detach())
            if clipped_step(model, optimiser, config.grad_clip):
                ema_update(ema, model, config.ema_decay)
                running = value if math.isnan(running) else 0.98 * running + 0.02 * value
                in_a_row = 0
            else:  # a non-finite gradient: no step (diffusion.training.clipped_step)
                state["skipped"] += 1
                in_a_row += 1
                check_skipped(in_a_row, step + 1)
            state["step"], state["running"] = step + 1, running
            if (step + 1) % 50 == 0 or step + 1 == config.steps:
                state["losses"].append(running)
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                state["seconds"] = time.perf_counter() - start
                _save_checkpoint(checkpoint, config, model, ema, optimiser, generator, state)
        if on_log is not None:
            on_log(step + 1, value)
        advance(running)
    return running


def _random_dihedral(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Apply one of the 8 dihedral transforms, drawn per image."""
    ks = torch.randint(0, 8, (batch.shape[0],), generator=generator)
    out = torch.empty_like(batch)
    for k in range(8):
        mask = (ks == k).to(batch.device)
        if bool(mask.any()):
            out[mask] = dihedral(batch[mask], k)
    return out



def _save_checkpoint(path, config, model, ema, optimiser, generator, state) -> None:
    payload = {
        "config": config.model_dump_json(),
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimiser": optimiser.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "step": state["step"],
        "seconds": state["seconds"],
        "losses": list(state["losses"]),
        "running": state["running"],
        "skipped": state["skipped"],
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load_checkpoint(path, config, model, ema, optimiser, generator) -> dict:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    saved = TrainConfig.model_validate_json(payload["config"])
    free = {"steps", "precision", "quality_images", "quality_steps"}  # the card's check is no part of the recipe
    if saved.model_dump(exclude=free) != config.model_dump(exclude=free):
        raise ValueError(f"{path}: checkpoint was made with a different recipe; only --steps, --precision and "
                         "--quality-images may change on resume")
    model.load_state_dict(payload["model"])
    ema.load_state_dict(payload["ema"])
    optimiser.load_state_dict(payload["optimiser"])
    generator.set_state(payload["generator"])
    torch.set_rng_state(payload["torch_rng"])
    losses = list(payload["losses"])
    running = float(payload.get("running", losses[-1] if losses else math.nan))
    return {"step": int(payload["step"]), "seconds": float(payload["seconds"]), "losses": losses, "running": running,
            "skipped": int(payload.get("skipped", 0))}


def _quality_check(ema, schedule, reference, size, channels, config, device) -> dict[str, float]:
    """2D error rates (eq. 24) of images sampled from the EMA model, against the reference."""
    n_images = quality_image_count(config.quality_images, size)
    if n_images == 0:
        return {}
    sampler = DDPMSampler(schedule, steps=min(config.quality_steps, schedule.T))
    x0 = sample_2d(ema, n_images, size, sampler, seed=config.seed, channels=channels, device=device)
    labels = to_labels(x0, channel_dim=1)
    r_max = len(reference.s2_radial) - 1
    ref_s2 = np.mean([reference.s2[a] for a in ("y", "x")], axis=0)
    ref_lp = np.mean([reference.lineal_path[a] for a in ("y", "x")], axis=0)
    gen_s2 = np.mean(list(s2_along_axes(labels_stack(labels), 1, r_max=r_max).values()), axis=0)
    gen_lp = np.mean(list(lineal_path_along_axes(labels_stack(labels), 1, r_max=r_max).values()), axis=0)
    return {
        "vf_reference": reference.volume_fraction,
        "vf_sampled": float((labels == 1).mean()),
        "s2_error_2d": error_rate(ref_s2, gen_s2),
        "lineal_path_error_2d": error_rate(ref_lp, gen_lp),
        "images": n_images,
        "steps": sampler.steps,
    }


def quality_image_count(requested: int | None, size: int) -> int:
    """Images for the card's 2D check: ``requested``, or 16 per 32² of image area (16 at 32²,
    64 at 64²) when None."""
    return requested if requested is not None else 16 * max(1, round((size / 32) ** 2))


def _card(name, data, config, n_params, seconds, loss, quality, device, skipped: int = 0) -> str:
    r = config.recipe
    lines = [
        f"# {name}",
        "",
        f"Micro3Diff 2D denoiser (ε-prediction U-Net, {n_params / 1e6:.2f} M parameters), "
        f"{config.image_size}×{config.image_size} images, phases {config.phase_names}.",
        "",
        "## Training",
        f"- data: {r.data} ({r.n_images} images; source {data.attrs.get('source', '?')}, data seed {r.data_seed})",
        f"- generator parameters: {json.dumps(r.data_params)}",
        f"- held out (never trained on; what `micro-doe tune` judges against): "
        f"{config.held_out.source if config.held_out else 'none'}",
        f"- recipe: {r.steps} steps, batch {r.batch_size}, AdamW lr {r.lr}, weight decay {r.weight_decay}, "
        f"EMA {r.ema_decay}, grad clip {r.grad_clip}, dihedral augmentation {r.augment}, seed {r.seed}"
        + (", bf16 forward (mixed precision)" if r.precision == "bf16" else ""),
        f"- noise schedule: {config.schedule}, T = {config.noise_schedule().T}",
        f"- wall time: {seconds / 60:.1f} min on {device} ({torch.get_num_threads()} threads)",
        f"- final loss (running mean): {loss:.4f}"
        + (f"; {skipped} steps skipped (gradient not finite: no optimiser step)" if skipped else ""),
        "",
        "## Quality (2D, sampled with plain DDPM)",
    ]
    if quality:
        lines += [
            f"- {quality['images']} images, S = {quality['steps']} steps",
            f"- volume fraction: reference {quality['vf_reference']:.3f}, sampled {quality['vf_sampled']:.3f}",
            f"- S2 error rate (eq. 24): {quality['s2_error_2d']:.2f} %",
            f"- lineal path error rate (eq. 24): {quality['lineal_path_error_2d']:.2f} %",
        ]
    else:
        lines.append("- not measured")
    lines += ["", "3D (multi-plane) quality: see `benchmarks/micro3diff.py` and docs/explanation/micro3diff.md.", ""]
    return "\n".join(lines)

