"""Cahn–Hilliard phase separation of 2- and 3-component polymer blends (OPV active layers).

The synthetic data of the conditional latent diffusion paper: donor/acceptor blends that
phase-separate on annealing, each snapshot labelled with its processing parameters
(blend ratio φ, interaction parameter χ, annealing time). Solved in torch on a periodic
box, on CPU or CUDA.

**Units.** Lengths in voxels (grid spacing 1), free-energy densities in kT per lattice
site (one site per voxel), time ``t = step · dt`` nondimensional: ``M · t`` is in voxel²
per kT.

**Free energy** (Flory–Huggins with a square-gradient term). Two phases, donor volume
fraction ``c`` (acceptor ``1 − c``)::

    F = Σ_voxels [ f(c) + κ/2 |∇c|² ],
    f(c) = c ln c / N_D + (1 − c) ln(1 − c) / N_A + χ c (1 − c)

The homogeneous blend at ``c = φ`` is unstable (spinodal decomposition) when
``f''(φ) < 0``, i.e. ``χ > χ_s(φ) = ½ [1 / (N_D φ) + 1 / (N_A (1 − φ))]``. The critical
value (lowest point of the spinodal) is ``χ_c = ½ (N_D^−½ + N_A^−½)²``: **χ_c = 2** for the
default ``N_D = N_A = 1`` (at ``φ = ½``). Below the spinodal the blend stays mixed (noise
decays); above it, it separates and the domains then coarsen.

Three phases: donor ``a``, acceptor ``b`` and a third component ``m = 1 − a − b`` that
stands for the intermixed donor:acceptor material. It is partially miscible with both
pure phases (in the defaults ``χ_DM``, ``χ_AM`` lie between χ_c and the donor–acceptor
``χ``), so it gathers at the donor/acceptor interfaces as an interphase::

    f(a, b) = a ln a / N_D + b ln b / N_A + m ln m / N_M + χ a b + χ_DM a m + χ_AM b m
    F = Σ_voxels [ f + κ/2 (|∇a|² + |∇b|²) ]

Here ``φ`` is the donor share of the donor + acceptor material and ``φ_M`` the fraction of
the third component: initially ``a = φ (1 − φ_M)``, ``b = (1 − φ) (1 − φ_M)``, ``m = φ_M``.
:meth:`CahnHilliardParams.three_phase` gives defaults (φ = ½, φ_M = 0.3, χ = 4.5,
χ_DM = χ_AM = 2.5) that form all three phases within 300 steps (about 37 / 37 / 26 % of
a 64³ box); χ = 3.5 does too, but at the two-phase default χ = 3 the blend diluted by 30 %
of the third component has not separated after 300 steps and shows two labels only.

**Dynamics.** Each independent field ``u`` (``c``; or ``a`` and ``b``) follows
``∂u/∂t = M ∇² (g(u) − κ ∇² u)`` with the exchange chemical potential ``g = ∂f/∂u``
(against the acceptor for two phases, against ``m`` for three); logarithms see the
compositions clipped to ``[1e-6, 1 − 1e-6]``.

**Scheme** (semi-implicit spectral, linearly stabilised). Adding and subtracting
``A u`` inside the Laplacian and taking ``(g(u) − A u)`` at the old step and the linear
rest at the new one gives, in Fourier space (``∇² → −k²``, exact spectral derivatives)::

    (1 + dt M k² (A + κ k²)) û_{n+1} = û_n − dt M k² FFT[g(u_n) − A u_n]

Linearised about a composition where ``f`` has curvature ``λ``, mode ``k`` is multiplied by
``G = (1 + dt M k² (A − λ)) / (1 + dt M k² (A + κ k²))``: ``G ≤ 1`` unless the mode is
physically unstable, and ``G ≥ −1`` for any ``dt`` when ``A ≥ λ / 2``. So each step takes
``A = ½ max(0, largest curvature over the box)`` (curvature evaluated with compositions
floored at 1e-3), unless ``stabilization`` fixes ``A``. A large ``A · dt · M · k²`` slows the
dynamics of mode ``k`` (times become qualitative), but the morphologies stay on an
energy-decreasing Cahn–Hilliard path. The state is kept in Fourier space; the ``k = 0``
mode (the mean composition) is multiplied by exactly 1 at every step, so mass is
conserved to round-off.

**Labels** (``label = argmax`` over the compositions, ties to the lower label):
two phases — 1 "donor" where ``c > ½``, else 0 "acceptor"; three phases — 0 "acceptor"
where ``b`` is the largest of ``(b, a, m)``, 1 "donor" where ``a`` is, 2 "mixed" where the
third component ``m`` is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr

from micro_doe.platform.volumes import make_volume

LOG_CLIP = 1e-6  # compositions seen by the logarithms: [LOG_CLIP, 1 − LOG_CLIP]
CURVATURE_FLOOR = 1e-3  # compositions floored here when bounding the curvature for A
SPATIAL_DIMS: dict[int, tuple[str, ...]] = {2: ("y", "x"), 3: ("z", "y", "x")}
PHASE_NAMES = {2: ["acceptor", "donor"], 3: ["acceptor", "donor", "mixed"]}


@dataclass(frozen=True)
class CahnHilliardParams:
    """Material and numerical parameters (units in the module docstring).

    ``phi``: initial donor share of the donor + acceptor material, in (0, 1);
    ``chi``: donor–acceptor Flory–Huggins parameter (separation needs ``chi`` above the
    spinodal value, :func:`spinodal_chi`; χ_c = 2 for unit chain lengths);
    ``mobility`` M > 0; ``kappa`` κ > 0 gradient-energy coefficient (kT · voxel²); interfaces
    are a few ``√(κ / (χ − χ_c))`` voxels wide;
    ``dt`` > 0 time step; ``noise``: amplitude of the uniform initial fluctuation added to
    each independent field, in [0, half the smallest initial fraction];
    ``n_phases``: 2 or 3;
    ``phi_mixed``, ``chi_donor_mixed``, ``chi_acceptor_mixed``: initial fraction of the third
    component and its χ with donor and acceptor (used when ``n_phases == 3`` only);
    ``n_donor``, ``n_acceptor``, ``n_mixed``: chain lengths N (Flory–Huggins degree of
    polymerisation) of each component; ``stabilization``: a fixed A ≥ 0, or None for the
    adaptive choice.
    """

    phi: float = 0.5
    chi: float = 3.0
    mobility: float = 1.0
    kappa: float = 1.0
    dt: float = 1.0
    noise: float = 0.02
    n_phases: int = 2
    phi_mixed: float = 0.3
    chi_donor_mixed: float = 2.5
    chi_acceptor_mixed: float = 2.5
    n_donor: float = 1.0
    n_acceptor: float = 1.0
    n_mixed: float = 1.0
    stabilization: float | None = None

    def __post_init__(self) -> None:
        if self.n_phases not in (2, 3):
            raise ValueError(f"n_phases must be 2 or 3, got {self.n_phases}")
        if not 0.0 < self.phi < 1.0:
            raise ValueError(f"phi must be in (0, 1), got {self.phi}")
        if self.n_phases == 3 and not 0.0 < self.phi_mixed < 1.0:
            raise ValueError(f"phi_mixed must be in (0, 1) for n_phases=3, got {self.phi_mixed}")
        for name in ("chi", "chi_donor_mixed", "chi_acceptor_mixed"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        for name in ("mobility", "kappa", "dt", "n_donor", "n_acceptor", "n_mixed"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        largest_noise = 0.5 * min(self.initial_fractions)
        if not 0.0 <= self.noise <= largest_noise:
            raise ValueError(
                f"noise must be in [0, {largest_noise:.4g}] (half the smallest initial fraction), got {self.noise}"
            )
        if self.stabilization is not None and not (math.isfinite(self.stabilization) and self.stabilization >= 0):
            raise ValueError(f"stabilization must be None or a number >= 0, got {self.stabilization}")

    @classmethod
    def three_phase(cls, **overrides: Any) -> CahnHilliardParams:
        """Three-phase defaults that separate into donor, acceptor and a mixed interphase."""
        values: dict[str, Any] = {
            "n_phases": 3,
            "phi": 0.5,
            "phi_mixed": 0.3,
            "chi": 4.5,
            "chi_donor_mixed": 2.5,
            "chi_acceptor_mixed": 2.5,
        }
        values.update(overrides)
        return cls(**values)

    @property
    def initial_fractions(self) -> tuple[float, ...]:
        """Mean initial compositions in label order: (acceptor, donor) or (acceptor, donor, mixed)."""
        if self.n_phases == 2:
            return (1.0 - self.phi, self.phi)
        rest = 1.0 - self.phi_mixed
        return ((1.0 - self.phi) * rest, self.phi * rest, self.phi_mixed)


@dataclass(frozen=True)
class CahnHilliardRun:
    """Continuous compositions of one trajectory.

    ``compositions``: ``(n_snapshots, n_phases, *shape)`` array, component axis in label
    order (acceptor, donor[, mixed]); ``steps`` and ``times`` (``= steps · dt``) per snapshot.
    """

    steps: np.ndarray
    times: np.ndarray
    compositions: np.ndarray
    params: CahnHilliardParams

    @property
    def labels(self) -> np.ndarray:
        """int8 phase labels ``(n_snapshots, *shape)`` by the module's argmax rule."""
        return composition_labels(self.compositions, axis=1)


def critical_chi(n_donor: float = 1.0, n_acceptor: float = 1.0) -> float:
    """χ_c = ½ (N_D^−½ + N_A^−½)²: the smallest χ at which a binary blend can separate."""
    return 0.5 * (n_donor**-0.5 + n_acceptor**-0.5) ** 2


def spinodal_chi(phi: float, n_donor: float = 1.0, n_acceptor: float = 1.0) -> float:
    """χ_s(φ) = ½ [1/(N_D φ) + 1/(N_A (1 − φ))]: a binary blend at φ decomposes for χ > χ_s."""
    if not 0.0 < phi < 1.0:
        raise ValueError(f"phi must be in (0, 1), got {phi}")
    return 0.5 * (1.0 / (n_donor * phi) + 1.0 / (n_acceptor * (1.0 - phi)))


def homogeneous_curvature(params: CahnHilliardParams) -> float:
    """Smallest eigenvalue of the Hessian of ``f`` at the initial mean composition.

    Negative: the homogeneous blend is inside the spinodal and separates spontaneously
    (for two phases this is ``f''(φ) = 2 (χ_s(φ) − χ)``).
    """
    if params.n_phases == 2:
        return float(_binary_curvature(torch.tensor(params.phi, dtype=torch.float64), params))
    acceptor, donor, _ = params.initial_fractions
    h_aa, h_bb, h_ab = _ternary_hessian(
        torch.tensor(donor, dtype=torch.float64), torch.tensor(acceptor, dtype=torch.float64), params
    )
    hessian = torch.stack([torch.stack([h_aa, h_ab]), torch.stack([h_ab, h_bb])])
    return float(torch.linalg.eigvalsh(hessian)[0])


def cahn_hilliard_fields(
    shape: tuple[int, ...] = (64, 64, 64),
    params: CahnHilliardParams = CahnHilliardParams(),
    n_steps: int = 300,
    snapshot_every: int = 30,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    *,
    dtype: str | torch.dtype = "float32",
) -> CahnHilliardRun:
    """Integrate a periodic 2D or 3D box and keep the compositions every ``snapshot_every`` steps.

    Snapshots are taken after steps ``snapshot_every, 2·snapshot_every, … ≤ n_steps`` (the
    initial noise is not kept). The initial noise is drawn on the CPU in float64 from
    ``seed``, so it is the same on every device and in both precisions.
    """
    shape = _check_run(shape, n_steps, snapshot_every)
    torch_dtype = _torch_dtype(dtype)
    dev = torch.device(device)
    p = params
    dims = tuple(range(1, len(shape) + 1))  # spatial dims of a (fields, *shape) tensor

    k2 = _wavenumbers_squared(shape, torch_dtype, dev)
    linear = p.dt * p.mobility * k2  # dt M k²
    u = _initial_fields(shape, p, seed).to(device=dev, dtype=torch_dtype)
    u_hat = torch.fft.rfftn(u, dim=dims)
    potential = _binary_potential if p.n_phases == 2 else _ternary_potential

    steps, snapshots = [], []
    with _progress_bar(progress, n_steps, f"Cahn–Hilliard {'×'.join(map(str, shape))}") as advance:
        for step in range(1, n_steps + 1):
            u = torch.fft.irfftn(u_hat, s=shape, dim=dims)
            g, curvature = potential(u, p)
            stab = p.stabilization if p.stabilization is not None else 0.5 * max(0.0, float(curvature))
            u_hat = (u_hat - linear * torch.fft.rfftn(g - stab * u, dim=dims)) / (1.0 + linear * (stab + p.kappa * k2))
            if step % snapshot_every == 0:
                u = torch.fft.irfftn(u_hat, s=shape, dim=dims)
                steps.append(step)
                snapshots.append(_label_order(u, p).cpu().numpy())
            advance()
    step_array = np.asarray(steps, dtype=np.int64)
    return CahnHilliardRun(
        steps=step_array, times=step_array * p.dt, compositions=np.stack(snapshots), params=p
    )


def cahn_hilliard(
    shape: tuple[int, ...] = (64, 64, 64),
    params: CahnHilliardParams = CahnHilliardParams(),
    n_steps: int = 300,
    snapshot_every: int = 30,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    *,
    dtype: str | torch.dtype = "float32",
) -> xr.DataArray:
    """Labelled snapshots of a Cahn–Hilliard trajectory: dims ``(sample, z, y, x)``.

    A 2D ``shape`` gives ``(sample, y, x)``. Labels by the argmax rule of the module
    docstring (0 acceptor, 1 donor, 2 mixed). Coordinates along ``sample``: ``time``
    (``step · dt``), ``step``, ``phi``, ``chi`` (and ``phi_mixed`` for three phases), so each
    snapshot carries its processing parameters; all parameters are in ``generator_params``.
    """
    run = cahn_hilliard_fields(
        shape, params, n_steps, snapshot_every, seed, device, progress, dtype=dtype
    )
    record: dict[str, Any] = asdict(params)
    record.update(shape=list(shape), n_steps=n_steps, snapshot_every=snapshot_every, dtype=str(_torch_dtype(dtype)))
    volume = make_volume(
        run.labels,
        dims=("sample", *SPATIAL_DIMS[len(shape)]),
        phase_names=PHASE_NAMES[params.n_phases],
        source="cahn_hilliard",
        seed=seed,
        params=record,
    )
    n = run.steps.size
    coords: dict[str, tuple[str, np.ndarray]] = {
        "time": ("sample", run.times),
        "step": ("sample", run.steps),
        "phi": ("sample", np.full(n, params.phi)),
        "chi": ("sample", np.full(n, params.chi)),
    }
    if params.n_phases == 3:
        coords["phi_mixed"] = ("sample", np.full(n, params.phi_mixed))
    return volume.assign_coords(coords)


def composition_labels(compositions: np.ndarray, axis: int = 0) -> np.ndarray:
    """int8 labels: index of the largest composition along ``axis`` (ties to the lower label)."""
    return np.argmax(compositions, axis=axis).astype(np.int8)


def free_energy(compositions: np.ndarray, params: CahnHilliardParams) -> float:
    """Free energy per voxel (kT) of one snapshot ``(n_phases, *shape)``, in label order.

    ``f`` plus ``κ/2 |∇u|²`` of the independent fields (donor; donor and acceptor), with
    spectral gradients on the periodic box — the functional the solver decreases.
    """
    comp = np.asarray(compositions, dtype=np.float64)
    if comp.shape[0] != params.n_phases:
        raise ValueError(f"compositions must have {params.n_phases} components first, got shape {comp.shape}")
    c = np.clip(comp, LOG_CLIP, 1.0 - LOG_CLIP)
    lengths = (params.n_acceptor, params.n_donor, params.n_mixed)
    bulk = sum(c[i] * np.log(c[i]) / lengths[i] for i in range(params.n_phases))
    acceptor, donor = comp[0], comp[1]
    if params.n_phases == 2:
        bulk = bulk + params.chi * donor * acceptor
        independent = [donor]
    else:
        mixed = comp[2]
        bulk = bulk + params.chi * donor * acceptor + params.chi_donor_mixed * donor * mixed
        bulk = bulk + params.chi_acceptor_mixed * acceptor * mixed
        independent = [donor, acceptor]
    k2 = _wavenumbers_squared(comp.shape[1:], torch.float64, torch.device("cpu"), full=True).numpy()
    gradient = sum(float((k2 * np.abs(np.fft.fftn(u)) ** 2).sum()) / u.size**2 for u in independent)
    return float(bulk.mean()) + 0.5 * params.kappa * gradient


def characteristic_length(field: np.ndarray) -> float:
    """Domain size 2π / k̄ in voxels, with k̄ the mean wavenumber of the structure factor.

    ``S(k) = |FFT(field − mean)|²`` over the periodic box, ``k̄ = Σ |k| S / Σ S`` (k ≠ 0).
    """
    u = np.asarray(field, dtype=np.float64)
    s = np.abs(np.fft.fftn(u - u.mean())) ** 2
    k = np.sqrt(_wavenumbers_squared(u.shape, torch.float64, torch.device("cpu"), full=True).numpy())
    if s.sum() == 0:
        raise ValueError("field is uniform: no characteristic length")
    return float(2 * np.pi / ((k * s).sum() / s.sum()))


# ---------------------------------------------------------------- free-energy derivatives


def _binary_potential(u: torch.Tensor, p: CahnHilliardParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Exchange potential f'(c) for u = [c], and the largest f'' over the box."""
    c = u[0].clamp(LOG_CLIP, 1.0 - LOG_CLIP)
    g = (torch.log(c) + 1.0) / p.n_donor - (torch.log1p(-c) + 1.0) / p.n_acceptor + p.chi * (1.0 - 2.0 * u[0])
    return g.unsqueeze(0), _binary_curvature(u[0], p).max()


def _binary_curvature(c: torch.Tensor, p: CahnHilliardParams) -> torch.Tensor:
    c = c.clamp(CURVATURE_FLOOR, 1.0 - CURVATURE_FLOOR)
    return 1.0 / (p.n_donor * c) + 1.0 / (p.n_acceptor * (1.0 - c)) - 2.0 * p.chi


def _ternary_potential(u: torch.Tensor, p: CahnHilliardParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Exchange potentials (f_a − f_m, f_b − f_m) for u = [a, b], and the largest Hessian eigenvalue."""
    a, b = u[0], u[1]
    m = 1.0 - a - b
    log_a, log_b, log_m = (torch.log(x.clamp(LOG_CLIP, 1.0 - LOG_CLIP)) for x in (a, b, m))
    f_a = (log_a + 1.0) / p.n_donor + p.chi * b + p.chi_donor_mixed * m
    f_b = (log_b + 1.0) / p.n_acceptor + p.chi * a + p.chi_acceptor_mixed * m
    f_m = (log_m + 1.0) / p.n_mixed + p.chi_donor_mixed * a + p.chi_acceptor_mixed * b
    h_aa, h_bb, h_ab = _ternary_hessian(a, b, p)
    largest = 0.5 * (h_aa + h_bb) + torch.sqrt(0.25 * (h_aa - h_bb) ** 2 + h_ab**2)
    return torch.stack([f_a - f_m, f_b - f_m]), largest.max()


def _ternary_hessian(
    a: torch.Tensor, b: torch.Tensor, p: CahnHilliardParams
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entries (∂²f/∂a², ∂²f/∂b², ∂²f/∂a∂b) of f(a, b, 1 − a − b), floored compositions."""
    lo, hi = CURVATURE_FLOOR, 1.0 - CURVATURE_FLOOR
    inv_a = 1.0 / (p.n_donor * a.clamp(lo, hi))
    inv_b = 1.0 / (p.n_acceptor * b.clamp(lo, hi))
    inv_m = 1.0 / (p.n_mixed * (1.0 - a - b).clamp(lo, hi))
    h_aa = inv_a + inv_m - 2.0 * p.chi_donor_mixed
    h_bb = inv_b + inv_m - 2.0 * p.chi_acceptor_mixed
    h_ab = inv_m + p.chi - p.chi_donor_mixed - p.chi_acceptor_mixed
    return h_aa, h_bb, h_ab


# ---------------------------------------------------------------- set-up


def _initial_fields(shape: tuple[int, ...], p: CahnHilliardParams, seed: int) -> torch.Tensor:
    """Independent fields ([c] or [a, b]) = mean + uniform noise, noise shifted to zero mean."""
    means = [p.phi] if p.n_phases == 2 else [p.initial_fractions[1], p.initial_fractions[0]]
    generator = torch.Generator().manual_seed(seed)
    noise = p.noise * (2.0 * torch.rand((len(means), *shape), generator=generator, dtype=torch.float64) - 1.0)
    noise -= noise.mean(dim=tuple(range(1, len(shape) + 1)), keepdim=True)
    return torch.tensor(means, dtype=torch.float64).reshape(-1, *([1] * len(shape))) + noise


def _label_order(u: torch.Tensor, p: CahnHilliardParams) -> torch.Tensor:
    """Stack all compositions in label order (acceptor, donor[, mixed])."""
    if p.n_phases == 2:
        return torch.stack([1.0 - u[0], u[0]])
    return torch.stack([u[1], u[0], 1.0 - u[0] - u[1]])


def _wavenumbers_squared(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, full: bool = False
) -> torch.Tensor:
    """|k|² on the (r)fft grid of a periodic box with unit spacing; ``full`` for fftn."""
    freqs = [torch.fft.fftfreq(n, dtype=dtype, device=device) for n in shape[:-1]]
    last = torch.fft.fftfreq if full else torch.fft.rfftfreq
    freqs.append(last(shape[-1], dtype=dtype, device=device))
    grids = torch.meshgrid(*[2.0 * math.pi * f for f in freqs], indexing="ij")
    return sum((g * g for g in grids), torch.zeros((), dtype=dtype, device=device))


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    table: dict[str | torch.dtype, torch.dtype] = {
        "float32": torch.float32,
        "float64": torch.float64,
        torch.float32: torch.float32,
        torch.float64: torch.float64,
    }
    key = dtype.removeprefix("torch.") if isinstance(dtype, str) else dtype
    if key not in table:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return table[key]


def _check_run(shape: tuple[int, ...], n_steps: int, snapshot_every: int) -> tuple[int, ...]:
    if len(shape) not in SPATIAL_DIMS or any(int(n) != n or n < 4 for n in shape):
        raise ValueError(f"shape must be 2 or 3 integers >= 4 voxels, got {shape}")
    if int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"n_steps must be an integer >= 1, got {n_steps}")
    if int(snapshot_every) != snapshot_every or not 1 <= snapshot_every <= n_steps:
        raise ValueError(f"snapshot_every must be an integer in [1, n_steps={n_steps}], got {snapshot_every}")
    return tuple(int(n) for n in shape)


@contextmanager
def _progress_bar(enabled: bool, total: int, description: str) -> Iterator[Callable[[], None]]:
    """Yield an ``advance()`` callable; a rich progress bar only when ``enabled``."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)
