"""The ``micro-doe`` command: a typer app, and the one place errors become exit codes.

Bad input (a missing file, a wrong value: :class:`~micro_doe.errors.InputError` and the
plain ``ValueError``/``OSError`` of lower layers) is reported as one line on stderr with exit
code 2 and no traceback. Anything else (an :class:`~micro_doe.errors.ExecutionError`, or a
bug) is one line with exit code 1 and the path of a log that holds the traceback. Set
``MICRO_DOE_DEBUG=1`` to see the traceback instead. Ctrl-C exits 130 and SIGTERM 143, both
after the command has cleaned up (a study fails and re-queues its running trials).
"""

from __future__ import annotations

import datetime
import os
import sys
import traceback
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from typer.exceptions import TyperException

from micro_doe.cli.data import data_app
from micro_doe.cli.evaluate import evaluate
from micro_doe.cli.generate import generate
from micro_doe.cli.models import models_app
from micro_doe.cli.run import dashboard, run
from micro_doe.cli.studies import schema, studies
from micro_doe.cli.train import train_app
from micro_doe.cli.tune import tune
from micro_doe.errors import ExecutionError, cache_root
from micro_doe.platform.interrupts import exit_code, interrupt_name, interrupts_raise, last_signal, was_reported

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
app.command(help="Tune a Micro3Diff model's default sampling settings against images it never saw.")(tune)
app.command(help="Sample volumes from a model (pretrained:NAME or a bundle) into NetCDF/TIFF.")(generate)
app.command(help="Descriptors of a volume (vf, S2, lineal path, tortuosity, interface area) as a table and JSON.")(
    evaluate
)

# Errors that mean "the input is wrong" (or the machine refuses it: a read-only folder, an
# unreachable cluster), as opposed to a bug in micro-doe.
USER_ERRORS = (ValueError, OSError, ValidationError)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: exit 0 on success, 2 on bad input (one line, no traceback),
    130 on Ctrl-C and 143 on SIGTERM (after the command has cleaned up)."""
    stderr = Console(stderr=True)
    with interrupts_raise():
        try:
            returned = app(args=argv, standalone_mode=False)
        except TyperException as usage:  # unknown option, missing argument: exit code 2
            usage.show()  # type: ignore[attr-defined]
            sys.exit(usage.exit_code)
        except typer.Abort:
            returned = 130
        except ExecutionError as err:  # before USER_ERRORS: it is no input error
            _fail_with_log(err, stderr)
        except USER_ERRORS as err:
            if os.environ.get("MICRO_DOE_DEBUG"):
                raise
            stderr.print(f"[bold red]error:[/] {escape(_one_line(err))}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except Exception as err:  # noqa: BLE001 — a bug: one line and the log, not a screen of traceback
            _fail_with_log(err, stderr)
    code = returned if isinstance(returned, int) and not isinstance(returned, bool) else 0
    if code == 130:  # typer turns every KeyboardInterrupt (ours for SIGTERM too) into exit 130
        code = exit_code(last_signal())
        if not was_reported():
            stderr.print(f"interrupted ({interrupt_name()})")
    sys.exit(code)


def _fail_with_log(err: BaseException, stderr: Console) -> None:
    """Exit 1 with one line that names the error and the log holding its traceback."""
    if os.environ.get("MICRO_DOE_DEBUG"):
        raise err
    log = _write_log(err)
    where = f" (traceback: {log})" if log else ""
    stderr.print(f"[bold red]error:[/] {escape(_one_line(err))}{where}", highlight=False, soft_wrap=True)
    sys.exit(1)


def _write_log(err: BaseException) -> Path | None:
    """The traceback in ``$MICRO_DOE_CACHE/logs`` (default ``~/.cache/micro-doe/logs``); None
    when it cannot be written (the one line is still shown)."""
    root = cache_root()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = root / "logs" / f"error-{stamp}-{os.getpid()}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"micro-doe {' '.join(sys.argv[1:])}\n\n" + "".join(traceback.format_exception(err)))
    except OSError:
        return None
    return path


def _one_line(err: BaseException) -> str:
    """The error as the user should read it: pydantic's dump becomes ``field: message`` pairs."""
    if isinstance(err, ValidationError):
        parts = [f"{'.'.join(str(x) for x in e['loc']) or err.title}: {e['msg'].removeprefix('Value error, ')}"
                 for e in err.errors(include_url=False)]
        return f"{err.title}: " + "; ".join(parts)
    return str(err)


if __name__ == "__main__":
    main()
