"""``micro-doe tune MODEL``: a Micro3Diff model chooses its own default sampling settings
(:mod:`micro_doe.studies.tuning`); also the last stage of ``micro-doe train micro3diff``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

TuneBudget = Annotated[str, typer.Option(help="Settings to try (16) or minutes of study (30m); at least 2.")]
HeldOutData = Annotated[
    Path | None,
    typer.Option(help="Images the model was not trained on, to judge against (when the bundle holds none)."),
]
TrainingData = Annotated[
    Path | None,
    typer.Option(help="The images the model trained on (train's --data), for a bundle trained before their "
                      "autocovariance was recorded: it is recorded, and the search includes the spectral variant."),
]
Threads = Annotated[int | None, typer.Option(help="CPU threads for torch (default: torch's choice, all cores).")]
MaxPasses = Annotated[int, typer.Option(help="At most this many denoising passes, (n_h + 1) · S, per volume: costlier "
                                             "settings are skipped unrun, and the default stays affordable.")]


def tune(
    model: Annotated[str, typer.Argument(help="A Micro3Diff bundle directory (or pretrained:NAME, tuned in place).")],
    tune_budget: TuneBudget = "16",
    held_out_data: HeldOutData = None,
    training_data: TrainingData = None,
    seed: Annotated[int, typer.Option(help="Seed of the search and of the volumes.")] = 0,
    threads: Threads = None,
    max_passes: MaxPasses = 1100,
) -> None:
    """Search the model's sampling settings against images it never saw; write the cheapest good
    one as its default, with the vf calibration and the table, into the bundle."""
    options = tune_options(tune_budget, seed, max_passes)
    set_threads(threads)
    run_tuning(model, options, held_out_data, training_data)


def tune_options(budget: str, seed: int, max_passes: int = 1100):
    """Checked options (before anything is created)."""
    from micro_doe.cli.options import check_count
    from micro_doe.studies.tuning.options import PAPER, TuneOptions, parse_budget, passes

    trials, minutes = parse_budget(budget)
    check_count(seed, "--seed", low=0)
    if max_passes < passes(PAPER):
        raise ValueError(f"--max-passes {max_passes}: at least {passes(PAPER)}, the passes of the paper's setting, "
                         "which every tuning tries")
    return TuneOptions(trials=trials or 16, minutes=minutes, seed=seed, max_passes=max_passes)


def set_threads(threads: int | None) -> None:
    if threads is None:
        return
    from micro_doe.cli.options import check_count

    check_count(threads, "--threads", low=1, high=1024)
    import torch

    torch.set_num_threads(threads)


def run_tuning(model: str, options, held_out_data: Path | None, training_data: Path | None = None) -> None:
    from micro_doe.cli.run import run_live
    from micro_doe.platform.bundles import bundle_kind, resolve_bundle_path
    from micro_doe.studies.tuning import tune

    path = resolve_bundle_path(model)
    if (kind := bundle_kind(path)) != "micro3diff":
        raise ValueError(f"MODEL {model}: a {kind} bundle; micro-doe tune tunes Micro3Diff bundles")
    console = Console(stderr=True)

    def study(runner):
        return run_live(runner, [o.name for o, _ in runner.objectives], None, None, console)

    tune(path, options, held_out_data=held_out_data, training_data=training_data, on_study=study,
                  log=lambda line: console.print(escape(line), highlight=False, soft_wrap=True))
    section = (path / "card.md").read_text().split("## Sampling defaults (chosen by `micro-doe tune`)")[-1]
    Console(soft_wrap=True).print(f"{path.name}: tuned against held-out images (vf is a constraint, not a judge)"
                                  + section.rstrip(), markup=False, highlight=False)
    Console(soft_wrap=True).print(f"default written to {path / 'config.json'} (card: {path / 'card.md'})",
                                  markup=False, highlight=False)
