"""Conditional LDM accuracy and speed: requested vs *measured* descriptors, diversity, recipe check.

    python benchmarks/ldm.py [--model pretrained:opv-32] [--conditions 50] [--per-condition 4]
                             [--steps 50] [--sampler ddim] [--guidance 1 2] [--recipe-checks 20]

**Targets.** ``--conditions`` target triples (vf_donor, τ_donor, τ_acceptor) taken from the
*validation* trajectories of the model's training data (reference.nc): real, manufacturable
combinations the model never trained on (each value inside its training range), spread
evenly over vf_donor. For each target and
guidance weight, ``--per-condition`` volumes (seeds 1000·i + j).

**Accuracy.** Every generated volume is measured by the evaluators that labelled the training
data (:func:`~micro_doe.platform.ldm.dataset.snapshot_labels`). Printed per guidance w:
R² of requested against measured vf_donor, 1/τ_donor and 1/τ_acceptor (τ through 1/τ so a
non-percolating sample, τ = inf, counts as 1/τ = 0 instead of being dropped), over all
volumes; and R² of the feature predictor's *predicted* descriptors against the measured ones
(the paper's comparison is requested vs predicted, R² ≥ 0.93 on its synthetic data).
Reference, in the same run: **lookup**, the training volume whose labels are nearest to the
target (normalised Euclidean distance) — what picking from the data set would achieve.

**Diversity.** Per target, the standard deviation of the measured vf_donor and 1/τ over its
volumes, averaged over targets; and the mean voxel disagreement of pairs of volumes of the
same target (the fraction of voxels whose labels differ: 0 for copies; for two independent
morphologies of donor fraction p it is about 2p(1 − p)).

**Recipe check.** For ``--recipe-checks`` generated volumes (at the best w: the highest mean
requested-vs-measured R²; spread over the targets): :func:`~micro_doe.platform.ldm.recipe.check_recipe` simulates the predicted
(φ, χ, annealing time) with Cahn–Hilliard and reports the summary error (mean symmetric
relative difference of vf, 1/τ and interfacial area). Reference, same run: the same check on
validation snapshots with their *true* recipe and a fresh seed — the realisation floor.

**Speed.** Volumes per second of :meth:`LDMGenerator.generate` (one volume per call, the
study's path) at the model's size, and batched (16 latents per call) at the model's size and
at 64³ (the networks are convolutional: a latent twice as wide decodes to a volume twice as
wide). Reference, same run: the Cahn–Hilliard simulation time of the recipe-check runs.

Images go to docs/ (at the best w): ``ldm-samples.png`` (low/mid/high vf targets, two
volumes each) and ``ldm-accuracy.png`` (requested vs measured scatter). ``--update-card`` writes the table into
the bundle's card.md (section "Measured"), and ``--update-defaults`` makes the benchmark's
sampler, S and the guidance w with the best mean requested-vs-measured R² the bundle's
default sampling settings.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from micro_doe.platform.bundles import update_sampling_defaults  # noqa: E402
from micro_doe.platform.ldm.bundle import LDMSamplingDefaults  # noqa: E402
from micro_doe.platform.ldm.dataset import snapshot_labels  # noqa: E402
from micro_doe.platform.ldm.generator import LDMGenerator, LDMSample  # noqa: E402
from micro_doe.platform.ldm.recipe import check_recipe  # noqa: E402
from micro_doe.platform.ldm.sampling import decode_volumes, sample_latents  # noqa: E402
from micro_doe.platform.plots import slice_montage  # noqa: E402
from micro_doe.platform.synthetic.cahn_hilliard import CahnHilliardParams, cahn_hilliard  # noqa: E402
from micro_doe.platform.volumes import atomic_path  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs"
MEASURED = ("vf_donor", "tau_donor", "tau_acceptor")


def r2(true: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination 1 − Σ(y − ŷ)² / Σ(y − ȳ)² (NaN for constant y)."""
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    total = float(((true - true.mean()) ** 2).sum())
    return 1.0 - float(((true - pred) ** 2).sum()) / total if total > 0 else math.nan


def as_model_scale(name: str, values: np.ndarray) -> np.ndarray:
    """τ as 1/τ (inf → 0), the scale the model is conditioned on; other labels unchanged."""
    values = np.asarray(values, float)
    return 1.0 / values if name.startswith("tau_") else values


def pick_targets(generator: LDMGenerator, n: int) -> list[dict[str, float]]:
    """``n`` label triples of validation snapshots with finite τ inside the training ranges
    (the model refuses targets outside them), evenly spread over vf_donor."""
    ref = generator.bundle.reference
    names = generator.conditioning
    ranges = generator.target_ranges()
    ok = ref["split"].values == "val"
    for name in names:
        values = ref[name].values
        ok &= np.isfinite(values) & (values >= ranges[name][0]) & (values <= ranges[name][1])
    idx = np.flatnonzero(ok)
    if len(idx) < n:
        raise SystemExit(f"only {len(idx)} validation snapshots with finite labels inside the training ranges; "
                         "ask for fewer --conditions")
    idx = idx[np.argsort(ref[names[0]].values[idx])]
    chosen = idx[np.linspace(0, len(idx) - 1, n).round().astype(int)]
    return [{name: float(ref[name].values[i]) for name in names} for i in chosen]


def lookup_baseline(generator: LDMGenerator, targets: list[dict[str, float]]) -> dict[str, float]:
    """R² of the nearest training snapshot's labels (model scale, standardised) against each target."""
    ref = generator.bundle.reference
    names = generator.conditioning
    train = ref["split"].values == "train"
    table = np.stack([as_model_scale(n, ref[n].values[train]) for n in names], axis=1)
    scale = table.std(axis=0)
    wanted = np.array([[as_model_scale(n, np.array(t[n])) for n in names] for t in targets])
    nearest = table[np.argmin((((wanted[:, None, :] - table[None]) / scale) ** 2).sum(-1), axis=1)]
    return {n: r2(wanted[:, k], nearest[:, k]) for k, n in enumerate(names)}


def voxel_disagreement(volumes: list[np.ndarray]) -> float:
    """Mean fraction of differing voxels over all pairs."""
    pairs = [(a != b).mean() for i, a in enumerate(volumes) for b in volumes[i + 1 :]]
    return float(np.mean(pairs)) if pairs else math.nan


def run_grid(generator: LDMGenerator, targets, per: int, steps: int, sampler: str, w: float, console: Console):
    rows = []
    with console.status(f"w = {w}: sampling {len(targets)} × {per} volumes") as status:
        for i, target in enumerate(targets):
            samples = generator.generate(target, per, steps=steps, guidance=w, sampler=sampler, seed=1000 * i)
            for s in samples:
                rows.append({"condition": i, "target": target, "sample": s,
                             "measured": snapshot_labels(s.volume), "predicted": s.predicted})  # fmt: skip
            status.update(f"w = {w}: sampled {len(rows)} / {len(targets) * per} volumes")
    return rows


def accuracy(rows, names) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {"requested": {}, "predicted": {}, "spread": {}}
    for n in names:
        measured = as_model_scale(n, np.array([r["measured"][n] for r in rows]))
        out["requested"][n] = r2(as_model_scale(n, np.array([r["target"][n] for r in rows])), measured)
        out["predicted"][n] = r2(measured, as_model_scale(n, np.array([r["predicted"][n] for r in rows])))
        by_condition: dict[int, list[float]] = {}
        for r, m in zip(rows, measured):
            by_condition.setdefault(r["condition"], []).append(m)
        out["spread"][n] = float(np.mean([np.std(v, ddof=1) for v in by_condition.values() if len(v) > 1]))
    groups: dict[int, list[np.ndarray]] = {}
    for r in rows:
        groups.setdefault(r["condition"], []).append(r["sample"].volume.values)
    out["diversity"] = {"voxel_disagreement": float(np.mean([voxel_disagreement(v) for v in groups.values()]))}
    return out


def recipe_checks(generator: LDMGenerator, rows, n: int, console: Console) -> dict[str, float]:
    """Median summary error for generated samples, and for validation snapshots with their true recipe."""
    picked = [rows[i] for i in np.linspace(0, len(rows) - 1, n).round().astype(int)]
    generated, seconds = [], []
    with console.status("recipe checks"):
        for k, row in enumerate(picked):
            check = check_recipe(row["sample"], seed=10_000 + k)
            generated.append(check.summary_error)
            seconds.append(check.seconds)
    ref = generator.bundle.reference
    val = np.flatnonzero(ref["split"].values == "val")
    floor = []
    data_config = generator.bundle.config.recipe.data_config
    with console.status("recipe-check floor (true recipes)"):
        for k, i in enumerate(val[np.linspace(0, len(val) - 1, n).round().astype(int)]):
            true = {p: float(ref[p].values[i]) for p in ("phi", "chi", "log_time")}
            true["time"] = 10 ** true["log_time"]
            # The snapshot's own volume is not in reference.nc: simulate its recipe once (seed A)
            # and check the true recipe against a fresh realisation (seed B).
            steps = int(round(true["time"]))
            side = generator.size
            vol = cahn_hilliard((side,) * 3, CahnHilliardParams(phi=true["phi"], chi=true["chi"]), n_steps=steps,
                                snapshot_every=steps, seed=20_000 + k).isel(sample=-1, drop=True)  # fmt: skip
            sample = LDMSample(vol, true, 0.0, {}, 0, "data", data_config)
            floor.append(check_recipe(sample, seed=30_000 + k).summary_error)
    return {"generated": float(np.median(generated)), "floor": float(np.median(floor)),
            "simulation_seconds": float(np.median(seconds))}  # fmt: skip


def speed(generator: LDMGenerator, target: dict[str, float], steps: int, sampler: str, w: float) -> dict[str, float]:
    """Volumes per second: one per generate() call at the model's size; batched 16 at the model's size and 64³."""
    start = time.perf_counter()
    generator.generate(target, 4, steps=steps, guidance=w, sampler=sampler, seed=0)
    single = 4 / (time.perf_counter() - start)
    b = generator.bundle
    settings = generator.sampler(b.config.sampling.model_copy(update={"steps": steps, "sampler": sampler}))
    context = generator.context(generator.check_targets(target)).repeat(16, 1)
    out = {"single": single}
    c, d = b.config.latent_shape()[0], b.config.latent_shape()[1]
    for label, side in (("batched", d), ("batched_64", d * 64 // generator.size)):
        start = time.perf_counter()
        z = sample_latents(b.unet, settings, context, (c, side, side, side), guidance=w, seed=0, device=generator.device)
        decode_volumes(b.vae, z, latent_scale=b.config.latent_scale, device=generator.device)
        out[label] = 16 / (time.perf_counter() - start)
    return out


def plots(rows, names, targets, w: float) -> None:
    DOCS.mkdir(exist_ok=True)
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.8))
    for ax, n in zip(axes, names):
        req = as_model_scale(n, np.array([r["target"][n] for r in rows]))
        mea = as_model_scale(n, np.array([r["measured"][n] for r in rows]))
        ax.scatter(req, mea, s=8, alpha=0.6)
        lo, hi = min(req.min(), mea.min()), max(req.max(), mea.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        label = f"1/{n}" if n.startswith("tau_") else n
        ax.set(xlabel=f"requested {label}", ylabel=f"measured {label}", title=f"R² = {r2(req, mea):.3f}")
    fig.suptitle(f"conditional LDM, guidance w = {w}: requested vs measured")
    fig.tight_layout()
    fig.savefig(DOCS / "ldm-accuracy.png", dpi=110)
    plt.close(fig)
    picks = [0, len(targets) // 2, len(targets) - 1]
    volumes, labels = [], []
    for c in picks:
        mine = [r for r in rows if r["condition"] == c][:2]
        for r in mine:
            t = r["target"]
            volumes.append(r["sample"].volume)
            labels.append(f"vf {t['vf_donor']:.2f}→{r['measured']['vf_donor']:.2f}")
    slice_montage(volumes, DOCS / "ldm-samples.png", title="requested → measured donor fraction (donor white)",
                  labels=labels)  # fmt: skip


def markdown_report(report: dict, names: list[str], command: str) -> str:
    """The "Measured" section of a card: the R² table, diversity, recipe check and speed."""
    label = {n: f"1/{n}" if n.startswith("tau_") else n for n in names}
    lines = ["## Measured", "", f"`{command}`: {report['targets']} validation targets × {report['per_condition']} "
             f"volumes per guidance w, {report['sampler']} S = {report['steps']}; R² on measured descriptors.", "",
             "| | " + " | ".join(f"R² {label[n]}" for n in names) + " |", "|---|" + "---:|" * len(names),
             "| lookup: nearest training volume (reference) | "
             + " | ".join(f"{report['lookup_r2'][n]:.3f}" for n in names) + " |"]  # fmt: skip
    for w, acc in report["by_guidance"].items():
        for key, text in (("requested", "requested vs measured"), ("predicted", "FP predicted vs measured")):
            lines.append(f"| w = {w}: {text} | " + " | ".join(f"{acc[key][n]:.3f}" for n in names) + " |")
        lines.append(f"| w = {w}: spread at one target (std) | " + " | ".join(f"{acc['spread'][n]:.3f}" for n in names)
                     + " |")  # fmt: skip
    rc, v = report["recipe_check"], report["volumes_per_second"]
    lines += ["", "- voxel disagreement between volumes of one target: "
              + ", ".join(f"w = {w}: {a['diversity']['voxel_disagreement']:.3f}" for w, a in report["by_guidance"].items()),
              f"- recipe check (w = {report['best_guidance']}), median summary error: generated {rc['generated']:.3f}, true-recipe floor "
              f"{rc['floor']:.3f} (ratio {rc['generated'] / rc['floor']:.2f})",
              f"- volumes/s: {v['single']:.2f} one at a time, {v['batched']:.2f} batched (16), "
              f"{v['batched_64']:.2f} batched at 64³; a Cahn–Hilliard run + labels takes {rc['simulation_seconds']:.2f} s",
              ""]  # fmt: skip
    return "\n".join(lines)


def replace_card_section(card: Path, section: str) -> None:
    """Replace (or append) the card's "## Measured" section, atomically."""
    text = card.read_text()
    head, found, tail = text.partition("## Measured")
    rest = tail.split("\n## ", 1)[1] if found and "\n## " in tail else ""
    with atomic_path(card) as tmp:
        tmp.write_text(head.rstrip() + "\n\n" + section + ("\n## " + rest if rest else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="pretrained:opv-32")
    parser.add_argument("--conditions", type=int, default=50)
    parser.add_argument("--per-condition", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddim")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--recipe-checks", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--no-images", action="store_true")
    parser.add_argument("--update-card", action="store_true", help="write the results into the bundle's card.md")
    parser.add_argument("--update-defaults", action="store_true", help="make the best setting the bundle's default")
    args = parser.parse_args()
    torch.manual_seed(0)
    console = Console(width=150)  # wide enough for the table when piped to a file
    generator = LDMGenerator(args.model)
    names = generator.conditioning
    targets = pick_targets(generator, args.conditions)
    lookup = lookup_baseline(generator, targets)
    report: dict = {"model": args.model, "targets": len(targets), "per_condition": args.per_condition,
                    "steps": args.steps, "sampler": args.sampler, "lookup_r2": lookup, "by_guidance": {}}  # fmt: skip
    rows_by_w = {}
    for w in args.guidance:
        rows_by_w[w] = run_grid(generator, targets, args.per_condition, args.steps, args.sampler, w, console)
        report["by_guidance"][str(w)] = accuracy(rows_by_w[w], names)
    scores = {w: np.nanmean(list(report["by_guidance"][str(w)]["requested"].values())) for w in args.guidance}
    best = max(args.guidance, key=lambda w: -math.inf if math.isnan(scores[w]) else scores[w])
    report["best_guidance"] = best  # recipe checks, speed and images use the best w
    report["recipe_check"] = recipe_checks(generator, rows_by_w[best], args.recipe_checks, console)
    report["volumes_per_second"] = speed(generator, targets[len(targets) // 2], args.steps, args.sampler, best)
    if not args.no_images:
        plots(rows_by_w[best], names, targets, best)

    n_vol = len(targets) * args.per_condition
    table = Table(title=f"{args.model}: {len(targets)} validation targets × {args.per_condition} volumes "
                        f"= {n_vol} per w ({args.sampler}, S = {args.steps})")  # fmt: skip
    table.add_column("")
    for n in names:
        table.add_column(f"R² {'1/' + n if n.startswith('tau_') else n}", justify="right")
    table.add_row("lookup (nearest training volume)", *(f"{lookup[n]:.3f}" for n in names))
    for w, acc in report["by_guidance"].items():
        table.add_row(f"w = {w}: requested vs measured", *(f"{acc['requested'][n]:.3f}" for n in names))
        table.add_row(f"w = {w}: FP predicted vs measured", *(f"{acc['predicted'][n]:.3f}" for n in names))
        table.add_row(f"w = {w}: spread at one target (std)", *(f"{acc['spread'][n]:.3f}" for n in names))
    console.print(table)
    for w, acc in report["by_guidance"].items():
        console.print(f"w = {w}: voxel disagreement between volumes of one target "
                      f"{acc['diversity']['voxel_disagreement']:.3f}")  # fmt: skip
    rc = report["recipe_check"]
    console.print(f"recipe check (median summary error, {args.recipe_checks} volumes at w = {best}): generated {rc['generated']:.3f}"
                  f" vs true-recipe floor {rc['floor']:.3f} (ratio {rc['generated'] / rc['floor']:.2f})")  # fmt: skip
    v = report["volumes_per_second"]
    sim = rc["simulation_seconds"]
    console.print(f"speed: {v['single']:.2f} volumes/s one at a time at {generator.size}³, {v['batched']:.2f} batched; "
                  f"{v['batched_64']:.2f} volumes/s batched at 64³; Cahn–Hilliard simulation + labelling of one "
                  f"{generator.size}³ recipe {sim:.2f} s: simulation time / LDM time one at a time = {v['single'] * sim:.2f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    path = generator.bundle.path
    if args.update_card:
        command = "python benchmarks/ldm.py " + " ".join(sys.argv[1:])
        replace_card_section(path / "card.md", markdown_report(report, names, command))
        console.print(f"wrote the Measured section of {path / 'card.md'}")
    if args.update_defaults:
        defaults = LDMSamplingDefaults(steps=args.steps, sampler=args.sampler, guidance=float(best))
        update_sampling_defaults(path, defaults)
        card = path / "card.md"
        lines = [f"Default sampling: {defaults.sampler}, {defaults.steps} steps, guidance {defaults.guidance} "
                 "(chosen by benchmarks/ldm.py --update-defaults)." if ln.startswith("Default sampling:") else ln
                 for ln in card.read_text().split("\n")]  # fmt: skip
        with atomic_path(card) as tmp:
            tmp.write_text("\n".join(lines))
        console.print(f"default sampling of {path}: {defaults.model_dump()}")


if __name__ == "__main__":
    main()
