"""What several commands share: the ``--overwrite`` option, option checks that run before any
work starts, and pydantic errors translated to the option that caused them."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated

import typer
from pydantic import ValidationError

from micro_doe.errors import InputError
from micro_doe.platform.memory import available_memory, check_memory  # noqa: F401  (re-exported for the commands)

Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output (never a folder micro-doe did not write).")]


class OptionError(InputError):
    """A command-line option with a value the command cannot use; the message names it."""


def option_errors(err: ValidationError, options: Mapping[str, str] | None = None) -> OptionError:
    """One line naming the option of every field pydantic refused: ``--steps: must be ≥ 1``.

    ``options`` maps field names to option names; other fields become ``--field-name``.
    """
    parts = []
    for e in err.errors(include_url=False):
        field = next((str(x) for x in reversed(e["loc"]) if isinstance(x, str)), "")
        message = str(e["msg"]).removeprefix("Value error, ")
        if not field:  # a model-level check: its message may start with "field: …"
            head, _, rest = message.partition(": ")
            if rest and head.isidentifier():
                field, message = head, rest
        if not field:
            parts.append(message)
            continue
        option = (options or {}).get(field) or "--" + field.replace("_", "-")
        value = e.get("input")
        said = "got " in message  # the check's own message already names the value
        shown = f" (got {value!r})" if isinstance(value, (int, float, str)) and not isinstance(value, bool) and not said else ""
        parts.append(f"{option}: {message}{shown}")
    return OptionError("; ".join(dict.fromkeys(parts)))


def tracking_option(uri: str) -> str:
    """``--tracking``: a URI MLflow can open (:func:`~micro_doe.tracking.registry.check_tracking_uri`)."""
    from micro_doe.tracking.registry import check_tracking_uri

    try:
        return check_tracking_uri(uri)
    except ValueError as err:
        raise OptionError(f"--tracking: {err}") from None


def check_count(value: int, option: str, *, low: int = 1, high: int | None = None) -> int:
    """An integer option within [low, high]."""
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise OptionError(f"{option}: expected an integer {bound}, got {value}")
    return value


def check_seconds(value: float | None, option: str) -> float | None:
    """A positive, finite number of seconds (or none)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise OptionError(f"{option}: expected a positive, finite number of seconds, got {value}")
    return value


@contextmanager
def parameters_as_options(*names: str) -> Iterator[None]:
    """Inside: a ``ValueError`` whose message names a Python parameter (``mean_diameter``) is
    re-raised naming the command-line option instead (``--mean-diameter``); ``"name=--option"``
    gives the option explicitly."""
    try:
        yield
    except ValueError as err:
        text = str(err)
        for item in names:
            name, _, option = item.partition("=")
            text = re.sub(rf"(?<![\w-]){name}(?!\w)", option or "--" + name.replace("_", "-"), text)
        if text == str(err):
            raise
        raise OptionError(text) from None
