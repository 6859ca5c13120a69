"""``micro-doe train micro3diff ...``: train a generator on your own data, write a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from micro_doe.cli.ldm import train_ldm_command
from micro_doe.cli.options import Overwrite, option_errors
from micro_doe.cli.tune import MaxPasses, Threads, TuneBudget, run_tuning, set_threads, tune_options
from micro_doe.platform.diffusion.training import check_device
from micro_doe.platform.interrupts import interrupt_name, mark_reported
from micro_doe.platform.micro3diff.training import TrainConfig, TrainingInterrupted, train_micro3diff
from micro_doe.platform.micro3diff.training_data import (
    check_training_phases,
    load_training_data,
    split_held_out,
    training_images,
)
from micro_doe.platform.micro3diff.unet import UNetConfig
from micro_doe.platform.volumes import check_bundle_target, why_missing

train_app = typer.Typer(help="Train generators on your own data.", no_args_is_help=True)
train_app.command("ldm", help="Train the conditional latent diffusion model (VAE, feature predictor, LDM).")(
    train_ldm_command
)


@train_app.command()
def micro3diff(
    data: Annotated[Path, typer.Option(help="Training images: .nc stack or volume, image folder, or one large image.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory to write.")],
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 4000,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 32,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 3e-4,
    ema_decay: Annotated[float, typer.Option(help="EMA decay of the weights.")] = 0.995,
    base_channels: Annotated[int, typer.Option(help="U-Net width of the first level.")] = 32,
    channel_mults: Annotated[str, typer.Option(help="Width multipliers per level, comma-separated.")] = "1,2,2",
    res_blocks: Annotated[int, typer.Option(help="Residual blocks per level.")] = 1,
    attention: Annotated[bool, typer.Option(help="Self-attention at the lowest resolution.")] = True,
    schedule: Annotated[str, typer.Option(help="Noise schedule: linear (the paper's) or cosine.")] = "linear",
    augment: Annotated[bool, typer.Option(help="8-fold dihedral augmentation.")] = True,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 250,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from OUT.checkpoint.pt.")] = False,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
    threshold: Annotated[float | None, typer.Option(help="Grey images: label 1 above this value.")] = None,
    crop_size: Annotated[int | None, typer.Option(help="One large image: cut crops of this size (the held-out ones "
                                                      "from a strip of its bottom rows no other crop touches).")] = None,
    n_crops: Annotated[int, typer.Option(help="Number of crops when cropping.")] = 250,
    quality_images: Annotated[int | None, typer.Option(help="Images sampled for the card's quality check "
                                                           "(default: 16 per 32² of image area).")] = None,
    held_out: Annotated[float, typer.Option(help="Fraction of the images set aside (never trained on) to tune "
                                                 "the sampling against; the last images of --data.")] = 0.1,
    tune: Annotated[bool, typer.Option(help="Last stage: tune the sampling defaults (micro-doe tune).")] = True,
    tune_budget: TuneBudget = "16",
    max_passes: MaxPasses = 1100,
    threads: Threads = None,
    precision: Annotated[str, typer.Option(help="The forward pass: fp32 or bf16 (mixed precision; about half a CPU "
                                                "step). May change between --resume pieces.")] = "fp32",
    overwrite: Overwrite = False,
) -> None:
    """Train the Micro3Diff 2D denoiser and write a model bundle; then tune its sampling
    defaults against the held-out images (``--no-tune`` skips that)."""
    try:
        mults = tuple(int(m) for m in channel_mults.split(","))
    except ValueError:
        raise ValueError(f"--channel-mults: expected comma-separated integers, got {channel_mults!r}") from None
    check_bundle_target(out, overwrite=overwrite)
    check_device(device)
    if reason := why_missing(data):
        raise FileNotFoundError(f"--data {data}: {reason}")
    if tune and held_out == 0:
        raise ValueError("--held-out 0: tuning judges against images set aside from training; give a fraction "
                         "(0.1) or pass --no-tune")
    options = tune_options(tune_budget, seed, max_passes) if tune else None
    set_threads(threads)
    try:
        config = TrainConfig(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            ema_decay=ema_decay,
            checkpoint_every=checkpoint_every,
            augment=augment,
            seed=seed,
            schedule=schedule,
            unet=UNetConfig(base_channels=base_channels, channel_mults=mults, num_res_blocks=res_blocks, attention=attention),
            quality_images=quality_images,
            held_out=held_out,
            precision=precision,
        )
    except ValidationError as err:
        raise option_errors(err, {"num_res_blocks": "--res-blocks", "channel_mults": "--channel-mults"}) from None
    images = load_training_data(data, threshold=threshold, crop_size=crop_size, n_crops=n_crops, seed=seed, held_out=held_out)
    check_training_phases(images, f"--data {data}")
    split_held_out(training_images(images, f"--data {data}"), held_out, f"--data {data}")  # before anything is written
    try:
        bundle = train_micro3diff(images, out, config, resume=resume, overwrite=overwrite, device=device,
                                  data_label=str(data))
    except TrainingInterrupted as stopped:  # say where the checkpoint is, then exit 130 / 143
        Console(stderr=True).print(f"interrupted ({interrupt_name()}): {stopped}", highlight=False, soft_wrap=True)
        mark_reported()
        raise
    Console(stderr=True).print(f"wrote bundle {bundle}")
    if options is not None:
        run_tuning(str(bundle), options, None)
    Console(soft_wrap=True).print((bundle / "card.md").read_text(), markup=False, highlight=False)

