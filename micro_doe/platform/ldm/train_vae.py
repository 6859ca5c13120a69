"""Stage "vae": VAE3D on the training volumes, loss = reconstruction + KL, a random symmetry per batch."""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from micro_doe.platform.ldm.stages_common import _augment, _Run, encode_means
from micro_doe.platform.ldm.train_loop import _finish, _optimise
from micro_doe.platform.ldm.vae import VAE3D, labels_to_input, vae_loss


def _train_vae(run: _Run, resume: bool) -> None:
    cfg, names = run.config.vae, run.names
    n_phases = len(names)
    arch = cfg.architecture(1 if n_phases == 2 else n_phases)
    torch.manual_seed(run.config.seed)
    model = VAE3D(arch).to(run.device)
    volumes = torch.as_tensor(run.train["phase"].values.astype(np.int64), device=run.device)
    generator = torch.Generator().manual_seed(run.config.seed)

    def loss() -> torch.Tensor:
        idx = torch.randint(0, volumes.shape[0], (cfg.batch_size,), generator=generator).to(run.device)
        batch = _augment(volumes[idx], generator) if cfg.augment else volumes[idx]
        logits, mu, logvar = (t.float() for t in model(labels_to_input(batch, n_phases), generator=generator))
        return vae_loss(logits, batch, mu, logvar, arch.kl_weight).total

    state = _optimise(run, "vae", model, loss, generator, "", resume)
    part = run.val if run.val.sizes["sample"] else run.train
    extra = {"reconstruction_split": "val" if run.val.sizes["sample"] else "train", **_reconstruction(model, part, run)}
    _finish(run, "vae", model.state_dict(), arch.model_dump(), state, "", extra)


def _reconstruction(model: VAE3D, part: xr.Dataset, run: _Run) -> dict[str, float]:
    """Voxel accuracy and volume-fraction error of μ → decoder reconstructions of ``part``."""
    from micro_doe.platform.diffusion.channels import to_labels

    labels = part["phase"].values
    mu = encode_means(model, labels, device=run.device)
    with torch.no_grad():
        recon = np.concatenate([to_labels(model.decode(mu[lo : lo + 16]), channel_dim=1)
                                for lo in range(0, mu.shape[0], 16)])
    vf_true = (labels == 1).mean(axis=(1, 2, 3))
    vf_recon = (recon == 1).mean(axis=(1, 2, 3))
    return {"voxel_accuracy": float((recon == labels).mean()), "vf_mae": float(np.abs(vf_true - vf_recon).mean())}
