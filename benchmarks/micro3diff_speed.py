"""Micro3Diff sampling speed: network precision and batched volumes, measured in one run.

    python benchmarks/micro3diff_speed.py [--model spheres-32] [--repeats 5] [--steps 10]

Seconds per volume-pass (one denoising pass over the 32 slices of one 32³ volume) for
fp32 and bf16 autocast, sampling 1 or 4 volumes in one batched loop. The settings are
interleaved repeat by repeat and the median is printed, so a busy machine slows every setting
alike and the ratios stay fair; the fp32, one-volume-at-a-time row is the reference. Also the
sampler's overhead over the bare network calls (anchored variant, fp32, one volume): total
sampling time over the time spent inside the network's calls, timed in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from micro_doe.platform.micro3diff.generator import Micro3DiffGenerator, SamplingSettings


class TimedModel:
    """Wraps the denoiser and adds up the wall time spent inside its calls."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.seconds = model, 0.0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.model(x, t)
        self.seconds += time.perf_counter() - start
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="spheres-32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    generator = Micro3DiffGenerator(f"pretrained:{args.model}")
    cases = [(p, n) for p in ("fp32", "bf16") for n in (1, 4)]
    times: dict[tuple[str, int], list[float]] = {c: [] for c in cases}
    for _ in range(args.repeats):
        for precision, n in cases:
            settings = SamplingSettings(variant="anchored", n_h=0, steps=args.steps, precision=precision)
            start = time.perf_counter()
            generator.sample(n, settings, seed=0, volumes_per_batch=n)
            times[(precision, n)].append((time.perf_counter() - start) / (n * args.steps))
    original, timed = generator.bundle.model, TimedModel(generator.bundle.model)
    generator.bundle.model = timed  # type: ignore[assignment]
    start = time.perf_counter()
    generator.sample(1, SamplingSettings(variant="anchored", n_h=1, steps=args.steps, precision="fp32"), seed=0)
    overhead = (time.perf_counter() - start) / timed.seconds - 1.0
    generator.bundle.model = original
    print(f"# {args.model}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"median of {args.repeats} interleaved repeats\n")
    print("| precision | volumes per batch | s per volume-pass | speed-up vs fp32, one at a time |")
    print("|---|---:|---:|---:|")
    ref = statistics.median(times[("fp32", 1)])
    for precision, n in cases:
        t = statistics.median(times[(precision, n)])
        print(f"| {precision} | {n} | {t:.3f} | {ref / t:.2f}× |")
    print(f"\nsampler overhead over the bare network calls (anchored, fp32, n_h = 1): {100 * overhead:+.1f} % (target ≤ 5 %)")


if __name__ == "__main__":
    main()
