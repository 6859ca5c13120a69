"""Micro3Diff sampling speed: memory layout, network precision and batched volumes, in one run.

    python benchmarks/micro3diff_speed.py [--model spheres-32 | --model PATH] [--repeats 5] [--steps 10]
        [--threads 1] [--compile] [--train | --train-only]

Seconds per volume-pass (one denoising pass over the N slices of one N³ volume: N is the
model's image size) for the U-Net's weights and activations channels-last (NHWC, what the
U-Net uses) against the standard layout (NCHW, the reference: what it used before), each in fp32
and bf16 autocast, one volume at a time; then channels-last with 4 volumes in one batched loop.
The settings are interleaved repeat by repeat and the median is printed, so a busy machine
slows every setting alike and the ratios stay fair; NCHW fp32, one volume at a time, is the
reference row. Beside each row, the network's arithmetic rate: its floating-point operations
per volume-pass (counted by ``torch.utils.flop_counter``) over the seconds, against this CPU's
peak measured in the same run (the best of a few 2048² matrix products in fp32 and in bf16).
``--compile`` adds channels-last under ``torch.compile`` (its compile time printed apart).
Also the sampler's overhead over the bare network calls (anchored variant, fp32, one volume):
total sampling time over the time spent inside the network's calls. ``--train`` adds training:
seconds per optimiser step (batch 32 of the model's image size, a fresh copy of its U-Net, AdamW)
in fp32, the reference, and under bf16 autocast (``train micro3diff --precision bf16``), interleaved;
``--train-only`` measures training alone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from micro_doe.platform.diffusion.blocks import timestep_embedding
from micro_doe.platform.diffusion.precision import native_precisions
from micro_doe.platform.micro3diff.generator import Micro3DiffGenerator, SamplingSettings
from micro_doe.platform.micro3diff.unet import UNet2D


class TimedModel:
    """Wraps the denoiser and adds up the wall time spent inside its calls."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.seconds = model, 0.0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.model(x, t)
        self.seconds += time.perf_counter() - start
        return out


def cpu_name() -> str:
    """The processor's model name (Linux), else what ``platform`` knows."""
    import platform

    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def cpu_units() -> str:
    """What the CPU runs natively, as torch sees it: its vector capability and whether bf16 is native."""
    natives = native_precisions("cpu")
    return f"{torch.backends.cpu.get_cpu_capability()}, bf16 {'native' if 'bf16' in natives else 'emulated (no bf16 units)'}"


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of the best of ``repeats`` n×n matrix products in ``dtype``."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(_seconds(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def flops_per_volume_pass(model: UNet2D, size: int) -> float:
    """Floating-point operations of the network over the ``size`` slices of one volume."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(size, model.config.in_channels, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, torch.zeros(size, dtype=torch.long))
    return float(counter.get_total_flops())


@contextlib.contextmanager
def standard_layout(model: UNet2D) -> Iterator[None]:
    """The U-Net in the standard (NCHW) layout for a while: weights and activations."""
    model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    model.forward = lambda x, t: model.run_trunk(x.contiguous(), model.time_mlp(timestep_embedding(t, model.t_dim)))  # type: ignore[method-assign]
    try:
        yield
    finally:
        del model.forward  # the class's own (channels-last) forward again
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def training_steps(model: UNet2D, size: int, repeats: int) -> None:
    """Seconds per training step, fp32 against bf16 autocast, interleaved (the first step of each left out)."""
    import copy

    from micro_doe.platform.diffusion import NoiseSchedule, diffusion_loss

    schedule = NoiseSchedule.linear(1000)
    x0 = (torch.rand(32, model.config.in_channels, size, size, generator=torch.Generator().manual_seed(0)) < 0.3) * 2.0 - 1
    nets = {p: copy.deepcopy(model).train() for p in ("fp32", "bf16")}
    optimisers = {p: torch.optim.AdamW(n.parameters(), lr=3e-4) for p, n in nets.items()}
    times: dict[str, list[float]] = {p: [] for p in nets}
    for repeat in range(repeats + 1):
        for precision, net in nets.items():
            start = time.perf_counter()
            with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
                loss = diffusion_loss(net, x0, schedule, torch.Generator().manual_seed(repeat))
            optimisers[precision].zero_grad()
            loss.backward()
            optimisers[precision].step()
            if repeat:
                times[precision].append(time.perf_counter() - start)
    ref = statistics.median(times["fp32"])
    print(f"\n| training step (batch 32, {size}²) | s per step | speed-up vs fp32 |\n|---|---:|---:|")
    for precision, t in times.items():
        print(f"| {precision}{' (reference)' if precision == 'fp32' else ' autocast'} | {statistics.median(t):.3f} "
              f"| {ref / statistics.median(t):.2f}× |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="spheres-32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="add channels-last under torch.compile")
    parser.add_argument("--train", action="store_true", help="add training steps, fp32 against bf16 autocast")
    parser.add_argument("--train-only", action="store_true", help="training steps alone")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = Micro3DiffGenerator(args.model if os.sep in args.model else f"pretrained:{args.model}")
    eager = generator.bundle.model
    if args.train_only:
        print(f"# {args.model}: {torch.get_num_threads()} threads on {cpu_name()} ({cpu_units()}), torch {torch.__version__}, "
              f"median of {args.repeats} interleaved repeats")
        training_steps(eager, generator.bundle.config.image_size, args.repeats)
        return
    cases = [(layout, p, 1) for layout in ("NCHW", "NHWC") for p in ("fp32", "bf16")] + [("NHWC", p, 4) for p in ("fp32", "bf16")]
    compiled = None
    if args.compile:
        cases += [("NHWC, torch.compile", p, 1) for p in ("fp32", "bf16")]
        compiled = torch.compile(eager)  # a callable module, run as the generator's network
        start = time.perf_counter()
        for precision in ("fp32", "bf16"):  # compiled once per precision, before the timed runs
            generator.bundle.model = compiled  # type: ignore[assignment]
            generator.sample(1, SamplingSettings(variant="anchored", n_h=0, steps=1, precision=precision), seed=0)
        generator.bundle.model = eager
        print(f"torch.compile: {time.perf_counter() - start:.0f} s to compile")
    times: dict[tuple[str, str, int], list[float]] = {c: [] for c in cases}
    for _ in range(args.repeats):
        for layout, precision, n in cases:
            settings = SamplingSettings(variant="anchored", n_h=0, steps=args.steps, precision=precision)
            generator.bundle.model = compiled if "compile" in layout else eager  # type: ignore[assignment]
            with standard_layout(eager) if layout == "NCHW" else contextlib.nullcontext():
                start = time.perf_counter()
                generator.sample(n, settings, seed=0, volumes_per_batch=n)
                times[(layout, precision, n)].append((time.perf_counter() - start) / (n * args.steps))
    generator.bundle.model = eager
    original, timed = generator.bundle.model, TimedModel(generator.bundle.model)
    generator.bundle.model = timed  # type: ignore[assignment]
    start = time.perf_counter()
    generator.sample(1, SamplingSettings(variant="anchored", n_h=1, steps=args.steps, precision="fp32"), seed=0)
    overhead = (time.perf_counter() - start) / timed.seconds - 1.0
    generator.bundle.model = original
    size = generator.bundle.config.image_size
    flops = flops_per_volume_pass(generator.bundle.model, size)
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"# {args.model} ({size}³ volumes, {flops / 1e9:.1f} GFLOP per volume-pass), {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} threads on {cpu_name()} ({cpu_units()}), torch {torch.__version__}, median of {args.repeats} interleaved repeats; "
          f"peak (2048² matmul) fp32 {peak['fp32']:.3g}, bf16 {peak['bf16']:.3g} GFLOP/s\n")
    print("| layout | precision | volumes per batch | s per volume-pass | speed-up vs NCHW fp32, one at a time "
          "| GFLOP/s | share of the matmul peak |")
    print("|---|---|---:|---:|---:|---:|---:|")
    ref = statistics.median(times[("NCHW", "fp32", 1)])
    for layout, precision, n in cases:
        t = statistics.median(times[(layout, precision, n)])
        rate = flops / t / 1e9
        print(f"| {layout}{' (reference)' if layout == 'NCHW' and precision == 'fp32' else ''} | {precision} | {n} | "
              f"{t:.3f} | {ref / t:.2f}× | {rate:.3g} | {rate / peak[precision]:.0%} |")
    print(f"\nsampler overhead over the bare network calls (anchored, fp32, n_h = 1): {100 * overhead:+.1f} % (target ≤ 5 %)")
    if args.train:
        training_steps(generator.bundle.model, size, args.repeats)


if __name__ == "__main__":
    main()
