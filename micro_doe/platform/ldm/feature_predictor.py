"""Feature predictor: latent mean mu → normalised descriptors and manufacturing parameters (sec. 4.2.2).

:class:`FeaturePredictor` maps mu (B, latent_channels, d, d, d) to (B, F), one column per name
in ``FeaturePredictorConfig.outputs``, by one of two readouts:

- ``"positionwise"`` (default): the same small MLP applied to the C-vector at every latent
  voxel (1×1×1 convolutions: Conv → SiLU → Conv → SiLU, ``local_width`` channels), then the
  mean and the max over the d³ positions (2·local_width numbers), then the MLP head;
- ``"flatten"`` (the paper's): the MLP head on the flattened mu, D = latent_channels·d³.

The head: hidden layers Linear → LayerNorm → SiLU → Dropout and a linear output. (The paper
says "Instance Normalization" for its hidden layers; for a feature vector the per-sample
normalisation over features is LayerNorm.)

**Why positionwise is the default.** Every label here is a volume average or a transport
property of a statistically homogeneous film, so it should not depend on *where* in the
volume a feature sits. On the shipped 32³ data the flattened MLP memorised its training
latents and generalised poorly; sharing weights across positions and pooling generalised far
better. The measured R² of both readouts are in docs/explanation/ldm.md and the
shipped bundle's card.

Targets and predictions live in normalised units (:class:`Normaliser`), column j being

    u_j = g_j(v_j),   y_j = (u_j − shift_j) / scale_j

with g_j the identity, or g_j(v) = 1/v for the names in ``inverse``. The inverse rule exists for
labels that can be infinite: a phase that does not percolate has tortuosity τ = inf, and
1/τ ∈ [0, 1] maps it to 0 (τ ≥ 1 otherwise). The way back maps 1/u, so u = 0 → inf. Any
other non-finite value (inf in a non-inverted column, NaN anywhere) is an error in ``fit``.
``method="standard"``: shift = mean, scale = standard deviation (population); ``"minmax"``:
shift = min, scale = max − min (targets in [0, 1]); a constant column gets scale = 1.

:func:`r2_scores`: per output, the coefficient of determination R² = 1 − SS_res / SS_tot,
SS_res = Σ (true − pred)², SS_tot = Σ (true − mean(true))²; NaN when SS_tot = 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

NORMALISER_METHODS = ("standard", "minmax")


class FeaturePredictorConfig(BaseModel):
    """Architecture of :class:`FeaturePredictor` (stored in a model bundle's config.json)."""

    model_config = ConfigDict(extra="forbid")
    latent_dim: int = Field(..., ge=1, description="flattened latent size latent_channels·d³")
    outputs: tuple[str, ...] = Field(..., min_length=1, description="names of the predicted (normalised) features")
    hidden: tuple[int, ...] = Field((256, 64), description="widths of the head's hidden layers (the paper has two)")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    readout: Literal["positionwise", "flatten"] = Field(
        "flatten", description="positionwise: shared per-voxel MLP + mean/max pooling; flatten: the paper's"
    )
    latent_channels: int | None = Field(None, ge=1, description="C of mu; required by the positionwise readout")
    local_width: int = Field(64, ge=1, description="channels of the positionwise MLP")

    @model_validator(mode="after")
    def _distinct_outputs(self) -> FeaturePredictorConfig:
        if len(set(self.outputs)) != len(self.outputs):
            raise ValueError(f"outputs: names must be distinct, got {self.outputs}")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden: widths must be >= 1, got {self.hidden}")
        if self.readout == "positionwise":
            if self.latent_channels is None or self.latent_dim % self.latent_channels:
                raise ValueError(f"latent_channels: the positionwise readout needs C dividing latent_dim "
                                 f"{self.latent_dim}, got {self.latent_channels}")
        return self


class FeaturePredictor(nn.Module):
    """forward(mu (B, C, d, d, d); flatten readout also (B, D)) → normalised features (B, F), in ``outputs`` order."""

    def __init__(self, config: FeaturePredictorConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.latent_dim
        self.local: nn.Module | None = None
        if config.readout == "positionwise":
            c, w = config.latent_channels, config.local_width
            assert c is not None  # checked by the config
            self.local = nn.Sequential(nn.Conv3d(c, w, 1), nn.SiLU(), nn.Conv3d(w, w, 1), nn.SiLU())
            width = 2 * w
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.SiLU(), nn.Dropout(config.dropout)]
            width = h
        layers.append(nn.Linear(width, len(config.outputs)))
        self.net = nn.Sequential(*layers)

    def forward(self, mu: torch.Tensor) -> torch.Tensor:
        if self.local is not None:
            if mu.ndim != 5 or mu.shape[1] != self.config.latent_channels:
                raise ValueError(f"mu: the positionwise readout takes (B, {self.config.latent_channels}, d, d, d), "
                                 f"got {tuple(mu.shape)}")
            h = self.local(mu)
            return self.net(torch.cat([h.mean((2, 3, 4)), h.amax((2, 3, 4))], dim=1))
        flat = mu.flatten(1)
        if flat.shape[1] != self.config.latent_dim:
            raise ValueError(f"mu: flattens to {flat.shape[1]} numbers per item, config.latent_dim is "
                             f"{self.config.latent_dim}")
        return self.net(flat)


class Normaliser:
    """Per-feature affine normalisation with an optional 1/v transform (module docstring).

    ``names`` label the F columns; ``shift``/``scale`` are float64 (F,); ``inverse`` names the
    columns transformed by 1/v first. Build with :meth:`fit`; save with :meth:`to_dict`.
    """

    def __init__(
        self,
        names: Sequence[str],
        shift: Sequence[float],
        scale: Sequence[float],
        inverse: Sequence[str] = (),
        method: str = "standard",
    ) -> None:
        self.names = tuple(names)
        self.shift = torch.as_tensor(shift, dtype=torch.float64).clone()
        self.scale = torch.as_tensor(scale, dtype=torch.float64).clone()
        self.inverse = tuple(inverse)
        self.method = method
        if len(set(self.names)) != len(self.names) or not self.names:
            raise ValueError(f"names: expected distinct names, at least one, got {self.names}")
        if self.shift.shape != (len(self.names),) or self.scale.shape != (len(self.names),):
            raise ValueError(f"shift, scale: expected {len(self.names)} values each (one per name)")
        if not bool((self.scale > 0).all()) or not bool(torch.isfinite(self.shift).all()):
            raise ValueError("scale, shift: scale must be > 0 and shift finite")
        unknown = [n for n in self.inverse if n not in self.names]
        if unknown:
            raise ValueError(f"inverse: names {unknown} are not among names {self.names}")
        if method not in NORMALISER_METHODS:
            raise ValueError(f"method: expected one of {NORMALISER_METHODS}, got {method!r}")
        self._inverted = torch.tensor([n in self.inverse for n in self.names])

    @classmethod
    def fit(
        cls,
        values: torch.Tensor | np.ndarray,
        names: Sequence[str],
        inverse: Sequence[str] = (),
        method: str = "standard",
    ) -> Normaliser:
        """Fit on training labels ``values`` (N, F) in physical units, column j named ``names[j]``."""
        values = torch.as_tensor(values, dtype=torch.float64)
        names = tuple(names)
        if values.ndim != 2 or values.shape[1] != len(names) or values.shape[0] < 1:
            raise ValueError(f"values: expected shape (N >= 1, {len(names)}) for names {names}, got "
                             f"{tuple(values.shape)}")
        if method not in NORMALISER_METHODS:
            raise ValueError(f"method: expected one of {NORMALISER_METHODS}, got {method!r}")
        u = _forward_transform(values, torch.tensor([n in inverse for n in names]))
        bad = [n for n, ok in zip(names, torch.isfinite(u).all(0).tolist()) if not ok]
        if bad:
            raise ValueError(f"values: non-finite labels in {bad}; only columns named in inverse may hold ±inf")
        if method == "standard":
            shift, scale = u.mean(0), u.std(0, unbiased=False)
        else:
            shift, scale = u.min(0).values, u.max(0).values - u.min(0).values
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return cls(names, shift.tolist(), scale.tolist(), inverse, method)

    def transform(self, values: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Physical values (N, F) → normalised (N, F); float64 in, float64 out, else float32."""
        v = self._check(values)
        return ((_forward_transform(v.double(), self._inverted) - self.shift) / self.scale).to(_out_dtype(v))

    def inverse_transform(self, normalised: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Normalised (N, F) → physical values (N, F); an inverted column at u = 0 gives inf."""
        y = self._check(normalised)
        u = y.double() * self.scale + self.shift
        return torch.where(self._inverted, 1.0 / u, u).to(_out_dtype(y))

    def _check(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(x)
        if x.ndim != 2 or x.shape[1] != len(self.names):
            raise ValueError(f"values: expected shape (N, {len(self.names)}) for {self.names}, got {tuple(x.shape)}")
        return x

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; :meth:`from_dict` rebuilds the identical normaliser."""
        return {"names": list(self.names), "shift": self.shift.tolist(), "scale": self.scale.tolist(),
                "inverse": list(self.inverse), "method": self.method}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Normaliser:
        return cls(data["names"], data["shift"], data["scale"], data.get("inverse", ()), data.get("method", "standard"))


def _forward_transform(v: torch.Tensor, inverted: torch.Tensor) -> torch.Tensor:
    return torch.where(inverted, 1.0 / v, v)


def _out_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def r2_scores(
    pred: torch.Tensor | np.ndarray, true: torch.Tensor | np.ndarray, names: Sequence[str]
) -> dict[str, float]:
    """R² = 1 − SS_res/SS_tot per column of (N, F) predictions, keyed by ``names``; NaN where SS_tot = 0."""
    pred = torch.as_tensor(pred, dtype=torch.float64)
    true = torch.as_tensor(true, dtype=torch.float64)
    if pred.shape != true.shape or pred.ndim != 2 or pred.shape[1] != len(names):
        raise ValueError(f"pred, true: expected equal shapes (N, {len(names)}), got {tuple(pred.shape)} and "
                         f"{tuple(true.shape)}")
    ss_res = ((true - pred) ** 2).sum(0)
    ss_tot = ((true - true.mean(0)) ** 2).sum(0)
    return {n: (1.0 - r / t if t > 0 else float("nan")) for n, r, t in zip(names, ss_res.tolist(), ss_tot.tolist())}
