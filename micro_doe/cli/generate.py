"""``micro-doe generate MODEL ...``: sample volumes from a model, write NetCDF/TIFF.

One command for both kinds of bundle (config.json's ``kind``): Micro3Diff takes the
multi-plane options (``--n-h``, ``--variant``, ``--precision``, ...) and ``--target
vf_<phase>=VALUE`` (the anchored variant's volume fraction); the conditional LDM takes
``--target NAME=VALUE`` (any subset of its conditioning labels for a model trained with
label dropout, else one per label), ``--guidance``, ``--guidance-rescale``,
``--feature-guidance`` and verified generation (on by default: ``--tolerance``,
``--max-candidates``; ``--no-verify`` for raw samples). Both take
``--allow-extrapolation``. An option of the other kind is an error, not silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from micro_doe.cli.evaluate import descriptor_table
from micro_doe.cli.ldm import generate_ldm, parse_targets
from micro_doe.cli.options import Overwrite, check_count, option_errors, parameters_as_options
from micro_doe.platform.bundles import bundle_kind
from micro_doe.platform.descriptors import describe
from micro_doe.platform.diffusion.training import check_device
from micro_doe.platform.ldm.generator import DEFAULT_BATCH_SIZE
from micro_doe.platform.ldm.verify import DEFAULT_MAX_CANDIDATES, DEFAULT_TOLERANCE
from micro_doe.platform.micro3diff.generator import Micro3DiffGenerator, SamplingSettings
from micro_doe.platform.volumes import check_output_file, stack_volumes, write_volume

MAX_VOLUMES = 10_000  # per command; a study samples more, trial by trial


def check_generate_options(out: Path, n: int, overwrite: bool, device: str | None) -> None:
    """What both kinds of model check before loading anything: the output file, n, the device."""
    if out.suffix.lower() not in (".nc", ".tif", ".tiff"):
        raise ValueError(f"--out {out}: expected a .nc or .tif file")
    check_count(n, "--n", high=MAX_VOLUMES)
    if n > 1 and out.suffix.lower() != ".nc":
        raise ValueError(f"--out {out}: {n} volumes go into one .nc file; TIFF holds a single volume")
    check_output_file(out, overwrite=overwrite)
    check_device(device)


def generate(
    model: Annotated[str, typer.Argument(help="pretrained:NAME or a bundle directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file: .nc (any n) or .tif (n = 1).")],
    n: Annotated[int, typer.Option(help="Number of volumes.")] = 1,
    n_h: Annotated[int | None, typer.Option("--n-h", help="Harmonizing cycles per step (default: the bundle's).")] = None,
    steps: Annotated[int | None, typer.Option(help="Sampling steps S ≤ T (default: the bundle's).")] = None,
    sampler: Annotated[str | None, typer.Option(help="ddpm or ddim (default: the bundle's).")] = None,
    eta: Annotated[float | None, typer.Option(help="DDIM η.")] = None,
    variance: Annotated[str | None, typer.Option(help="DDPM variance: beta (paper) or posterior.")] = None,
    variant: Annotated[
        str | None, typer.Option(help="Multi-plane variant: paper (reference), average, moment, anchored or spectral.")
    ] = None,
    precision: Annotated[str | None, typer.Option(help="Micro3Diff network precision: fp32, bf16 or fp16 (CUDA).")] = None,
    decode: Annotated[
        str | None,
        typer.Option(help="Micro3Diff, x_0 to labels: sign, fractions (at the target fractions) or hysteresis (the "
                          "sign's phase grown to the target fraction, or the other phase grown when it holds more; "
                          "two phases). Default: the bundle's."),
    ] = None,
    target: Annotated[
        list[str] | None,
        typer.Option(
            "--target", "-t", help="LDM: NAME=VALUE per conditioning label; Micro3Diff: vf_<phase>=VALUE (anchored)."
        ),
    ] = None,
    guidance: Annotated[float | None, typer.Option(help="LDM: classifier-free guidance w (1: none).")] = None,
    guidance_rescale: Annotated[float | None, typer.Option(help="LDM: guidance rescale φ in [0, 1] (0: none).")] = None,
    feature_guidance: Annotated[
        float | None, typer.Option(help="LDM: feature-predictor gradient guidance scale (0: none).")
    ] = None,
    tolerance: Annotated[
        float | None,
        typer.Option(help=f"LDM, verified generation: max |measured − target| per label on the vf / 1/τ scale "
                          f"(default {DEFAULT_TOLERANCE})."),
    ] = None,
    max_candidates: Annotated[
        int | None,
        typer.Option(help=f"LDM, verified generation: candidates per volume (default {DEFAULT_MAX_CANDIDATES})."),
    ] = None,
    correct_requests: Annotated[
        bool, typer.Option(help="LDM, verified generation with request correction: later rounds of candidates "
                                "conditioned on the request shifted by the measured miss.")
    ] = False,
    verify: Annotated[
        bool | None, typer.Option("--verify/--no-verify", help="LDM: verified generation (the default) or raw samples.")
    ] = None,
    allow_extrapolation: Annotated[bool, typer.Option(help="Allow targets outside the model's documented range.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the first volume; volume i uses seed + i.")] = 0,
    batch_size: Annotated[
        int | None, typer.Option(help="Micro3Diff: slices per network call (default 64 at the training size, "
                                      "fewer for a larger --size); LDM: candidates denoised "
                                      f"together (default {DEFAULT_BATCH_SIZE}).")
    ] = None,
    size: Annotated[
        int | None, typer.Option(help="Micro3Diff: cube edge N ≥ the training size (default: the training size).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
    show: Annotated[bool, typer.Option(help="Print the descriptors of the first volume.")] = True,
    overwrite: Overwrite = False,
) -> None:
    """Sample 3D volumes: Micro3Diff (multi-plane denoising) or the conditional LDM (--target ...)."""
    check_generate_options(out, n, overwrite, device)
    if batch_size is not None:
        check_count(batch_size, "--batch-size", high=4096)
    kind = bundle_kind(model)
    micro3diff_only = {"--n-h": n_h, "--eta": eta, "--variance": variance, "--variant": variant, "--precision": precision,
                       "--decode": decode, "--size": size}
    ldm_only = {"--guidance": guidance, "--guidance-rescale": guidance_rescale, "--feature-guidance": feature_guidance,
                "--tolerance": tolerance, "--max-candidates": max_candidates,
                "--correct-requests": True if correct_requests else None,
                "--verify" if verify else "--no-verify": verify}
    wrong = [name for name, value in (micro3diff_only if kind == "ldm" else ldm_only).items() if value is not None]
    if wrong:
        raise ValueError(f"{', '.join(wrong)}: not an option of {model}, a {kind} model")
    if kind == "ldm":
        samples = generate_ldm(
            model, out, target=target, n=n, steps=steps, guidance=guidance, sampler=sampler, seed=seed,
            allow_extrapolation=allow_extrapolation, device=device, overwrite=overwrite,
            guidance_rescale=guidance_rescale, feature_guidance=feature_guidance, tolerance=tolerance,
            max_candidates=max_candidates, batch_size=batch_size or DEFAULT_BATCH_SIZE,
            correct_requests=correct_requests, verify=verify is not False,
        )  # fmt: skip
        if show:
            Console().print(descriptor_table(describe(samples[0].volume, phase=1), title=f"{out} [0]"))
        return
    generate_micro3diff(
        model, out, n=n, settings=dict(n_h=n_h, steps=steps, sampler=sampler, eta=eta, variance=variance,
                                       variant=variant, precision=precision, decode=decode),
        target=target, allow_extrapolation=allow_extrapolation, seed=seed, batch_size=batch_size, size=size,
        device=device, show=show,
    )  # fmt: skip


def generate_micro3diff(
    model: str, out: Path, *, n: int, settings: dict, target: list[str] | None, allow_extrapolation: bool,
    seed: int, batch_size: int | None, size: int | None, device: str | None, show: bool,
) -> None:
    """The Micro3Diff half of ``generate`` (options checked by it): check every option against the
    bundle before sampling, sample with a progress bar of network passes, write, show."""
    targets = parse_targets(target)
    if targets and settings["variant"] is None:
        settings = {**settings, "variant": "anchored"}  # a vf target is the anchored variant's
    try:
        sampling = SamplingSettings(**settings, targets=targets)
    except ValidationError as err:
        raise option_errors(err, {"targets": "--target"}) from None
    generator = Micro3DiffGenerator(model, device=device)
    try:
        names = ("variant", "sampler", "steps", "n_h", "eta", "variance", "precision", "decode", "target",
                 "allow extrapolation=pass --allow-extrapolation")
        with parameters_as_options(*names):
            generator.check(sampling, allow_extrapolation)  # every mistake reported before sampling starts
        with parameters_as_options("size"):
            edge, _ = generator.check_size(size, n, batch_size)  # the same check sample() makes
    except ValidationError as err:
        raise option_errors(err, {"targets": "--target"}) from None
    total = n * generator.passes_per_volume(sampling)
    columns = (TextColumn("sampling"), BarColumn(), MofNCompleteColumn(), TextColumn("passes"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("sampling", total=total)
        volumes = generator.sample(
            n, sampling, seed=seed, batch_size=batch_size, allow_extrapolation=allow_extrapolation,
            on_pass=lambda p: bar.advance(task, p.x.shape[0]), size=edge,
        )
    write_volume(stack_volumes(volumes), out)
    Console(stderr=True).print(f"wrote {out} ({n} × {edge}³, {volumes[0].attrs['generator_params']})")
    if show:
        Console().print(descriptor_table(describe(volumes[0]), title=f"{out} [0]"))
