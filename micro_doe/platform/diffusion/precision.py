"""Which network precisions a device runs natively, and what a default precision becomes where it does not.

A precision is *native* on a device when its arithmetic runs in the hardware's own units:

- ``fp32``: everywhere;
- ``bf16``: on CUDA where the GPU computes it (Ampere and later); on the CPU where oneDNN has
  bf16 kernels for it (x86 with AVX-512, with or without its bf16 instructions, or AMX; Arm with
  its bf16 extension: ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``);
- ``fp16``: on CUDA.

Elsewhere bf16 is emulated: several times slower than fp32, where with bf16 kernels it is faster
(``benchmarks/micro3diff_speed.py`` measures both on the machine at hand). A tuned default of bf16
is a speed choice of the machine that tuned it (its fp32 twin scores the same within the tuning's
noise), so :func:`default_precision` samples it in fp32 where bf16 is not native; a precision asked
for is kept.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import torch

log = logging.getLogger(__name__)
_warned: set[str] = set()

PRECISIONS = ("fp32", "bf16", "fp16")


def native_precisions(device: str | torch.device) -> tuple[str, ...]:
    """The precisions ``device`` runs natively (module doc), in :data:`PRECISIONS` order."""
    kind = torch.device(device).type
    if kind == "cuda":
        return ("fp32", "bf16", "fp16") if _cuda_has_bf16() else ("fp32", "fp16")
    return ("fp32", "bf16") if _cpu_has_bf16() else ("fp32",)


def _cuda_has_bf16() -> bool:
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch before the keyword: it did not count emulation
        return bool(torch.cuda.is_bf16_supported())


@functools.cache
def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN: no bf16 kernels
        return False


def default_precision(precision: str, natives: Sequence[str]) -> str:
    """The precision a *default* ``precision`` runs at on a machine whose native precisions are
    ``natives`` (:func:`native_precisions`): itself where native, else fp32 (the tuning measures a
    reduced precision and its fp32 twin as equals)."""
    return precision if precision in natives else "fp32"


def why_not_native(precision: str, device: str | torch.device) -> str | None:
    """Why ``precision`` is emulated on ``device``, in a few words (None where it is native)."""
    if precision in native_precisions(device):
        return None
    if torch.device(device).type != "cpu":
        return f"{precision} is not native on this GPU"
    if precision == "fp16":
        return "fp16 is not native on the CPU (a CUDA precision)"
    return f"{precision} is not native on this CPU (oneDNN has no bf16 kernels for it: no AVX-512, AMX or Arm bf16)"


def warn_once(message: str) -> None:
    """A warning on the log, once per process for each message (a study samples thousands of times)."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)
