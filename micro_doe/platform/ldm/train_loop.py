"""The optimiser loop every training stage runs, its resumable checkpoints and a finished stage's files."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from micro_doe.platform.diffusion.training import (
    TrainingInterrupted,
    TrainingProgress,
    check_skipped,
    clipped_step,
    ema_update,
    training_autocast,
)
from micro_doe.platform.interrupts import interrupts_deferred
from micro_doe.platform.ldm.bundle import StageSummary, load_weights
from micro_doe.platform.ldm.stages_common import _Run, _state_hash
from micro_doe.platform.ldm.train_config import StageConfig
from micro_doe.platform.volumes import atomic_path


@dataclass
class _LoopState:
    step: int = 0
    seconds: float = 0.0
    running: float = math.nan
    losses: list[float] = field(default_factory=list)
    skipped: int = 0  # steps whose gradient was not finite (no optimiser step)


# ---------------------------------------------------------------- the loop and its files


def _optimise(
    run: _Run,
    stage: str,
    model: torch.nn.Module,
    loss_fn: Callable[[], torch.Tensor],
    generator: torch.Generator,
    upstream: str,
    resume: bool = False,
    *,
    ema: torch.nn.Module | None = None,
    ema_decay: float = 0.0,
) -> _LoopState:
    """AdamW steps of ``loss_fn`` up to the stage's ``steps``, checkpointing atomically; resumable.

    With ``precision: bf16`` the loss is computed under bf16 autocast (the loss functions take
    the model's outputs to fp32 before any reduction)."""
    cfg: StageConfig = getattr(run.config, stage)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    path, identity = run.checkpoint(stage), run.identity(stage, upstream)
    state = _load_checkpoint(path, identity, model, ema, optimiser, generator) if resume else _LoopState()
    if state.step > cfg.steps:
        raise ValueError(f"{stage}.steps: the checkpoint in {path} is at step {state.step}, beyond steps={cfg.steps}")
    start, first = time.perf_counter() - state.seconds, state.step
    model.train()
    try:
        with TrainingProgress(run.progress, cfg.steps, state.step, f"{stage} {run.out.name}") as advance:
            _steps(run, stage, cfg, model, loss_fn, optimiser, state, start, path, identity, generator, advance,
                   ema=ema, ema_decay=ema_decay)
    except KeyboardInterrupt:  # Ctrl-C, and SIGTERM under interrupts_raise: keep every finished step
        if state.step == first:  # no step of this run finished: an earlier checkpoint stays as it is
            raise TrainingInterrupted(f"training stopped before {stage} step {first + 1}; nothing written") from None
        with interrupts_deferred():
            state.seconds = time.perf_counter() - start
            _save_checkpoint(path, identity, model, ema, optimiser, generator, state)
        raise TrainingInterrupted(
            f"training stopped at {stage} step {state.step} of {cfg.steps}; checkpoint {path} written "
            "(run the same command with --resume to continue)"
        ) from None
    model.eval()
    return state


def _steps(run, stage, cfg, model, loss_fn, optimiser, state, start, path, identity, generator, advance, *, ema,
           ema_decay) -> None:
    """The optimiser steps from ``state.step`` to ``cfg.steps``. A signal waits for the step in
    progress to finish (``interrupts_deferred``), so ``state`` and the weights always agree and
    an interrupt's checkpoint resumes exactly."""
    in_a_row = 0
    for step in range(state.step, cfg.steps):
        with interrupts_deferred():
            with training_autocast(run.device, cfg.precision):
                loss = loss_fn()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            value = float(loss.detach())
            if clipped_step(model, optimiser, cfg.grad_clip):
                if ema is not None:
                    ema_update(ema, model, ema_decay)
                state.running = value if math.isnan(state.running) else 0.98 * state.running + 0.02 * value
                in_a_row = 0
            else:  # a non-finite gradient: no step (diffusion.training.clipped_step)
                state.skipped, in_a_row = state.skipped + 1, in_a_row + 1
                check_skipped(in_a_row, step + 1)
            state.step = step + 1
            if state.step % run.config.log_every == 0:  # at fixed steps, so resumed histories match
                state.losses.append(state.running)
        if run.on_log is not None:
            run.on_log(stage, state.step, value)
        if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
            with interrupts_deferred():
                state.seconds = time.perf_counter() - start
                _save_checkpoint(path, identity, model, ema, optimiser, generator, state)
        advance(state.running)


def _save_checkpoint(path, identity, model, ema, optimiser, generator, state) -> None:
    payload = {
        "identity": identity,
        "model": model.state_dict(),
        "ema": None if ema is None else ema.state_dict(),
        "optimiser": optimiser.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "step": state.step,
        "seconds": state.seconds,
        "running": state.running,
        "losses": list(state.losses),
        "skipped": state.skipped,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load_checkpoint(path, identity, model, ema, optimiser, generator) -> _LoopState:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    payload = load_weights(path)
    if payload["identity"] != identity:
        raise ValueError(f"{path}: checkpoint was made with a different recipe, data set or upstream stage; "
                         "only steps and checkpoint_every may change on resume")
    model.load_state_dict(payload["model"])
    if ema is not None:
        ema.load_state_dict(payload["ema"])
    optimiser.load_state_dict(payload["optimiser"])
    generator.set_state(payload["generator"])
    torch.set_rng_state(payload["torch_rng"])
    return _LoopState(int(payload["step"]), float(payload["seconds"]), float(payload["running"]),
                      [float(v) for v in payload["losses"]], int(payload.get("skipped", 0)))


def _finish(
    run: _Run,
    stage: str,
    state_dict: dict[str, torch.Tensor],
    architecture: dict[str, Any],
    loop: _LoopState,
    upstream: str,
    extra: dict[str, Any],
) -> None:
    """Write ``NAME.pt`` then ``NAME.json`` (its presence marks the stage finished), both atomically."""
    weights = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    summary = StageSummary(
        stage=stage,
        config=getattr(run.config, stage).model_dump(mode="json"),
        architecture=json.loads(json.dumps(architecture, default=list)),
        steps=loop.step, seconds=loop.seconds, final_loss=loop.running, losses=loop.losses, skipped_steps=loop.skipped,
        upstream=upstream, weights=_state_hash(weights), device=str(run.device),
        threads=torch.get_num_threads(), extra=extra,
    )  # fmt: skip
    (run.work / f"{stage}.json").unlink(missing_ok=True)
    with atomic_path(run.work / f"{stage}.pt") as tmp:
        torch.save(weights, tmp)
    with atomic_path(run.work / f"{stage}.json") as tmp:
        tmp.write_text(summary.model_dump_json(indent=2) + "\n")
