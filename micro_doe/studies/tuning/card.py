"""The tuning's record in the bundle: the defaults in config.json, the section of card.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from micro_doe.platform.micro3diff.bundle import SamplingConfig, TuningRecord
from micro_doe.platform.volumes import atomic_path
from micro_doe.studies.tuning.choice import worst_error
from micro_doe.studies.tuning.held_out import update_config

TABLE_HEAD = ["| setting | passes | L error % | size error % | diameter error % | connectivity error % | worst % | "
              "structure error | vf | Ø | connectivity | s / volume |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]


def card_section(record: TuningRecord, chosen: str, margin: float) -> str:
    """The card's tuning section: rule, finalists, table with the data floor, where the study lives."""
    lines = ["", "## Sampling defaults (chosen by `micro-doe tune`)", "",
             f"Default: **{chosen}**. {record.rule} (margin {margin:.2f} points); {record.trials} settings tried, "
             f"study `{record.study}` in {record.storage}, MLflow {record.tracking}, seed {record.seed}.", "",
             "Judged against images the network never saw (held out); vf is a constraint, never a judge.", ""]
    if record.finalists:
        lines += ["Finalists (the study's best settings, measured again on fresh volumes; the choice is made here):", "",
                  *TABLE_HEAD, *map(table_line, record.finalists), "", "Confirmation (fresh volumes again):", ""]
    lines += [*TABLE_HEAD, *map(table_line, record.table)]
    return "\n".join(lines) + "\n"


def table_line(r: dict[str, Any]) -> str:
    """One row of the card's tables (errors in %, Ø in pixels, seconds per volume)."""
    return (f"| {r['setting']} | {r.get('passes', '')} | {r['lineal_path_error']:.2f} | {r['size_error']:.2f} | "
            f"{r['diameter_error']:.2f} | {r['connectivity_error']:.2f} | {worst_error(r):.2f} | {r['structure_error']:.2f} | "
            f"{r['vf']:.3f} | {r['diameter']:.2f} | {r['connectivity']:.2f} | {r['seconds_per_volume']:.2f} |")


def write_tuning(bundle: Path, defaults: SamplingConfig, record: TuningRecord, chosen: str, margin: float) -> None:
    """Defaults and record into config.json, the tuning section into card.md (replacing an earlier one)."""
    update_config(bundle, sampling=defaults, tuning=record)
    card = (bundle / "card.md").read_text()
    card = card.split("\n## Sampling defaults (chosen by `micro-doe tune`)")[0].rstrip("\n") + "\n"
    with atomic_path(bundle / "card.md") as tmp:
        tmp.write_text(card + card_section(record, chosen, margin))
