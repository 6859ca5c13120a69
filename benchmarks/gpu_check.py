"""The GPU path against the CPU path, at fixed seeds: run it wherever a GPU machine is lent.

    python benchmarks/gpu_check.py [--out gpu-check.json] [--device cuda] [--quick]
    bash benchmarks/gpu_check.sh          # the same, writing into $OUT (the device tool's folder)

Four checks, each printed with its tolerance and written to the JSON file:

1. **Training.** A small Micro3Diff U-Net trained the same number of steps from the same seed on
   the CPU and on ``--device``: the mean loss of the last quarter of the steps must agree within
   15 % (the kernels differ in rounding, and so do the batches' gradients from the first step).
2. **Sampling, fp32.** The shipped spheres-32 model samples the same seeds on the CPU and on the
   device (the noise is drawn on the CPU, so both see the same numbers): the volumes' vf must
   agree within 0.02 and at least 90 % of the voxels must be equal.
3. **Sampling, fp16 and bf16** on the device: each precision's S2 error against the model's
   reference within 3 points of the device's own fp32, and the same voxel agreement rule
   against fp32 relaxed to 80 % (half precision moves the threshold decisions).
4. **Speed**: network passes per second on the device in fp32, fp16 and bf16, beside the CPU's
   fp32 (32 slices of 32² per pass), and volumes per second of the LDM (opv-32, DDIM 50 steps).

Exit code 0 when every check passes, 1 when one fails, 3 when the device is not there (the
CPU side still runs and is written, so the script is exercised where no GPU is lent). The CPU
path stays the tested one; this script is how the GPU path is checked when a GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from micro_doe.platform.descriptors import describe, error_rate
from micro_doe.platform.micro3diff.generator import Micro3DiffGenerator, SamplingSettings
from micro_doe.platform.micro3diff.training import TrainConfig, train_micro3diff
from micro_doe.platform.micro3diff.unet import UNetConfig
from micro_doe.platform.synthetic import spherical_inclusions

LOSS_TOLERANCE = 0.15
VF_TOLERANCE = 0.02
AGREEMENT_FP32 = 0.90
AGREEMENT_HALF = 0.80
S2_POINTS = 3.0


def train_losses(device: str, steps: int, out: Path) -> list[float]:
    """Per-step losses of a small U-Net on 16² sphere slices (seed 0)."""
    data = spherical_inclusions((64, 16, 16), mean_diameter=5.0, sd_diameter=1.0, volume_fraction=0.2, seed=0)
    config = TrainConfig(steps=steps, batch_size=16, checkpoint_every=steps, quality_images=0, seed=0,
                         unet=UNetConfig(base_channels=16, channel_mults=(1, 2), attention=False))  # fmt: skip
    losses: list[float] = []
    train_micro3diff(data, out, config, device=device, progress=False,
                     on_log=lambda step, loss: losses.append(float(loss)))  # fmt: skip
    return losses


def sample(device: str, precision: str, n: int, settings: dict) -> tuple[list[np.ndarray], float, float]:
    """Volumes of spheres-32 at fixed seeds; their mean S2 error against the reference; passes/s."""
    generator = Micro3DiffGenerator("pretrained:spheres-32", device=device)
    request = SamplingSettings(**settings, precision=precision)
    start = time.perf_counter()
    volumes = generator.sample(n, request, seed=100)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    reference = generator.bundle.reference
    s2 = float(np.mean([error_rate(reference.s2_mean(), describe(v, reference.phase, tortuosity_axis=None).s2_mean())
                        for v in volumes]))  # fmt: skip
    passes = n * (settings["n_h"] + 1) * settings["steps"]
    return [v.values for v in volumes], s2, passes / seconds


def ldm_speed(device: str) -> float:
    from micro_doe.platform.ldm.generator import LDMGenerator

    ldm = LDMGenerator("pretrained:opv-32", device=device)
    ldm.generate({"vf_donor": 0.4}, n=2, steps=10, sampler="ddim", seed=0, verify=None)  # warm-up
    start = time.perf_counter()
    ldm.generate({"vf_donor": 0.4}, n=16, steps=50, sampler="ddim", seed=0, verify=None, batch_size=16)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 16 / (time.perf_counter() - start)


def agreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(np.mean([np.mean(x == y) for x, y in zip(a, b)]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu-check.json"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="fewer steps and volumes (a smoke run)")
    args = parser.parse_args()
    steps, n = (40, 2) if args.quick else (300, 4)
    settings = {"variant": "anchored", "n_h": 1, "steps": 10 if args.quick else 25}
    available = args.device == "cpu" or (args.device.startswith("cuda") and torch.cuda.is_available())
    report: dict = {"torch": torch.__version__, "python": platform.python_version(), "device": args.device,
                    "available": available, "checks": {}, "speed": {}}  # fmt: skip
    if available and args.device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name(0)
    checks = report["checks"]
    with tempfile.TemporaryDirectory() as tmp:
        cpu_losses = train_losses("cpu", steps, Path(tmp) / "on-cpu")
        cpu_volumes, cpu_s2, cpu_rate = sample("cpu", "fp32", n, settings)
        report["speed"]["cpu fp32 passes/s"] = cpu_rate
        if available:
            dev_losses = train_losses(args.device, steps, Path(tmp) / "on-device")
            tail = max(1, steps // 4)
            a, b = float(np.mean(cpu_losses[-tail:])), float(np.mean(dev_losses[-tail:]))
            checks["training: last-quarter loss"] = {"cpu": a, "device": b, "relative": abs(a - b) / a,
                                                     "tolerance": LOSS_TOLERANCE, "ok": abs(a - b) / a <= LOSS_TOLERANCE}
            dev32, s2_32, rate32 = sample(args.device, "fp32", n, settings)
            vf_gap = abs(float(np.mean([v.mean() for v in cpu_volumes])) - float(np.mean([v.mean() for v in dev32])))
            same = agreement(cpu_volumes, dev32)
            checks["sampling fp32: cpu vs device"] = {"vf_gap": vf_gap, "voxels_equal": same, "s2_error_cpu": cpu_s2,
                                                      "s2_error_device": s2_32,
                                                      "ok": vf_gap <= VF_TOLERANCE and same >= AGREEMENT_FP32}
            report["speed"]["device fp32 passes/s"] = rate32
            halves = ("fp16", "bf16") if args.device.startswith("cuda") else ("bf16",)
            for precision in halves:
                volumes, s2, rate = sample(args.device, precision, n, settings)
                same = agreement(dev32, volumes)
                checks[f"sampling {precision}: vs device fp32"] = {
                    "s2_error": s2, "s2_error_fp32": s2_32, "voxels_equal": same,
                    "ok": abs(s2 - s2_32) <= S2_POINTS and same >= AGREEMENT_HALF,
                }  # fmt: skip
                report["speed"][f"device {precision} passes/s"] = rate
            report["speed"]["ldm opv-32 volumes/s (DDIM 50, batch 16)"] = ldm_speed(args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    for name, check in checks.items():
        print(f"{'PASS' if check['ok'] else 'FAIL'}  {name}: " + ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in check.items() if k != "ok"))
    for name, value in report["speed"].items():
        print(f"speed  {name}: {value:.3g}")
    print(f"wrote {args.out}")
    if not available:
        print(f"{args.device}: not available here; only the CPU side ran", file=sys.stderr)
        return 3
    return 0 if all(c["ok"] for c in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
