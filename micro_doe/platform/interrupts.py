"""Ctrl-C and SIGTERM as one exception, so an interrupted run cleans up the same way for both.

:func:`interrupts_raise` installs handlers (main thread only) that record the signal and
raise :class:`Interrupted`, a ``KeyboardInterrupt``: code that already cleans up after Ctrl-C
(fail and re-queue running trials, stop actors) does so for SIGTERM too. The exit code a
shell expects is ``128 + signal``: 130 for SIGINT, 143 for SIGTERM (:func:`exit_code`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_state: dict[str, int | bool | None] = {"signal": None, "reported": False}


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop (SIGINT or SIGTERM); ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum: int, frame: object) -> None:
    _state["signal"] = signum
    raise Interrupted(signum)


@contextmanager
def _handled_by(handler: object) -> Iterator[None]:
    """While inside (main thread only; a no-op elsewhere): SIGINT and SIGTERM go to ``handler``;
    leaving restores what was there before."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, handler)  # type: ignore[arg-type]
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextmanager
def interrupts_raise() -> Iterator[None]:
    """While inside: SIGINT and SIGTERM raise :class:`Interrupted` in the main thread (a no-op
    elsewhere). Libraries that install their own handlers (``ray.init`` does for SIGTERM) can be
    overridden by entering this again after them; each exit restores what was there before."""
    with _handled_by(_raise):
        yield


def interrupted(signum: int) -> Interrupted:
    """The :class:`Interrupted` a handler of this module would have raised for ``signum``
    (recorded as the last signal), for code that catches another library's way of stopping."""
    _state["signal"] = signum
    return Interrupted(signum)


def last_signal() -> int | None:
    """The signal that last interrupted this process through :func:`interrupts_raise`."""
    return _state["signal"]


def mark_reported() -> None:
    """The interrupt was reported to the user already (no second message needed)."""
    _state["reported"] = True


def was_reported() -> bool:
    return bool(_state["reported"])


def interrupt_name() -> str:
    """How the last interrupt came, in words: "SIGTERM" or "Ctrl-C"."""
    return "SIGTERM" if exit_code(last_signal()) == 143 else "Ctrl-C"


def exit_code(signum: int | None) -> int:
    """128 + the signal number (130 when unknown: Ctrl-C)."""
    return 128 + (signum or signal.SIGINT)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """While inside (main thread): SIGINT/SIGTERM are recorded, not raised; the first one is
    raised on leaving. For short bookkeeping that must finish (telling a trial FAIL)."""
    pending: list[int] = []
    with _handled_by(lambda signum, frame: pending.append(signum)):
        yield
    if pending:
        _raise(pending[0], None)
