"""Micro3Diff on morphologies nothing here was tuned on: train with the documented command, tune
with `micro-doe tune` (the last stage of training), then judge in 3D against fresh cubes.

    python benchmarks/unseen_morphologies.py [--morphologies blobs fibers struts clustered three-phase]
        [--steps 2250] [--tune-budget 16] [--volumes 4] [--out micro-doe-runs/unseen] [--json FILE]
        [--stage all|data|train|measure|peers|floors|widths] [--peers mcrpy slicegan] [--slicegan-minutes 20]
        [--defaults-from BUNDLE] [--settings JSON ...]

Each morphology comes from a PoreSpy generator (not the project's own): z-slices of 10 cubes of
32³ (320 images of 32²) are the training data; `micro-doe train micro3diff` sets the last 10 %
aside and tunes against them. Then the bundle's paper default (`SamplingConfig()`: paper, n_h 1,
S 50, fp32) and its tuned default sample `--volumes` cubes each, judged against fresh cubes of the
same generator (seeds the data never used), with measurements the tuning never saw:

- **L error** (eq. 24) of the lineal path pooled over the three axes, against the fresh cubes';
- **size error** of the local-thickness distribution over 2D sections, against the fresh cubes';
- **Ø**: mean equivalent-disk diameter of the phase's components in 2D sections;
- **connectivity 3D**: the share of the phase in its largest 3D component (face connectivity);
- **vf** and **seconds per volume**.

The data floor: 4 more fresh cubes judged the same way (what a perfect generator scores with this
many volumes). The isotropy floor: those cubes' z-slices put on all three axes, what a generator
that reproduced the training planes exactly would score, as every method here (Micro3Diff and the
peers, given one plane's images) takes the three planes alike; about the data floor for an
isotropic morphology, more for one that differs between planes (``--stage floors`` adds both floors
to the results in ``--json``; ``--settings`` rows get them too). ``--peers`` adds the peers on the same training images (the 288 the model trained
on, not the held-out ones) and the same judges, timed on this machine: MCRpy
(``benchmarks/peers/mcrpy_reconstruct.py`` in ``.venv-peers``, see benchmarks/peers/README.md; its
seconds are per volume, with no training) and SliceGAN (``benchmarks/peers/slicegan_run.py`` with a
checkout at ``--slicegan``, trained for ``--slicegan-minutes``; its training time is reported apart). Three-phase: the judges are of phase 1 (the phase the bundle's reference names).
vf is the anchored variant's target: it is shown, never a judge; the spectral variant also steers
S2, which is not among the judges either. Training records the images' autocovariance, so the tuning
searches the spectral variant too; a bundle trained before that gets it from
`micro-doe tune NAME-model --training-data NAME.nc` (then `--stage measure`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import porespy as ps
import scipy.ndimage as ndi
import xarray as xr

from micro_doe.platform.descriptors import error_rate, lineal_path_along_axes, section_sizes, size_error
from micro_doe.platform.descriptors.reference_error import pooled_curves
from micro_doe.platform.micro3diff.bundle import Micro3DiffConfig, SamplingConfig
from micro_doe.platform.micro3diff.generator import Micro3DiffGenerator, SamplingSettings
from micro_doe.platform.volumes import make_volume, read_volume, stack_volumes, write_netcdf
from micro_doe.studies.tuning.options import label

SIZE = 32
N_CUBES = 10
FRESH_SEED = 1_000  # fresh cubes: seeds 1000…; the data floor's: 2000…
SAMPLE_SEED = 50_000
TRAIN_HELD_OUT = 0.1  # `train micro3diff`'s default --held-out


def blobs(seed: int) -> tuple[np.ndarray, list[str]]:
    """Bicontinuous: PoreSpy blobs, minority phase 0.30 (periodic)."""
    pores = ps.generators.blobs([SIZE] * 3, porosity=0.7, blobiness=1.0, seed=seed, periodic=True)
    return (~pores).astype(np.int8), ["matrix", "blob"]


def fibers(seed: int) -> tuple[np.ndarray, list[str]]:
    """Thin and elongated: 120 PoreSpy cylinders of radius 2, phase ≈ 0.14, lying in planes normal to
    x (porespy's default orientation, ``phi_max=0``), at random angles within them: the z-slices
    show them cut obliquely, the x-slices whole (see the isotropy floor). (A count, not a porosity:
    porespy 3's porosity mode fails on some seeds.)"""
    pores = ps.generators.cylinders([SIZE] * 3, r=2, ncylinders=120, seed=seed)
    return (~pores).astype(np.int8), ["void", "fiber"]


def struts(seed: int) -> tuple[np.ndarray, list[str]]:
    """Thin, elongated and connected, alike on every plane: the struts of an open-cell foam, PoreSpy's
    ``voronoi_edges`` of 20 cells in the cube, radius 1 (sections about 3 voxels wide), phase ≈ 0.16,
    one 3D component. The isotropic thin-feature case (the fibres differ between planes)."""
    void = ps.generators.voronoi_edges([SIZE] * 3, ncells=20, r=1, seed=seed)
    return (~void).astype(np.int8), ["void", "strut"]


def clustered(seed: int) -> tuple[np.ndarray, list[str]]:
    """Particles that overlap into clusters: PoreSpy overlapping spheres of radius 4, phase 0.20."""
    pores = ps.generators.overlapping_spheres([SIZE] * 3, r=4, porosity=0.8, seed=seed)
    return (~pores).astype(np.int8), ["matrix", "particle"]


def three_phase(seed: int) -> tuple[np.ndarray, list[str]]:
    """Three phases from two independent PoreSpy blob fields: phase 2 (0.25) where the first has
    solid, phase 1 where the second has solid and the first none, phase 0 elsewhere."""
    a = ~ps.generators.blobs([SIZE] * 3, porosity=0.75, blobiness=1.5, seed=seed, periodic=True)
    b = ~ps.generators.blobs([SIZE] * 3, porosity=0.6, blobiness=1.0, seed=seed + 7919, periodic=True)
    labels = np.zeros([SIZE] * 3, np.int8)
    labels[b] = 1
    labels[a] = 2
    return labels, ["host", "guest", "filler"]


MORPHOLOGIES = {"blobs": blobs, "fibers": fibers, "struts": struts, "clustered": clustered, "three-phase": three_phase}


def cubes(name: str, seeds: range) -> list:
    out = []
    for seed in seeds:
        labels, names = MORPHOLOGIES[name](seed)
        out.append(make_volume(labels, phase_names=names, source=f"porespy:{name}", seed=seed))
    return out


def sections(volumes: list, axis: int = 0) -> xr.DataArray:
    """The 2D sections of ``volumes`` normal to array axis ``axis`` (0: their z-slices), as one
    (sample, y, x) stack of images."""
    stack = np.concatenate([np.moveaxis(v.values, axis, 0) for v in volumes])
    return make_volume(stack, dims=("sample", "y", "x"), phase_names=list(volumes[0].attrs["phase_names"]))


def make_data(name: str, out: Path) -> Path:
    """320 images of 32²: the z-slices of 10 cubes (seeds 0–9), as a (sample, y, x) stack."""
    path = out / f"{name}.nc"
    if path.exists():
        return path
    volumes = cubes(name, range(N_CUBES))
    stack = np.concatenate([v.values for v in volumes])
    names = list(volumes[0].attrs["phase_names"])
    write_netcdf(make_volume(stack, dims=("sample", "y", "x"), phase_names=names, source=f"porespy:{name}"), path)
    return path


def train(name: str, data: Path, out: Path, steps: int, budget: str, defaults_from: Path | None = None) -> Path:
    """The documented command (docs/how-to/train-and-tune.md): train, hold out 10 %, tune (skipped when the bundle is tuned; only the
    tuning when training finished but its tune stage was stopped). With ``defaults_from`` (a bundle of the same morphology):
    train without tuning and take that bundle's sampling defaults and calibration (an A/B of the training alone)."""
    bundle = out / f"{name}-model"
    cli = [sys.executable, "-m", "micro_doe.cli.app"]
    if (bundle / "config.json").exists():  # trained: tuned already, or tune it (a tune stage that was stopped)
        if defaults_from is not None:
            return take_defaults(bundle, defaults_from)
        if Micro3DiffConfig.model_validate_json((bundle / "config.json").read_text()).tuning:
            return bundle
        argv = [*cli, "tune", str(bundle), "--threads", "1", "--tune-budget", budget]
    else:
        argv = [*cli, "train", "micro3diff", "--data", str(data), "--out", str(bundle), "--steps", str(steps),
                "--threads", "1", *(["--no-tune"] if defaults_from else ["--tune-budget", budget])]
        if bundle.with_name(bundle.name + ".checkpoint.pt").exists():
            argv += ["--resume"]
    with open(out / f"{name}-train.log", "a") as log:
        subprocess.run(argv, check=True, stdout=log, stderr=log, cwd=out)
    return take_defaults(bundle, defaults_from) if defaults_from is not None else bundle


def take_defaults(bundle: Path, source: Path) -> Path:
    """``bundle`` samples with ``source``'s defaults and vf calibration (not tuned itself)."""
    from micro_doe.studies.tuning.held_out import update_config

    theirs = Micro3DiffConfig.model_validate_json((source / "config.json").read_text())
    update_config(bundle, sampling=theirs.sampling, vf_calibration=theirs.vf_calibration,
                  vf_calibration_setting=theirs.vf_calibration_setting)
    return bundle


def largest_share_3d(volume: np.ndarray, phase: int) -> float:
    mask = volume == phase
    components, n = ndi.label(mask)
    return float(np.bincount(components.ravel())[1:].max() / mask.sum()) if n else float("nan")


def judge(volumes: list, truth: list, phase: int, seconds: float) -> dict[str, float]:
    r_max = SIZE // 2
    gen = pooled_curves(volumes, r_max, phase=phase)["lineal path"]
    ref = pooled_curves(truth, r_max, phase=phase)["lineal path"]
    gen_sizes = section_sizes(stack_volumes(volumes), phase)
    ref_sizes = section_sizes(stack_volumes(truth), phase)
    return {
        "lineal_path_error": error_rate(ref, gen),
        "size_error": size_error(ref_sizes, gen_sizes),
        "diameter": gen_sizes.diameter_mean,
        "connectivity_3d": float(np.mean([largest_share_3d(v.values, phase) for v in volumes])),
        "vf": float(np.mean([(v.values == phase).mean() for v in volumes])),
        "seconds_per_volume": seconds,
    }


ROOT = Path(__file__).resolve().parents[1]


def training_stack(data: Path, bundle: Path) -> np.ndarray:
    """The images the model trained on (the held-out block removed), as the peers get them: the block
    the bundle records, or, with no bundle on this machine, the one `train micro3diff` sets aside by default."""
    from micro_doe.platform.micro3diff.training_data import split_held_out

    stack = read_volume(data)
    if not (bundle / "config.json").exists():
        return split_held_out(stack, TRAIN_HELD_OUT)[0].values
    held = Micro3DiffConfig.model_validate_json((bundle / "config.json").read_text()).held_out
    return stack.values[: held.first] if held is not None and held.first is not None else stack.values


WIDTH_IMAGES, WIDTH_STEPS, WIDTH_SEED = 64, 100, 3  # the 2D samples of `--stage widths`


def widths(name: str, data: Path, bundle: Path, n_volumes: int, volumes_from: list[Path] | None = None) -> dict:
    """Network or sampler? Local-thickness distributions (fraction of the phase at width 1, 3, 5, …)
    of: the network's own 2D samples (plain DDPM, ``WIDTH_IMAGES`` images, S = ``WIDTH_STEPS``)
    beside the images it trained on; and the 3D volumes of the bundle's default (for a tuned
    bundle, the measure stage's: the same seeds), or the NetCDF volumes ``volumes_from`` (a study's, from its MLflow
    artifacts), beside the fresh cubes, sections normal to each axis apart."""
    import torch

    from micro_doe.platform.diffusion import DDPMSampler
    from micro_doe.platform.diffusion.channels import to_labels
    from micro_doe.platform.micro3diff.sampler import sample_2d
    from micro_doe.platform.micro3diff.training_data import labels_stack

    generator = Micro3DiffGenerator(bundle)
    config, phase = generator.bundle.config, generator.bundle.reference.phase
    names = list(generator.bundle.reference.volume_fractions)
    images = make_volume(training_stack(data, bundle), dims=("sample", "y", "x"), phase_names=names)
    channels = config.n_phases if config.n_phases > 2 else 1
    with torch.no_grad():
        x0 = sample_2d(generator.bundle.model, WIDTH_IMAGES, config.image_size, DDPMSampler(config.noise_schedule(), steps=WIDTH_STEPS),
                       seed=WIDTH_SEED, channels=channels)  # fmt: skip
    sampled = section_sizes(labels_stack(to_labels(x0, channel_dim=1)), phase)
    trained = section_sizes(images, phase)
    if volumes_from:
        volumes, what = [read_volume(p) for p in volumes_from], f"{len(volumes_from)} given volumes"
    else:
        volumes, what = generator.sample(n_volumes, SamplingSettings(), seed=SAMPLE_SEED), f"the bundle's default ({label(generator.check(SamplingSettings())[0])})"
    truth = cubes(name, range(FRESH_SEED, FRESH_SEED + n_volumes))
    by_plane = {dim: {source: section_sizes(sections(vols, axis), phase)
                      for source, vols in (("generated", volumes), ("fresh cubes", truth))}
                for axis, dim in enumerate(("z", "y", "x"))}  # fmt: skip
    planes = {dim: {source: sizes.thickness for source, sizes in row.items()} for dim, row in by_plane.items()}
    # Every axis cuts a cube into as many section pixels, so the pooled count is the planes' mean.
    pieces = {source: float(np.mean([row[source].components_per_kpx for row in by_plane.values()]))
              for source in ("generated", "fresh cubes")}  # fmt: skip
    result = {"name": name, "2d": {"network": sampled.thickness, "training images": trained.thickness,
                                   "size_error": size_error(trained, sampled)},
              "3d": {"volumes": what, "planes": planes, "components_per_kpx": pieces}}  # fmt: skip
    fmt = lambda w: " / ".join(f"{x:.2f}" for x in w[:4])  # noqa: E731
    print(f"\n### {name}: fraction of the phase at width 1 / 3 / 5 / 7\n")
    print(f"- 2D, the network's samples: {fmt(sampled.thickness)}; the training images: {fmt(trained.thickness)} "
          f"(size error {result['2d']['size_error']:.2f} %)")
    for dim, row in planes.items():
        print(f"- 3D, sections normal to {dim}, {what}: {fmt(row['generated'])}; "
              f"fresh cubes: {fmt(row['fresh cubes'])}")
    print(f"- 3D, components per 1 000 section pixels, all planes: {pieces['generated']:.2f}; fresh cubes: {pieces['fresh cubes']:.2f}")
    return result


def run_peer(peer: str, name: str, images: np.ndarray, out: Path, n_volumes: int, args: argparse.Namespace) -> dict:
    """Volumes of a peer (cached in OUT/NAME-PEER.npz) and its timings."""
    result = out / f"{name}-{peer}.npz"
    if not result.exists():
        npy = out / f"{name}-training-images.npy"
        np.save(npy, images.astype(np.int8))
        if peer == "mcrpy":
            argv = [str(ROOT / ".venv-peers" / "bin" / "python"), str(ROOT / "benchmarks" / "peers" / "mcrpy_reconstruct.py")]
        else:
            argv = [sys.executable, str(ROOT / "benchmarks" / "peers" / "slicegan_run.py"), "--slicegan", str(args.slicegan),
                    "--minutes", str(args.slicegan_minutes)]
        argv += ["--images", str(npy), "--size", str(SIZE), "--volumes", str(n_volumes), "--seed", str(SAMPLE_SEED),
                 "--out", str(result)]
        with open(out / f"{name}-{peer}.log", "a") as log:
            subprocess.run(argv, check=True, stdout=log, stderr=log)
    data = np.load(result)
    seconds = data["seconds"] if "seconds" in data else data["seconds_per_volume"]
    return {"volumes": [make_volume(v) for v in data["volumes"]], "seconds": float(np.mean(seconds)),
            "train_seconds": float(data["train_seconds"]) if "train_seconds" in data else 0.0}


ISOTROPY_FLOOR = "one plane on every axis (isotropy floor)"


def isotropy_floor(floor: list, truth: list, phase: int) -> dict[str, float]:
    """What a generator that reproduced the training planes exactly, on all three axes alike (as
    every method here assumes, given one plane's images), would score against ``truth``: the
    z-slices of the data floor's cubes ``floor`` put on every axis. Its L curve is the mean of
    their in-plane (y, x) curves, its sections the z-slices alone; its 3D connectivity is
    undefined. About the data floor for a morphology that looks the same on every plane; more
    where it does not (no reconstruction from one plane's images can see that)."""
    r_max = SIZE // 2
    ref = pooled_curves(truth, r_max, phase=phase)["lineal path"]
    in_plane = [np.mean([c for a, c in lineal_path_along_axes(v, phase, r_max=r_max).items() if a != "z"], axis=0)
                for v in floor]  # fmt: skip
    gen_sizes = section_sizes(sections(floor), phase)
    return {
        "lineal_path_error": error_rate(ref, np.mean(in_plane, axis=0)),
        "size_error": size_error(section_sizes(stack_volumes(truth), phase), gen_sizes),
        "diameter": gen_sizes.diameter_mean,
        "connectivity_3d": float("nan"),
        "vf": float(np.mean([(v.values == phase).mean() for v in floor])),
        "seconds_per_volume": 0.0,
    }


def sampled_row(generator: Micro3DiffGenerator, settings: SamplingSettings, truth: list, n_volumes: int, what: str) -> dict:
    """``n_volumes`` volumes at ``settings`` (seeds SAMPLE_SEED…), judged against ``truth``, timed and printed."""
    start = time.perf_counter()
    volumes = generator.sample(n_volumes, settings, seed=SAMPLE_SEED)
    row = judge(volumes, truth, generator.bundle.reference.phase, (time.perf_counter() - start) / n_volumes)
    print(f"  {what}: {row}", flush=True)
    return row


DATA_FLOOR = "data floor (fresh cubes)"


def floor_rows(name: str, truth: list, phase: int) -> dict:
    """The data floor's and the isotropy floor's rows: as many more fresh cubes (seeds 2000…)
    judged against ``truth``, the fresh cubes every row is judged against."""
    floor = cubes(name, range(2 * FRESH_SEED, 2 * FRESH_SEED + len(truth)))
    return {DATA_FLOOR: judge(floor, truth, phase, 0.0), ISOTROPY_FLOOR: isotropy_floor(floor, truth, phase)}


def measure(name: str, bundle: Path, n_volumes: int, peers: dict | None = None) -> dict:
    generator = Micro3DiffGenerator(bundle)
    phase = generator.bundle.reference.phase
    truth = cubes(name, range(FRESH_SEED, FRESH_SEED + n_volumes))
    rows = floor_rows(name, truth, phase)
    tuned = generator.check(SamplingSettings())[0]  # the default as it samples here (bf16 in fp32 without bf16 kernels)
    paper = SamplingConfig()  # the paper's algorithm: what an untuned bundle samples with
    for what, settings in (("paper (SamplingConfig())", SamplingSettings(**paper.model_dump())),
                           (f"tuned: {label(tuned)}", SamplingSettings())):
        rows[what] = sampled_row(generator, settings, truth, n_volumes, f"{name} {what}")
    for peer, got in (peers or {}).items():
        what = f"{peer}" + (f" (trained {got['train_seconds'] / 60:.0f} min)" if got["train_seconds"] else "")
        rows[what] = judge(got["volumes"], truth, phase, got["seconds"])
    passes = {"paper (SamplingConfig())": (paper.n_h + 1) * paper.steps, f"tuned: {label(tuned)}": (tuned.n_h + 1) * tuned.steps}
    return {"name": name, "phase": generator.bundle.reference.phase_name, "rows": rows, "passes": passes,
            "tuning": generator.bundle.config.tuning.model_dump() if generator.bundle.config.tuning else None}


def measure_settings(name: str, bundle: Path, n_volumes: int, settings: list[dict]) -> dict:
    """Rows for given sampling settings (JSON objects of SamplingSettings fields) of a bundle, judged
    like :func:`measure`'s; one with ``"calibrate": true`` is first calibrated at its own setting, as
    `micro-doe tune` calibrates its choice (the bundle on disk is left as it is)."""
    from micro_doe.studies.tuning.calibration import measure_calibration
    from micro_doe.studies.tuning.options import TuneOptions, passes

    generator = Micro3DiffGenerator(bundle)
    truth = cubes(name, range(FRESH_SEED, FRESH_SEED + n_volumes))
    tune_defaults = TuneOptions()
    rows, passes_of = floor_rows(name, truth, generator.bundle.reference.phase), {}
    named = set(SamplingSettings.model_fields) - {"variant", "n_h", "steps", "precision", "decode", "calibrate", "targets"}
    for setting in settings:
        s = SamplingSettings(**setting).resolved(generator.bundle.config.sampling)
        if s.calibrate:
            pairs = measure_calibration(generator, s.model_dump(), tune_defaults.calibration_volumes, tune_defaults.seed)
            generator.bundle.config = generator.bundle.config.model_copy(update={"vf_calibration": pairs})
        what = label(s) + "".join(f", {k} {v}" for k, v in sorted(setting.items()) if k in named)  # what label() leaves out
        rows[what] = sampled_row(generator, SamplingSettings(**setting), truth, n_volumes, f"{name} {what}")
        passes_of[what] = passes(s.model_dump())
    return {"name": name, "phase": generator.bundle.reference.phase_name, "rows": rows, "passes": passes_of}


def add_peers(result: dict, name: str, n_volumes: int, peers: dict) -> dict:
    """The peers' rows added to an earlier measurement of ``name`` (same fresh cubes, same judges)."""
    truth = cubes(name, range(FRESH_SEED, FRESH_SEED + n_volumes))
    label_of = list(truth[0].attrs["phase_names"]).index(result["phase"])  # the generator's names, as the model's
    for peer, got in peers.items():
        what = f"{peer}" + (f" (trained {got['train_seconds'] / 60:.0f} min)" if got["train_seconds"] else "")
        result["rows"][what] = judge(got["volumes"], truth, label_of, got["seconds"])
    return result


def add_floors(result: dict, name: str, n_volumes: int) -> dict:
    """The data floor's and the isotropy floor's rows (measured anew) put first in an earlier measurement of ``name``."""
    truth = cubes(name, range(FRESH_SEED, FRESH_SEED + n_volumes))
    phase = list(truth[0].attrs["phase_names"]).index(result["phase"])  # the generator's names, as the model's
    floors = floor_rows(name, truth, phase)
    return {**result, "rows": floors | {what: row for what, row in result["rows"].items() if what not in floors}}


def print_table(result: dict, n_volumes: int) -> None:
    print(f"\n### {result['name']} (phase {result['phase']}; {n_volumes} volumes of {SIZE}³ per row, judged against "
          f"{n_volumes} fresh cubes; vf is a target of the anchored variant, shown but never a judge)\n")
    print("| setting | passes | L error % | size error % | Ø | connectivity 3D | vf | s / volume |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for what, r in result["rows"].items():
        print(f"| {what} | {result['passes'].get(what, '')} | {r['lineal_path_error']:.2f} | {r['size_error']:.2f} | "
              f"{r['diameter']:.2f} | {r['connectivity_3d']:.2f} | {r['vf']:.3f} | {r['seconds_per_volume']:.2f} |")


def check_earlier_results(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--stage peers and floors add rows to an earlier run's --json: check it holds every
    morphology asked for before anything runs (a peer's reconstruction takes minutes to hours)."""
    if args.stage not in ("peers", "floors"):
        return
    if args.json is None or not args.json.is_file():
        parser.error(f"--stage {args.stage} adds rows to an earlier run's results: --json {args.json} is not a file")
    names = [r.get("name") for r in json.loads(args.json.read_text()).get("results", [])]
    missing = [m for m in args.morphologies if m not in names]
    if missing:
        parser.error(f"--json {args.json} holds no results of {', '.join(missing)} (it has: {', '.join(map(str, names)) or 'none'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--morphologies", nargs="+", default=list(MORPHOLOGIES), choices=list(MORPHOLOGIES))
    parser.add_argument("--steps", type=int, default=2250)
    parser.add_argument("--tune-budget", default="16")
    parser.add_argument("--volumes", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("micro-doe-runs/unseen"))
    parser.add_argument("--stage", choices=("all", "data", "train", "measure", "peers", "floors", "widths"), default="all",
                        help="peers: only the --peers' rows, added to the earlier results in --json; floors: only "
                        "the two floors' rows, added likewise (measured anew); widths: the network's 2D widths and the bundle "
                        "default's (or --volumes-from) 3D widths, plane by plane (to --json, a file of their own)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--peers", nargs="*", default=[], choices=("mcrpy", "slicegan"))
    parser.add_argument("--slicegan", type=Path, default=Path(".peers/SliceGAN"), help="a SliceGAN checkout")
    parser.add_argument("--slicegan-minutes", type=float, default=20.0)
    parser.add_argument("--from-json", type=Path, help="only print the tables of an earlier run")
    parser.add_argument("--settings", nargs="+", type=json.loads, metavar="JSON",
                        help="with --stage measure: rows for these sampling settings (beside the floors) instead of the paper's and the "
                        "tuned default, e.g. '{\"variant\": \"spectral\", \"n_h\": 10, \"steps\": 25, \"calibrate\": true}'")
    parser.add_argument("--volumes-from", nargs="+", type=Path, metavar="NC",
                        help="with --stage widths: judge these NetCDF volumes instead of sampling the bundle's default")
    parser.add_argument("--defaults-from", type=Path, help="a bundle of the same morphology (one morphology): train "
                        "without tuning and sample with its defaults (an A/B of training length)")
    args = parser.parse_args()
    check_earlier_results(parser, args)
    if args.from_json:
        data = json.loads(args.from_json.read_text())
        for result in data["results"]:
            print_table(result, data["volumes"])
        return
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"# unseen morphologies: {os.cpu_count()} cores, {args.steps} training steps, tune budget {args.tune_budget}",
          flush=True)
    results = []
    for name in args.morphologies:
        if args.stage == "floors":  # fresh cubes only: no data, bundle or sampling
            earlier = json.loads(args.json.read_text())
            at = next(i for i, r in enumerate(earlier["results"]) if r["name"] == name)
            earlier["results"][at] = add_floors(earlier["results"][at], name, earlier["volumes"])
            print_table(earlier["results"][at], earlier["volumes"])
            args.json.write_text(json.dumps(earlier, indent=1))
            continue
        data = make_data(name, args.out)
        if args.stage == "data":
            continue
        if args.stage in ("peers", "widths") or args.settings:  # the peers need the training images only; --settings a bundle as it is
            bundle = args.out.resolve() / f"{name}-model"
        else:
            bundle = train(name, data.resolve(), args.out.resolve(), args.steps, args.tune_budget,
                           args.defaults_from.resolve() if args.defaults_from else None)
        if args.stage == "train":
            continue
        if args.stage == "widths":
            results.append(widths(name, data, bundle, args.volumes, args.volumes_from))
            if args.json:
                args.json.write_text(json.dumps({"volumes": args.volumes, "results": results}, indent=1))
            continue
        images = training_stack(data, bundle)
        peers = {peer: run_peer(peer, name, images, args.out.resolve(), args.volumes, args) for peer in args.peers}
        if args.stage == "peers":  # the earlier Micro3Diff rows stay as measured; the peers join them
            earlier = next(r for r in json.loads(args.json.read_text())["results"] if r["name"] == name)
            results.append(add_peers(earlier, name, args.volumes, peers))
        elif args.settings:
            results.append(measure_settings(name, bundle, args.volumes, args.settings))
        else:
            results.append(measure(name, bundle, args.volumes, peers))
        print_table(results[-1], args.volumes)
        if args.json:
            args.json.write_text(json.dumps({"volumes": args.volumes, "steps": args.steps, "results": results}, indent=1))


if __name__ == "__main__":
    main()
