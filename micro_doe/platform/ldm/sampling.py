"""Conditional latent sampling with classifier-free guidance, and decoding latents to volumes.

Guidance convention (Ho & Salimans 2022, written with the weight w on the conditional branch):

    ε̂ = ε_uncond + w · (ε_cond − ε_uncond)  =  w · ε_cond + (1 − w) · ε_uncond

with ε_cond = model(z_t, t, context) and ε_uncond = model(z_t, t, context, drop_mask=all True).
w = 1: no guidance, the plain conditional model (the paper's sampler; the default);
w = 0: unconditional; w > 1: guidance towards the condition. The right-hand form is what is
computed, so w = 1 and w = 0 return ε_cond and ε_uncond exactly (and evaluate only that branch);
for other w both branches run in one forward pass of 2B items. Guidance with w ≠ 1 needs a model
trained with ``cfg_dropout`` > 0 (its unconditional branch is otherwise untrained).

**Guidance rescale** φ (optional variant; Lin et al. 2024, eq. 15–16, applied to ε as in
diffusers): large w inflates the guided ε̂ beyond the statistics the model was trained on
(the LDM's measured vf overshoots its target at w = 4). With φ > 0,

    ε̂_rescaled = ε̂ · std(ε_cond) / std(ε̂)        (std per item over all latent numbers)
    ε̂ ← φ · ε̂_rescaled + (1 − φ) · ε̂

φ = 0 (default) is plain classifier-free guidance.

**Latent guide** (optional): ``guide(z_t, eps, t) -> eps`` is applied after guidance at every
step, e.g. :func:`feature_guide`, the feature predictor's gradient pulling the predicted
clean latent towards the targets (classifier guidance, Dhariwal & Nichol 2021, with the
predictor on x̂0 instead of a noisy classifier).

:func:`sample_latents` runs the uniform sampler loop of ``diffusion.py`` in latent space::

    z = N(0, I) of shape (B, *shape), from the generator     # B = context rows
    for t, t_prev in sampler.pairs():                        # S respaced steps, T-1 → ... → 0 → data
        z = sampler.step(guided_eps(model, z, t, context, w), t, t_prev, z, generator)

All random numbers come from one CPU ``torch.Generator`` (``micro3diff.make_generator``), so the
same seed gives the same latents; or, with ``generators``, one per item (its initial noise and
every step's noise), so item i of a batch is the latent that generator alone would give (up to
float round-off of batched convolutions). :func:`decode_volumes` maps latents to int8 phase labels
through the VAE decoder (threshold P(phase 1) > 0.5, i.e. logit > 0, or argmax over phases).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence

import numpy as np
import torch

from micro_doe.platform.diffusion import Sampler, make_generator
from micro_doe.platform.diffusion.channels import to_labels
from micro_doe.platform.ldm.latent_unet import LatentUNet3D
from micro_doe.platform.ldm.vae import VAE3D

Guide = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def guided_eps(
    model: LatentUNet3D,
    z_t: torch.Tensor,
    t: int,
    context: torch.Tensor,
    guidance: float,
    rescale: float = 0.0,
) -> torch.Tensor:
    """ε̂ = w·ε_cond + (1 − w)·ε_uncond at step ``t`` for latents (B, C, d, d, d) and context (B, F),
    then the guidance rescale φ = ``rescale`` (module docstring; no effect at w = 1 or φ = 0)."""
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"rescale: expected φ in [0, 1], got {rescale}")
    b = z_t.shape[0]
    t_batch = torch.full((b,), int(t), dtype=torch.long, device=z_t.device)
    if guidance == 1.0:
        return model(z_t, t_batch, context)
    if guidance == 0.0:
        return model(z_t, t_batch, context, torch.ones(b, dtype=torch.bool, device=z_t.device))
    mask = torch.arange(2 * b, device=z_t.device) >= b  # first B rows conditional, last B unconditional
    eps = model(torch.cat([z_t, z_t]), t_batch.repeat(2), torch.cat([context, context]), mask)
    eps_cond, eps_uncond = eps[:b], eps[b:]
    guided = guidance * eps_cond + (1.0 - guidance) * eps_uncond
    if rescale == 0.0:
        return guided
    dims = tuple(range(1, guided.ndim))
    ratio = eps_cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True).clamp_min(1e-12)
    return rescale * guided * ratio + (1.0 - rescale) * guided


def feature_guide(
    predictor: Callable[[torch.Tensor], torch.Tensor],
    targets: torch.Tensor,
    given: torch.Tensor,
    schedule_alpha_bar: Callable[[int], float],
    latent_scale: float,
    scale: float,
) -> Guide:
    """The feature predictor's gradient as a latent guide (classifier guidance on x̂0).

    At step t with ε̂: x̂0 = (z_t − sqrt(1 − ᾱ_t) ε̂) / sqrt(ᾱ_t);
    L = Σ over given labels of (predictor(x̂0 / latent_scale) − target)², per item, in the
    predictor's normalised units; then ε̂ ← ε̂ + scale · sqrt(1 − ᾱ_t) · ∂L/∂x̂0. (Exact
    classifier guidance would also divide by sqrt(ᾱ_t), which explodes at large t; without it
    the pull fades in as the noise does.) ``targets`` (B, K) and ``given`` (B, K) bool select
    the predictor's K output columns that are requested.
    """

    def guide(z_t: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
        abar = schedule_alpha_bar(t)
        with torch.enable_grad():
            x0 = ((z_t - math.sqrt(1 - abar) * eps) / math.sqrt(abar)).detach().requires_grad_(True)
            predicted = predictor(x0 / latent_scale)
            wanted = targets.to(predicted)
            loss = ((predicted - wanted).pow(2) * given.to(predicted)).sum()
            (grad,) = torch.autograd.grad(loss, x0)
        return eps + scale * math.sqrt(1 - abar) * grad

    return guide


def sample_latents(
    model: LatentUNet3D,
    sampler: Sampler,
    context: torch.Tensor,
    shape: Sequence[int],
    *,
    guidance: float = 1.0,
    rescale: float = 0.0,
    guide: Guide | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    generators: Sequence[torch.Generator] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """B latents z_0 (B, *shape), float32 on the CPU, one per row of ``context`` (B, F).

    ``shape`` = (latent_channels, d, d, d) (``VAE3DConfig.latent_shape(side)``); ``sampler``
    is a ``DDPMSampler`` or ``DDIMSampler`` (its ``steps`` are the S respaced steps; ``clip``
    must be False: latents are not confined to [-1, 1]); ``guidance`` is w and ``rescale`` φ
    (module docstring); ``guide`` is applied to ε̂ after guidance. Random numbers: one
    generator (``seed`` / ``generator``) for the whole batch, or ``generators``, one per row.
    The model is run in eval mode and restored to its previous mode afterwards.
    """
    if sampler.clip:
        raise ValueError("sampler: clip=True clips x0 to [-1, 1], which would corrupt latents; use clip=False")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or shape[0] != model.config.latent_channels:
        raise ValueError(f"shape: expected ({model.config.latent_channels}, d, d, d), got {shape}")
    if context.ndim != 2 or context.shape[0] < 1:
        raise ValueError(f"context: expected shape (B >= 1, F), got {tuple(context.shape)}")
    if not guidance >= 0:
        raise ValueError(f"guidance: expected w >= 0, got {guidance}")
    if generators is not None:
        if len(generators) != context.shape[0]:
            raise ValueError(f"generators: expected one per context row ({context.shape[0]}), got {len(generators)}")
        z = torch.cat([torch.randn((1, *shape), generator=g, device=g.device).to(device) for g in generators])
    else:
        g = make_generator(seed, generator)
        z = torch.randn((context.shape[0], *shape), generator=g, device=g.device).to(device)
    context = context.to(device=device, dtype=torch.float32)
    pairs = sampler.pairs()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, (t, t_prev) in enumerate(pairs):
                eps = guided_eps(model, z, t, context, float(guidance), float(rescale))
                if guide is not None:
                    eps = guide(z, eps, t)
                if generators is None:
                    z = sampler.step(eps, t, t_prev, z, g)
                else:  # each row's noise from its own generator
                    z = torch.cat([sampler.step(eps[k : k + 1], t, t_prev, z[k : k + 1], gk)
                                   for k, gk in enumerate(generators)])  # fmt: skip
                if progress:
                    print(f"\rldm: step {i + 1}/{len(pairs)}", end="", file=sys.stderr, flush=True)
    finally:
        model.train(was_training)
    if progress:
        print(file=sys.stderr)
    return z.cpu()


def decode_volumes(
    vae: VAE3D,
    latents: torch.Tensor,
    *,
    latent_scale: float = 1.0,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Latents (B, C, d, d, d) → int8 phase labels (B, z, y, x) as numpy, ``batch_size`` at a time.

    The decoder sees ``latents / latent_scale`` (pass the factor the latents were multiplied by
    for diffusion training, if any). Labels: logit > 0 (P(phase 1) > 0.5) for two phases,
    argmax over the K phase logits otherwise (``micro3diff.to_labels`` on the channel dim).
    """
    if latent_scale <= 0:
        raise ValueError(f"latent_scale: must be > 0, got {latent_scale}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    if latents.ndim != 5 or latents.shape[0] < 1:
        raise ValueError(f"latents: expected shape (B >= 1, C, d, d, d), got {tuple(latents.shape)}")
    out = []
    was_training = vae.training
    vae.eval()
    try:
        with torch.no_grad():
            for lo in range(0, latents.shape[0], batch_size):
                z = latents[lo : lo + batch_size].to(device=device, dtype=torch.float32) / latent_scale
                out.append(to_labels(vae.decode(z), channel_dim=1))
    finally:
        vae.train(was_training)
    return np.concatenate(out)
