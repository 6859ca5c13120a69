"""Conditional latent diffusion (Baishnab, Herron, … Ganapathysubramanian 2025): three networks trained in turn.

    vae.py                VAE3D: int8 volumes (B, z, y, x) ⇄ latents (B, C, d, d, d)
    feature_predictor.py  FeaturePredictor: latent mean → normalised descriptors and
                          manufacturing parameters; Normaliser; r2_scores
    latent_unet.py        LatentUNet3D: conditional ε-model on latents (time + context
                          embeddings, null context for classifier-free guidance);
                          conditional_diffusion_loss
    sampling.py           sample_latents (DDPM/DDIM from platform.diffusion, guidance w),
                          decode_volumes
    dataset.py            the labelled OPV Cahn–Hilliard training data set
    training.py           train_ldm: the three stages in turn (train_*.py), with resume
    bundle.py             LDMConfig, load_ldm_bundle / write_ldm_bundle
    generator.py          LDMGenerator: targets → volumes and predicted recipes
    recipe.py             check_recipe: re-simulate a predicted recipe and compare

Pipeline at inference: user targets → Normaliser.transform → context → sample_latents →
decode_volumes (volumes) and FeaturePredictor (predicted manufacturing parameters) →
Normaliser.inverse_transform.
"""

from __future__ import annotations

from micro_doe.platform.ldm.feature_predictor import FeaturePredictor, FeaturePredictorConfig, Normaliser, r2_scores
from micro_doe.platform.ldm.latent_unet import LatentUNet3D, LatentUNetConfig, conditional_diffusion_loss
from micro_doe.platform.ldm.sampling import decode_volumes, feature_guide, guided_eps, sample_latents
from micro_doe.platform.ldm.vae import VAE3D, VAE3DConfig, VAELoss, kl_divergence, labels_to_input, vae_loss

__all__ = [
    "VAE3D",
    "FeaturePredictor",
    "FeaturePredictorConfig",
    "LatentUNet3D",
    "LatentUNetConfig",
    "Normaliser",
    "VAE3DConfig",
    "VAELoss",
    "conditional_diffusion_loss",
    "decode_volumes",
    "feature_guide",
    "guided_eps",
    "kl_divergence",
    "labels_to_input",
    "r2_scores",
    "sample_latents",
    "vae_loss",
]
