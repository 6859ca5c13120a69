"""Synthetic generators, checked against their definitions and the physics they model."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
import xarray as xr
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from micro_doe.platform import synthetic as syn
from micro_doe.platform.volumes import generator_params, make_volume, validate_volume


def periodic_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Face-connected components of ``mask`` on a periodic box: (labels, -1 outside; count)."""
    labels, n = ndimage.label(mask)
    pairs = [np.zeros((0, 2), dtype=np.int64)]
    for axis in range(mask.ndim):
        first, last = np.take(labels, 0, axis=axis), np.take(labels, -1, axis=axis)
        both = (first > 0) & (last > 0)  # touching across the periodic face
        pairs.append(np.stack([first[both], last[both]], axis=1))
    edges = np.concatenate(pairs)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n + 1, n + 1))
    _, component = connected_components(graph, directed=False)
    merged = np.where(labels > 0, component[labels], -1)
    return merged, len(np.unique(merged[merged >= 0]))


# ---------------------------------------------------------------- spheres


@pytest.fixture(scope="module")
def default_spheres() -> syn.SpherePacking:
    return syn.sphere_packing()  # the paper's 300 × 64 × 64 case, d ~ N(15, 4)


def test_spheres_volume_is_reproducible_and_recorded() -> None:
    kwargs = dict(shape=(40, 32, 32), mean_diameter=8.0, sd_diameter=2.0, volume_fraction=0.2)
    a = syn.spherical_inclusions(**kwargs, seed=5)
    b = syn.spherical_inclusions(**kwargs, seed=5)
    c = syn.spherical_inclusions(**kwargs, seed=6)
    validate_volume(a)
    assert a.dims == ("z", "y", "x") and a.shape == (40, 32, 32)
    assert np.array_equal(a.values, b.values) and not np.array_equal(a.values, c.values)
    assert a.attrs["phase_names"] == ["matrix", "inclusion"] and a.attrs["seed"] == 5
    assert a.attrs["source"] == "spherical_inclusions"
    params = generator_params(a)
    assert params["mean_diameter"] == 8.0 and params["sd_diameter"] == 2.0 and params["volume_fraction"] == 0.2
    assert params["shape"] == [40, 32, 32] and params["periodic"] is True and params["n_spheres"] > 5
    assert set(np.unique(a.values)) == {0, 1}


def test_spheres_reach_the_volume_fraction(default_spheres: syn.SpherePacking) -> None:
    p = default_spheres
    assert abs(p.volume_fraction - 0.25) < 0.003
    assert p.voxel_counts.sum() == p.labels.sum()  # balls never share a voxel
    # stopping rule: within half of the last sphere's voxels of the target; with equal
    # diameters every sphere has about the same voxel count
    for seed in range(4):
        equal = syn.sphere_packing((48, 48, 48), 10.0, 0.0, 0.1, seed=seed)
        assert np.ptp(equal.diameters) == 0.0
        assert abs(equal.volume_fraction - 0.1) <= 0.5 * 1.1 * equal.voxel_counts.max() / equal.labels.size


def test_spheres_are_separate_balls_with_the_drawn_diameters(default_spheres: syn.SpherePacking) -> None:
    p = default_spheres
    components, count = periodic_components(p.labels == 1)
    assert count == p.diameters.size  # no two inclusions touch (min_gap = 1)
    sizes = np.bincount(components[components >= 0])
    measured = np.sort((6 * sizes[sizes > 0] / np.pi) ** (1 / 3))  # equivalent diameters from voxels
    assert np.abs(measured - np.sort(p.diameters)).max() < 1.5
    # ~140 draws from N(15, 4): sample mean within ~4 standard errors, sd plausible
    assert abs(measured.mean() - 15.0) < 1.5
    assert 3.0 < measured.std() < 5.0
    assert p.diameters.min() >= 3.0


def test_spheres_truncate_small_diameters_and_cut_at_faces_when_not_periodic() -> None:
    p = syn.sphere_packing((32, 32, 32), 4.0, 3.0, 0.1, seed=1, min_diameter=3.0)
    assert p.diameters.min() >= 3.0 and p.diameters.max() <= 16.0
    q = syn.sphere_packing((32, 32, 32), 8.0, 1.0, 0.15, seed=2, periodic=False)
    assert q.voxel_counts.sum() == q.labels.sum()
    # balls cut by the faces hold fewer voxels than whole ones of the same diameter
    whole = 4 / 3 * np.pi * (q.diameters / 2) ** 3
    assert (q.voxel_counts < 0.8 * whole).any()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(volume_fraction=0.6), "volume_fraction"),
        (dict(volume_fraction=0.0), "volume_fraction"),
        (dict(mean_diameter=50.0), "mean_diameter"),
        (dict(sd_diameter=-1.0), "sd_diameter"),
        (dict(min_gap=-1.0), "min_gap"),
        (dict(shape=(64, 64)), "shape"),
    ],
)
def test_spheres_reject_bad_parameters(kwargs: dict, name: str) -> None:
    args = dict(shape=(32, 32, 32), mean_diameter=8.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        syn.spherical_inclusions(**args)


def test_spheres_report_a_jammed_packing() -> None:
    with pytest.raises(ValueError, match="volume_fraction.*jammed"):
        syn.sphere_packing((40, 40, 40), 12.0, 1.0, 0.35, min_gap=3.0)


# ---------------------------------------------------------------- polycrystal


@pytest.fixture(scope="module")
def grains() -> syn.LaguerreGrains:
    return syn.laguerre_grains(n_images=12, seed=4)


def test_polycrystal_is_reproducible_and_recorded() -> None:
    a = syn.laguerre_polycrystal(n_images=3, seed=1)
    b = syn.laguerre_polycrystal(n_images=3, seed=1)
    c = syn.laguerre_polycrystal(n_images=3, seed=2)
    validate_volume(a)
    assert a.dims == ("sample", "y", "x") and a.shape == (3, 64, 64)
    assert np.array_equal(a.values, b.values) and not np.array_equal(a.values, c.values)
    assert a.attrs["phase_names"] == ["grain", "boundary"] and a.attrs["seed"] == 1
    params = generator_params(a)
    assert params["grain_sizes"] == [6.0, 9.0, 12.0] and params["boundary_width"] == 1 and params["size"] == 64
    assert 0.15 < float(a.mean()) < 0.4  # thin boundaries between ~80 grains


def test_each_grain_size_covers_a_third_of_every_image(grains: syn.LaguerreGrains) -> None:
    n_images, n_grains = grains.weights.shape
    areas = np.stack([np.bincount(c.ravel(), minlength=n_grains) for c in grains.cells])
    assert (areas > 0).all()  # every seed owns a grain
    for k, d in enumerate((6.0, 9.0, 12.0)):
        in_class = grains.size_class == k
        fraction = areas[:, in_class].sum(axis=1) / 64**2
        assert np.abs(fraction - 1 / 3).max() < 0.01
        equivalent = np.sqrt(4 * areas[:, in_class] / np.pi)
        assert abs(equivalent.mean() - d) < 0.1 * d
    # the number of grains per class gives each class a third of the area nominally
    counts = np.bincount(grains.size_class)
    assert np.allclose(counts * np.pi * np.array([6.0, 9.0, 12.0]) ** 2 / 4, 64**2 / 3, rtol=0.05)


def test_grain_cells_are_power_diagram_cells(grains: syn.LaguerreGrains) -> None:
    # re-derive the cell of a few pixels by brute force from centres and weights
    rng = np.random.default_rng(0)
    for image, j, i in zip(rng.integers(0, 12, 50), rng.integers(0, 64, 50), rng.integers(0, 64, 50)):
        delta = np.array([j + 0.5, i + 0.5]) - grains.centres[image]
        delta -= 64 * np.round(delta / 64)
        power = (delta**2).sum(axis=1) - grains.weights[image]
        assert power[grains.cells[image, j, i]] <= power.min() + 1e-3


def test_boundaries_close_every_grain(grains: syn.LaguerreGrains) -> None:
    boundary = syn.grain_boundaries(grains.cells, 1)
    n_grains = grains.diameters.size
    for cells, wall in zip(grains.cells, boundary):
        interior = ~wall
        # 4-neighbouring interior pixels always belong to the same grain (periodic)
        for axis in (0, 1):
            both = interior & np.roll(interior, -1, axis=axis)
            assert (cells[both] == np.roll(cells, -1, axis=axis)[both]).all()
        components, count = periodic_components(interior)
        assert abs(count - n_grains) <= 0.03 * n_grains
        # each region lies inside one grain
        for region in np.unique(components[components >= 0]):
            assert np.unique(cells[components == region]).size == 1


def test_boundary_width_is_the_line_thickness() -> None:
    cells = np.zeros((1, 64, 64), dtype=np.int32)
    cells[:, :, 20:44] = 1  # two straight vertical interfaces (periodic)
    for width in (1, 2, 3, 4):
        wall = syn.grain_boundaries(cells, width)
        assert (wall.sum(axis=-1) == 2 * width).all()
    image = syn.laguerre_polycrystal(n_images=2, boundary_width=2, seed=3)
    thin = syn.laguerre_polycrystal(n_images=2, boundary_width=1, seed=3)
    assert float(image.mean()) > 1.4 * float(thin.mean())  # junction pixels are shared


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(boundary_width=0), "boundary_width"),
        (dict(boundary_width=4), "boundary_width"),
        (dict(grain_sizes=()), "grain_sizes"),
        (dict(grain_sizes=(6.0, 40.0)), "grain_sizes"),
        (dict(size=4), "size"),
        (dict(n_images=0), "n_images"),
        (dict(packing_fraction=0.95), "packing_fraction"),
    ],
)
def test_polycrystal_rejects_bad_parameters(kwargs: dict, name: str) -> None:
    args = dict(n_images=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        syn.laguerre_polycrystal(**args)


# ---------------------------------------------------------------- Cahn–Hilliard


def test_spinodal_and_critical_chi_match_the_free_energy() -> None:
    def f(c: float, chi: float, na: float, nb: float) -> float:
        return c * np.log(c) / na + (1 - c) * np.log(1 - c) / nb + chi * c * (1 - c)

    for phi, na, nb in [(0.5, 1.0, 1.0), (0.3, 1.0, 1.0), (0.4, 2.0, 5.0)]:
        chi_s = syn.spinodal_chi(phi, na, nb)
        h = 1e-4
        for chi, sign in [(chi_s - 0.05, 1), (chi_s + 0.05, -1)]:
            second = (f(phi + h, chi, na, nb) - 2 * f(phi, chi, na, nb) + f(phi - h, chi, na, nb)) / h**2
            assert np.sign(second) == sign
            params = syn.CahnHilliardParams(phi=phi, chi=chi, n_donor=na, n_acceptor=nb)
            assert syn.homogeneous_curvature(params) == pytest.approx(second, abs=1e-3)
    assert syn.critical_chi() == 2.0
    grid = np.linspace(0.01, 0.99, 981)
    assert syn.critical_chi(2.0, 5.0) == pytest.approx(min(syn.spinodal_chi(c, 2.0, 5.0) for c in grid), rel=1e-4)


def test_cahn_hilliard_volume_is_reproducible_and_carries_parameters() -> None:
    params = syn.CahnHilliardParams(phi=0.4, chi=3.2, dt=0.5)
    a = syn.cahn_hilliard((16, 16, 16), params, n_steps=20, snapshot_every=5, seed=3)
    b = syn.cahn_hilliard((16, 16, 16), params, n_steps=20, snapshot_every=5, seed=3)
    c = syn.cahn_hilliard((16, 16, 16), params, n_steps=20, snapshot_every=5, seed=4)
    validate_volume(a)
    assert a.dims == ("sample", "z", "y", "x") and a.shape == (4, 16, 16, 16)
    assert a.equals(b) and not np.array_equal(a.values, c.values)
    assert np.allclose(a["time"], [2.5, 5.0, 7.5, 10.0]) and list(a["step"].values) == [5, 10, 15, 20]
    assert np.all(a["phi"] == 0.4) and np.all(a["chi"] == 3.2)
    assert a.attrs["phase_names"] == ["acceptor", "donor"] and a.attrs["seed"] == 3
    record = generator_params(a)
    assert record["phi"] == 0.4 and record["chi"] == 3.2 and record["dt"] == 0.5 and record["n_phases"] == 2
    assert record["shape"] == [16, 16, 16] and record["n_steps"] == 20 and record["dtype"] == "torch.float32"
    # a sample keeps its processing parameters when taken out of the stack
    one = a.isel(sample=2)
    assert float(one["time"]) == 7.5 and float(one["phi"]) == 0.4
    # labels follow the definition: donor where c > 1/2
    run = syn.cahn_hilliard_fields((16, 16, 16), params, n_steps=20, snapshot_every=5, seed=3)
    assert np.array_equal(a.values, (run.compositions[:, 1] > 0.5).astype(np.int8))
    assert json.loads(a.attrs["generator_params"])["noise"] == params.noise


@pytest.fixture(scope="module")
def separating() -> syn.CahnHilliardRun:
    return syn.cahn_hilliard_fields((64, 64), syn.CahnHilliardParams(chi=3.0), 300, 10, seed=1, dtype="float64")


def test_cahn_hilliard_conserves_mass_and_stays_bounded(separating: syn.CahnHilliardRun) -> None:
    donor = separating.compositions[:, 1]
    assert np.abs(donor.mean(axis=(1, 2)) - 0.5).max() < 1e-10
    assert donor.min() > 0.0 and donor.max() < 1.0
    assert np.allclose(separating.compositions.sum(axis=1), 1.0)
    f32 = syn.cahn_hilliard_fields((32, 32, 32), syn.CahnHilliardParams(phi=0.35, chi=3.5), 60, 20, seed=2)
    assert f32.compositions.dtype == np.float32
    assert np.abs(f32.compositions[:, 1].mean(axis=(1, 2, 3), dtype=np.float64) - 0.35).max() < 1e-6


def test_cahn_hilliard_free_energy_decreases_and_domains_coarsen(separating: syn.CahnHilliardRun) -> None:
    energy = np.array([syn.free_energy(c, separating.params) for c in separating.compositions])
    assert (np.diff(energy) <= 1e-12).all()
    lengths = np.array([syn.characteristic_length(c[1]) for c in separating.compositions])
    assert lengths[-1] > 1.5 * lengths[0]
    assert (np.diff(lengths[5:]) > -0.05).all()  # coarsening never reverses once separated
    # separated phases sit near the binodal ln(c / (1 − c)) = χ (2c − 1): c ≈ 0.071, 0.929 for χ = 3
    donor = separating.compositions[-1, 1]
    assert abs(np.percentile(donor, 5) - 0.071) < 0.03 and abs(np.percentile(donor, 95) - 0.929) < 0.03


def test_blend_separates_only_inside_the_spinodal() -> None:
    noise_sd = 0.02 / np.sqrt(3)  # uniform noise of amplitude 0.02
    stable = syn.CahnHilliardParams(phi=0.5, chi=1.5)  # χ_s(0.5) = 2
    unstable = syn.CahnHilliardParams(phi=0.5, chi=2.6)
    assert syn.homogeneous_curvature(stable) > 0 > syn.homogeneous_curvature(unstable)
    mixed = syn.cahn_hilliard_fields((64, 64), stable, 200, 50, seed=0, dtype="float64").compositions[:, 1]
    assert mixed.std(axis=(1, 2)).max() < 0.1 * noise_sd  # fluctuations decay
    assert np.unique(mixed[-1] > 0.5).size <= 2 and np.abs(mixed[-1] - 0.5).max() < 0.01
    split = syn.cahn_hilliard_fields((64, 64), unstable, 200, 50, seed=0, dtype="float64").compositions[:, 1]
    assert split[-1].std() > 0.2  # two phases far from the mean


def test_float32_and_float64_agree() -> None:
    params = syn.CahnHilliardParams(phi=0.45, chi=3.0)
    single = syn.cahn_hilliard_fields((64, 64), params, 100, 50, seed=7, dtype="float32").compositions
    double = syn.cahn_hilliard_fields((64, 64), params, 100, 50, seed=7, dtype=torch.float64).compositions
    assert np.abs(single - double).max() < 1e-3
    assert (syn.composition_labels(single, 1) == syn.composition_labels(double, 1)).mean() > 0.999


def test_three_phase_blend_forms_donor_acceptor_and_mixed_phases() -> None:
    params = syn.CahnHilliardParams.three_phase()
    assert params.initial_fractions == pytest.approx((0.35, 0.35, 0.3))
    assert syn.homogeneous_curvature(params) < 0
    volume = syn.cahn_hilliard((64, 64), params, n_steps=300, snapshot_every=100, seed=0)
    assert volume.dims == ("sample", "y", "x") and volume.attrs["phase_names"] == ["acceptor", "donor", "mixed"]
    assert np.all(volume["phi_mixed"] == 0.3)
    fractions = np.bincount(volume.values[-1].ravel(), minlength=3) / 64**2
    assert (fractions > 0.1).all() and fractions.size == 3
    run = syn.cahn_hilliard_fields((64, 64), params, 300, 100, seed=0, dtype="float64")
    comp = run.compositions
    assert np.allclose(comp.mean(axis=(2, 3)), [0.35, 0.35, 0.3], atol=1e-10)
    assert comp.min() > 0 and comp.max() < 1
    # the mixed label marks voxels where the third component is the largest
    last = comp[-1]
    mixed = run.labels[-1] == 2
    assert (last[2][mixed] >= last[:2, mixed].max(axis=0)).all()
    energy = [syn.free_energy(c, params) for c in comp]
    assert energy[0] > energy[1] > energy[2]


def test_progress_bar_does_not_change_the_result() -> None:
    quiet = syn.cahn_hilliard_fields((16, 16), n_steps=4, snapshot_every=2, seed=1)
    shown = syn.cahn_hilliard_fields((16, 16), n_steps=4, snapshot_every=2, seed=1, progress=True)
    assert np.array_equal(quiet.compositions, shown.compositions)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    cpu = syn.cahn_hilliard_fields((32, 32, 32), n_steps=50, snapshot_every=50, seed=1, dtype="float64")
    gpu = syn.cahn_hilliard_fields((32, 32, 32), n_steps=50, snapshot_every=50, seed=1, dtype="float64", device="cuda")
    assert np.abs(cpu.compositions - gpu.compositions).max() < 1e-8


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(phi=1.2), "phi"),
        (dict(phi=0.0), "phi"),
        (dict(n_phases=4), "n_phases"),
        (dict(n_phases=3, phi_mixed=1.0), "phi_mixed"),
        (dict(noise=0.4), "noise"),
        (dict(kappa=0.0), "kappa"),
        (dict(mobility=-1.0), "mobility"),
        (dict(dt=0.0), "dt"),
        (dict(chi=float("nan")), "chi"),
        (dict(stabilization=-1.0), "stabilization"),
        (dict(n_donor=0.0), "n_donor"),
    ],
)
def test_cahn_hilliard_params_reject_bad_values(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        syn.CahnHilliardParams(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(shape=(16,)), "shape"),
        (dict(shape=(2, 16)), "shape"),
        (dict(n_steps=0), "n_steps"),
        (dict(snapshot_every=50), "snapshot_every"),
        (dict(dtype="float16"), "dtype"),
    ],
)
def test_cahn_hilliard_rejects_bad_run_settings(kwargs: dict, name: str) -> None:
    args: dict = dict(shape=(16, 16), n_steps=10, snapshot_every=5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        syn.cahn_hilliard(**args)


# ---------------------------------------------------------------- crops


@pytest.fixture(scope="module")
def micrograph() -> xr.DataArray:
    labels = (np.random.default_rng(0).random((120, 200)) < 0.4).astype(np.int8)
    return make_volume(labels, phase_names=["pore", "solid"], voxel_size=0.5, voxel_unit="um", source="scan.png")


def test_crops_are_windows_of_the_source(micrograph: xr.DataArray) -> None:
    crops = syn.random_crops(micrograph, n=30, size=40, seed=2)
    validate_volume(crops)
    assert crops.dims == ("sample", "y", "x") and crops.shape == (30, 40, 40)
    source = micrograph.values
    for crop, y0, x0 in zip(crops.values, crops["y0"].values, crops["x0"].values):
        assert 0 <= y0 <= 80 and 0 <= x0 <= 160
        assert np.array_equal(crop, source[y0 : y0 + 40, x0 : x0 + 40])
    assert crops.attrs["phase_names"] == ["pore", "solid"] and crops.attrs["voxel_size"] == 0.5
    assert generator_params(crops) == {"n": 30, "size": 40, "image_shape": [120, 200], "image_source": "scan.png"}


def test_crops_are_reproducible_and_cover_the_image(micrograph: xr.DataArray) -> None:
    a = syn.random_crops(micrograph, n=250, size=64, seed=1)
    b = syn.random_crops(micrograph, n=250, size=64, seed=1)
    c = syn.random_crops(micrograph, n=250, size=64, seed=2)
    assert a.equals(b) and not np.array_equal(a.values, c.values)
    assert a["y0"].min() == 0 and a["y0"].max() == 120 - 64  # both extreme positions reachable
    whole = syn.random_crops(micrograph, n=2, size=120, seed=0)
    assert (whole["y0"] == 0).all()


def test_crops_reject_bad_requests(micrograph: xr.DataArray) -> None:
    with pytest.raises(ValueError, match="size.*120 × 200"):
        syn.random_crops(micrograph, size=121)
    with pytest.raises(ValueError, match="n must"):
        syn.random_crops(micrograph, n=0)
    with pytest.raises(ValueError, match="2D"):
        syn.random_crops(make_volume(np.zeros((4, 8, 8), dtype=np.int8)), size=4)


# ---------------------------------------------------------------- dihedral augmentation


def test_dihedral_transforms_are_the_eight_symmetries_of_the_square() -> None:
    x = np.arange(16).reshape(4, 4)
    variants = [syn.dihedral(x, k) for k in range(8)]
    assert len({v.tobytes() for v in variants}) == 8  # all distinct for an asymmetric image
    assert np.array_equal(variants[0], x)
    assert np.array_equal(variants[1], np.rot90(x))  # 90° counter-clockwise
    assert np.array_equal(variants[2], x[::-1, ::-1])
    assert np.array_equal(variants[4], x[:, ::-1])  # horizontal flip
    assert np.array_equal(variants[6], x[::-1, :])  # vertical flip
    assert {variants[5].tobytes(), variants[7].tobytes()} == {x.T.tobytes(), x[::-1, ::-1].T.tobytes()}
    for transform, variant in zip(syn.dihedral_transforms(), variants):
        assert np.array_equal(transform(x), variant)


def test_dihedral_transforms_form_a_group() -> None:
    x = np.random.default_rng(0).random((2, 5, 5))
    variants = [syn.dihedral(x, k) for k in range(8)]
    for a, b in itertools.product(range(8), repeat=2):
        composed = syn.dihedral(syn.dihedral(x, b), a)
        matches = [k for k, v in enumerate(variants) if np.array_equal(v, composed)]
        assert matches == [syn.dihedral_compose(a, b)]  # closure, with the stated product
    for k in range(8):
        assert np.array_equal(syn.dihedral(variants[k], syn.dihedral_inverse(k)), x)
        assert syn.dihedral_compose(k, syn.dihedral_inverse(k)) == 0


def test_dihedral_works_on_torch_batches_like_numpy() -> None:
    x = np.random.default_rng(1).random((3, 2, 6, 6)).astype(np.float32)
    for k in range(8):
        assert np.array_equal(syn.dihedral(torch.from_numpy(x), k).numpy(), syn.dihedral(x, k))
    augmented = syn.dihedral_augment(torch.from_numpy(x))
    assert isinstance(augmented, torch.Tensor) and augmented.shape == (24, 2, 6, 6)


def test_dihedral_augment_contains_each_variant_once() -> None:
    x = np.random.default_rng(2).integers(0, 2, (5, 8, 8)).astype(np.int8)
    out = syn.dihedral_augment(x)
    assert out.shape == (40, 8, 8)
    for i in range(5):
        own = [out[k * 5 + i] for k in range(8)]
        for k in range(8):
            assert np.array_equal(own[k], syn.dihedral(x[i], k))
        assert len({v.tobytes() for v in own}) == 8
    stack = make_volume(x, dims=("sample", "y", "x"), seed=3)
    volume = syn.dihedral_augment_volume(stack)
    assert volume.sizes["sample"] == 40 and volume.attrs["seed"] == 3
    assert np.array_equal(volume.isel(sample=13).values, syn.dihedral(x[volume["source_sample"].values[13]], 2))
    assert volume["dihedral"].values[13] == 2


def test_dihedral_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="k must"):
        syn.dihedral(np.zeros((4, 4)), 8)
    with pytest.raises(ValueError, match="square"):
        syn.dihedral_augment(np.zeros((2, 4, 5)))
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        syn.dihedral([[0, 1], [1, 0]], 1)  # type: ignore[type-var]


# ---------------------------------------------------------------- the forward route: annealed films


def test_annealed_films_are_reproducible_per_seed_and_follow_the_recipe():
    from micro_doe.platform.synthetic.anneal import AnnealedFilmGenerator

    films = AnnealedFilmGenerator(size=12, n_phases=2)
    recipe = {"phi": 0.35, "chi": 3.5, "time": 120}
    out = films.sample_batch(recipe, 2, seed=3)
    assert out.predicted == [{}, {}] and len(out.seconds) == 2
    first, second = out.volumes
    assert first.shape == (12, 12, 12) and first.dims == ("z", "y", "x") and first.attrs["seed"] == 3
    assert json.loads(first.attrs["generator_params"])["recipe"] == recipe
    again = films.sample_batch(recipe, 1, seed=4).volumes[0]
    np.testing.assert_array_equal(again.values, second.values)  # film i is a function of seed + i alone
    assert not np.array_equal(first.values, second.values)
    donor_rich = films.sample_batch(recipe | {"phi": 0.65}, 1, seed=3).volumes[0]
    assert float((donor_rich.values == 1).mean()) > float((first.values == 1).mean()) + 0.15  # φ sets the blend
    ternary_recipe = {"phi": 0.5, "chi": 4.5, "time": 300, "phi_mixed": 0.3}
    ternary = AnnealedFilmGenerator(size=12, n_phases=3).sample_batch(ternary_recipe, 1, seed=0).volumes[0]
    assert ternary.attrs["phase_names"] == ["acceptor", "donor", "mixed"]
    assert set(np.unique(ternary.values)) <= {0, 1, 2} and len(np.unique(ternary.values)) >= 2
    with pytest.raises(ValueError, match=r"cahn-hilliard: the recipe lacks \['time'\]"):
        films.sample_batch({"phi": 0.5, "chi": 3.0}, 1, 0)
    with pytest.raises(ValueError, match=r"unknown generator parameters \['phi_mixed'\]"):
        films.sample_batch(recipe | {"phi_mixed": 0.2}, 1, 0)
    with pytest.raises(ValueError, match="cahn-hilliard: phi must be in"):
        films.sample_batch(recipe | {"phi": 1.2}, 1, 0)
    with pytest.raises(ValueError, match="whole number of solver steps"):
        films.sample_batch(recipe | {"time": 2.5}, 1, 0)
