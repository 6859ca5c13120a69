"""Micro3Diff quality and speed: every variant against the training data, judged by what it does not steer.

    python benchmarks/micro3diff.py [--volumes 4] [--models spheres-32 polycrystal-32 ternary-blend-32 | BUNDLE_DIR ...]
                                     [--grid default|quick] [--vf-sweep]

For each shipped model, volumes are sampled for every setting of the grid (variant × n_h × S ×
sampler, plus the anchored variant's own settings and the network precision), and compared with
the model's reference (its 2D training images) on:

- **L error** (eq. 24, lineal path averaged over axes) — a judge for every variant;
- **size error** (Wasserstein-1 distance between the local-thickness distributions over 2D
  sections, in % of the reference's mean width) and **Ø**, the mean equivalent diameter of the
  phase's components in 2D sections (reference value printed beside) — judges for every variant;
- **S2 error** (eq. 24) — partly steered by the anchored variant (S2(0) = vf), shown for the paper's
  comparison only;
- **vf** — steered by the anchored variant (it is its target): never a judge of it.

For spheres-32 an independent 3D measurement is added: the mean equivalent-sphere diameter of
the inclusions in 3D (Ø3D), against fresh 32³ packings of the training data's own generator.

Printed beside every table: the paper's Fig. 5 (case I 1.88 % / 4.56 %, case II 6.43 % / 5.88 %,
11,000 network passes per volume) and a *data floor*: fresh samples of the training data's own
generator (different seeds, same count and size), i.e. what a perfect generator scores with this
many volumes. Speed: seconds per volume (volumes sampled 4 at a time in one batched loop) and
network passes per volume.

``--vf-sweep``: the anchored variant at the default setting for vf targets from 0.5× to 1.4×
the training vf (spheres-32), each judged against fresh packings of that vf (same diameters).
The bundles' default settings are not written here: `micro-doe tune` chooses them (``make models``).
Images go to docs/: a montage of the paper's
algorithm against the anchored one, and error against n_h.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import xarray as xr  # noqa: E402

from micro_doe.platform.descriptors import equivalent_diameters, error_rate, section_sizes, size_error  # noqa: E402
from micro_doe.platform.descriptors.reference_error import error_rates, pooled_curves  # noqa: E402
from micro_doe.platform.micro3diff.bundle import SamplingConfig  # noqa: E402
from micro_doe.platform.micro3diff.generator import Micro3DiffGenerator, SamplingSettings  # noqa: E402
from micro_doe.platform.plots import slice_montage  # noqa: E402
from micro_doe.platform.synthetic import laguerre_polycrystal, spherical_inclusions  # noqa: E402
from micro_doe.platform.volumes import make_volume, read_volume, stack_volumes  # noqa: E402

PAPER = {"spheres": (1.88, 4.56), "polycrystal": (6.43, 5.88)}
PAPER_PASSES = 11_000
DOCS = Path(__file__).resolve().parent.parent / "docs"
ANCHORED = {"variant": "anchored"}
DEFAULT_MODELS = ["spheres-32", "polycrystal-32", "ternary-blend-32"]


def grid(name: str, preset: str) -> list[SamplingSettings]:
    """The settings measured for one model: the paper's algorithm, the earlier variants, and the
    anchored variant over n_h, S, sampler, its own settings, the decoding and the precision
    (the full grid for spheres-32, the core of it for the other models)."""
    S = SamplingSettings
    a = {"variant": "anchored", "precision": "bf16"}
    if preset == "tuned":  # the bundle's own default (chosen by micro-doe tune) beside the paper's algorithm
        return [S(), S(variant="paper", n_h=1, steps=50, precision="fp32", decode="sign", calibrate=False)]
    if preset == "quick":
        return [S(variant="paper", n_h=0, steps=25), S(**a, n_h=3, steps=25), S(**a, n_h=3, steps=25, decode="fractions")]
    if preset == "options":  # the anchored variant's own options against the plain hard reset
        return [S(**a, n_h=3, steps=25), S(**a, n_h=3, steps=25, anchor_until=0.1), S(**a, n_h=3, steps=25, anchor_per_slice=0.5),
                S(**a, n_h=6, steps=25, vf_spread=True), S(**a, n_h=10, steps=25, decode="fractions", vf_spread=True)]  # fmt: skip
    if preset == "calibrated":  # the anchored variant at the vf its calibration maps the target to
        return [S(**a, n_h=h, steps=25, calibrate=c) for h in (6, 10) for c in (False, True)]
    if preset == "figures":  # the montage's settings: the paper's, and the anchored variant at n_h 6 and 10
        return [S(variant="paper", n_h=0, steps=50), S(**a, n_h=6, steps=25), S(**a, n_h=10, steps=25)]
    if preset == "boundaries":  # thin phases (polycrystal-32): n_h × S, and the anchor's options at n_h 10
        f = a | {"decode": "fractions"}
        return [*(S(**f, n_h=h, steps=25) for h in (10, 20, 30, 40)), S(**f, n_h=10, steps=50), S(**f, n_h=40, steps=15), S(**f, n_h=60, steps=15),
                S(**f, n_h=10, steps=25, anchor_per_slice=0.5), S(**f, n_h=10, steps=25, anchor_until=0.1),
                S(**f, n_h=10, steps=25, anchor_strength=0.5), S(**f, n_h=10, steps=25, sampler="ddim", eta=0.0)]  # fmt: skip
    if preset == "lean":
        return [S(variant="paper", n_h=0, steps=50), S(**a, n_h=0, steps=50), S(**a, n_h=10, steps=25),
                S(**a, n_h=10, steps=25, decode="fractions")]  # fmt: skip
    core = [S(variant="paper", n_h=h, steps=50) for h in (0, 1)] + [S(variant="moment", n_h=1, steps=50)]
    core += [S(**a, n_h=0, steps=50), S(**a, n_h=3, steps=50), S(**a, n_h=10, steps=25)]
    core += [S(**a, n_h=10, steps=25, decode="fractions")]
    if name.startswith("polycrystal"):  # thin boundaries need more harmonizing (the "boundaries" preset)
        core += [S(**a, n_h=h, steps=25, decode="fractions") for h in (20, 40)]
    if not name.startswith("spheres") or preset == "core":
        return core
    return core + [
        S(**a, n_h=3, steps=25),
        S(**a, n_h=6, steps=25),
        S(**a, n_h=10, steps=50),
        S(**(a | {"precision": "fp32"}), n_h=0, steps=50),
        S(**a, n_h=3, steps=25, sampler="ddim", eta=0.0),
        S(**a, n_h=3, steps=25, anchor_strength=0.5),
        S(**a, n_h=3, steps=25, anchor_until=0.1),
        S(**a, n_h=3, steps=25, anchor_per_slice=0.5),
        S(**a, n_h=10, steps=25, decode="fractions", vf_spread=True),
    ]


def measure(reference, volumes: list[xr.DataArray], phase: int = 1) -> dict[str, float]:
    """Judges and information of a set of volumes against a reference (module doc)."""
    errors = error_rates(reference, volumes) if phase == reference.phase else {}
    sizes = section_sizes(stack_volumes(volumes) if len(volumes) > 1 else volumes[0], phase)
    vfs = [float((v.values == phase).mean()) for v in volumes]
    out = {
        "vf": float(np.mean(vfs)),
        "vf_sd": float(np.std(vfs)),
        "diameter": sizes.diameter_mean,
        "components_per_kpx": sizes.components_per_kpx,
        "thickness": sizes.thickness_mean,
        "sizes": sizes,
    }
    if reference.sizes is not None and phase == reference.phase:
        out["size_error"] = size_error(reference.sizes, sizes)
        out["diameter_error"] = 100.0 * abs(sizes.diameter_mean - reference.sizes.diameter_mean) / reference.sizes.diameter_mean
    out.update({k: errors[k] for k in ("s2_error", "lineal_path_error") if k in errors})
    if volumes[0].ndim == 3:
        d3 = np.concatenate([equivalent_diameters(v.values == phase) for v in volumes])
        out["diameter_3d"] = float(d3.mean()) if len(d3) else float("nan")
        out["components_3d"] = len(d3) / len(volumes)
    return out


def data_floor(generator: Micro3DiffGenerator, n_volumes: int, volume_fraction: float | None = None) -> list[xr.DataArray]:
    """Fresh data from the training data's own generator (seeds it never used), as 'volumes'."""
    params = generator.bundle.config.recipe.data_params
    n = generator.size
    name = generator.bundle.name
    if name.startswith("spheres"):
        return [
            spherical_inclusions(
                (n, n, n), mean_diameter=params["mean_diameter"], sd_diameter=params["sd_diameter"],
                volume_fraction=volume_fraction or params["volume_fraction"], min_gap=params["min_gap"], seed=10_000 + i,
            )
            for i in range(n_volumes)
        ]
    if name.startswith("polycrystal"):
        images = laguerre_polycrystal(n_images=n * n_volumes, size=n, grain_sizes=tuple(params["grain_sizes"]), seed=10_000)
        # n images per "volume": the along-axis curves pool as many lines as n volumes' planes do.
        return [make_volume(images.values[i * n : (i + 1) * n], dims=("sample", "y", "x")) for i in range(n_volumes)]
    # Cahn–Hilliard: 32³ windows of the (longer) 3D box the training slices were cut from.
    data = read_volume(generator.bundle.config.recipe.data)
    box = data.isel(sample=-1) if "sample" in data.dims else data
    return [make_volume(box.values[i * n : (i + 1) * n], phase_names=list(box.attrs["phase_names"])) for i in range(n_volumes)]


def run_model(model: str, args: argparse.Namespace) -> dict:
    """``model``: a shipped model's name, or a bundle folder (a retune's copy, a model of your own)."""
    generator = Micro3DiffGenerator(model if Path(model).is_dir() else f"pretrained:{model}")
    name = generator.bundle.name
    reference = generator.bundle.reference
    n_phases = len(generator.bundle.config.phase_names)
    rows = []
    for settings in grid(name, args.grid):
        start = time.perf_counter()
        volumes = generator.sample(args.volumes, settings, seed=args.seed, volumes_per_batch=4)
        seconds = (time.perf_counter() - start) / args.volumes
        s = settings.resolved(generator.bundle.config.sampling)
        passes = (s.n_h + 1) * s.steps * (3 if s.variant == "average" else 1)
        row = {"settings": s, "passes": passes, "seconds": seconds, "volumes": volumes, **measure(reference, volumes)}
        if n_phases > 2:
            row["phases"] = {k: measure(reference, volumes, phase=k) for k in range(n_phases)}
        rows.append(row)
        print(f"  {name} {_label(s)}: L {row.get('lineal_path_error', float('nan')):6.2f} %  size {row.get('size_error', float('nan')):6.2f} %  "
              f"Ø {row['diameter']:.2f}  vf {row['vf']:.3f}  S2 {row.get('s2_error', float('nan')):6.2f} %  {seconds:6.2f} s/volume",
              flush=True)
    floor_volumes = data_floor(generator, args.volumes)
    floor = measure(reference, floor_volumes)
    if n_phases > 2:
        floor["phases"] = {k: measure(reference, floor_volumes, phase=k) for k in range(n_phases)}
        r_max = len(reference.s2_radial) - 1
        truth = {k: pooled_curves(floor_volumes, r_max, phase=k)["lineal path"] for k in range(n_phases)}
        for r in rows:  # per phase, against the true 3D windows: L error and size error
            for k, p in r["phases"].items():
                p["L_vs_data"] = error_rate(truth[k], pooled_curves(r["volumes"], r_max, phase=k)["lineal path"])
                p["size_vs_data"] = size_error(floor["phases"][k]["sizes"], p["sizes"])
    judged = [r for r in rows if "size_error" in r]
    best = min(judged, key=_score)
    cheapest = min((r for r in judged if _score(r) <= _score(best) + 1.0), key=lambda r: (r["passes"], r["seconds"]))
    return {"name": name, "generator": generator, "rows": rows, "floor": floor, "best": best, "cheapest": cheapest,
            "floor_volumes": floor_volumes, "n_phases": n_phases}


def _score(row: dict) -> float:
    """L error + size error + diameter error (|Ø − reference Ø| in % of it): the three judges."""
    return row["lineal_path_error"] + row["size_error"] + row["diameter_error"]


def _label(s: SamplingConfig) -> str:
    extra = []
    if s.variant == "anchored":
        if s.anchor_strength != 1.0:
            extra.append(f"λ={s.anchor_strength:g}")
        if s.anchor_until:
            extra.append(f"until={s.anchor_until:g}T")
        if s.anchor_per_slice:
            extra.append(f"slice={s.anchor_per_slice:g}")
        if s.vf_spread:
            extra.append("vf spread")
        if s.decode == "fractions":
            extra.append("decode at vf")
        if s.calibrate:
            extra.append("calibrated")
    sampler = s.sampler if s.sampler == "ddpm" else f"ddim η={s.eta:g}"
    return f"{s.variant}{' (' + ', '.join(extra) + ')' if extra else ''} | {sampler} | {s.precision} | {s.n_h} | {s.steps}"


def print_tables(results: list[dict], args: argparse.Namespace) -> None:
    for res in results:
        ref = res["generator"].bundle.reference
        case = "spheres" if res["name"].startswith("spheres") else "polycrystal" if res["name"].startswith("polycrystal") else None
        print(f"\n### {res['name']} ({args.volumes} volumes of {res['generator'].size}³ per setting; reference: "
              f"vf {ref.volume_fraction:.3f}, Ø {ref.sizes.diameter_mean:.2f}, mean width {ref.sizes.thickness_mean:.2f})\n")
        print("Judges for every variant: L error, size error, Ø (and Ø3D). vf is the anchored variant's target "
              "and S2(0) = vf, so neither judges it.\n")
        three_d = "diameter_3d" in res["floor"]
        head = "| variant | sampler | precision | n_h | S | passes | L error % | size error % | Ø | "
        head += "Ø3D | " if three_d else ""
        print(head + "S2 error % | vf (± sd) | s / volume |")
        print("|---|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if three_d else "") + "---:|---:|---:|")
        for r in res["rows"]:
            cells = f"| {_label(r['settings'])} | {r['passes']} | {r['lineal_path_error']:.2f} | {r['size_error']:.2f} | {r['diameter']:.2f} | "
            cells += f"{r['diameter_3d']:.2f} | " if three_d else ""
            print(cells + f"{r['s2_error']:.2f} | {r['vf']:.3f} ± {r['vf_sd']:.3f} | {r['seconds']:.2f} |")
        f = res["floor"]
        cells = f"| *data floor* (fresh training data) | | | | | | {f['lineal_path_error']:.2f} | {f['size_error']:.2f} | {f['diameter']:.2f} | "
        cells += f"{f['diameter_3d']:.2f} | " if three_d else ""
        print(cells + f"{f['s2_error']:.2f} | {f['vf']:.3f} ± {f['vf_sd']:.3f} | |")
        if case:
            s2, lp = PAPER[case]
            print(f"| *paper, Fig. 5* (64², S = T = 1000, 25 volumes) | | | 10 | 1000 | {PAPER_PASSES} | "
                  f"{lp} | | | " + ("| " if three_d else "") + f"{s2} | | |")
        c = res["cheapest"]["settings"]
        print(f"\ncheapest setting within 1 point (L + size + diameter error) of the best: {_label(c)} "
              f"({res['cheapest']['passes']} passes per volume, {res['cheapest']['passes'] / PAPER_PASSES:.1%} of the paper's)")
        if res["n_phases"] > 2:
            print_phases(res)


def print_phases(res: dict) -> None:
    names = res["generator"].bundle.config.phase_names
    print(f"\nper phase, {res['name']}: vf / L error % / size error % against 32³ windows of the training box "
          "(the true 3D structure the slices came from):\n")
    print("| setting | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for r in [*res["rows"], {"settings": None, "phases": res["floor"]["phases"]}]:
        label = "*data floor*" if r["settings"] is None else _label(r["settings"]).replace(" | ", ", ")
        cells = [f"{p['vf']:.3f} / {p.get('L_vs_data', 0.0):.1f} / {p.get('size_vs_data', 0.0):.1f}" for p in r["phases"].values()]
        print(f"| {label} | " + " | ".join(cells) + " |")


def vf_sweep(args: argparse.Namespace, defaults: SamplingConfig) -> list[dict]:
    """The anchored variant at the default setting over vf targets, judged against fresh
    packings at each target (the same diameter distribution)."""
    generator = Micro3DiffGenerator("pretrained:spheres-32")
    train = generator.training_fractions()["inclusion"]
    out = []
    print("\n### vf targets (spheres-32, anchored at the default setting; judges: Ø and mean width against fresh packings at that vf)\n")
    print("| target vf | × training | measured vf | Ø (data) | Ø3D (data) | mean width (data) | size error % vs data at that vf |")
    print("|---:|---:|---:|---|---|---|---:|")
    for factor in (0.5, 0.75, 1.0, 1.25, 1.4):  # random packing jams near 0.29 at this size
        target = round(train * factor, 4)
        settings = SamplingSettings(**(defaults.model_dump() | ANCHORED), targets={"vf_inclusion": target})
        volumes = generator.sample(args.sweep_volumes, settings, seed=args.seed, volumes_per_batch=4, allow_extrapolation=True)
        truth = data_floor(generator, args.sweep_volumes, volume_fraction=target)
        g, d = measure(generator.bundle.reference, volumes), measure(generator.bundle.reference, truth)
        err = size_error(d["sizes"], g["sizes"])
        out.append({"target": target, "factor": factor, "gen": g, "data": d, "size_error": err})
        print(f"| {target:.3f} | {factor:g} | {g['vf']:.3f} | {g['diameter']:.2f} ({d['diameter']:.2f}) | "
              f"{g['diameter_3d']:.2f} ({d['diameter_3d']:.2f}) | {g['thickness']:.2f} ({d['thickness']:.2f}) | {err:.1f} |", flush=True)
    return out


def save_figures(results: list[dict], tag: str) -> None:
    """docs/micro3diff-montage<tag>.png and docs/micro3diff-nh-sweep<tag>.png."""
    DOCS.mkdir(exist_ok=True)
    rows, labels = [], []
    for res in results:
        paper = [r for r in res["rows"] if r["settings"].variant == "paper"]
        shown = [(min(paper, key=_score), "paper (best n_h)")] if paper else []
        for r, what in (*shown, (res["cheapest"], "best")):
            rows.append(r["volumes"][0])
            labels.append(f"{res['name']}: {what}\n{r['settings'].variant}, n_h={r['settings'].n_h}, S={r['settings'].steps}")
        if res["floor_volumes"][0].dims == ("z", "y", "x"):  # 2D training images (case II) have no 3D view
            rows.append(res["floor_volumes"][0])
            labels.append(f"{res['name']}: training data")
    slice_montage(rows, DOCS / f"micro3diff-montage{tag}.png", labels=labels,
                  title="Micro3Diff: the paper's algorithm, the anchored default, and the data (mid-slices of each plane)")

    nh_sweep_figure([(res["name"], res["rows"], res["floor"]["lineal_path_error"]) for res in results],
                    DOCS / f"micro3diff-nh-sweep{tag}.png")


def nh_sweep_figure(models: list[tuple[str, list[dict], float]], path: Path) -> None:
    """L and size error against n_h per (variant, S), for the plain setting of each variant
    (DDPM, no anchor options; the first row of each (variant, S, n_h) where the grid repeats
    one); the L data floor dotted. ``models``: (name, rows, floor L error)."""
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.6), squeeze=False)
    for ax, (name, rows, floor) in zip(axes[0], models):
        plain: dict[tuple[str, int, int], dict] = {}
        for r in rows:
            s = r["settings"]
            if (s.sampler == "ddpm" and s.anchor_strength == 1.0 and not s.anchor_until and not s.anchor_per_slice
                    and not s.vf_spread):
                plain.setdefault((s.variant, s.steps, s.n_h), r)
        for variant, steps, style in (("paper", 50, "o-"), ("anchored", 50, "s-"), ("anchored", 25, "^-")):
            pts = sorted((h, r["lineal_path_error"], r["size_error"]) for (v, st, h), r in plain.items()
                         if v == variant and st == steps)
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{variant} S={steps}: L error")
            ax.plot([p[0] for p in pts], [p[2] for p in pts], style.replace("-", "--"), label=f"{variant} S={steps}: size error")
        ax.axhline(floor, color="k", lw=0.8, ls=":", label="L data floor")
        ax.set_xlabel("n_h (harmonizing cycles per step)")
        ax.set_ylabel("error [%]")
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def replot(json_path: Path, tag: str) -> None:
    """The n_h figure again from a run's ``--json`` rows (settings, errors, and each model's floor)."""
    data = json.loads(json_path.read_text())
    models = []
    for name in dict.fromkeys(r["model"] for r in data):
        rows = [r | {"settings": SamplingConfig(**r["settings"])} for r in data if r["model"] == name and r.get("settings")]
        floor = next(r["lineal_path_error"] for r in data if r["model"] == name and r.get("floor"))
        models.append((name, rows, floor))
    nh_sweep_figure(models, DOCS / f"micro3diff-nh-sweep{tag}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--volumes", type=int, default=4)
    parser.add_argument("--grid", choices=("default", "core", "lean", "boundaries", "figures", "options", "calibrated", "quick", "tuned"), default="default")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--vf-sweep", action="store_true")
    parser.add_argument("--sweep-volumes", type=int, default=3)
    parser.add_argument("--vf-sweep-only", action="store_true", help="only the vf sweep, at the bundle's default")
    parser.add_argument("--json", type=Path, help="also write the rows (without volumes) to this JSON file")
    parser.add_argument("--replot", type=Path, help="only redraw the n_h figure from a --json file of the default models")
    args = parser.parse_args()
    print(f"# Micro3Diff benchmark: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}", flush=True)
    if args.replot:
        replot(args.replot, "")
        return
    if args.vf_sweep_only:  # the sweep alone, at spheres-32's current default setting
        vf_sweep(args, Micro3DiffGenerator("pretrained:spheres-32").bundle.config.sampling)
        return
    results = [run_model(name, args) for name in args.models]
    print_tables(results, args)
    # The default model set writes the docs' figures; any other set gets its own names, and a
    # grid other than the default (whose n_h sweep they plot) writes none over them.
    tag = "" if args.models == DEFAULT_MODELS else "-" + "-".join(Path(m).name for m in args.models)
    if args.grid in ("default", "figures"):
        save_figures(results, tag)
        print(f"\nfigures: {DOCS}/micro3diff-montage{tag}.png, micro3diff-nh-sweep{tag}.png")
    if args.vf_sweep and "spheres-32" in args.models:
        vf_sweep(args, next(r for r in results if r["name"] == "spheres-32")["cheapest"]["settings"])
    if args.json:
        rows = [{"model": res["name"], "settings": r["settings"].model_dump(), "passes": r["passes"], "seconds": r["seconds"],
                 **{k: v for k, v in r.items() if isinstance(v, float)}} for res in results for r in res["rows"]]
        rows += [{"model": res["name"], "floor": True, **{k: v for k, v in res["floor"].items() if isinstance(v, float)}}
                 for res in results]
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
