"""The ``spectral`` variant's target: the training images' radial autocovariance, its spectrum
on a cube, and the anchoring that moves a sample's radial power spectrum to it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from micro_doe.platform.micro3diff.spectrum import anchor_spectrum, radial_autocovariance, spectral_shape


def brute_force_autocovariance(images: np.ndarray) -> np.ndarray:
    """rho(r) of (B, 1, n, n) images by explicit lag loops (the module doc's definition)."""
    n = images.shape[-1]
    x = images[:, 0]
    mean = x.mean()
    sums = np.zeros(n // 2 + 1)
    counts = np.zeros(n // 2 + 1)
    for ly in range(-(n // 2), n // 2 + 1):
        for lx in range(-(n // 2), n // 2 + 1):
            r = int(np.rint(np.hypot(ly, lx)))
            if r > n // 2:
                continue
            a = x[:, max(0, -ly) : n - max(0, ly), max(0, -lx) : n - max(0, lx)]
            b = x[:, max(0, ly) : n - max(0, -ly), max(0, lx) : n - max(0, -lx)]
            sums[r] += (a * b).mean()
            counts[r] += 1
    curve = sums / counts
    return (curve - mean**2) / (curve[0] - mean**2)


def blobby_images(n: int = 16, count: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = rng.normal(size=(count, n, n))
    kernel = np.fft.rfft2(np.exp(-0.5 * (np.minimum(np.arange(n), n - np.arange(n)) ** 2)[:, None] / 2.0
                                 - 0.5 * (np.minimum(np.arange(n), n - np.arange(n)) ** 2)[None, :] / 2.0))
    smooth = np.fft.irfft2(np.fft.rfft2(field) * kernel, s=(n, n))
    return np.where(smooth > np.quantile(smooth, 0.7), 1.0, -1.0)[:, None]


def test_autocovariance_is_the_definition_computed_by_fft():
    images = blobby_images()
    got = np.asarray(radial_autocovariance(images)[0])
    np.testing.assert_allclose(got, brute_force_autocovariance(images), atol=1e-10)
    assert got[0] == pytest.approx(1.0) and got[1] > 0.3  # correlated neighbours


def test_autocovariance_is_the_same_for_either_phase():
    images = blobby_images()
    np.testing.assert_allclose(radial_autocovariance(images), radial_autocovariance(-images), atol=1e-12)


def test_autocovariance_refuses_a_constant_channel_and_bad_shapes():
    with pytest.raises(ValueError, match="channel 0 is constant"):
        radial_autocovariance(np.ones((2, 1, 8, 8)))
    with pytest.raises(ValueError, match="square images"):
        radial_autocovariance(np.ones((2, 1, 8, 6)))


def test_anchoring_sets_the_shell_powers_and_keeps_the_mean():
    rho = radial_autocovariance(blobby_images())
    target = spectral_shape(rho, 16)
    x = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(1)) + 0.2
    abar, f = 0.6, 0.3
    y = anchor_spectrum(x, target, (f,), abar)
    assert float(y.mean()) == pytest.approx(float(x.mean()), abs=1e-6)  # k = 0 untouched
    modes = torch.fft.rfftn(y[0].double())
    shell = target.shell.reshape(-1)
    power = torch.bincount(shell, (modes.abs() ** 2).reshape(-1)) / target.counts / y[0].numel()
    wanted = abar * (1 - (2 * f - 1) ** 2) * target.shell_shape[0] + (1 - abar)
    np.testing.assert_allclose(power[1:].numpy(), wanted[1:].numpy(), rtol=1e-4)
    # The variance is the forward process's: abar · sigma² + (1 − abar), up to the rfft half-plane weights.
    assert float(y.var()) == pytest.approx(abar * (1 - (2 * f - 1) ** 2) + 1 - abar, rel=0.05)


def test_an_anchored_field_has_the_images_autocovariance():
    rho = np.asarray(radial_autocovariance(blobby_images())[0])
    target = spectral_shape([rho.tolist()], 32)
    y = anchor_spectrum(torch.randn(1, 32, 32, 32, generator=torch.Generator().manual_seed(2)), target, (0.5,), 1.0)
    v = y[0].double() - y[0].double().mean()
    corr = torch.fft.irfftn(torch.fft.rfftn(v).abs() ** 2, s=v.shape) / v.numel()
    along = [(float(corr[r, 0, 0]) + float(corr[0, r, 0]) + float(corr[0, 0, r])) / 3 / float(corr[0, 0, 0])
             for r in range(4)]
    np.testing.assert_allclose(along, rho[:4], atol=0.08)


def test_half_strength_moves_half_way_in_log_power():
    target = spectral_shape(radial_autocovariance(blobby_images()), 16)
    x = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(3))
    full = anchor_spectrum(x, target, (0.3,), 0.5, strength=1.0)
    half = anchor_spectrum(x, target, (0.3,), 0.5, strength=0.5)
    power = [torch.fft.rfftn(v[0].double()).abs() ** 2 for v in (x, half, full)]
    np.testing.assert_allclose(power[1], torch.sqrt(power[0] * power[2]), rtol=1e-4)


def test_the_shape_refuses_curves_that_are_not_normalised():
    with pytest.raises(ValueError, match="rho\\(0\\) = 1"):
        spectral_shape([[0.5, 0.2, 0.0]], 8)
    with pytest.raises(ValueError, match="expected \\(1, 8, 8, 8\\)"):
        anchor_spectrum(torch.zeros(1, 4, 4, 4), spectral_shape([[1.0, 0.3, 0.0]], 8), (0.5,), 0.5)
