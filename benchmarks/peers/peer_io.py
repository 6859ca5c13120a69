"""What both peer runners share: one-line usage errors (exit 2), the label-image stack they read,
and the way they exit. Plain NumPy, so it imports in the project venv and in .venv-peers alike."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import numpy as np

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input: reported as one line, exit 2."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # type: ignore[no-untyped-def, override]  # one line, exit 2
        raise UsageError(message)


def load_label_stack(path: str, side: int | None = None) -> tuple[np.ndarray, int]:
    """An (n, h, w) .npy stack of square 2D label images (a single image is a stack of one) with
    phases 0..k−1, all present; returns it as int64 and k. ``side``: the only image side allowed."""
    if not os.path.isfile(path):
        raise UsageError(f"--images file not found: {path}")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"cannot read --images {path}: {' '.join(str(exc).split())}") from exc
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] < 1:
        raise UsageError(f"--images must have shape (n, h, w); got {arr.shape}")
    if arr.shape[1] != arr.shape[2]:
        raise UsageError(f"--images must be square; got h={arr.shape[1]}, w={arr.shape[2]}")
    if side is not None and arr.shape[1] != side:
        raise UsageError(f"--images must be {side}x{side} (this runner's architecture); got {arr.shape[1]}x{arr.shape[2]}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.bool_)):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.mod(arr, 1) == 0):
            raise UsageError(f"--images must hold integer labels; got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    labels = np.unique(arr)
    k = int(labels.max()) + 1
    if labels.min() < 0 or k < 2 or labels.size != k:
        raise UsageError(f"--images labels must be 0..k-1 with k >= 2, all present; got {labels.tolist()}")
    return arr, k


def run(main: Callable[[], int]) -> None:
    """Exit with ``main()``'s status; any error as one line on stderr, exit 2."""
    try:
        sys.exit(main())
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except Exception as exc:  # noqa: BLE001
        msg = " ".join(str(exc).split()) or exc.__class__.__name__
        print(f"error: {exc.__class__.__name__}: {msg}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
