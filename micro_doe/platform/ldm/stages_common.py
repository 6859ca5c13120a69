"""What the three training stages share: the state of one call and the data they train on.

    _Run            data set, splits, staging directory and config of one train_ldm call;
                    finished upstream stages, frozen VAE, cached training latents
    encode_means, symmetry, _augment
                    VAE encoder means and the 16 symmetries that keep z the film normal
    _state_hash, _fingerprint
                    identities of weights and of a data set

The optimiser loop and the files it writes are in :mod:`micro_doe.platform.ldm.train_loop`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from micro_doe.platform.ldm.bundle import LDMConfig, StageSummary, load_weights
from micro_doe.platform.ldm.dataset import read_opv_dataset, split, validate_opv_dataset
from micro_doe.platform.ldm.feature_predictor import Normaliser
from micro_doe.platform.ldm.train_config import _SHARED, SYMMETRIES, LDMTrainConfig, OnLog, inverse_names, staging_dir
from micro_doe.platform.ldm.vae import VAE3D, VAE3DConfig, labels_to_input

# ---------------------------------------------------------------- shared state of one call


@dataclass
class _Run:
    """The data and settings one :func:`train_ldm` call shares between its stages."""

    ds: xr.Dataset
    train: xr.Dataset
    val: xr.Dataset
    out: Path
    work: Path
    config: LDMTrainConfig
    device: str
    progress: bool
    on_log: OnLog | None
    data_label: str
    fingerprint: str
    _means: dict[tuple[str, bool], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @classmethod
    def open(cls, dataset, out, config, device, progress, on_log, data_label) -> _Run:
        if isinstance(dataset, (str, Path)):
            data_label = data_label or str(dataset)
            ds = read_opv_dataset(dataset)
        else:
            ds = validate_opv_dataset(dataset, data_label or "dataset")
        train, val = split(ds, "train"), split(ds, "val")
        if train.sizes["sample"] == 0:
            raise ValueError(f"{data_label or 'dataset'}: the training split is empty")
        sides = tuple(ds.sizes[d] for d in ("z", "y", "x"))
        if len(set(sides)) != 1:
            raise ValueError(f"{data_label or 'dataset'}: volumes must be cubes for the VAE, got (z, y, x) = {sides}")
        available = sorted(str(v) for v in ds.data_vars if ds[v].dims == ("sample",) and ds[v].dtype.kind == "f")
        for option, names in (("conditioning", config.conditioning), ("fp_outputs", config.fp_outputs)):
            missing = [n for n in names if n not in available]
            if missing:
                raise ValueError(f"config.{option}: labels {missing} are not in the data set; available: {available}")
        config.vae.architecture(1).latent_shape(sides[0])  # side divisible by the VAE's downsampling
        work = staging_dir(out)
        work.mkdir(parents=True, exist_ok=True)
        label = data_label or str(ds.attrs.get("source", "dataset"))
        return cls(ds, train, val, out, work, config, device, progress, on_log, label, _fingerprint(ds))

    @property
    def names(self) -> list[str]:
        return [str(n) for n in np.atleast_1d(self.ds["phase"].attrs.get("phase_names", self.ds.attrs["phase_names"]))]

    @property
    def side(self) -> int:
        return int(self.ds.sizes["z"])

    def checkpoint(self, stage: str) -> Path:
        return self.work / f"{stage}.checkpoint.pt"

    def labels(self, part: xr.Dataset, names: tuple[str, ...]) -> torch.Tensor:
        """Physical labels (N, F) float64 of ``part``."""
        return torch.as_tensor(np.stack([part[n].values.astype(np.float64) for n in names], axis=1))

    def normaliser(self, names: tuple[str, ...]) -> Normaliser:
        return Normaliser.fit(self.labels(self.train, names), names, inverse_names(names), self.config.normaliser)

    def previous(self, stage: str) -> tuple[dict[str, torch.Tensor], StageSummary]:
        """Weights and summary of a finished stage: the staging dir first, else the bundle at ``out``."""
        weights, summary = self.work / f"{stage}.pt", self.work / f"{stage}.json"
        if weights.exists() and summary.exists():
            state, record = load_weights(weights), StageSummary.model_validate_json(summary.read_text())
        elif (self.out / "config.json").exists():
            bundle = LDMConfig.model_validate_json((self.out / "config.json").read_text())
            if stage not in bundle.stages:
                raise FileNotFoundError(f"{self.out}: the bundle records no stage {stage!r}")
            state, record = load_weights(self.out / "model.pt")[stage], bundle.stages[stage]
        else:
            raise FileNotFoundError(f"stage {stage!r}: no trained {stage} in {self.work} or {self.out}; "
                                    f"train stage {stage!r} first")
        if _state_hash(state) != record.weights:
            raise ValueError(f"{self.work}: the {stage} weights do not match their summary (hash differs)")
        return state, record

    def frozen_vae(self) -> tuple[VAE3D, str]:
        state, record = self.previous("vae")
        vae = VAE3D(VAE3DConfig.model_validate(record.architecture))
        vae.load_state_dict(state)
        return vae.to(self.device).eval().requires_grad_(False), record.weights

    def train_means(self, vae: VAE3D, vae_hash: str, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """μ of the training volumes (N rows, or 16·N with ``augment``: symmetry-major) on the device,
        and the training-sample index of each row; cached per VAE within the call."""
        key = (vae_hash, augment)
        if key not in self._means:
            volumes = torch.as_tensor(self.train["phase"].values.astype(np.int64))
            maps = range(len(SYMMETRIES)) if augment else range(1)
            mu = torch.cat([encode_means(vae, symmetry(volumes, k), device=self.device) for k in maps])
            self._means[key] = (mu, torch.arange(volumes.shape[0]).repeat(len(maps)).to(self.device))
        return self._means[key]

    def identity(self, stage: str, upstream: str) -> str:
        """What a checkpoint must agree on to be resumed (all but steps, checkpoint_every and precision)."""
        c = self.config
        stage_config = getattr(c, stage).model_dump(exclude={"steps", "checkpoint_every", "precision"})
        shared = c.model_dump(include=_SHARED[stage])
        return json.dumps({"stage": stage_config, **shared, "data": self.fingerprint, "upstream": upstream},
                          sort_keys=True)


# ---------------------------------------------------------------- helpers


def encode_means(
    vae: VAE3D, volumes: np.ndarray | torch.Tensor, *, device: str | torch.device = "cpu", batch_size: int = 16
) -> torch.Tensor:
    """Encoder means μ (N, C, d, d, d) float32 on ``device`` of int phase labels (N, z, y, x), VAE in eval mode."""
    labels = volumes.long() if isinstance(volumes, torch.Tensor) else torch.as_tensor(np.asarray(volumes, np.int64))
    was_training = vae.training
    vae.eval()
    out = []
    try:
        with torch.no_grad():
            for lo in range(0, labels.shape[0], batch_size):
                x = labels_to_input(labels[lo : lo + batch_size].to(device), vae.config.n_phases)
                out.append(vae.encode(x)[0])
    finally:
        vae.train(was_training)
    return torch.cat(out)


def symmetry(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Symmetry ``k`` (0..15, 0 the identity) of volumes (B, z, y, x) that keeps z the film normal.

    Bits 0, 1, 2 of k flip z, y, x; bit 3 transposes y and x. Every OPV label (vf, τ and
    percolation along z, face-counted interfacial area) is invariant under all 16.
    """
    if k not in SYMMETRIES:
        raise ValueError(f"k: expected a symmetry index in 0..{len(SYMMETRIES) - 1}, got {k}")
    dims = [d for bit, d in enumerate((1, 2, 3)) if k >> bit & 1]
    out = torch.flip(labels, dims) if dims else labels
    return out.transpose(2, 3) if k >> 3 & 1 else out


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random :func:`symmetry` of the whole batch."""
    return symmetry(batch, int(torch.randint(0, len(SYMMETRIES), (1,), generator=generator)))


def _state_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 (first 16 hex digits) of a state dict's names and tensor bytes: identifies weights."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16 else tensor.float().numpy().tobytes())
    return digest.hexdigest()[:16]


def _fingerprint(ds: xr.Dataset) -> str:
    """sha256 (16 hex digits) of the volumes, the split and every float per-sample label."""
    digest = hashlib.sha256(np.ascontiguousarray(ds["phase"].values).tobytes())
    digest.update("".join(map(str, ds["split"].values)).encode())
    for name in sorted(str(v) for v in ds.data_vars if ds[v].dims == ("sample",) and ds[v].dtype.kind == "f"):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(ds[name].values, dtype=np.float64).tobytes())
    return digest.hexdigest()[:16]
