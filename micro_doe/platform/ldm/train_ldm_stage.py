"""Stage "ldm": LatentUNet3D, ε-MSE on z0 = latent_scale · μ, conditioned on normalised labels; EMA weights."""

from __future__ import annotations

import copy
from typing import Any

import torch

from micro_doe.platform.diffusion import NoiseSchedule
from micro_doe.platform.ldm.feature_predictor import FeaturePredictor, FeaturePredictorConfig
from micro_doe.platform.ldm.latent_unet import LatentUNet3D, conditional_diffusion_loss
from micro_doe.platform.ldm.stages_common import _Run
from micro_doe.platform.ldm.train_loop import _finish, _optimise


def _train_ldm(run: _Run, resume: bool) -> None:
    cfg, conditioning = run.config.ldm, run.config.conditioning
    vae, upstream = run.frozen_vae()
    mu, index = run.train_means(vae, upstream, cfg.augment)
    latent_scale = 1.0 / float(mu.double().std(unbiased=False))
    z0 = mu * latent_scale
    normaliser = run.normaliser(conditioning)
    extra: dict[str, Any] = {"latent_scale": latent_scale, "condition_normaliser": normaliser.to_dict()}
    depends_on = upstream  # what a checkpoint must have been trained on: the VAE (and the FP for predictions)
    if run.config.condition_on == "labels":
        context = normaliser.transform(run.labels(run.train, conditioning)).float().to(run.device)[index]
    else:  # the paper: the FP's predictions (its conditioning columns share this normaliser's scale)
        fp_state, fp_record = run.previous("fp")
        if fp_record.upstream != upstream:
            raise ValueError("stage ldm: condition_on='predictions' needs an FP trained on the current VAE; "
                             "train stage 'fp' again")
        fp = FeaturePredictor(FeaturePredictorConfig.model_validate(fp_record.architecture))
        fp.load_state_dict(fp_state)
        fp.to(run.device).eval()
        with torch.no_grad():
            columns = [fp.config.outputs.index(n) for n in conditioning]
            context = torch.cat([fp(m)[:, columns] for m in mu.split(256)]).float()
        extra["fp_weights"] = fp_record.weights
        depends_on = f"{upstream}+fp:{fp_record.weights}"
    arch = cfg.architecture(int(mu.shape[1]), len(conditioning))
    if int(mu.shape[2]) % arch.downsampling:
        raise ValueError(f"ldm.channel_mults: the latent side {int(mu.shape[2])} must be divisible by "
                         f"{arch.downsampling} (2^(len(channel_mults) - 1))")
    schedule = NoiseSchedule.linear(cfg.T)
    extra["schedule"] = schedule.to_dict()
    torch.manual_seed(run.config.seed + 2)
    model = LatentUNet3D(arch).to(run.device)
    ema = copy.deepcopy(model).requires_grad_(False)
    generator = torch.Generator().manual_seed(run.config.seed + 2)

    def loss() -> torch.Tensor:
        idx = torch.randint(0, z0.shape[0], (cfg.batch_size,), generator=generator).to(run.device)
        return conditional_diffusion_loss(model, z0[idx], context[idx], schedule, generator=generator)

    state = _optimise(run, "ldm", model, loss, generator, depends_on, resume, ema=ema, ema_decay=cfg.ema_decay)
    _finish(run, "ldm", ema.state_dict(), arch.model_dump(), state, upstream, extra)
