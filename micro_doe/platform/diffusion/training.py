"""What both generators' training loops share: the default device, the EMA update and a
progress bar that shows the running loss."""

from __future__ import annotations

from collections.abc import Callable

import torch


def default_device() -> str:
    """The torch device to use: cuda when one is visible, else cpu."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str | None, option: str = "--device") -> str | None:
    """``None`` (the default device), ``cpu``, or ``cuda[:N]`` on a machine that has it."""
    if device is None or device == "cpu":
        return device
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ValueError(f"{option}: expected cpu, cuda or cuda:N, got {device!r}")
    if not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else "no visible GPU"
        raise ValueError(f"{option} {device}: CUDA is not available on this machine ({build}); use --device cpu")
    if index and int(index) >= torch.cuda.device_count():
        raise ValueError(f"{option} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay·ema + (1 − decay)·model for parameters; buffers are copied."""
    for target, source in zip(ema.parameters(), model.parameters()):
        target.lerp_(source, 1.0 - decay)
    for target, source in zip(ema.buffers(), model.buffers()):
        target.copy_(source)


class TrainingProgress:
    """A rich progress bar showing the running loss (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int, done: int, label: str) -> None:
        self.enabled, self.total, self.done, self.label = enabled, total, done, label

    def __enter__(self) -> Callable[[float], None]:
        if not self.enabled:
            return lambda loss: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(), transient=False,
        )
        self.bar.start()
        task = self.bar.add_task(self.label, total=self.total, completed=self.done, loss=float("nan"))
        return lambda loss: self.bar.update(task, advance=1, loss=loss)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.stop()
