"""Stage "fp": FeaturePredictor μ → normalised labels (MSE) on the frozen VAE's means; R² per output."""

from __future__ import annotations

import math
from typing import Any

import torch

from micro_doe.platform.ldm.feature_predictor import FeaturePredictor, FeaturePredictorConfig, r2_scores
from micro_doe.platform.ldm.stages_common import _Run, encode_means
from micro_doe.platform.ldm.train_loop import _finish, _optimise


def _train_fp(run: _Run, resume: bool) -> None:
    cfg, outputs = run.config.fp, run.config.fp_outputs
    vae, upstream = run.frozen_vae()
    mu, index = run.train_means(vae, upstream, cfg.augment)
    normaliser = run.normaliser(outputs)
    target = normaliser.transform(run.labels(run.train, outputs)).float().to(run.device)[index]
    arch = FeaturePredictorConfig(
        latent_dim=mu[0].numel(), outputs=outputs, hidden=cfg.hidden, dropout=cfg.dropout, readout=cfg.readout,
        latent_channels=mu.shape[1], local_width=cfg.local_width,
    )  # fmt: skip
    torch.manual_seed(run.config.seed + 1)
    model = FeaturePredictor(arch).to(run.device)
    generator = torch.Generator().manual_seed(run.config.seed + 1)

    def loss() -> torch.Tensor:
        idx = torch.randint(0, mu.shape[0], (cfg.batch_size,), generator=generator).to(run.device)
        return torch.mean((model(mu[idx]).float() - target[idx]) ** 2)

    state = _optimise(run, "fp", model, loss, generator, upstream, resume)
    model.eval()
    extra: dict[str, Any] = {"normaliser": normaliser.to_dict(), "val_r2": {n: math.nan for n in outputs}}
    with torch.no_grad():
        extra["train_r2"] = r2_scores(torch.cat([model(m) for m in mu.split(256)]).cpu(), target.cpu(), outputs)
        if run.val.sizes["sample"]:
            mu_val = encode_means(vae, run.val["phase"].values, device=run.device)
            pred = model(mu_val).cpu()
            true = normaliser.transform(run.labels(run.val, outputs)).float()
            extra["val_r2"] = r2_scores(pred, true, outputs)
            extra["val_loss"] = float(torch.mean((pred - true) ** 2))
    _finish(run, "fp", model.state_dict(), arch.model_dump(), state, upstream, extra)
