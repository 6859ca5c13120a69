"""``micro-doe schema`` (JSON Schema of study.yaml) and ``micro-doe studies`` (bundled studies)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from micro_doe.cli.options import Overwrite
from micro_doe.platform.volumes import atomic_path, check_output_file
from micro_doe.studies.study_yaml import SpecError, bundled_studies, load_spec, study_json_schema


def schema(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the schema to this file instead of printing it.")
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Print (or write) the JSON Schema of study.yaml, for editors and validators."""
    if out is not None:
        check_output_file(out, overwrite=overwrite)
    text = json.dumps(study_json_schema(), indent=2, ensure_ascii=False) + "\n"
    if out is None:
        typer.echo(text, nl=False)
        return
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    Console(stderr=True).print(f"wrote {escape(str(out))}")


def studies() -> None:
    """List the bundled studies (run one with `micro-doe run NAME`)."""
    table = Table(title="bundled studies", title_justify="left")
    for column in ("name", "generator / model", "objectives", "n_trials", "path"):
        table.add_column(column, justify="right" if column == "n_trials" else "left", overflow="fold")
    for name, path in bundled_studies().items():
        table.add_row(*(escape(cell) for cell in _row(name, path)))
    Console().print(table)


def _row(name: str, path: Path) -> list[str]:
    """One table row; a study that does not validate here (e.g. its model is not installed)
    is shown from its YAML with the reason."""
    try:
        spec = load_spec(path)
    except SpecError as err:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        gen = raw.get("generator") or {}
        objectives = ", ".join(str(o.get("name")) for o in raw.get("objectives") or [] if isinstance(o, dict))
        return [
            f"{name} (invalid here: {'; '.join(m for _, m in err.problems)})",
            f"{gen.get('kind')}: {gen.get('model')}",
            objectives,
            str((raw.get("budget") or {}).get("n_trials", "")),
            str(path),
        ]
    objectives = ", ".join(f"{o.name} ({d[:3]})" for o, d in zip(spec.objectives, spec.directions()))
    return [name, f"{spec.generator.kind}: {spec.generator.model}", objectives, str(spec.budget.n_trials), str(path)]
