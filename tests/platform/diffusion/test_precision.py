from __future__ import annotations

import logging

import pytest
import torch

from micro_doe.platform.diffusion import precision
from micro_doe.platform.diffusion.precision import default_precision, native_precisions, warn_once, why_not_native
from micro_doe.platform.diffusion.training import training_autocast


def cpu_has_bf16_kernels() -> bool:
    """oneDNN's own answer, asked directly: what the module's CPU answer must agree with."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@pytest.fixture(autouse=True)
def warnings_not_yet_given(monkeypatch):
    monkeypatch.setattr(precision, "_warned", set())


def test_the_cpu_runs_fp32_natively_and_bf16_where_onednn_has_kernels_for_it():
    natives = native_precisions("cpu")
    assert natives == (("fp32", "bf16") if cpu_has_bf16_kernels() else ("fp32",))
    assert "fp16" not in natives  # fp16 is a CUDA precision here
    assert why_not_native("fp32", "cpu") is None
    assert (why_not_native("bf16", "cpu") is None) == cpu_has_bf16_kernels()
    assert why_not_native("fp16", "cpu") == "fp16 is not native on the CPU (a CUDA precision)"


def test_a_default_precision_falls_back_to_fp32_where_it_is_not_native():
    assert default_precision("fp32", native_precisions("cpu")) == "fp32"
    assert default_precision("fp16", native_precisions("cpu")) == "fp32"
    assert default_precision("bf16", native_precisions("cpu")) == ("bf16" if cpu_has_bf16_kernels() else "fp32")


def test_a_warning_is_given_once_per_message(caplog):
    with caplog.at_level(logging.WARNING, logger="micro_doe.platform.diffusion.precision"):
        for _ in range(3):
            warn_once("test: said once")
        warn_once("test: another")
    assert [r.getMessage() for r in caplog.records] == ["test: said once", "test: another"]


def test_training_in_bf16_runs_and_warns_only_where_it_is_emulated(caplog):
    with caplog.at_level(logging.WARNING, logger="micro_doe.platform.diffusion.precision"):
        with training_autocast("cpu", "bf16"):
            y = torch.nn.Linear(4, 4)(torch.ones(2, 4))
    assert y.dtype == torch.bfloat16
    warned = any("training precision bf16 is not native on this CPU" in r.getMessage() for r in caplog.records)
    assert warned == (not cpu_has_bf16_kernels())
