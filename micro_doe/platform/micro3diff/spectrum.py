"""Spectral anchoring: the ``spectral`` variant's target power spectrum (not the paper's algorithm).

Multi-plane denoising removes power from the 3D Fourier modes that no plane's 2D denoiser
supports (module doc of :mod:`~micro_doe.platform.micro3diff.sampler`), and the ``anchored``
variant hands that power back to all modes in proportion, so the modes the planes keep gain:
the features come out finer than the data's. The ``spectral`` variant hands it back shell by
shell, to the radial power spectrum that the training images prescribe.

Definitions, per channel c of the ±1 images the model trains on (one channel for two phases,
centred one-hot channels for K phases), with m_c their mean:

    R_c(r)   = mean of x(p) x(p + l) over image pixels p and in-image lags l with round(|l|) = r
    rho_c(r) = (R_c(r) - m_c^2) / (R_c(0) - m_c^2),   r = 0, 1, ..., n // 2   (rho_c(0) = 1)

``rho_c`` is the normalised autocovariance of the slices; for an isotropic, stationary medium it
is also the 3D one's at the same distance, since a plane section samples the same two-point
function (for two phases, rho = (S2(r) - f^2) / (f - f^2), whatever the phase). Lags are
counted within each image (no wrap-around), so micrographs need not be periodic.

For a cube of N^3 voxels (:func:`spectral_shape`): rho_c at every 3D lag's minimum-image
distance (linear interpolation; 0 beyond n // 2: uncorrelated at range), its DFT over the cube,
the k = 0 term dropped, negatives clipped to 0 (a finite, interpolated curve is not exactly
positive definite), normalised to sum to N^3 over k != 0, so that a field whose |X(k)|^2 / N^3
equals sigma^2 times the shape has variance sigma^2. Shells are the modes with the same rounded
|k| (integer frequencies, half spectrum of ``rfftn``).

One anchoring (:func:`anchor_spectrum`) of a sample x_{t_prev} whose channel c should have phase
fraction f_c: under the forward process x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps, the expected
power of mode k != 0 is abar sigma_c^2 shape_c(k) + (1 - abar), sigma_c^2 = 1 - (2 f_c - 1)^2
the variance of a ±1 channel of fraction f_c. Each shell b of x's spectrum is scaled by
(q_b / p_b)^(lambda / 2), q_b and p_b the target's and x's mean power over the shell; k = 0 (the
mean, which the moment anchor sets) is left alone. The phases of every mode stay as the network
made them, so the shapes are still the model's; what is steered is S2 (and vf), so the variant is
judged by the lineal path, size distributions and connectivity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["SpectralShape", "anchor_spectrum", "radial_autocovariance", "spectral_shape"]


def radial_autocovariance(images: np.ndarray) -> list[list[float]]:
    """rho_c(r) for r = 0..n // 2 of ±1 images (B, C, n, n) (definitions in the module doc).

    Lag sums by FFT with zero padding to 2n (no wrap-around), divided by the number of pixel
    pairs at each lag; lags with |l_y|, |l_x| <= n // 2.
    """
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images: expected a (B, C, n, n) array of square images, got shape {images.shape}")
    n = images.shape[-1]
    x = torch.as_tensor(images, dtype=torch.float64)
    spectrum = torch.fft.rfft2(x, s=(2 * n, 2 * n))
    sums = torch.fft.irfft2(spectrum.abs() ** 2, s=(2 * n, 2 * n)).sum(0)  # (C, 2n, 2n): lag sums
    ones = torch.fft.rfft2(torch.ones(n, n, dtype=torch.float64), s=(2 * n, 2 * n))
    pairs = torch.fft.irfft2(ones.abs() ** 2, s=(2 * n, 2 * n)).round() * x.shape[0]
    lag = torch.fft.fftfreq(2 * n, 1.0 / (2 * n), dtype=torch.float64)
    ly, lx = torch.meshgrid(lag, lag, indexing="ij")
    keep = (ly.abs() <= n // 2) & (lx.abs() <= n // 2)
    radius = torch.sqrt(ly**2 + lx**2).round().long()
    keep &= radius <= n // 2
    mean = x.mean(dim=(0, 2, 3))
    out = []
    for c in range(x.shape[1]):
        corr = (sums[c] / pairs.clamp(min=1))[keep]
        r = radius[keep]
        curve = torch.bincount(r, corr, minlength=n // 2 + 1) / torch.bincount(r, minlength=n // 2 + 1)
        variance = curve[0] - mean[c] ** 2
        if variance <= 1e-12:
            raise ValueError(f"images: channel {c} is constant (one phase only); it has no autocovariance")
        out.append([float(v) for v in (curve - mean[c] ** 2) / variance])
    return out


@dataclass(frozen=True)
class SpectralShape:
    """Target spectrum shapes of a cube of side ``size`` (see :func:`spectral_shape`).

    ``shell``: each rfftn mode's shell index (N, N, N // 2 + 1); ``counts``: modes per shell;
    ``shell_shape``: (C, shells) the mean of each channel's normalised shape over the shell.
    """

    size: int
    shell: torch.Tensor
    counts: torch.Tensor
    shell_shape: torch.Tensor


def spectral_shape(autocovariance: list[list[float]], size: int, device: str | torch.device = "cpu") -> SpectralShape:
    """The normalised spectrum shapes of rho_c on a periodic cube of ``size``^3 (module doc),
    held on ``device`` (the sampler's, so that anchoring copies nothing per pass)."""
    rho = np.asarray(autocovariance, dtype=np.float64)
    if rho.ndim != 2 or rho.shape[1] < 2 or not np.allclose(rho[:, 0], 1.0):
        raise ValueError("autocovariance: expected one curve per channel, rho(0) = 1, at r = 0, 1, ...")
    freq = np.fft.fftfreq(size, 1.0 / size)  # integer lags and frequencies, minimum image
    z, y = freq[:, None, None], freq[None, :, None]
    distance = np.sqrt(z**2 + y**2 + freq[None, None, :] ** 2)
    radii = np.arange(rho.shape[1], dtype=np.float64)
    half_x = np.arange(size // 2 + 1, dtype=np.float64)[None, None, :]  # the rfftn half of the x frequencies
    shell = torch.as_tensor(np.rint(np.sqrt(z**2 + y**2 + half_x**2)).astype(np.int64))
    counts = torch.bincount(shell.reshape(-1)).to(torch.float64)
    means = []
    for curve in rho:
        field = np.interp(distance, radii, curve, right=0.0)
        shape = np.clip(np.fft.rfftn(field).real, 0.0, None)
        shape[0, 0, 0] = 0.0
        full_sum = 2 * shape.sum() - shape[..., 0].sum() - (shape[..., -1].sum() if size % 2 == 0 else 0.0)
        if full_sum <= 0:
            raise ValueError("autocovariance: its spectrum is zero on this cube; expected a correlation curve")
        shape *= size**3 / full_sum
        flat = torch.as_tensor(shape).reshape(-1)
        means.append(torch.bincount(shell.reshape(-1), flat, minlength=len(counts)) / counts)
    return SpectralShape(size, shell.to(device), counts.to(device), torch.stack(means).to(device))


def anchor_spectrum(x: torch.Tensor, target: SpectralShape, fractions: tuple[float, ...], abar: float,
                    strength: float = 1.0) -> torch.Tensor:  # fmt: skip
    """One spectral anchoring of a (C, N, N, N) sample x_{t_prev} (order of operations in the module doc)."""
    if x.shape[-1] != target.size or x.shape[0] != target.shell_shape.shape[0]:
        raise ValueError(f"x: expected ({target.shell_shape.shape[0]}, {target.size}, {target.size}, {target.size}), "
                         f"got {tuple(x.shape)}")  # fmt: skip
    shell = target.shell.to(x.device).reshape(-1)
    counts = target.counts.to(x.device)
    out = []
    for c, f in enumerate(fractions):
        modes = torch.fft.rfftn(x[c].to(torch.float64))
        power = torch.bincount(shell, (modes.abs() ** 2).reshape(-1), minlength=len(counts)) / counts / x[c].numel()
        variance = 1.0 - (2.0 * f - 1.0) ** 2
        wanted = abar * variance * target.shell_shape[c].to(x.device) + (1.0 - abar)
        scale = (wanted / power.clamp(min=1e-12)) ** (strength / 2.0)
        scale[0] = 1.0
        modes = modes * scale[shell].reshape(modes.shape)
        out.append(torch.fft.irfftn(modes, s=x[c].shape))
    return torch.stack(out).to(x.dtype)

