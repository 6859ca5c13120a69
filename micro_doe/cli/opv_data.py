"""``micro-doe data make cahn-hilliard``: the labelled Cahn–Hilliard OPV data set for the LDM.

(One raw trajectory as a volume stack is ``micro-doe data make cahn-hilliard-trajectory``.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from pydantic import ValidationError
from rich.console import Console

from micro_doe.cli.options import Overwrite, option_errors
from micro_doe.platform.diffusion.training import check_device
from micro_doe.platform.ldm.dataset import OPVDatasetConfig, make_opv_dataset, write_opv_dataset


def parse_grid(text: str, option: str) -> list[float]:
    """A grid of numbers: ``"start:stop:n"`` (n evenly spaced, both ends included) or ``"a,b,c"``."""
    try:
        if ":" in text:
            start, stop, n = text.split(":")
            count = int(n)
            if count < 1:
                raise ValueError
            return [round(float(v), 10) for v in np.linspace(float(start), float(stop), count)]
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        expected = "'start:stop:n' (n >= 1) or a comma list of numbers"
        raise ValueError(f"{option}: expected {expected}, got {text!r}") from None


def parse_phi_mixed(text: str) -> dict[str, Any]:
    """``--phi-mixed`` as OPVDatasetConfig fields: one fraction ``"0.3"`` (``phi_mixed``), or
    ``"low:high"`` (``phi_mixed_range``: one uniform draw per trajectory)."""
    try:
        if ":" in text:
            low, high = (float(v) for v in text.split(":"))
            return {"phi_mixed_range": (low, high)}
        return {"phi_mixed": float(text)}
    except ValueError:
        raise ValueError(f"--phi-mixed: expected a fraction such as 0.3 or a range 'low:high', got {text!r}") from None


def opv_dataset(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output NetCDF file (.nc).")],
    shape: Annotated[tuple[int, int, int], typer.Option(help="Box z y x (voxels); z: film normal.")] = (32, 32, 32),
    phis: Annotated[str, typer.Option(help="Donor fractions φ: 'start:stop:n' or 'a,b,c'.")] = "0.3:0.7:17",
    chis: Annotated[str, typer.Option(help="Flory–Huggins χ values (> 2): 'start:stop:n' or 'a,b,c'.")] = "2.6:4.2:9",
    phases: Annotated[int, typer.Option(help="2 (donor/acceptor) or 3 (with a mixed phase).")] = 2,
    phi_mixed: Annotated[
        str | None,
        typer.Option(help="3 phases: initial mixed fraction (default 0.3), or 'low:high' to draw one per trajectory."),
    ] = None,
    steps: Annotated[int, typer.Option(help="Time steps per trajectory.")] = 1000,
    snapshot_every: Annotated[int, typer.Option(help="Record the compositions every this many steps.")] = 10,
    snapshots: Annotated[int, typer.Option(help="Separated snapshots kept per trajectory, log-spaced in time.")] = 10,
    val_fraction: Annotated[float, typer.Option(help="Share of the trajectories in the validation split.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same data set.")] = 0,
    device: Annotated[str, typer.Option(help="torch device of the solver: cpu or cuda.")] = "cpu",
    overwrite: Overwrite = False,
) -> None:
    """Cahn–Hilliard trajectories over a (φ, χ) grid; snapshots labelled with vf, τ, interface area, φ, χ, log t."""
    from micro_doe.cli.data import check_out, check_shape

    check_out(out, overwrite)
    if out.suffix.lower() != ".nc":
        raise ValueError(f"--out {out}: the labelled data set is a .nc file")
    if phases not in (2, 3):
        raise ValueError(f"--phases: expected 2 or 3, got {phases}")
    check_shape(shape, "cahn-hilliard", low=4)
    check_device(device)
    mixed = parse_phi_mixed(phi_mixed) if phi_mixed is not None else {}
    if phases == 2 and mixed:
        raise ValueError(f"--phi-mixed: only for --phases 3 (two phases have no mixed component), got {phi_mixed!r}")
    try:
        config = OPVDatasetConfig(
            shape=shape,
            phis=parse_grid(phis, "--phis"),
            chis=parse_grid(chis, "--chis"),
            n_phases=phases,  # checked above
            **mixed,
            n_steps=steps,
            snapshot_every=snapshot_every,
            n_snapshots=snapshots,
            val_fraction=val_fraction,
            seed=seed,
            device=device,
        )
    except ValidationError as err:
        raise option_errors(err, {
            "n_phases": "--phases", "n_steps": "--steps", "n_snapshots": "--snapshots", "phi_mixed": "--phi-mixed",
            "phi_mixed_range": "--phi-mixed",
        }) from None
    ds = make_opv_dataset(config, progress=True)
    write_opv_dataset(ds, out)
    n_train = int((ds["split"].values == "train").sum())
    trajectories = {s: len(np.unique(ds["trajectory"].values[ds["split"].values == s])) for s in ("train", "val")}
    console = Console(stderr=True)
    console.print(
        f"wrote {out}  ({ds.sizes['sample']} samples of {' × '.join(map(str, shape))}: "
        f"train {n_train} from {trajectories['train']} trajectories, "
        f"val {ds.sizes['sample'] - n_train} from {trajectories['val']})"
    )
    skipped = ds.attrs["skipped"]
    if skipped != "[]":
        console.print(f"skipped grid points: {skipped}")
