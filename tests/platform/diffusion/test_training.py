"""The optimiser step both training loops share: a non-finite gradient takes no step."""

from __future__ import annotations

import pytest
import torch

from micro_doe.errors import ExecutionError
from micro_doe.platform.diffusion.training import MAX_SKIPPED_IN_A_ROW, TrainingDiverged, check_skipped, clipped_step


def _model_and_optimiser() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    return model, torch.optim.AdamW(model.parameters(), lr=0.1)


def _backward(model: torch.nn.Module, scale: float) -> None:
    loss = (model(torch.ones(4, 3)) * scale).sum()
    loss.backward()


def test_a_finite_gradient_is_clipped_and_stepped():
    model, optimiser = _model_and_optimiser()
    before = [p.detach().clone() for p in model.parameters()]
    _backward(model, 1.0)
    assert clipped_step(model, optimiser, grad_clip=1.0)
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert optimiser.state  # AdamW's moments exist after a step


@pytest.mark.parametrize("scale", [float("inf"), float("nan")])
def test_a_non_finite_gradient_takes_no_step(scale):
    model, optimiser = _model_and_optimiser()
    _backward(model, 1.0)
    clipped_step(model, optimiser, grad_clip=1.0)
    weights = [p.detach().clone() for p in model.parameters()]
    moments = {k: v.clone() for k, v in optimiser.state[next(model.parameters())].items()}
    optimiser.zero_grad()
    _backward(model, scale)
    assert not clipped_step(model, optimiser, grad_clip=1.0)
    assert all(torch.equal(a, p) for a, p in zip(weights, model.parameters()))  # every weight stays finite
    assert all(torch.equal(moments[k], v) for k, v in optimiser.state[next(model.parameters())].items())
    assert all(p.grad is None for p in model.parameters())


def test_too_many_skipped_steps_in_a_row_is_a_diverged_run():
    check_skipped(MAX_SKIPPED_IN_A_ROW, step=40)
    with pytest.raises(TrainingDiverged, match="11 steps in a row up to step 41"):
        check_skipped(MAX_SKIPPED_IN_A_ROW + 1, step=41)
    assert issubclass(TrainingDiverged, ExecutionError)
