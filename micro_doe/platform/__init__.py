"""The science core: volumes, descriptors, synthetic data, diffusion models. No Ray/Optuna here."""
