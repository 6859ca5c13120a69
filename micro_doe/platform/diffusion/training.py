"""What both generators' training loops share: the default device, the optimiser step that
skips a non-finite gradient, the EMA update and a progress bar that shows the running loss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from micro_doe.errors import ExecutionError
from micro_doe.platform.diffusion.precision import warn_once, why_not_native


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


TrainingPrecision = Literal["fp32", "bf16"]


def training_autocast(device: str | torch.device, precision: TrainingPrecision) -> torch.autocast:
    """The context a training step computes its loss in: bf16 autocast of the forward pass
    (mixed precision; weights, optimiser and the loss's reduction stay fp32), or nothing for fp32.
    bf16 where the device has no bf16 units is kept, with a warning (once) that it runs emulated."""
    if precision == "bf16" and (why := why_not_native("bf16", device)) is not None:
        warn_once(f"training precision {why}: it runs emulated, several times slower than fp32 (--precision fp32)")
    return torch.autocast(torch.device(device).type, torch.bfloat16, enabled=precision == "bf16")


MAX_SKIPPED_IN_A_ROW = 10  # more non-finite gradients in a row than this: the run has diverged


class TrainingInterrupted(KeyboardInterrupt):
    """Training was stopped by Ctrl-C or SIGTERM after its checkpoint was written."""


class TrainingDiverged(ExecutionError):
    """Every gradient of many steps in a row was not finite: training diverged (not a passing overflow)."""


def clipped_step(model: torch.nn.Module, optimiser: torch.optim.Optimizer, grad_clip: float) -> bool:
    """Clip the gradients to a total norm of ``grad_clip`` and take the optimiser step, unless a
    gradient is not finite: then no step is taken (weights and optimiser moments stay as they
    were) and the result is False. Why: under CPU bf16 autocast a convolution's weight gradient
    came out non-finite now and then (torch 2.13, nondeterministic), and one such step turns
    every weight into NaN; this is what fp16's GradScaler does with its overflow steps."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if not bool(torch.isfinite(norm)):
        optimiser.zero_grad(set_to_none=True)
        return False
    optimiser.step()
    return True


def check_skipped(in_a_row: int, step: int) -> None:
    """Raise :class:`TrainingDiverged` once more than ``MAX_SKIPPED_IN_A_ROW`` steps in a row were skipped."""
    if in_a_row > MAX_SKIPPED_IN_A_ROW:
        raise TrainingDiverged(f"training diverged: the gradients of {in_a_row} steps in a row up to step {step} were "
                               "not finite (lower the learning rate, or train in fp32)")


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay·ema + (1 − decay)·model for parameters; buffers are copied."""
    for target, source in zip(ema.parameters(), model.parameters()):
        target.lerp_(source, 1.0 - decay)
    for target, source in zip(ema.buffers(), model.buffers()):  # type: ignore[assignment]
        target.copy_(source)


class TrainingProgress:
    """Training progress with the running loss (a no-op when disabled).

    On a terminal: a rich progress bar. Otherwise (stderr sent to a log file) one plain line per
    ``log_every`` steps and at the end, so a log shows how far training got and how fast."""

    def __init__(self, enabled: bool, total: int, done: int, label: str, loss: float = float("nan")) -> None:
        self.enabled, self.total, self.done, self.label, self.loss = enabled, total, done, label, loss
        self.log_every = max(1, total // 20)

    def __enter__(self) -> Callable[[float], None]:
        if not self.enabled:
            return lambda loss: None
        import time

        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(stderr=True)
        if not console.is_terminal:
            start, first = time.perf_counter(), self.done

            def log(loss: float) -> None:
                self.done += 1
                if self.done % self.log_every == 0 or self.done == self.total:
                    elapsed = time.perf_counter() - start
                    left = elapsed / max(self.done - first, 1) * (self.total - self.done)
                    console.print(f"{self.label}: step {self.done}/{self.total} ({100 * self.done / self.total:.0f} %), "
                                  f"loss {loss:.4f}, {elapsed / 60:.1f} min, ~{left / 60:.1f} min left",
                                  soft_wrap=True, highlight=False)
            return log
        loss_text = TextColumn("loss {task.fields[loss]}")
        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), loss_text, TimeRemainingColumn(),
            transient=False, console=console,
        )
        self.bar.start()
        shown = "—" if self.loss != self.loss else f"{self.loss:.4f}"  # no "nan" before the first step
        task = self.bar.add_task(self.label, total=self.total, completed=self.done, loss=shown)
        return lambda loss: self.bar.update(task, advance=1, loss=f"{loss:.4f}")

    def __exit__(self, *exc: object) -> None:
        if self.enabled and hasattr(self, "bar"):
            self.bar.stop()
