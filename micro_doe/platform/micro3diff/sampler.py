"""Micro3Diff: 3D volumes from a 2D diffusion model by multi-plane denoising (Lee & Yun 2024).

A 2D epsilon-model trained on n x n images (any callable
``model(x: Tensor[B, C, n, n], t: LongTensor[B]) -> Tensor[B, C, n, n]``) denoises a
cube of n x n x n voxels slice by slice; the plane it slices along changes at every
denoising pass, so that the slices of all three planes end up as images of the data.

A volume here is a float tensor of shape (C, n, n, n) with spatial dims (z, y, x). The three
planes and the slices the model sees (a batch of n images, one per value of the normal axis,
the two in-plane axes kept in (z, y, x) order):

    plane  normal  slice i          image axes
    yz     x       volume[:, :, :, i]   (z, y)
    xz     y       volume[:, :, i, :]   (z, x)
    xy     z       volume[:, i, :, :]   (y, x)

Order of operations of :func:`sample_multiplane` (``planes="rotate"``, the paper's method;
S transitions (t, t_prev) from ``sampler.pairs()``, ending with (0, -1) = the data):

    x = N(0, I) noise of shape (C, n, n, n)                 # Fig. 14a
    k = 0                                                   # plane counter
    for (t, t_prev) in sampler.pairs():
        for cycle in 0 .. n_h:
            if cycle > 0:                                   # harmonizing cycle (Fig. 16)
                x = renoise(x, t_prev -> t)                 # q(x_t | x_t_prev); eq. 21 when t_prev = t-1
            plane = ("yz", "xz", "xy")[k % 3];  k += 1      # the plane rotates every pass
            eps = model on the n slices of `plane`, in forward passes of <= batch_size slices
            x = sampler.step(eps, t, t_prev, x)             # x_t -> x_t_prev
            if moment_match is not None and t_prev >= 0:    # "moment" variant, not the paper's (below)
                x = match_second_moment(x, abar_{t_prev} * moment_match + 1 - abar_{t_prev})
            if anchor is not None and t_prev >= until * T:  # "anchored" variant, not the paper's (below)
                x = anchor_moments(x, anchor, abar_{t_prev}, plane)
                if anchor.spectrum is not None:             # "spectral" variant (spectrum.py)
                    x = anchor_spectrum(x, anchor.spectrum, abar_{t_prev})
    return x                                                # x_0, float (C, n, n, n)

So the plane counter advances once per denoising pass, harmonizing passes included: the main
pass of step j (j = 0..S-1) uses plane (n_h + 1) j mod 3 and its c-th harmonizing pass plane
((n_h + 1) j + c) mod 3; with n_h = 0 that is yz, xz, xy, yz, ... The harmonizing passes of
the last step renoise the data estimate to t = 0 and denoise it again. Network work:
(n_h + 1) * S * n slice evaluations in (n_h + 1) * S * ceil(n / batch_size) forward passes
(:func:`forward_passes`).

``planes="average"`` is an optional variant, not the paper's: every pass evaluates the model
on the slices of all three planes and uses the voxelwise mean of the three noise estimates
(three times the network work; no plane rotation, so no dependence on the plane order).

Known behaviour, pinned by tests against exact per-Fourier-mode predictions
(``tests/platform/micro3diff/test_sampler.py``; numbers in docs/explanation/micro3diff.md, "What limits multi-plane
sampling"): even with the exact 2D denoiser of correlated Gaussian data, the volume's slices
come out under-dispersed with the right mean, and harmonizing lowers the variance further.
Each plane's denoiser pulls every 3D Fourier mode towards that plane's 2D spectrum, so power
is lost at every pass; thresholded, the minority phase shrinks; and the noisy volume's mean
square, which for +-1 data is 1 at every t (up to O(1/sqrt(N)), see below), sags mid-way.

Variant: second-moment matching (``moment_match``, not the paper's; None = the paper's, bit for
bit). ``moment_match`` is the data's E[x_0^2] per channel: 1 for binary data in [-1, 1] and for
centred one-hot channels, each of which is +-1. Under the forward process
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps with eps independent of x_0, so
E[x_t^2] = abar_t E[x_0^2] + 1 - abar_t (:func:`forward_second_moment`). For +-1 data the volume
average of x_0^2 is exactly 1 for every volume, so the volume average of x_t^2 equals that target
up to the noise's own fluctuation, O(1/sqrt(N)) for N voxels (~0.02 at 16^3): a constraint every
true x_t satisfies, which the multi-plane chain violates. The variant restores it the cheapest
way that keeps each channel's volume mean (right with the exact Gaussian denoiser): after each pass
ending at t_prev >= 0, channel by channel, x <- m + (x - m) sqrt(max(target - m^2, eps) / v), m
and v the channel's mean and variance over the volume (:func:`match_second_moment`). Placement:
- after denoising passes: their output x_{t_prev} is meant to be a sample of q(x_{t_prev}), so
  the target applies; the rescaling acts on all of x_{t_prev} (data estimate and noise alike),
  because the constraint is on samples: the data estimate x0_hat itself is a posterior mean and
  rightly has a smaller mean square (E[x_0^2] - E[Var(x_0 | x_t)]);
- not after a harmonizing renoise: the forward kernel maps the target at t_prev to the target at
  t exactly in expectation (a (abar' M + 1 - abar') + 1 - a = abar M + 1 - abar, a = abar/abar'),
  so rescaling there would only remove the fresh noise's legitimate O(1/sqrt(N)) fluctuation;
- not after the last pass (t_prev = -1), whose output is x0_hat, a posterior mean at t = 0 rather
  than a sample; with the exact denoisers this changes the output's variance by < 0.1 % (it was
  rescaled at t = 0 and the last pass removes noise of variance 1 - abar_0 = 1e-4), but a trained
  model's soft final estimate is left as the model made it: no threshold decision is moved there;
- per channel, not joint: each centred one-hot channel is +-1 on its own, the stronger constraint;
  a joint rescaling would let power move between phases.
Limits: it fixes the total power, not the spectrum's shape (the power a plane denoiser removes is
handed to all modes in proportion, so the modes it keeps gain); and it keeps whatever mean it is
given, so it cannot undo a drift of the mean (of the phase fraction). It also forces every volume's
mean square to the target, which for data that are not +-1 (e.g. Gaussian fields) removes the
real volume-to-volume spread of the variance. It is not the paper's algorithm.

Variant: moment anchoring (``anchor``, the ``anchored`` variant; not the paper's). The ``moment``
variant keeps whatever volume mean the chain drifts to, and on binary data the mean drifts toward
the majority phase at every pass, so the minority phase is lost even with an exact denoiser.
The anchor fixes both moments the forward process prescribes: for a channel that is +1 on a
phase of fraction f and -1 elsewhere, E[x_0] = 2f - 1 and E[x_0^2] = 1, so under the forward
process every sample x_t has volume mean sqrt(abar_t)(2f - 1) and mean square 1 (up to the
noise's O(1/sqrt(N))). After each denoising pass ending at t_prev >= max(0, until * T), channel
by channel (:func:`anchor_moments`):

    m, M = mean(x_c), mean(x_c^2)                            # over the volume
    m' = m + λ (sqrt(abar_{t_prev}) (2 f_c - 1) - m)         # λ = 1: a hard reset
    M' = M + λ (1 - M)
    x_c = m' + (x_c - m) sqrt((M' - m'^2) / (M - m^2))       # now mean m', mean square M'
    if per_slice > 0:                                        # optional, off by default
        x_c[slice s of the pass's plane] += per_slice (m' - mean of that slice)

It is placed like the moment variant's rescaling: after denoising passes (main and harmonizing),
never after a renoise (the forward kernel already maps the targets at t_prev to those at t in
expectation) and never after the last pass (its output is x0_hat, a posterior mean). ``f_c`` is
the target fraction of channel c's phase: the training data's by default, a requested one to
generate at another vf (the generator checks it against the bundle's ``vf_range``), or one drawn
per volume from the spread of the data's window fractions (the generator's ``vf_spread``). With
the anchor, harmonizing helps as the paper says (docs/explanation/micro3diff.md, "Measured"), where without it every
harmonizing cycle removes more of the minority phase. The anchor steers vf (and S2(0) = vf), so
it is judged by what it does not touch: the lineal path and the size distributions.

Batches of volumes (:func:`sample_multiplane_batch`) advance together: the network sees the
slices of all of them in each forward pass, while every random draw of volume i comes from its
own generator, so each volume is the one its seed gives alone (up to floating-point order).
``precision`` runs only the network under autocast (bf16 on the CPU, fp16 or bf16 on CUDA); the
volume and the sampler's arithmetic stay float32.

Random numbers come from one CPU ``torch.Generator`` (from ``seed``) and are moved to the
device, so a seed draws the same numbers on every device and for every ``batch_size``: the
same seed gives the same volume, up to the model's own floating-point differences between
devices and batch sizes.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from micro_doe.platform.diffusion import NoiseSchedule, Sampler, make_generator
from micro_doe.platform.micro3diff.spectrum import SpectralShape, anchor_spectrum

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

PLANES = ("yz", "xz", "xy")  # the paper's order
NORMAL_DIM = {"yz": 3, "xz": 2, "xy": 1}  # the dim of a (C, z, y, x) volume fixed within a slice
PLANE_MODES = ("rotate", "average")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class DenoisingPass:
    """What :func:`sample_multiplane` hands its ``callback`` just before each denoising pass.

    ``index``: passes done so far; ``step``: index of the transition (0..S-1); ``cycle``: 0 for
    the main pass, 1..n_h for harmonizing passes (``x`` has just been renoised); ``plane``: one of
    ``PLANES``, or "all" for ``planes="average"``; ``x``: the (C, z, y, x) volume x_t about to be
    denoised (the sampler's own tensor: read it, do not modify it in place; with ``moment_match``,
    after the previous pass's rescaling).
    """

    index: int
    step: int
    cycle: int
    t: int
    t_prev: int
    plane: str
    x: torch.Tensor


def to_slices(volume: torch.Tensor, plane: str) -> torch.Tensor:
    """The n slices of a (C, z, y, x) volume in ``plane``, as a batch (n, C, H, W) (a view)."""
    return volume.movedim(NORMAL_DIM[plane], 0)


def from_slices(stack: torch.Tensor, plane: str) -> torch.Tensor:
    """Inverse of :func:`to_slices`: a batch (n, C, H, W) of ``plane`` slices back to (C, z, y, x)."""
    return stack.movedim(0, NORMAL_DIM[plane])


def forward_passes(size: int, steps: int, n_h: int = 0, batch_size: int = 64, planes: str = "rotate") -> int:
    """Model calls made by :func:`sample_multiplane`: (n_h + 1) * S * ceil(n / batch_size), x3 for "average"."""
    return (n_h + 1) * steps * math.ceil(size / batch_size) * (3 if planes == "average" else 1)


def model_eps(model: EpsModel, x: torch.Tensor, t: int, batch_size: int) -> torch.Tensor:
    """Noise estimates for a batch of images ``x`` (B, C, H, W) at step ``t``, ``batch_size`` at a time."""
    out = []
    for lo in range(0, x.shape[0], batch_size):
        chunk = x[lo : lo + batch_size].contiguous()
        t_batch = torch.full((chunk.shape[0],), int(t), dtype=torch.long, device=x.device)
        eps = model(chunk, t_batch)
        if eps.shape != chunk.shape:
            raise ValueError(f"model: returned shape {tuple(eps.shape)} for input of shape {tuple(chunk.shape)}")
        out.append(eps.to(x.dtype))
    return torch.cat(out)



def sample_2d(
    model: EpsModel,
    n: int,
    size: int,
    sampler: Sampler,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    channels: int = 1,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Plain 2D sampling: ``n`` images of shape (C, size, size) as a float CPU tensor (n, C, size, size).

    All n images advance together through ``sampler.pairs()``; the model sees them in forward
    passes of at most ``batch_size`` images: S * ceil(n / batch_size) calls.
    """
    _check_positive(n=n, size=size, channels=channels, batch_size=batch_size)
    g = make_generator(seed, generator)
    x = torch.randn((n, channels, size, size), generator=g, device=g.device).to(device)
    with torch.no_grad():
        for t, t_prev in sampler.pairs():
            x = sampler.step(model_eps(model, x, t, batch_size), t, t_prev, x, g)
    return x.cpu()


@dataclass(frozen=True)
class Anchor:
    """Moment anchoring: the ``anchored`` variant's settings (not the paper's; see the module doc).

    ``fractions``: the target phase fraction of each channel's phase, one per channel (for one
    channel, the fraction of phase 1; for K centred one-hot channels, of phase k, summing to 1).
    ``strength``: λ in (0, 1], how far each pass moves the moments toward their targets
    (1 = a hard reset). ``until``: anchor only passes that end at t_prev >= until · T (0 = every
    pass but the last). ``per_slice``: in [0, 1], after the volume anchor, how far each slice of
    the plane just denoised has its channel means pulled toward the volume's (0 = off).
    ``spectrum``: the ``spectral`` variant's target for this cube
    (:func:`~micro_doe.platform.micro3diff.spectrum.spectral_shape`), or None; after the
    moments, each pass's radial power spectrum moves toward it with the same λ
    (:func:`~micro_doe.platform.micro3diff.spectrum.anchor_spectrum`).
    """

    fractions: tuple[float, ...]
    strength: float = 1.0
    until: float = 0.0
    per_slice: float = 0.0
    spectrum: SpectralShape | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        f = self.fractions
        if not f or not all(0.0 < v < 1.0 for v in f) or (len(f) > 1 and abs(sum(f) - 1.0) > 1e-6):
            raise ValueError(f"anchor fractions: expected values in (0, 1) (summing to 1 for K channels), got {f}")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"anchor strength: expected 0 < λ <= 1, got {self.strength}")
        if not 0.0 <= self.until < 1.0:
            raise ValueError(f"anchor until: expected a fraction of T in [0, 1), got {self.until}")
        if not 0.0 <= self.per_slice <= 1.0:
            raise ValueError(f"anchor per_slice: expected a strength in [0, 1], got {self.per_slice}")
        if self.spectrum is not None and self.spectrum.shell_shape.shape[0] != len(f):
            raise ValueError(f"anchor spectrum: expected one shape per channel ({len(f)}), "
                             f"got {self.spectrum.shell_shape.shape[0]}")

    def data_means(self) -> torch.Tensor:
        """E[x_0] per channel: 2 f − 1 for a ±1 channel that is +1 on its phase (float64)."""
        return 2.0 * torch.tensor(self.fractions, dtype=torch.float64) - 1.0


def sample_multiplane(
    model: EpsModel,
    size: int,
    sampler: Sampler,
    *,
    n_h: int = 0,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    channels: int = 1,
    planes: str = "rotate",
    x_T: torch.Tensor | None = None,
    progress: bool = False,
    callback: Callable[[DenoisingPass], None] | None = None,
    moment_match: float | Sequence[float] | None = None,
    anchor: Anchor | None = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """One (C, size, size, size) volume x_0 by multi-plane denoising with n_h harmonizing cycles per step.

    The order of operations is in the module docstring. ``x_T`` replaces the initial noise
    (shape (C, n, n, n)); ``callback`` sees every :class:`DenoisingPass` (``x`` of shape
    (C, n, n, n)); ``progress`` prints the step count to stderr. Returns a float32 CPU tensor;
    :func:`~micro_doe.platform.diffusion.to_labels` makes phase labels.

    ``moment_match`` (the ``moment`` variant; default None = the paper's method, unchanged): the
    data's second moment E[x_0^2] per channel (1.0 for [-1, 1]-scaled binary or centred one-hot
    data; a float for every channel or one value per channel). After every denoising pass, each
    channel is rescaled about its volume mean to the forward process's mean square at the step
    the volume now represents (:func:`match_second_moment`, :func:`forward_second_moment`).
    ``anchor`` (the ``anchored`` variant): see :class:`Anchor` and the module doc; exclusive with
    ``moment_match``. ``precision``: "fp32", or "bf16" / "fp16" autocast around the network only.
    """
    g = make_generator(seed, generator)
    if x_T is not None and tuple(x_T.shape) != (channels, size, size, size):
        raise ValueError(f"x_T: expected shape {(channels, size, size, size)}, got {tuple(x_T.shape)}")
    inner = None if callback is None else (lambda p: callback(replace(p, x=p.x[0])))
    out = sample_multiplane_batch(
        model, size, sampler, [g], n_h=n_h, batch_size=batch_size, device=device, channels=channels,
        planes=planes, x_T=None if x_T is None else x_T[None], progress=progress, callback=inner,
        moment_match=moment_match, anchors=None if anchor is None else [anchor], precision=precision,
    )
    return out[0]


def sample_multiplane_batch(
    model: EpsModel,
    size: int,
    sampler: Sampler,
    generators: Sequence[torch.Generator],
    *,
    n_h: int = 0,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    channels: int = 1,
    planes: str = "rotate",
    x_T: torch.Tensor | None = None,
    progress: bool = False,
    callback: Callable[[DenoisingPass], None] | None = None,
    moment_match: float | Sequence[float] | None = None,
    anchors: Sequence[Anchor] | None = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """B = len(generators) volumes (B, C, n, n, n) sampled together, volume i from ``generators[i]``.

    Every random draw of volume i (its initial noise, its DDPM noise, its renoising) comes from
    its own generator in the same order as when it is sampled alone, so each volume is
    reproducible on its own; only the network sees the slices of all B volumes together, in
    forward passes of at most ``batch_size`` slices. ``anchors``: one :class:`Anchor` per volume
    (each may have its own target fractions), or None. ``callback`` sees ``x`` as (B, C, n, n, n).
    """
    _check_positive(size=size, channels=channels, batch_size=batch_size)
    if int(n_h) != n_h or n_h < 0:
        raise ValueError(f"n_h: expected an integer >= 0, got {n_h}")
    if planes not in PLANE_MODES:
        raise ValueError(f"planes: expected one of {PLANE_MODES}, got {planes!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if not generators:
        raise ValueError("generators: expected at least one (one per volume)")
    if moment_match is not None and anchors is not None:
        raise ValueError("moment_match, anchors: give one variant or the other, not both")
    if anchors is not None:
        if len(anchors) != len(generators):
            raise ValueError(f"anchors: expected one per volume ({len(generators)}), got {len(anchors)}")
        for a in anchors:
            if len(a.fractions) != channels:
                raise ValueError(f"anchor fractions: expected {channels} (one per channel), got {a.fractions}")
    m2 = None if moment_match is None else _channel_moments(moment_match, channels)
    shape = (channels, size, size, size)
    if x_T is None:
        xs = [torch.randn(shape, generator=g, device=g.device).to(device) for g in generators]
    elif tuple(x_T.shape) != (len(generators), *shape):
        raise ValueError(f"x_T: expected shape {(len(generators), *shape)}, got {tuple(x_T.shape)}")
    else:
        xs = [v.to(device=device, dtype=torch.float32).clone() for v in x_T]
    net = _with_precision(model, precision, torch.device(device))

    pairs = sampler.pairs()
    T = sampler.schedule.T
    k = 0
    with torch.no_grad():
        for step, (t, t_prev) in enumerate(pairs):
            for cycle in range(n_h + 1):
                if cycle > 0:
                    xs = [sampler.schedule.renoise(x, t_prev, t, g) for x, g in zip(xs, generators)]
                plane = PLANES[k % 3] if planes == "rotate" else "all"
                if callback is not None:
                    callback(DenoisingPass(k, step, cycle, t, t_prev, plane, torch.stack(xs)))
                used = PLANES if planes == "average" else (plane,)
                eps = [sum(e) / len(used) for e in zip(*(_plane_eps(net, xs, p, t, batch_size) for p in used))]
                xs = [sampler.step(e.contiguous(), t, t_prev, x, g) for e, x, g in zip(eps, xs, generators)]
                if t_prev >= 0:  # x now stands for x_{t_prev}, a sample (not x0_hat)
                    if m2 is not None:
                        xs = [match_second_moment(x, forward_second_moment(sampler.schedule, t_prev, m2)) for x in xs]
                    elif anchors is not None:
                        abar = sampler.schedule.alpha_bar(t_prev)
                        xs = [
                            apply_anchor(x, a, abar, None if planes == "average" else plane) if t_prev >= a.until * T else x
                            for x, a in zip(xs, anchors)
                        ]
                k += 1
            if progress:
                print(f"\rmicro3diff: step {step + 1}/{len(pairs)}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return torch.stack(xs).cpu()


def _plane_eps(model: EpsModel, xs: list[torch.Tensor], plane: str, t: int, batch_size: int) -> list[torch.Tensor]:
    """Noise estimates for the ``plane`` slices of every volume, the slices of all volumes in one batch."""
    n = xs[0].shape[NORMAL_DIM[plane]]
    eps = model_eps(model, torch.cat([to_slices(x, plane) for x in xs]), t, batch_size)
    return [from_slices(e, plane) for e in eps.split(n)]


def _with_precision(model: EpsModel, precision: str, device: torch.device) -> EpsModel:
    if precision == "fp32":
        return model
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision: fp16 needs a CUDA device; use fp32 on the CPU (or bf16 where it has bf16 kernels)")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16

    def run(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype):
            return model(x, t).float()

    return run


def apply_anchor(x: torch.Tensor, anchor: Anchor, abar: float, plane: str | None = None) -> torch.Tensor:
    """One anchoring of a sample x_{t_prev}: its moments, then (``spectral``) its radial power spectrum."""
    x = anchor_moments(x, anchor, abar, plane)
    if anchor.spectrum is None:
        return x
    return anchor_spectrum(x, anchor.spectrum, anchor.fractions, abar, anchor.strength)


def anchor_moments(x: torch.Tensor, anchor: Anchor, abar: float, plane: str | None = None) -> torch.Tensor:
    """One anchoring of a (C, n, n, n) sample x_{t_prev} (the ``anchored`` variant, see the module doc).

    Per channel c, with m and M the volume mean and mean square, and the forward process's
    values at t_prev for ±1 data m* = sqrt(abar)·(2 f_c − 1), M* = 1:
    m' = m + λ (m* − m), M' = M + λ (M* − M), then x_c <- m' + (x_c − m) sqrt((M' − m'^2) / var),
    so the channel's mean becomes m' and its mean square M'. Then, when ``anchor.per_slice`` > 0
    and a ``plane`` is given, each slice s of that plane is shifted by per_slice · (m' − mean(x_s)).
    """
    target_mean = math.sqrt(abar) * anchor.data_means().to(x.device)
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    mean = flat.mean(1)
    msq = (flat**2).mean(1)
    lam = anchor.strength
    new_mean = mean + lam * (target_mean - mean)
    new_msq = msq + lam * (1.0 - msq)
    var = (msq - mean**2).clamp(min=1e-12)
    scale = ((new_msq - new_mean**2).clamp(min=1e-12) / var).sqrt()
    shape = (-1,) + (1,) * (x.ndim - 1)
    out = new_mean.reshape(shape) + (x.to(torch.float64) - mean.reshape(shape)) * scale.reshape(shape)
    if anchor.per_slice > 0 and plane is not None:
        dim = NORMAL_DIM[plane]
        other = tuple(d for d in range(1, x.ndim) if d != dim)
        slice_means = out.mean(dim=other, keepdim=True)
        out = out + anchor.per_slice * (new_mean.reshape(shape) - slice_means)
    return out.to(x.dtype)


def forward_second_moment(schedule: NoiseSchedule, t: int, data_moment: torch.Tensor | float) -> torch.Tensor:
    """E[x_t^2] = abar_t E[x_0^2] + 1 - abar_t under the forward process (t = -1: E[x_0^2] itself).

    ``data_moment``: E[x_0^2], a float or a tensor of one value per channel; returns float64.
    Exact for any data: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps with eps independent of x_0.
    """
    abar = schedule.alpha_bar(t)
    return abar * torch.as_tensor(data_moment, dtype=torch.float64) + (1.0 - abar)


def match_second_moment(x: torch.Tensor, target: torch.Tensor | float, floor: float = 1e-12) -> torch.Tensor:
    """Mean-preserving variance renormalisation of a (C, ...) tensor, channel by channel.

    With m_c and v_c the mean and (population) variance of channel c over all its other dims,
    x_c <- m_c + (x_c - m_c) sqrt(max(target_c - m_c^2, floor) / v_c), so that afterwards
    mean(x_c) = m_c and mean(x_c^2) = max(target_c, m_c^2 + floor). A channel with v_c = 0
    (constant) is returned unchanged. Statistics in float64; the result keeps x's dtype.
    """
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    mean = flat.mean(1)
    var = flat.var(1, unbiased=False)
    target = torch.as_tensor(target, dtype=torch.float64, device=x.device).expand_as(mean)
    ok = var > 0
    scale = torch.where(ok, (target - mean**2).clamp(min=floor) / torch.where(ok, var, 1.0), 1.0).sqrt()
    shape = (-1,) + (1,) * (x.ndim - 1)
    out = mean.reshape(shape) + (x.to(torch.float64) - mean.reshape(shape)) * scale.reshape(shape)
    return out.to(x.dtype)


def _channel_moments(moment_match: float | Sequence[float], channels: int) -> torch.Tensor:
    m2 = torch.as_tensor(moment_match, dtype=torch.float64).reshape(-1)
    if m2.numel() == 1:
        m2 = m2.expand(channels).clone()
    if m2.numel() != channels or not bool(torch.isfinite(m2).all()) or not bool((m2 > 0).all()):
        raise ValueError(
            f"moment_match: expected E[x_0^2] > 0, one value or {channels} (one per channel), got {moment_match!r}"
        )
    return m2



def _check_positive(**values: Any) -> None:
    for name, value in values.items():
        if int(value) != value or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value}")
