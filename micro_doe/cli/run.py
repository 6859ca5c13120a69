"""``micro-doe run STUDY`` and ``micro-doe dashboard STUDY``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from micro_doe.cli.options import check_count, check_seconds
from micro_doe.platform.interrupts import interrupt_name, mark_reported
from micro_doe.studies.spec import MAX_TRIALS
from micro_doe.studies.study_yaml import load_spec
from micro_doe.tracking.registry import runnable

StudyRef = Annotated[str, typer.Argument(help="A study.yaml, or the name of a bundled study (see `micro-doe studies`).")]


def run(
    study: StudyRef,
    n_trials: Annotated[int | None, typer.Option(help="Override the budget's number of trials.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Override the budget's timeout, in seconds.")] = None,
) -> None:
    """Run (or resume) a study: locally, or on the Ray cluster at RAY_ADDRESS."""
    if n_trials is not None:
        check_count(n_trials, "--n-trials", high=MAX_TRIALS)
    check_seconds(timeout, "--timeout")
    spec = load_spec(study)  # the spec's checks; the stores' and the cluster's follow in Study.run
    from micro_doe.studies.runner import Study

    console = Console()
    objective_names = [o.name for o in spec.objectives]
    console.print(f"study [bold]{escape(spec.name)}[/]: {spec.generator.kind} {escape(spec.generator.model)}, "
                  f"objectives {', '.join(objective_names)}, storage {escape(spec.storage)}")

    runner = Study(spec, file=study)
    result = run_live(runner, objective_names, n_trials, timeout, console)
    if result.best_trials:
        front = len(result.best_trials)
        title = "best trial" if len(objective_names) == 1 else f"Pareto front ({front} trial{'s' * (front != 1)})"
        console.print(_trials_table(result.best_trials, objective_names, title))
    elif result.completed:
        closest = sorted(result.completed, key=lambda t: t.violation)[:5]
        bounds = ", ".join(c.describe() for c in spec.constraints)  # both bounds of a two-sided one
        console.print(f"[yellow]no trial satisfies the constraints ({escape(bounds)}); the closest:[/]")
        console.print(_trials_table(closest, objective_names, "least constraint violation"))
    skipped = f", {len(result.skipped)} skipped unrun (over a parameter constraint, or measured already)" if result.skipped else ""
    console.print(f"{len(result.completed)} completed, {len(result.pruned)} pruned{skipped}, {len(result.failed)} failed "
                  f"in {result.seconds:.0f} s "
                  f"(generator busy {result.generator_busy_seconds:.0f} s)")
    for t in result.failed[-3:]:
        console.print(f"  trial {t.number} failed: {escape(t.reason or '?')}", style="yellow")
    console.print("look next:")
    console.print(f"  MLflow:    {escape(result.mlflow_command())}", soft_wrap=True)  # commands whole, to copy
    console.print(f"  dashboard: {runnable('micro-doe')} dashboard {escape(study)}", soft_wrap=True)


def _best_line(front: list, objective_names: list[str], first_direction: str) -> str:
    """The log line's best: of the Pareto front, the trial best on the first objective, and the front's size."""
    if not front:
        return "-"
    sign = -1.0 if "max" in first_direction else 1.0
    top = min(front, key=lambda t: sign * t.values[0] if t.values else float("inf"))
    text = ", ".join(f"{n} {_fmt(v)}" for n, v in zip(objective_names, top.values or []))
    return text + (f" (trial {top.number}; {len(front)} on the Pareto front)" if len(front) > 1 else "")


def run_live(runner, objective_names: list[str], n_trials: int | None, timeout: float | None,
             console: Console):
    """Run a :class:`Study` with a live view of its progress (trials, best so far); on Ctrl-C or
    SIGTERM say how to resume, then re-raise."""
    import optuna

    from micro_doe.studies.runner import StudyProgress

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the live view replaces Optuna's line per trial

    def view(p: StudyProgress) -> Group:
        pruned = f", {p.pruned} pruned" if p.pruned else ""
        skipped = f", {p.skipped} skipped" if p.skipped else ""
        line = Text(f"trials: {p.done} done, {p.running} running, {p.failed} failed{pruned}{skipped}, budget {p.budget}")
        parts = [line, _trials_table(p.best[:5], objective_names, "best so far")]
        if p.note:
            parts.insert(1, Text(p.note, style="yellow"))
        return Group(*parts)  # type: ignore[arg-type]

    seen: list[tuple[int, int, int]] = []
    first_direction = str(runner.objectives[0][1]) if runner.objectives else "minimize"

    def line(p: StudyProgress) -> None:  # a log file (not a terminal): one line per finished trial
        key = (p.done, p.failed, p.pruned)
        if seen and seen[-1] == key:
            return
        seen.append(key)
        best = _best_line(p.best, objective_names, first_direction)
        skipped = f", {p.skipped} skipped (over a parameter constraint, or measured already)" if p.skipped else ""
        console.print(f"trials: {p.done} done, {p.failed} failed, {p.pruned} pruned{skipped}, budget {p.budget}; best: {best}",
                      highlight=False, soft_wrap=True)

    try:
        if not console.is_terminal:
            return runner.run(n_trials=n_trials, timeout_s=timeout, on_progress=line)
        first = view(StudyProgress(0, 0, 0, n_trials or runner.spec.budget.n_trials))
        with Live(first, console=console, transient=True) as live:
            return runner.run(n_trials=n_trials, timeout_s=timeout, on_progress=lambda p: live.update(view(p)))
    except KeyboardInterrupt:
        Console(stderr=True).print(f"interrupted ({interrupt_name()}); {runner.completed_trials} trials complete, "
                                   "run the same command to resume")
        mark_reported()
        raise


def dashboard(
    study: StudyRef,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8080,
) -> None:
    """Start optuna-dashboard on 127.0.0.1 with the study's storage and artifact store."""
    check_count(port, "--port", low=1, high=65535)
    spec = load_spec(study).resolved_paths(Path.cwd())
    from micro_doe.studies.dashboard import run_dashboard

    run_dashboard(spec.storage, Path(spec.artifacts) / "optuna", host="127.0.0.1", port=port)


def _trials_table(trials, objective_names: list[str], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("trial", justify="right")
    table.add_column("parameters")
    for name in objective_names:
        table.add_column(name, justify="right")
    for t in trials:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
        values = [_fmt(v) for v in (t.values or [math.nan] * len(objective_names))]
        table.add_row(str(t.number), escape(params), *values)
    return table


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
