"""``micro-doe evaluate VOLUME``: descriptors of a volume file."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from micro_doe.cli.options import Overwrite
from micro_doe.platform.descriptors import Descriptors, describe
from micro_doe.platform.volumes import atomic_path, check_output_file, read_volume

CURVE_LAGS = (1, 2, 4, 8, 16, 32)


def evaluate(
    volume: Annotated[Path, typer.Argument(help="Volume file: .nc, .tif/.tiff stack, .png, .npy.")],
    phase: Annotated[str, typer.Option(help="Phase of interest, by label or name.")] = "1",
    axis: Annotated[
        str | None, typer.Option(help="Axis for tortuosity: z, y or x ('none' to skip; default z for a volume, none "
                                      "for a 2D image or a stack).")
    ] = None,
    periodic: Annotated[bool, typer.Option(help="Periodic boundaries for S2, L and interface area.")] = False,
    r_max: Annotated[int | None, typer.Option(help="Largest lag of S2/L curves [voxels]; default half the size.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Grey images: label 1 above this value.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write all descriptors as JSON here.")] = None,
    overwrite: Overwrite = False,
) -> None:
    if json_out is not None:
        check_output_file(json_out, overwrite=overwrite, option="--json")
    if axis is not None and axis not in ("z", "y", "x", "none"):
        raise ValueError(f"--axis: expected z, y, x or none, got {axis!r}")
    if threshold is not None and volume.suffix.lower() == ".nc":
        raise ValueError(f"--threshold: {volume} holds phase labels already; a threshold applies to grey images "
                         "(.png, .tif, .npy) only")
    vol = read_volume(volume, threshold=threshold)
    sides = [vol.sizes[d] for d in vol.dims if d != "sample"]
    if min(sides) < 2:
        raise ValueError(f"{volume}: shape {tuple(vol.shape)}; descriptors need at least 2 voxels along every axis")
    if axis is None:  # tortuosity is a property of one 3D volume
        axis = "z" if tuple(vol.dims) == ("z", "y", "x") else "none"
    if axis != "none" and axis not in vol.dims:
        raise ValueError(f"--axis {axis}: {volume} has dims {vol.dims}; use one of them or 'none'")
    if r_max is not None and not 1 <= r_max < max(sides):
        raise ValueError(f"--r-max: expected 1 ≤ r_max < {max(vol.shape)} (the volume's largest side), got {r_max}")
    result = describe(vol, phase, periodic=periodic, r_max=r_max, tortuosity_axis=None if axis == "none" else axis)
    Console().print(descriptor_table(result, title=str(volume)))
    if json_out is not None:
        with atomic_path(json_out) as tmp:
            tmp.write_text(result.model_dump_json(indent=2))
        Console(stderr=True).print(f"wrote {json_out}")


def descriptor_table(d: Descriptors, title: str = "") -> Table:
    """A rich table of the scalar descriptors and a few points of each curve."""
    shape = " × ".join(f"{dim} {n}" for dim, n in zip(d.dims, d.shape))
    table = Table(title=escape(f"{title}  ({shape})  phase {d.phase} ({d.phase_name})"), title_justify="left")
    table.add_column("descriptor")
    table.add_column("value", justify="right")
    table.add_column("definition / units", style="dim")
    for name, vf in d.volume_fractions.items():
        table.add_row(escape(f"vf[{name}]"), f"{vf:.4f}", "volume fraction")
    if d.tortuosity is not None:
        t = d.tortuosity
        tau = "inf (no spanning path)" if math.isinf(t.tau) else f"{t.tau:.4f}"
        table.add_row(f"tortuosity τ ({t.axis})", tau, "τ = ε/D_rel ≥ 1 (taufactor's definition)")
        table.add_row(f"D_eff/D_0 ({t.axis})", f"{t.effective_diffusivity:.4f}", "relative effective diffusivity")
        table.add_row(f"percolating fraction ({t.axis})", f"{t.percolating_fraction:.4f}", "phase voxels spanning both faces")
    for pair, area in d.interfacial_area.items():
        table.add_row(escape(f"interface area {pair}"), f"{area:.4f}", "faces per voxel volume [1/voxel_unit]")
    lags = [r for r in CURVE_LAGS if r < len(d.s2_radial)]
    mode = "periodic" if d.periodic else "non-periodic"
    for label, curve in (("S2 mean over axes", d.s2_mean()), ("lineal path mean", d.lineal_path_mean())):
        points = "  ".join(f"{r}:{curve[r]:.3f}" for r in lags)
        table.add_row(label, points, f"r [voxels]: value, {mode}")
    table.add_row("time", f"{d.seconds:.3f} s", "")
    return table
