"""The ``micro-doe`` command: a typer app, and the one place errors become exit codes.

Bad input (a missing file, a wrong value) is reported as one line on stderr with exit
code 2 and no traceback; set ``MICRO_DOE_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import os
import sys

import typer
from pydantic import ValidationError
from rich.console import Console
from typer.exceptions import TyperException

from micro_doe.cli.data import data_app
from micro_doe.cli.evaluate import evaluate
from micro_doe.cli.generate import generate
from micro_doe.cli.models import models_app
from micro_doe.cli.run import dashboard, run
from micro_doe.cli.studies import schema, studies
from micro_doe.cli.train import train_app

app = typer.Typer(
    name="micro-doe",
    help="Design 3D material microstructures with diffusion-model generators.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command(help="Run (or resume) a study: study.yaml or a bundled study name; RAY_ADDRESS for a cluster.")(run)
app.command(help="List the bundled example studies.")(studies)
app.command(help="optuna-dashboard for a study, on 127.0.0.1.")(dashboard)
app.command(help="The JSON Schema of study.yaml.")(schema)
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(models_app, name="models", help="The MLflow model registry: list and register model bundles.")
app.command(help="Sample volumes from a model (pretrained:NAME or a bundle) into NetCDF/TIFF.")(generate)
app.command(help="Descriptors of a volume (vf, S2, lineal path, tortuosity, interface area) as a table and JSON.")(
    evaluate
)

# Errors that mean "the input is wrong", as opposed to a bug in micro-doe.
USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, PermissionError, ValidationError)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    stderr = Console(stderr=True)
    try:
        app(args=argv, standalone_mode=False)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except TyperException as usage:  # unknown option, missing argument: exit code 2
        usage.show()  # type: ignore[attr-defined]
        sys.exit(usage.exit_code)  # type: ignore[attr-defined]
    except typer.Abort:
        stderr.print("aborted")
        sys.exit(130)
    except USER_ERRORS as err:
        if os.environ.get("MICRO_DOE_DEBUG"):
            raise
        stderr.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    sys.exit(0)


if __name__ == "__main__":
    main()
