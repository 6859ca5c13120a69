"""Conditional LDM accuracy and speed: requested vs *measured* descriptors, raw and verified.

    python benchmarks/ldm.py [--model pretrained:opv-32] [--conditions 50] [--per-condition 4]
                             [--steps 50] [--sampler ddim] [--variants w=1 w=4 w=4,rescale=0.7 w=2,fg=2]
                             [--tolerance 0.03] [--max-candidates 8] [--correct [--round-size 4]]
                             [--recipe-checks 20]

**Targets.** ``--conditions`` label tuples of the model's conditioning (e.g. vf_donor,
τ_donor, τ_acceptor) taken from *validation* snapshots of the training data (reference.nc):
real, manufacturable combinations the model never trained on (each value inside its
training range), spread evenly over the first label. For each target and variant,
``--per-condition`` volumes (seeds 1000·i + j), denoised in batches.

**Variants** (``--variants``, comma-separated keys): ``w`` guidance weight, ``rescale``
guidance rescale φ, ``fg`` feature-predictor gradient guidance scale. The first-candidate
("raw") sample of each variant is measured.

**Judges.**
- *Steered* (the request; also what verification selects on, so verified rows are not judged
  by it alone): R² of requested against measured labels, τ through 1/τ so a non-percolating
  sample (τ = inf) counts as 1/τ = 0.
- *Untouched* (no variant and no verification looks at it): R² of the measured donor–acceptor
  interfacial area against that of the validation snapshot the target came from. A generator
  that meets the labels with unrealistic morphologies fails here.
- The feature predictor's prediction against the measurement, and per-target spread.
Reference, in the same run: **lookup**, the training snapshot whose labels are nearest to the
target (normalised Euclidean distance) — what picking from the data set would achieve.

**Verified** (:mod:`micro_doe.platform.ldm.verify`): the best raw variant (highest mean
steered R²) again with ``--tolerance`` and ``--max-candidates``: candidates per returned
volume, share within tolerance, seconds per returned volume.

``--correct`` adds the same verification with request correction (the ``correct`` variant of
:mod:`~micro_doe.platform.ldm.verify`: later rounds conditioned on the request shifted by the
measured miss), on the same budget of candidates.

**Any subset.** For a model trained with label dropout: the first label alone as target
(the others free), raw and verified, R² of that label.

**Recipe check.** For ``--recipe-checks`` generated volumes (best raw variant):
:func:`~micro_doe.platform.ldm.recipe.check_recipe` simulates the predicted (φ, χ, annealing
time) with Cahn–Hilliard and reports the summary error; reference: the same check on
validation snapshots with their *true* recipe and a fresh seed — the realisation floor.

**Speed.** Volumes per second of :meth:`LDMGenerator.generate` one volume per call, batched
16 per call (the study path since batching; the generator actor passes its batch size), and
batched at 64³; seconds per returned verified volume; beside them the Cahn–Hilliard
simulation + labelling time of one recipe.

Images go to docs/ (best raw variant): ``ldm-samples.png`` (low/mid/high targets, two
volumes each) and ``ldm-accuracy.png`` (requested vs measured, raw and verified).
``--update-card`` writes the tables into the bundle's card.md (section "Measured");
``--update-defaults`` makes the sampler, S and the best raw variant the bundle's defaults.
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
from micro_doe.platform.ldm.bundle import LDMSamplingConfig  # noqa: E402
from micro_doe.platform.ldm.dataset import snapshot_labels  # noqa: E402
from micro_doe.platform.ldm.generator import LDMGenerator, LDMSample  # noqa: E402
from micro_doe.platform.ldm.recipe import check_recipe  # noqa: E402
from micro_doe.platform.ldm.sampling import decode_volumes, sample_latents  # noqa: E402
from micro_doe.platform.ldm.verify import (  # noqa: E402
    DEFAULT_MAX_CANDIDATES,
    DEFAULT_ROUND_SIZE,
    DEFAULT_TOLERANCE,
    VerifySettings,
)
from micro_doe.platform.plots import slice_montage  # noqa: E402
from micro_doe.platform.synthetic.cahn_hilliard import CahnHilliardParams, cahn_hilliard  # noqa: E402
from micro_doe.platform.volumes import atomic_path  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs"


def r2(true: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination 1 − Σ(y − ŷ)² / Σ(y − ȳ)² (NaN for constant y)."""
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    total = float(((true - true.mean()) ** 2).sum())
    return 1.0 - float(((true - pred) ** 2).sum()) / total if total > 0 else math.nan


def as_model_scale(name: str, values: np.ndarray) -> np.ndarray:
    """τ as 1/τ (inf → 0), the scale the model is conditioned on; other labels unchanged."""
    values = np.asarray(values, float)
    return 1.0 / values if name.startswith("tau_") else values


def pick_targets(generator: LDMGenerator, n: int) -> tuple[list[dict[str, float]], list[float]]:
    """``n`` label tuples of validation snapshots with finite τ inside the training ranges
    (the model refuses targets outside them), evenly spread over the first label, and each
    snapshot's interfacial area (the untouched judge)."""
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
    targets = [{name: float(ref[name].values[i]) for name in names} for i in chosen]
    return targets, [float(ref["interfacial_area"].values[i]) for i in chosen]


def lookup_baseline(generator: LDMGenerator, targets: list[dict[str, float]], areas: list[float]) -> dict[str, float]:
    """R² of the nearest training snapshot's labels (model scale, standardised) against each
    target, and of its interfacial area against the target snapshot's."""
    ref = generator.bundle.reference
    names = generator.conditioning
    train = ref["split"].values == "train"
    table = np.stack([as_model_scale(n, ref[n].values[train]) for n in names], axis=1)
    scale = table.std(axis=0)
    wanted = np.array([[as_model_scale(n, np.array(t[n])) for n in names] for t in targets])
    nearest_index = np.argmin((((wanted[:, None, :] - table[None]) / scale) ** 2).sum(-1), axis=1)
    nearest = table[nearest_index]
    out = {n: r2(wanted[:, k], nearest[:, k]) for k, n in enumerate(names)}
    out["interfacial_area"] = r2(np.array(areas), ref["interfacial_area"].values[train][nearest_index])
    return out


def voxel_disagreement(volumes: list[np.ndarray]) -> float:
    """Mean fraction of differing voxels over all pairs."""
    pairs = [(a != b).mean() for i, a in enumerate(volumes) for b in volumes[i + 1 :]]
    return float(np.mean(pairs)) if pairs else math.nan


def parse_variant(text: str) -> dict[str, float]:
    """``"w=4,rescale=0.7,fg=2"`` → generate() keyword arguments; what a variant does not name is
    off (w = 1, φ = 0, fg = 0), never the bundle's default, so a row means what its label says."""
    keys = {"w": "guidance", "rescale": "guidance_rescale", "fg": "feature_guidance"}
    out: dict[str, float] = {"guidance": 1.0, "guidance_rescale": 0.0, "feature_guidance": 0.0}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in keys:
            raise SystemExit(f"--variants: expected w=…,rescale=…,fg=… items, got {text!r}")
        out[keys[key.strip()]] = float(value)
    return out


def run_grid(generator: LDMGenerator, targets, areas, per: int, steps: int, sampler: str, settings: dict,
             label: str, console: Console, verify: VerifySettings | None = None, only: list[str] | None = None):
    rows = []
    with console.status(f"{label}: sampling {len(targets)} × {per} volumes") as status:
        for i, (target, area) in enumerate(zip(targets, areas)):
            wanted = {k: v for k, v in target.items() if only is None or k in only}
            start = time.perf_counter()
            samples = generator.generate(wanted, per, steps=steps, sampler=sampler, seed=1000 * i, verify=verify,
                                         batch_size=16, **settings)  # fmt: skip
            seconds = (time.perf_counter() - start) / per
            for s in samples:
                rows.append({"condition": i, "target": target, "area": area, "sample": s, "seconds": seconds,
                             "measured": snapshot_labels(s.volume), "predicted": s.predicted})  # fmt: skip
            status.update(f"{label}: sampled {len(rows)} / {len(targets) * per} volumes")
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
    out["untouched"] = {"interfacial_area": r2(np.array([r["area"] for r in rows]),
                                               np.array([r["measured"]["interfacial_area"] for r in rows]))}
    groups: dict[int, list[np.ndarray]] = {}
    for r in rows:
        groups.setdefault(r["condition"], []).append(r["sample"].volume.values)
    out["diversity"] = {"voxel_disagreement": float(np.mean([voxel_disagreement(v) for v in groups.values()]))}
    verified = [r["sample"].verification for r in rows if r["sample"].verification is not None]
    out["cost"] = {"seconds_per_volume": float(np.mean([r["seconds"] for r in rows]))}
    if verified:
        out["cost"] |= {"candidates_per_volume": float(np.mean([v.candidates for v in verified])),
                        "met": float(np.mean([v.met for v in verified]))}  # fmt: skip
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
    n_phases = int(data_config.get("n_phases", 2))
    with console.status("recipe-check floor (true recipes)"):
        for k, i in enumerate(val[np.linspace(0, len(val) - 1, n).round().astype(int)]):
            true = {p: float(ref[p].values[i]) for p in ("phi", "chi", "log_time")}
            true["time"] = 10 ** true["log_time"]
            # The snapshot's own volume is not in reference.nc: simulate its recipe once (seed A)
            # and check the true recipe against a fresh realisation (seed B).
            steps = int(round(true["time"]))
            side = generator.size
            if n_phases == 3:
                params = CahnHilliardParams.three_phase(phi=true["phi"], chi=true["chi"],
                                                        phi_mixed=float(data_config.get("phi_mixed", 0.3)))
            else:
                params = CahnHilliardParams(phi=true["phi"], chi=true["chi"])
            vol = cahn_hilliard((side,) * 3, params, n_steps=steps, snapshot_every=steps,
                                seed=20_000 + k).isel(sample=-1, drop=True)  # fmt: skip
            sample = LDMSample(vol, true, 0.0, {}, 0, "data", data_config)
            floor.append(check_recipe(sample, seed=30_000 + k).summary_error)
    return {"generated": float(np.median(generated)), "floor": float(np.median(floor)),
            "simulation_seconds": float(np.median(seconds))}  # fmt: skip


def speed(generator: LDMGenerator, target: dict[str, float], steps: int, sampler: str, settings: dict) -> dict[str, float]:
    """Volumes per second: one per generate() call, 16 per call (batched), and batched at 64³."""
    start = time.perf_counter()
    generator.generate(target, 4, steps=steps, sampler=sampler, seed=0, batch_size=1, **settings, verify=None)
    single = 4 / (time.perf_counter() - start)
    start = time.perf_counter()
    generator.generate(target, 32, steps=steps, sampler=sampler, seed=0, batch_size=16, **settings, verify=None)
    batched = 32 / (time.perf_counter() - start)
    b = generator.bundle
    diffusion = generator.sampler(b.config.sampling.model_copy(update={"steps": steps, "sampler": sampler}))
    context = generator.context(generator.check_targets(target)).repeat(16, 1)
    c, d = b.config.latent_shape()[0], b.config.latent_shape()[1]
    side = d * 64 // generator.size
    start = time.perf_counter()
    z = sample_latents(b.unet, diffusion, context, (c, side, side, side), guidance=settings.get("guidance", 1.0),
                       seed=0, device=generator.device)  # fmt: skip
    decode_volumes(b.vae, z, latent_scale=b.config.latent_scale, device=generator.device)
    return {"single": single, "batched": batched, "batched_64": 16 / (time.perf_counter() - start)}


def plots(raw, verified, names, targets, label: str) -> None:
    DOCS.mkdir(exist_ok=True)
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.8))
    for ax, n in zip(np.atleast_1d(axes), names):
        for rows, kind, marker in ((raw, "raw", "o"), (verified, "verified", "x")):
            req = as_model_scale(n, np.array([r["target"][n] for r in rows]))
            mea = as_model_scale(n, np.array([r["measured"][n] for r in rows]))
            ax.scatter(req, mea, s=10, alpha=0.6, marker=marker, label=f"{kind}: R² = {r2(req, mea):.3f}")
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        text = f"1/{n}" if n.startswith("tau_") else n
        ax.set(xlabel=f"requested {text}", ylabel=f"measured {text}")
        ax.legend(fontsize=8)
    fig.suptitle(f"conditional LDM ({label}): requested vs measured, first candidate and verified")
    fig.tight_layout()
    fig.savefig(DOCS / "ldm-accuracy.png", dpi=110)
    plt.close(fig)
    picks = [0, len(targets) // 2, len(targets) - 1]
    volumes, labels = [], []
    first = names[0]
    for c in picks:
        for r in [r for r in raw if r["condition"] == c][:2]:
            volumes.append(r["sample"].volume)
            labels.append(f"{first} {r['target'][first]:.2f}→{r['measured'][first]:.2f}")
    slice_montage(volumes, DOCS / "ldm-samples.png", title=f"requested → measured {first}", labels=labels)


def label_of(name: str) -> str:
    return f"1/{name}" if name.startswith("tau_") else name


def report_rows(report: dict, names: list[str]) -> list[tuple[str, list[str]]]:
    """The table rows: (what, one cell per conditioning label + the untouched judge)."""
    rows = [("lookup: nearest training snapshot (reference)",
             [f"{report['lookup_r2'][n]:.3f}" for n in [*names, "interfacial_area"]])]  # fmt: skip
    for label, acc in report["variants"].items():
        rows.append((f"{label}: requested vs measured",
                     [f"{acc['requested'][n]:.3f}" for n in names] + [f"{acc['untouched']['interfacial_area']:.3f}"]))
        rows.append((f"{label}: FP predicted vs measured", [f"{acc['predicted'][n]:.3f}" for n in names] + [""]))
    v = report["verified"]
    rows.append((f"verified ({report['best']}, tol {report['tolerance']}, ≤ {report['max_candidates']}): requested vs "
                 "measured", [f"{v['requested'][n]:.3f}" for n in names] + [f"{v['untouched']['interfacial_area']:.3f}"]))
    if "verified_corrected" in report:
        c = report["verified_corrected"]
        rows.append((f"verified + request correction (round {report['round_size']}): requested vs measured",
                     [f"{c['requested'][n]:.3f}" for n in names] + [f"{c['untouched']['interfacial_area']:.3f}"]))
    for key, sub in report.get("subset", {}).items():
        rows.append((f"{key}", [f"{sub['requested'][names[0]]:.3f}"] + [""] * len(names)))
    return rows


def markdown_report(report: dict, names: list[str], command: str) -> str:
    """The "Measured" section of a card: the R² table, cost, diversity, recipe check and speed."""
    header = [f"R² {label_of(n)} (steered)" for n in names] + ["R² interfacial area (untouched)"]
    lines = ["## Measured", "", f"`{command}`: {report['targets']} validation targets × {report['per_condition']} "
             f"volumes per row, {report['sampler']} S = {report['steps']}; every volume measured by the evaluators. "
             "Steered: the requested labels (verification also selects on them). Untouched: interfacial area vs "
             "the target's own snapshot.", "",
             "| | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]  # fmt: skip
    lines += [f"| {what} | " + " | ".join(cells) + " |" for what, cells in report_rows(report, names)]
    v, rc, speed_ = report["verified"]["cost"], report["recipe_check"], report["volumes_per_second"]
    lines += ["", f"- verified: {v['candidates_per_volume']:.2f} candidates per returned volume, "
              f"{100 * v['met']:.0f} % within tolerance, {v['seconds_per_volume']:.2f} s per returned volume; "
              f"raw: {report['variants'][report['best']]['cost']['seconds_per_volume']:.2f} s"]
    if "verified_corrected" in report:
        c = report["verified_corrected"]["cost"]
        lines += [f"- verified + request correction: {c['candidates_per_volume']:.2f} candidates per returned volume, "
                  f"{100 * c['met']:.0f} % within tolerance, {c['seconds_per_volume']:.2f} s per returned volume"]
    lines += ["- voxel disagreement between volumes of one target: "
              + ", ".join(f"{k}: {a['diversity']['voxel_disagreement']:.3f}" for k, a in report["variants"].items()),
              f"- recipe check ({report['best']}), median summary error: generated {rc['generated']:.3f}, "
              f"true-recipe floor {rc['floor']:.3f} (ratio {rc['generated'] / rc['floor']:.2f})",
              f"- volumes/s: {speed_['single']:.2f} one per call, {speed_['batched']:.2f} batched (16), "
              f"{speed_['batched_64']:.2f} batched at 64³; a Cahn–Hilliard run + labels takes "
              f"{rc['simulation_seconds']:.2f} s", ""]  # fmt: skip
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
    parser.add_argument("--variants", nargs="+", default=["w=1", "w=4", "w=4,rescale=0.7", "w=2,fg=2"])
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
    parser.add_argument("--max-candidates", type=int, default=DEFAULT_MAX_CANDIDATES)
    parser.add_argument("--correct", action="store_true", help="also verify with request correction (same budget)")
    parser.add_argument("--round-size", type=int, default=DEFAULT_ROUND_SIZE, help="candidates per round of request correction")
    parser.add_argument("--recipe-checks", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--no-images", action="store_true")
    parser.add_argument("--update-card", action="store_true", help="write the results into the bundle's card.md")
    parser.add_argument("--update-defaults", action="store_true", help="make the best setting the bundle's default")
    args = parser.parse_args()
    torch.manual_seed(0)
    console = Console(width=170)  # wide enough for the table when piped to a file
    generator = LDMGenerator(args.model)
    names = generator.conditioning
    targets, areas = pick_targets(generator, args.conditions)
    variants = {text: parse_variant(text) for text in args.variants}
    report: dict = {"model": args.model, "targets": len(targets), "per_condition": args.per_condition,
                    "steps": args.steps, "sampler": args.sampler, "lookup_r2": lookup_baseline(generator, targets, areas),
                    "variants": {}, "tolerance": args.tolerance, "max_candidates": args.max_candidates}  # fmt: skip
    rows_by_variant = {}
    grid = (generator, targets, areas, args.per_condition, args.steps, args.sampler)
    for label, settings in variants.items():
        rows_by_variant[label] = run_grid(*grid, settings, label, console)
        report["variants"][label] = accuracy(rows_by_variant[label], names)
    scores = {k: np.nanmean(list(a["requested"].values())) for k, a in report["variants"].items()}
    best = max(variants, key=lambda k: -math.inf if math.isnan(scores[k]) else scores[k])
    report["best"] = best
    verify = VerifySettings(tolerance=args.tolerance, max_candidates=args.max_candidates)
    verified_rows = run_grid(*grid, variants[best], f"verified {best}", console, verify=verify)
    report["verified"] = accuracy(verified_rows, names)
    if args.correct:
        corrected = verify.model_copy(update={"correct": True, "round_size": args.round_size})
        report["round_size"] = args.round_size
        rows = run_grid(*grid, variants[best], f"verified + correction {best}", console, verify=corrected)
        report["verified_corrected"] = accuracy(rows, names)
    if generator.any_subset and len(names) > 1:
        first = [names[0]]
        for kind, v in (("raw", None), ("verified", verify)):
            rows = run_grid(*grid, variants[best], f"{names[0]} alone, {kind}", console, verify=v, only=first)
            report.setdefault("subset", {})[f"{names[0]} alone (others free), {kind}"] = accuracy(rows, names)
    report["recipe_check"] = recipe_checks(generator, rows_by_variant[best], args.recipe_checks, console)
    report["volumes_per_second"] = speed(generator, targets[len(targets) // 2], args.steps, args.sampler,
                                         variants[best])  # fmt: skip
    if not args.no_images:
        plots(rows_by_variant[best], verified_rows, names, targets, best)

    n_vol = len(targets) * args.per_condition
    table = Table(title=f"{args.model}: {len(targets)} validation targets × {args.per_condition} volumes "
                        f"= {n_vol} per row ({args.sampler}, S = {args.steps})")  # fmt: skip
    table.add_column("")
    for n in names:
        table.add_column(f"R² {label_of(n)}\n(steered)", justify="right")
    table.add_column("R² interfacial area\n(untouched)", justify="right")
    for what, cells in report_rows(report, names):
        table.add_row(what, *cells)
    console.print(table)
    for line in markdown_report(report, names, "python benchmarks/ldm.py").split("\n"):
        if line.startswith("- "):
            console.print(line)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    path = generator.bundle.path
    if args.update_card:
        command = "python benchmarks/ldm.py " + " ".join(sys.argv[1:])
        replace_card_section(path / "card.md", markdown_report(report, names, command))
        console.print(f"wrote the Measured section of {path / 'card.md'}")
    if args.update_defaults:
        chosen = variants[best]
        defaults = LDMSamplingConfig(steps=args.steps, sampler=args.sampler, guidance=chosen.get("guidance", 1.0),
                                       guidance_rescale=chosen.get("guidance_rescale", 0.0),
                                       feature_guidance=chosen.get("feature_guidance", 0.0))  # fmt: skip
        update_sampling_defaults(path, defaults)
        card = path / "card.md"
        lines = [f"Default sampling: {defaults.sampler}, {defaults.steps} steps, guidance {defaults.guidance}, "
                 f"rescale {defaults.guidance_rescale}, feature guidance {defaults.feature_guidance} "
                 "(chosen by benchmarks/ldm.py --update-defaults)." if ln.startswith("Default sampling:") else ln
                 for ln in card.read_text().split("\n")]  # fmt: skip
        with atomic_path(card) as tmp:
            tmp.write_text("\n".join(lines))
        console.print(f"default sampling of {path}: {defaults.model_dump()}")


if __name__ == "__main__":
    main()
