"""``micro-doe models list|register``: the MLflow model registry of model bundles.

Registered models are referenced in a study as ``models:/NAME@ALIAS`` or
``models:/NAME/VERSION`` (see :mod:`micro_doe.tracking.registry`). Errors are raised as
``ValueError``; the app turns them into one line on stderr and exit code 2.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from micro_doe.cli.options import tracking_option
from micro_doe.platform.bundles import shipped_summaries
from micro_doe.tracking.registry import (
    DEFAULT_TRACKING_URI,
    absolute_tracking_uri,
    list_models,
    register_bundle,
    sqlite_path,
)

models_app = typer.Typer(help="MLflow model registry: register bundles, list models.", no_args_is_help=True)

Tracking = Annotated[
    str,
    typer.Option(
        "--tracking",
        envvar="MLFLOW_TRACKING_URI",
        help="MLflow tracking URI (a relative sqlite path is taken from the current directory).",
    ),
]


@models_app.command("list")
def list_command(tracking: Tracking = DEFAULT_TRACKING_URI) -> None:
    """The models shipped with micro-doe (pretrained:NAME), then the registry's: versions,
    aliases, latest version and the card's first line."""
    uri = absolute_tracking_uri(tracking_option(tracking), create_parent=False)
    db = sqlite_path(uri)
    rows = [] if db is not None and not db.exists() else list_models(uri)
    console = Console()
    shipped = Table(title="shipped with micro-doe (use as model: pretrained:NAME)", title_justify="left")
    for column in ("model", "kind", "size", "phases", "description"):
        shipped.add_column(column, no_wrap=column in ("model", "kind", "size"), style="dim" if column == "description" else None)
    for s in shipped_summaries():
        shipped.add_row(*(escape(s[k]) for k in ("ref", "kind", "size", "phases", "description")))
    console.print(shipped)
    if not rows:
        console.print(
            f"no models registered in {escape(uri)}; add one with: micro-doe models register BUNDLE --name NAME"
        )
        return
    table = Table(title=escape(f"models in {uri}"), title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("aliases", no_wrap=True)
    table.add_column("versions", justify="right")
    table.add_column("latest", justify="right")
    table.add_column("description", style="dim")
    for row in rows:
        aliases = ", ".join(f"@{a} → v{v}" for a, v in row["aliases"].items()) or "-"
        table.add_row(
            escape(row["name"]),
            escape(aliases),
            str(len(row["versions"])),
            f"v{row['latest_version']}" if row["latest_version"] is not None else "-",
            escape(row["description"]),
        )
    console.print(table)
    console.print(f"use in a study as  model: models:/NAME@ALIAS  (tracking: {escape(uri)})", style="dim")


@models_app.command()
def register(
    bundle: Annotated[str, typer.Argument(help="Bundle directory (or pretrained:NAME).")],
    name: Annotated[str, typer.Option("--name", help="Registered model name (letters, digits, . _ -).")],
    alias: Annotated[str | None, typer.Option(help="Alias to point at the new version, e.g. champion.")] = None,
    tracking: Tracking = DEFAULT_TRACKING_URI,
) -> None:
    """Validate a bundle, log it to MLflow and register it as a new model version."""
    uri = absolute_tracking_uri(tracking_option(tracking), create_parent=False)  # created once the bundle checks out
    version = register_bundle(bundle, name, alias=alias, tracking_uri=uri)
    ref = f"models:/{name}@{alias}" if alias else f"models:/{name}/{version}"
    Console().print(
        f"registered {escape(name)} version {version}  →  model: {escape(ref)}  (tracking: {escape(uri)})"
    )

