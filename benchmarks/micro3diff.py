"""Micro3Diff quality and speed: S2 / lineal-path error rates (eq. 24) over a (n_h, S) grid.

    python benchmarks/micro3diff.py [--volumes 4] [--models spheres-32 polycrystal-32]
                                     [--n-h 0 1 2] [--steps 25 50 100] [--update-defaults]

For each shipped model: volumes are sampled for every (n_h, S) of the grid with the
paper's algorithm (plus the optional variants at one setting), their curves are pooled and
compared with the model's reference (its training data) by eq. 24 — averaged over z, y, x
for case I (spheres: 2D slices of a 3D volume), over y, x of each plane for case II
(polycrystal: independent 2D images), which for along-axis curves is the same number.
Printed beside: the paper's Fig. 5 (case I 1.88 % / 4.56 %, case II 6.43 % / 5.88 %), and a
*data floor*: the error of fresh samples of the training data's own generator (different
seed, same count and size), i.e. what a perfect generator would score with this many volumes.

Speed: seconds per volume; the sampler's overhead over the bare network calls (total
sampling time over the time spent inside the network's calls, timed in the same run;
target ≤ 5 %); and a linear fit of time against (n_h + 1)·S.

Images go to docs/: a slice montage of the best setting and an n_h sweep plot.
``--update-defaults`` writes the cheapest setting within 1 percentage point (S2 + L) of the
best (variants included) into each bundle's default sampling settings.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from micro_doe.platform.bundles import update_sampling_defaults  # noqa: E402
from micro_doe.platform.descriptors.reference_error import error_rates, pooled_curves, reference_curves  # noqa: E402
from micro_doe.platform.micro3diff.bundle import SamplingDefaults
from micro_doe.platform.micro3diff.generator import VARIANTS, Micro3DiffGenerator, SamplingSettings  # noqa: E402
from micro_doe.platform.plots import curves_plot, slice_montage  # noqa: E402
from micro_doe.platform.synthetic import laguerre_polycrystal, spherical_inclusions  # noqa: E402
from micro_doe.platform.volumes import make_volume  # noqa: E402

PAPER = {"spheres": (1.88, 4.56), "polycrystal": (6.43, 5.88)}
DOCS = Path(__file__).resolve().parent.parent / "docs"


def data_floor(generator: Micro3DiffGenerator, n_volumes: int) -> dict[str, float]:
    """Error rates of fresh data from the training data's own generator (seeds it never used)."""
    reference = generator.bundle.reference
    params = generator.bundle.config.recipe.data_params
    if not params:
        raise ValueError(f"{generator.bundle.path}: the bundle records no data parameters; retrain with micro-doe train")
    n = generator.size
    if generator.bundle.name.startswith("spheres"):
        fresh = [
            spherical_inclusions(
                (n, n, n),
                mean_diameter=params["mean_diameter"],
                sd_diameter=params["sd_diameter"],
                volume_fraction=params["volume_fraction"],
                min_gap=params["min_gap"],
                seed=10_000 + i,
            )
            for i in range(n_volumes)
        ]
        return error_rates(reference, fresh)
    images = laguerre_polycrystal(n_images=n * n_volumes, size=n, grain_sizes=tuple(params["grain_sizes"]), seed=10_000)
    # n images per "volume": the along-axis curves pool the same number of lines as n volumes' planes.
    stacks = [make_volume(images.values[i * n : (i + 1) * n], dims=("sample", "y", "x")) for i in range(n_volumes)]
    return error_rates(reference, stacks)


class TimedModel:
    """Wraps the denoiser and adds up the wall time spent inside its calls."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.seconds, self.calls = model, 0.0, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.model(x, t)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def sampler_overhead(generator: Micro3DiffGenerator, settings: SamplingSettings, batch_size: int) -> tuple[float, float]:
    """(sampling seconds, seconds inside network calls) for one volume, in the same run."""
    original = generator.bundle.model
    timed = TimedModel(original)
    generator.bundle.model = timed  # type: ignore[assignment]
    try:
        start = time.perf_counter()
        generator.sample(1, settings, seed=0, batch_size=batch_size)
        return time.perf_counter() - start, timed.seconds
    finally:
        generator.bundle.model = original


def run_model(name: str, args: argparse.Namespace) -> dict:
    generator = Micro3DiffGenerator(f"pretrained:{name}")
    case = "spheres" if name.startswith("spheres") else "polycrystal"
    rows = []
    volumes_by_setting = {}
    settings_list = [SamplingSettings(n_h=h, steps=s, variant="paper") for h in args.n_h for s in args.steps]
    variant_at = SamplingSettings(n_h=args.variant_n_h, steps=args.variant_steps)
    settings_list += [variant_at.model_copy(update={"variant": v}) for v in VARIANTS if v != "paper"]
    settings_list += [variant_at.model_copy(update={"sampler": "ddim", "eta": 0.0, "variant": "paper"})]
    for settings in settings_list:
        start = time.perf_counter()
        volumes = generator.sample(args.volumes, settings, seed=args.seed, batch_size=args.batch_size)
        seconds = (time.perf_counter() - start) / args.volumes
        errors = error_rates(generator.bundle.reference, volumes)
        s = settings.resolved(generator.bundle.config.sampling)
        passes = (s.n_h + 1) * s.steps * (3 if VARIANTS[s.variant]["planes"] == "average" else 1)
        rows.append({"settings": s, "passes": passes, "seconds": seconds, **errors})
        volumes_by_setting[len(rows) - 1] = volumes
        print(f"  {name} {s.variant:8s} {s.sampler} n_h={s.n_h} S={s.steps:4d}: S2 {errors['s2_error']:6.2f} %  "
              f"L {errors['lineal_path_error']:6.2f} %  vf {errors['vf']:.3f}  {seconds:6.2f} s/volume", flush=True)
    floor = data_floor(generator, args.volumes)

    # Overhead and linearity on the paper's grid.
    paper = [r for r in rows if r["settings"].variant == "paper" and r["settings"].sampler == "ddpm"]
    probe = max(paper, key=lambda r: r["passes"])
    total, network = sampler_overhead(generator, SamplingSettings(**probe["settings"].model_dump()), args.batch_size)
    overhead = total / network - 1.0
    x = np.array([r["passes"] for r in paper], dtype=float)
    y = np.array([r["seconds"] for r in paper])
    slope, intercept = np.polyfit(x, y, 1)
    fit = slope * x + intercept
    r2 = 1 - np.sum((y - fit) ** 2) / np.sum((y - y.mean()) ** 2)

    # Defaults: the cheapest setting, variants included, within 1 point (S2 + L) of the best found.
    best = min(rows, key=lambda r: r["s2_error"] + r["lineal_path_error"])
    good_enough = [r for r in rows if r["s2_error"] + r["lineal_path_error"] <= best["s2_error"] + best["lineal_path_error"] + 1.0]
    cheapest = min(good_enough, key=lambda r: r["passes"])
    return {
        "name": name, "case": case, "rows": rows, "floor": floor, "generator": generator,
        "overhead": overhead, "probe": probe, "slope": slope, "intercept": intercept, "r2": r2,
        "best": best, "cheapest": cheapest, "volumes": volumes_by_setting[rows.index(best)],
        "reference_vf": generator.bundle.reference.volume_fraction,
    }


def print_tables(results: list[dict], args: argparse.Namespace) -> None:
    for res in results:
        paper_s2, paper_l = PAPER[res["case"]]
        print(f"\n### {res['name']} (case {'I' if res['case'] == 'spheres' else 'II'}, "
              f"{args.volumes} volumes of {res['generator'].size}³ per setting, reference vf {res['reference_vf']:.3f})\n")
        print("| variant | sampler | n_h | S | passes | S2 error % | L error % | vf | s / volume |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in res["rows"]:
            s = r["settings"]
            print(f"| {s.variant} | {s.sampler}{'' if s.sampler == 'ddpm' else f' η={s.eta:g}'} | {s.n_h} | {s.steps} | "
                  f"{r['passes']} | {r['s2_error']:.2f} | {r['lineal_path_error']:.2f} | {r['vf']:.3f} | {r['seconds']:.2f} |")
        f = res["floor"]
        print(f"| *data floor* (fresh training-data samples) | | | | | {f['s2_error']:.2f} | {f['lineal_path_error']:.2f} | {f['vf']:.3f} | |")
        print(f"| *paper, Fig. 5* (T = 1000, n_h = 10, 64², 25 volumes) | | | | | {paper_s2} | {paper_l} | | |")
        print(f"\nsampler overhead over bare network calls at n_h={res['probe']['settings'].n_h}, "
              f"S={res['probe']['settings'].steps}: {100 * res['overhead']:+.1f} % (target ≤ 5 %)")
        print(f"time vs (n_h+1)·S: {1000 * res['slope']:.1f} ms per pass + {res['intercept']:.2f} s, R² = {res['r2']:.4f}")
        c = res["cheapest"]["settings"]
        print(f"cheapest setting within 1 point of the best (S2 + L): n_h={c.n_h}, S={c.steps}")


def save_figures(results: list[dict]) -> None:
    DOCS.mkdir(exist_ok=True)
    rows = []
    labels = []
    for res in results:
        shown = res["volumes"][:2]
        rows += shown
        s = res["best"]["settings"]
        labels += [f"{res['name']}\n{s.variant}, n_h={s.n_h}, S={s.steps}"] * len(shown)
    slice_montage(rows, DOCS / "micro3diff-montage.png", labels=labels, title="Micro3Diff samples: mid-slices of each plane")

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
    for ax, res in zip(axes[0], results):
        paper = [r for r in res["rows"] if r["settings"].variant == "paper" and r["settings"].sampler == "ddpm"]
        for steps in sorted({r["settings"].steps for r in paper}):
            pts = sorted((r["settings"].n_h, r["s2_error"], r["lineal_path_error"]) for r in paper if r["settings"].steps == steps)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"S2, S={steps}")
            ax.plot([p[0] for p in pts], [p[2] for p in pts], "s--", label=f"L, S={steps}")
        ax.axhline(res["floor"]["s2_error"], color="k", lw=0.8, ls=":", label="S2 data floor")
        ax.set_xlabel("n_h (harmonizing cycles per step)")
        ax.set_ylabel("error rate, eq. 24 [%]")
        ax.set_title(res["name"])
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(DOCS / "micro3diff-nh-sweep.png", dpi=110)
    plt.close(fig)
    for res in results:
        ref = reference_curves(res["generator"].bundle.reference)
        gen = pooled_curves(res["volumes"], r_max=len(ref["S2"]) - 1)
        best = res["best"]
        curves_plot(ref, gen, DOCS / f"micro3diff-curves-{res['name']}.png",
                    errors={"S2": best["s2_error"], "lineal path": best["lineal_path_error"]},
                    title=f"{res['name']}: n_h={best['settings'].n_h}, S={best['settings'].steps}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["spheres-32", "polycrystal-32"])
    parser.add_argument("--volumes", type=int, default=4)
    parser.add_argument("--n-h", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, nargs="+", default=[25, 50, 100])
    parser.add_argument("--variant-n-h", type=int, default=1)
    parser.add_argument("--variant-steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--update-defaults", action="store_true")
    args = parser.parse_args()
    print(f"# Micro3Diff benchmark: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}", flush=True)
    results = [run_model(name, args) for name in args.models]
    print_tables(results, args)
    save_figures(results)
    print(f"\nfigures: {DOCS}/micro3diff-montage.png, micro3diff-nh-sweep.png, micro3diff-curves-*.png")
    if args.update_defaults:
        for res in results:
            c = res["cheapest"]["settings"]
            update_sampling_defaults(f"pretrained:{res['name']}", SamplingDefaults(**c.model_dump()))
            print(f"{res['name']}: default sampling set to n_h={c.n_h}, S={c.steps}, {c.sampler}, {c.variant}")


if __name__ == "__main__":
    main()
