"""``micro-doe data make ...``: synthetic training microstructures, written atomically."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
import xarray as xr
from rich.console import Console

from micro_doe.cli.options import Overwrite, check_count, check_memory, parameters_as_options
from micro_doe.cli.opv_data import opv_dataset
from micro_doe.platform import synthetic
from micro_doe.platform.diffusion.training import check_device
from micro_doe.platform.volumes import check_output_file, read_volume, write_volume

data_app = typer.Typer(help="Synthetic training data.", no_args_is_help=True)
make_app = typer.Typer(help="Make a synthetic microstructure data set.", no_args_is_help=True)
data_app.add_typer(make_app, name="make")
make_app.command("cahn-hilliard")(opv_dataset)

Out = Annotated[Path, typer.Option("--out", "-o", help="Output file (.nc; .tif for a single volume).")]
Seed = Annotated[int, typer.Option(help="Random seed; the same seed gives the same data.")]
# Peak working memory per voxel, measured at 96³ (spheres) and per 64² image (tessellation);
# the Cahn–Hilliard solver keeps a few float64 fields and their spectra per voxel.
BYTES_PER_VOXEL = {"spheres": 16, "cahn-hilliard": 160}
BYTES_PER_TESSELLATION_PIXEL = 700


def check_out(out: Path, overwrite: bool) -> None:
    """The output is a .nc/.tif/.tiff file that may be written (checked before any work)."""
    if out.suffix.lower() not in (".nc", ".tif", ".tiff"):
        raise ValueError(f"--out {out}: expected a .nc (or .tif) file")
    check_output_file(out, overwrite=overwrite)


def check_shape(shape: tuple[int, ...], kind: str, option: str = "--shape", low: int = 2) -> None:
    """Every side at least ``low`` voxels, and the estimated working memory available."""
    if any(n < low for n in shape):
        raise ValueError(f"{option}: every side must be at least {low} voxels, got {' '.join(map(str, shape))}")
    check_memory(math.prod(shape) * BYTES_PER_VOXEL[kind], f"{option} {' '.join(map(str, shape))}")


def _save(volume: xr.DataArray, out: Path) -> None:
    write_volume(volume, out)
    sizes = " × ".join(f"{d} {n}" for d, n in volume.sizes.items())
    Console(stderr=True).print(f"wrote {out}  ({sizes}, source {volume.attrs.get('source')})")


@make_app.command()
def spheres(
    out: Out,
    shape: Annotated[tuple[int, int, int], typer.Option(help="Volume size z y x [voxels].")] = (300, 64, 64),
    mean_diameter: Annotated[float, typer.Option(help="Mean sphere diameter [voxels].")] = 15.0,
    sd_diameter: Annotated[float, typer.Option(help="Standard deviation of the diameter [voxels].")] = 4.0,
    volume_fraction: Annotated[float, typer.Option(help="Target inclusion volume fraction.")] = 0.25,
    min_gap: Annotated[float, typer.Option(help="Smallest surface gap between spheres [voxels]; 0 lets them touch.")] = 1.0,
    seed: Seed = 0,
    overwrite: Overwrite = False,
) -> None:
    """Spherical inclusions in a matrix (Micro3Diff case I): its z-slices are training images."""
    check_out(out, overwrite)
    check_shape(shape, "spheres")
    names = ("shape", "mean_diameter", "sd_diameter", "volume_fraction", "min_gap")
    with parameters_as_options(*names), Console(stderr=True).status("placing spheres"):
        vol = synthetic.spherical_inclusions(
            shape,
            mean_diameter=mean_diameter,
            sd_diameter=sd_diameter,
            volume_fraction=volume_fraction,
            seed=seed,
            min_gap=min_gap,
        )
    _save(vol, out)


@make_app.command()
def polycrystal(
    out: Out,
    n_images: Annotated[int, typer.Option(help="Number of independent 2D images.")] = 300,
    size: Annotated[int, typer.Option(help="Image size [pixels].")] = 64,
    grain_size: Annotated[list[float] | None, typer.Option(help="Grain diameters [px], equal area each; repeat.")] = None,
    boundary_width: Annotated[int, typer.Option(help="Grain-boundary thickness [px].")] = 1,
    seed: Seed = 0,
    overwrite: Overwrite = False,
) -> None:
    """2D Laguerre-tessellation polycrystals, boundaries as phase 1 (Micro3Diff case II)."""
    check_out(out, overwrite)
    check_count(n_images, "--n-images")
    check_count(size, "--size", low=4)
    check_memory(n_images * size * size + BYTES_PER_TESSELLATION_PIXEL * size * size, f"--n-images {n_images} --size {size}")
    options = parameters_as_options("n_images", "size", "grain_sizes=--grain-size", "boundary_width")
    with options, Console(stderr=True).status("tessellating"):
        vol = synthetic.laguerre_polycrystal(
            n_images=n_images,
            size=size,
            grain_sizes=tuple(grain_size or (6.0, 9.0, 12.0)),
            boundary_width=boundary_width,
            seed=seed,
        )
    _save(vol, out)


@make_app.command("cahn-hilliard-trajectory")
def cahn_hilliard_trajectory(
    out: Out,
    shape: Annotated[tuple[int, int, int], typer.Option(help="Box size z y x [voxels].")] = (64, 64, 64),
    phi: Annotated[float, typer.Option(help="Initial donor blend fraction φ.")] = 0.5,
    chi: Annotated[float | None, typer.Option(help="Flory–Huggins χ (default 3.0; 4.5 with 3 phases).")] = None,
    phases: Annotated[int, typer.Option(help="2 (donor/acceptor) or 3 (with a mixed phase).")] = 2,
    steps: Annotated[int, typer.Option(help="Number of time steps.")] = 300,
    snapshot_every: Annotated[int, typer.Option(help="Keep a labelled snapshot every this many steps.")] = 30,
    device: Annotated[str, typer.Option(help="torch device: cpu or cuda.")] = "cpu",
    seed: Seed = 0,
    overwrite: Overwrite = False,
) -> None:
    """One 3D Cahn–Hilliard trajectory as a volume stack (snapshots labelled with φ, χ, time);
    `cahn-hilliard` makes the labelled data set."""
    check_out(out, overwrite)
    if phases not in (2, 3):
        raise ValueError(f"--phases: expected 2 or 3, got {phases}")
    check_count(steps, "--steps")
    check_count(snapshot_every, "--snapshot-every")
    check_shape(shape, "cahn-hilliard", low=4)
    check_device(device)
    if phases == 3:  # the third (mixed) component only separates at stronger χ
        params = synthetic.CahnHilliardParams.three_phase(phi=phi, chi=4.5 if chi is None else chi)
    else:
        params = synthetic.CahnHilliardParams(phi=phi, chi=3.0 if chi is None else chi)
    vol = synthetic.cahn_hilliard(
        shape, params=params, n_steps=steps, snapshot_every=snapshot_every, seed=seed, device=device, progress=True
    )
    _save(vol, out)


@make_app.command()
def crops(
    out: Out,
    image: Annotated[Path, typer.Option(help="One large 2D micrograph (.png, .tif, .nc, .npy).")],
    n: Annotated[int, typer.Option(help="Number of crops.")] = 250,
    size: Annotated[int, typer.Option(help="Crop size [pixels].")] = 64,
    threshold: Annotated[float | None, typer.Option(help="Grey images: label 1 above this value.")] = None,
    seed: Seed = 0,
    overwrite: Overwrite = False,
) -> None:
    """Random crops of one large image, for single-micrograph training (Micro3Diff case IV)."""
    check_out(out, overwrite)
    check_count(n, "--n")
    check_count(size, "--size", low=4)
    source = read_volume(image, threshold=threshold)
    if source.dims != ("y", "x"):
        raise ValueError(f"--image {image}: expected one 2D image, got dims {source.dims} (shape {source.shape})")
    if min(source.shape) < size:
        raise ValueError(f"--size {size}: larger than the image {image} ({source.shape[0]} × {source.shape[1]})")
    _save(synthetic.random_crops(source, n=n, size=size, seed=seed), out)
