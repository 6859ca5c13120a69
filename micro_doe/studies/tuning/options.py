"""The search space, the options and the vocabulary every stage of the tuning shares."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from micro_doe.errors import InputError
from micro_doe.platform.bundles import model_digest
from micro_doe.platform.diffusion.precision import default_precision
from micro_doe.platform.micro3diff.bundle import (
    Micro3DiffConfig,
    SamplingConfig,
)
from micro_doe.platform.micro3diff.generator import VARIANTS

SEARCH: dict[str, dict[str, list[Any]]] = {
    "variant": {"categorical": ["paper", "anchored"]},
    "n_h": {"categorical": [0, 1, 3, 6, 10, 20, 40]},
    "steps": {"categorical": [25, 50]},
    "decode": {"categorical": ["sign", "fractions"]},
    "calibrate": {"categorical": [False, True]},
    "precision": {"categorical": ["fp32", "bf16"]},
}


PAPER = {"variant": "paper", "n_h": 1, "steps": 50, "decode": "sign", "calibrate": False, "precision": "fp32"}
# The first trials: the paper's algorithm (SamplingConfig()), then the settings measured best on
# the shipped models (spheres, polycrystal, ternary blend) and the anchored variant at n_h 10.
STARTS: list[dict[str, Any]] = [
    PAPER,
    {"variant": "anchored", "n_h": 6, "steps": 25, "decode": "sign", "calibrate": True, "precision": "bf16"},
    {"variant": "anchored", "n_h": 10, "steps": 25, "decode": "sign", "calibrate": False, "precision": "bf16"},
    {"variant": "anchored", "n_h": 3, "steps": 50, "decode": "sign", "calibrate": False, "precision": "bf16"},
    {"variant": "anchored", "n_h": 40, "steps": 25, "decode": "fractions", "calibrate": False, "precision": "bf16"},
]


# With a recorded autocovariance, the spectral variant's starts come after the paper's and the
# shipped spheres' (a budget of 2 keeps those two): the cheap and the middle setting measured on
# the unseen morphologies (docs/explanation/micro3diff.md).
SPECTRAL_STARTS: list[dict[str, Any]] = [
    {"variant": "spectral", "n_h": 1, "steps": 25, "decode": "sign", "calibrate": False, "precision": "bf16"},
    {"variant": "spectral", "n_h": 3, "steps": 50, "decode": "sign", "calibrate": False, "precision": "bf16"},
]


# With two phases, hysteresis decoding is searched too; its start is the setting measured best
# with it on struts, where it kept the thin features that sign decoding broke (micro3diff.md).
HYSTERESIS_START: dict[str, Any] = {"variant": "anchored", "n_h": 6, "steps": 25, "decode": "hysteresis", "calibrate": False,
                                    "precision": "bf16"}  # fmt: skip


def starts(spectral: bool, hysteresis: bool = False, precisions: Sequence[str] = tuple(SEARCH["precision"]["categorical"])
           ) -> list[dict[str, Any]]:  # fmt: skip
    """The study's first settings, in order: :data:`STARTS`, with :data:`SPECTRAL_STARTS` third
    and fourth when the bundle can sample the spectral variant, and :data:`HYSTERESIS_START`
    after those when hysteresis decoding is searched; each in fp32 where its precision is not
    among ``precisions`` (:func:`at_precisions`)."""
    first = [*STARTS[:2], *(SPECTRAL_STARTS if spectral else []), *([HYSTERESIS_START] if hysteresis else [])]
    return [at_precisions(setting, precisions) for setting in first + STARTS[2:]]


def at_precisions(setting: dict[str, Any], precisions: Sequence[str]) -> dict[str, Any]:
    """``setting`` at :func:`~micro_doe.platform.diffusion.precision.default_precision` among
    ``precisions`` (those the machine runs natively): its own, or fp32."""
    return setting | {"precision": default_precision(setting["precision"], precisions)}


def variants(config: Micro3DiffConfig) -> list[str]:
    """The variants searched: the paper's and anchored, and spectral when the bundle records an autocovariance."""
    return ["paper", "anchored"] + (["spectral"] if config.autocovariance is not None else [])


def decodes(config: Micro3DiffConfig) -> list[str]:
    """The decodings searched: sign and at the fractions, and hysteresis for two phases (it grows one of two)."""
    return ["sign", "fractions"] + (["hysteresis"] if len(config.phase_names) == 2 else [])


VF_TOLERANCE = 0.25  # constraint: |vf − held-out vf| ≤ 25 % of the held-out vf


class TuningError(InputError):
    """Tuning cannot start or cannot choose (names the option)."""


class TuneOptions(BaseModel):
    """How ``micro-doe tune`` searches. The default budget: 16 settings (≈ 50 min for a 32² model
    measured with two tunings sharing 2 CPU cores)."""

    model_config = ConfigDict(extra="forbid")
    trials: int = Field(16, ge=2, le=10_000, description="settings tried (the study's n_trials)")
    minutes: float | None = Field(None, gt=0, description="wall-time budget of the study; None: trials alone")
    samples_per_trial: int = Field(2, ge=1, le=64, description="volumes per setting in the study")
    finalists: int = Field(4, ge=1, le=64, description="best settings of the study measured again before choosing")
    max_passes: int = Field(1100, ge=100, description="at most this many denoising passes, (n_h + 1) · S, per volume: "
                            "the study skips costlier settings unrun, and a default must stay affordable")
    finalist_volumes: int = Field(8, ge=1, le=64, description="volumes per finalist (fresh seeds)")
    confirm_volumes: int = Field(4, ge=1, le=64, description="volumes per setting in the confirmation")
    calibration_volumes: int = Field(2, ge=1, le=64, description="volumes per anchored fraction when calibrating")
    walk_share: float = Field(1 / 3, ge=0, lt=1, description="share of the budget (settings or minutes) spent walking "
                              "from the best setting so far, one knob at a time (the rest: the starts, then TPE)")
    choose_by: Literal["worst_error", "structure_error"] = Field(
        "worst_error", description="what the finalists are compared by: their worst judge, or the sum of the four")
    margin_points: float = Field(1.0, ge=0, description="error a cheaper setting may give up, in % points")
    margin_fraction: float = Field(0.1, ge=0, description="... or this fraction of the best's, whichever is larger")
    seed: int = Field(0, ge=0, description="the sampler's and the volumes' seed")
    storage: str = "sqlite:///micro-doe-runs/optuna.db"
    tracking: str = "sqlite:///micro-doe-runs/mlflow.db"
    artifacts: str = "micro-doe-runs/artifacts"


def parse_budget(text: str, option: str = "--tune-budget") -> tuple[int | None, float | None]:
    """``"16"`` → 16 trials; ``"30m"`` / ``"30min"`` → 30 minutes. At least 2 trials or 2 minutes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(m|min|minutes)?\s*", text)
    if match is None:
        raise TuningError(f"{option} {text!r}: expected a number of trials (16) or minutes (30m)")
    value, unit = float(match.group(1)), match.group(2)
    if unit is None:
        if value != int(value) or value < 2:
            raise TuningError(f"{option} {text}: a tuning budget must try at least 2 settings (the paper's and one more)")
        return int(value), None
    if value < 2:
        raise TuningError(f"{option} {text}: at least 2 minutes, enough to try more than one setting")
    return None, value


def study_name(bundle: Path, searched: list[str] | None = None, decoded: list[str] | None = None,
               precisions: Sequence[str] | None = None) -> str:  # fmt: skip
    """``tune-<bundle name>-<8 hex of model.pt>``, then ``-spectral`` when that variant is
    searched, ``-hysteresis`` when that decoding is, and the precisions searched when they are not
    :data:`SEARCH`'s (``-fp32`` on a CPU without bf16 units, ``-fp32-bf16-fp16`` on a GPU): a
    retrained model, or a search that gained or lost a choice, gets a study of its own (Optuna
    fixes a study's choices)."""
    digest = model_digest(bundle)[:8]
    slug = re.sub(r"[^a-z0-9_-]+", "-", bundle.name.lower()).strip("-_") or "model"
    tags = [tag for tag, on in (("spectral", "spectral" in (searched or [])), ("hysteresis", "hysteresis" in (decoded or []))) if on]
    if precisions is not None and list(precisions) != SEARCH["precision"]["categorical"]:
        tags += list(precisions)
    return f"tune-{slug}-{digest}" + "".join(f"-{tag}" for tag in tags)


def passes(params: dict[str, Any]) -> int:
    """Denoising passes per volume of a setting: (n_h + 1) · S."""
    return (int(params.get("n_h", 0)) + 1) * int(params.get("steps", 1))


def label(s: SamplingConfig) -> str:
    """A setting as the tables name it: ``spectral (calibrated), n_h 10, S 25, bf16``."""
    extra = [x for x, on in (("calibrated", s.calibrate and VARIANTS[s.variant].anchors),
                             ("decode at vf", s.decode == "fractions"), ("hysteresis to vf", s.decode == "hysteresis")) if on]  # fmt: skip
    return f"{s.variant}{' (' + ', '.join(extra) + ')' if extra else ''}, n_h {s.n_h}, S {s.steps}, {s.precision}"


def defaults_of(params: dict[str, Any]) -> SamplingConfig:
    """A trial's parameters as the bundle's sampling defaults (DDPM steps, β variance: fixed in the study)."""
    return SamplingConfig(**(params | {"sampler": "ddpm", "variance": "beta"}))
