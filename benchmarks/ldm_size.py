"""The conditional LDM's training cost against the volume size N³ (#30 D3), on this machine.

    python benchmarks/ldm_size.py [--sizes 32 64] [--precisions fp32 bf16] [--steps 20] [--threads 1]

For each N: a small Cahn–Hilliard data set (2 φ × 2 χ, 4 snapshots a trajectory; its seconds per
trajectory, labels included), then each training stage of the default recipe (VAE, feature
predictor, latent DDPM; ``LDMTrainConfig()``, its batch sizes) for ``--steps`` optimiser steps, in
each of ``--precisions`` (fp32, the reference, and bf16 autocast: ``train ldm --precision bf16``).
Seconds per step are the median of the step-to-step times after the first (warm-up) step.

Printed beside them: the default recipe's total (VAE 5 000, predictor 4 000, LDM 30 000 steps) at
that rate, N = 32 (the shipped opv-32's size) as the reference measured in the same run, and an
estimate for the LDM paper's volumes of about 1 M voxels (104³, the nearest side divisible by the
VAE's downsampling of 8), scaled from the largest N measured by the voxel count (the VAE) and the
latent voxel count (the DDPM). That last row is an extrapolation, not a measurement.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from micro_doe.platform.ldm.dataset import OPVDatasetConfig, make_opv_dataset
from micro_doe.platform.ldm.train_config import LDMTrainConfig
from micro_doe.platform.ldm.training import train_ldm

RECIPE_STEPS = {"vae": 5000, "fp": 4000, "ldm": 30000}
PAPER_SIDE = 104  # ≈ 1.1 M voxels


def stage_seconds(data, out: Path, steps: int, precision: str) -> dict[str, float]:
    """Median seconds per optimiser step of each stage (the first step left out)."""
    stamps: dict[str, list[float]] = {}
    config = LDMTrainConfig.model_validate({s: {"steps": steps + 1, "precision": precision} for s in RECIPE_STEPS})
    train_ldm(data, out, config, progress=False, device="cpu", overwrite=True,
              on_log=lambda stage, step, loss: stamps.setdefault(stage, []).append(time.perf_counter()))
    return {s: statistics.median(b - a for a, b in zip(t[1:], t[2:])) for s, t in stamps.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if any(n % 8 for n in args.sizes) or args.steps < 3:
        sys.exit("--sizes: multiples of 8 (the VAE downsamples by 8); --steps: at least 3")
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            config = OPVDatasetConfig(shape=(n, n, n), phis=[0.4, 0.5], chis=[3.0, 3.6], n_snapshots=4, seed=0)
            start = time.perf_counter()
            data = make_opv_dataset(config)
            per_trajectory = (time.perf_counter() - start) / (len(config.phis) * len(config.chis))
            for precision in args.precisions:
                seconds = stage_seconds(data, Path(tmp) / f"ldm-{n}-{precision}", args.steps, precision)
                rows.append((n, precision, per_trajectory, seconds))
                print(f"  {n}³ {precision}: {per_trajectory:.1f} s a trajectory, "
                      + ", ".join(f"{s} {v:.3f} s/step" for s, v in seconds.items()), flush=True)
    print(f"\n# LDM training cost against N ({args.threads} CPU thread(s), {args.steps} steps a stage, default recipe)\n")
    print("| N | voxels | precision | data: s a trajectory (labels included) | VAE s/step | predictor s/step | LDM s/step "
          "| default recipe (h) |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for n, precision, per_trajectory, s in rows:
        hours = sum(s[k] * RECIPE_STEPS[k] for k in RECIPE_STEPS) / 3600
        print(f"| {n} | {n**3:,} | {precision} | {per_trajectory:.1f} | {s['vae']:.3f} | {s['fp']:.3f} | {s['ldm']:.3f} "
              f"| {hours:.1f} |")
    largest = max(n for n, *_ in rows)
    for n, precision, _, s in (r for r in rows if r[0] == largest):
        scale = (PAPER_SIDE / n) ** 3
        est = {k: s[k] * scale for k in RECIPE_STEPS}
        hours = sum(est[k] * RECIPE_STEPS[k] for k in RECIPE_STEPS) / 3600
        print(f"| *estimate: {PAPER_SIDE}³, the LDM paper's ≈ 1 M voxels (scaled from {n}³)* | {PAPER_SIDE**3:,} | {precision} | "
              f"| {est['vae']:.2f} | {est['fp']:.3f} | {est['ldm']:.2f} | {hours:.0f} |")


if __name__ == "__main__":
    main()
