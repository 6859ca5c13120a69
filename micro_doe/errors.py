"""The errors micro-doe raises on purpose, under one base class.

- :class:`MicroDoeError`: the base; ``except micro_doe.MicroDoeError`` catches every one.
- :class:`InputError`: the input is not what is expected (a file, an option, a field of
  study.yaml, a target); the message names it. Also a ``ValueError``. The CLI exits 2.
- :class:`ExecutionError`: a run failed for a reason that is not the input (a diverged model,
  every actor of a kind lost with its node). Also a ``RuntimeError``. The CLI exits 1 with one
  line and the path of a log that holds the traceback.

A lower layer (``platform``) may raise a plain ``ValueError`` for a bad argument; the CLI
treats ``ValueError``, ``OSError`` and pydantic's ``ValidationError`` as input errors too.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$MICRO_DOE_CACHE`` if set, else ``~/.cache/micro-doe``: downloaded models, and the logs
    (``logs/``: error tracebacks, Ray's messages to the driver)."""
    root = os.environ.get("MICRO_DOE_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "micro-doe"


class MicroDoeError(Exception):
    """Base of every error micro-doe raises on purpose."""


class InputError(MicroDoeError, ValueError):
    """Bad input: a file, option or field that is not what is expected (CLI exit 2)."""


class ExecutionError(MicroDoeError, RuntimeError):
    """A run failed for a reason that is not the input (CLI exit 1, with the path of a log)."""
