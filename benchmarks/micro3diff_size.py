"""Micro3Diff volumes of edge N from a 32² model: time, peak memory and quality against N.

    python benchmarks/micro3diff_size.py [--model pretrained:spheres-32] [--sizes 32 64 96 128]
        [--timing-steps 2] [--quality-sizes 32 64] [--volumes 2] [--threads 1] [--json FILE]

The U-Net is fully convolutional, so a model trained on 32² slices denoises N² slices of an N³
cube (``generate --size N``). Two parts:

1. **Cost against N.** Each N runs in a fresh process (its peak resident memory is its own):
   one volume at the bundle's default variant and precision with ``--timing-steps`` denoising
   steps and n_h 0, timed per pass (one pass = the network over the N slices of one plane
   direction, in batches of :meth:`~Micro3DiffGenerator.slices_per_pass`), beside the
   generator's own memory estimate (:meth:`~Micro3DiffGenerator.memory_estimate`), which refuses
   an N that does not fit before sampling.
2. **Quality against N** on a stationary morphology: ``--volumes`` volumes at the bundle's tuned
   default for each N of ``--quality-sizes``, judged against the bundle's reference (its
   training images, 32²: curves up to r = 16, sizes over 2D sections) by what the sampler does
   not steer: L error and size error. The reference for "does quality hold as N grows" is the
   row N = 32 measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def timing_child(model: str, size: int, steps: int, threads: int) -> dict:
    """Runs in its own process: one volume of edge ``size``, few steps; seconds per pass and peak RSS."""
    import torch

    from micro_doe.platform.micro3diff.generator import Micro3DiffGenerator, SamplingSettings

    torch.set_num_threads(threads)
    generator = Micro3DiffGenerator(model)
    passes: list[float] = []
    last = [time.perf_counter()]

    def on_pass(_):  # type: ignore[no-untyped-def]
        now = time.perf_counter()
        passes.append(now - last[0])
        last[0] = now

    edge, slices = generator.check_size(size, 1)
    estimate = generator.memory_estimate(edge, 1, slices)
    start = time.perf_counter()
    last[0] = start
    generator.sample(1, SamplingSettings(n_h=0, steps=steps), seed=0, size=size, on_pass=on_pass, allow_extrapolation=True)
    wall = time.perf_counter() - start
    return {"size": size, "slices_per_pass": slices, "passes": len(passes), "seconds": wall,
            "seconds_per_pass": float(np.median(passes[1:] if len(passes) > 1 else passes)),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "estimate_mb": estimate / 2**20}  # fmt: skip


def quality(model: str, sizes: list[int], volumes: int, threads: int) -> list[dict]:
    import torch

    from micro_doe.platform.descriptors import section_sizes, size_error
    from micro_doe.platform.descriptors.reference_error import error_rates
    from micro_doe.platform.micro3diff.generator import Micro3DiffGenerator
    from micro_doe.platform.volumes import stack_volumes

    torch.set_num_threads(threads)
    generator = Micro3DiffGenerator(model)
    reference = generator.bundle.reference
    rows = []
    for size in sizes:
        start = time.perf_counter()
        vols = generator.sample(volumes, seed=1000, size=size)
        seconds = (time.perf_counter() - start) / volumes
        errors = error_rates(reference, vols)
        sizes_of = section_sizes(stack_volumes(vols), reference.phase)
        rows.append({"size": size, "lineal_path_error": errors["lineal_path_error"], "s2_error": errors["s2_error"],
                     "size_error": size_error(reference.sizes, sizes_of), "diameter": sizes_of.diameter_mean,
                     "vf": errors["vf"], "seconds_per_volume": seconds})  # fmt: skip
        print(f"  N {size}: L {rows[-1]['lineal_path_error']:.2f} %  size {rows[-1]['size_error']:.2f} %  "
              f"vf {rows[-1]['vf']:.3f}  {seconds:.1f} s/volume", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pretrained:spheres-32")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 96, 128])
    parser.add_argument("--timing-steps", type=int, default=2)
    parser.add_argument("--quality-sizes", type=int, nargs="*", default=[32, 64])
    parser.add_argument("--volumes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(timing_child(args.model, args.child, args.timing_steps, args.threads)))
        return
    print(f"# Micro3Diff against N: {args.model}, {os.cpu_count()} cores, {args.threads} thread(s)", flush=True)
    timing = []
    for size in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--timing-steps", str(args.timing_steps),
                              "--threads", str(args.threads), "--child", str(size)],
                             capture_output=True, text=True, check=True, env=os.environ | {"PYTHONPATH": str(ROOT)})  # fmt: skip
        timing.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  N {size}: {timing[-1]['seconds_per_pass']:.3f} s / pass, peak {timing[-1]['peak_mb']:.0f} MB", flush=True)
    base = timing[0]
    print("\n| N | voxels | slices per network call | s / pass | × N = 32 | (N / 32)³ | peak memory MB | estimate MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in timing:
        grow = (t["size"] / base["size"]) ** 3
        print(f"| {t['size']} | {t['size'] ** 3:,} | {t['slices_per_pass']} | {t['seconds_per_pass']:.3f} | "
              f"{t['seconds_per_pass'] / base['seconds_per_pass']:.1f} | {grow:.0f} | {t['peak_mb']:.0f} | {t['estimate_mb']:.0f} |")
    rows = quality(args.model, args.quality_sizes, args.volumes, args.threads) if args.quality_sizes else []
    if rows:
        print("\n| N | L error % | size error % | S2 error % | Ø | vf | s / volume |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['size']} | {r['lineal_path_error']:.2f} | {r['size_error']:.2f} | {r['s2_error']:.2f} | "
                  f"{r['diameter']:.2f} | {r['vf']:.3f} | {r['seconds_per_volume']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "threads": args.threads, "timing": timing, "quality": rows}, indent=1))


if __name__ == "__main__":
    main()
