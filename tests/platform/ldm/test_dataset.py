"""The labelled OPV data set: structure, labels against the evaluators, split, seeds, files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import xarray as xr
from pydantic import ValidationError
from typer.testing import CliRunner

from micro_doe.cli.opv_data import parse_grid
from micro_doe.platform.descriptors import interfacial_area, percolating_fraction, tortuosity, volume_fraction
from micro_doe.platform.ldm import dataset as opv
from micro_doe.platform.synthetic import cahn_hilliard
from micro_doe.platform.volumes import validate_volume, write_netcdf

TINY = dict(shape=(16, 16, 16), phis=[0.4, 0.5], chis=[3.0, 4.0], n_steps=100, snapshot_every=10, n_snapshots=3)


@pytest.fixture(scope="module")
def config() -> opv.OPVDatasetConfig:
    return opv.OPVDatasetConfig(**TINY)


@pytest.fixture(scope="module")
def ds(config: opv.OPVDatasetConfig) -> xr.Dataset:
    return opv.make_opv_dataset(config)


def test_dataset_structure(ds: xr.Dataset, config: opv.OPVDatasetConfig) -> None:
    validate_volume(ds["phase"])
    assert ds["phase"].dims == ("sample", "z", "y", "x") and ds["phase"].dtype == np.int8
    assert ds.sizes["z"] == ds.sizes["y"] == ds.sizes["x"] == 16
    n = ds.sizes["sample"]
    assert 4 <= n <= 4 * 3  # every trajectory separates within 100 steps; at most 3 snapshots each
    expected = {"vf_acceptor", "vf_donor", "tau_donor", "tau_acceptor", "percolating_donor", "percolating_acceptor"}
    expected |= {"interfacial_area", "segregation", "phi", "chi", "step", "time", "log_time", "trajectory", "split"}
    assert set(ds.data_vars) == expected | {"phase"}
    assert all(ds[v].dims == ("sample",) for v in expected)
    assert opv.OPVDatasetConfig.model_validate_json(ds.attrs["config"]) == config
    assert list(ds.attrs["phase_names"]) == ["acceptor", "donor"] == list(ds["phase"].attrs["phase_names"])
    definitions = json.loads(ds.attrs["labels"])
    assert set(definitions) == expected and all("units" in d and d["definition"] for d in definitions.values())
    assert definitions["interfacial_area"]["units"] == "1/voxel" and " z " in definitions["tau_donor"]["definition"]
    np.testing.assert_allclose(ds["vf_donor"] + ds["vf_acceptor"], 1.0)
    # Kept snapshots are separated, increasing in time within a trajectory, last one at n_steps.
    assert (ds["segregation"] >= config.min_segregation).all()
    for _, one in ds.groupby("trajectory"):
        assert np.all(np.diff(one["step"].values) > 0) and one["step"].values[-1] == config.n_steps
    # τ = inf exactly where the phase does not percolate (kept, not dropped).
    for phase in ("donor", "acceptor"):
        assert np.array_equal(np.isinf(ds[f"tau_{phase}"]), ds[f"percolating_{phase}"] == 0)
        assert (ds[f"tau_{phase}"] >= 1.0).all()


def test_labels_equal_the_evaluators(ds: xr.Dataset) -> None:
    for i in (0, ds.sizes["sample"] - 1):
        volume = ds["phase"].isel(sample=i)
        row = {name: float(ds[name][i]) for name in ds.data_vars if ds[name].dims == ("sample",) and name != "split"}
        assert row["vf_donor"] == volume_fraction(volume, "donor")
        assert row["vf_acceptor"] == volume_fraction(volume, 0)
        for phase in ("donor", "acceptor"):
            assert row[f"tau_{phase}"] == pytest.approx(tortuosity(volume, phase, "z").tau, rel=1e-9)
            assert row[f"percolating_{phase}"] == percolating_fraction(volume, phase, "z")
        assert row["interfacial_area"] == interfacial_area(volume, "donor", "acceptor")


def test_manufacturing_labels_match_the_cahn_hilliard_run(ds: xr.Dataset, config: opv.OPVDatasetConfig) -> None:
    trajectory = 3  # φ = 0.5 (i_phi 1), χ = 4.0 (i_chi 1)
    params = opv.trajectory_params(config, 0.5, 4.0, trajectory)
    run = cahn_hilliard(
        config.shape, params, config.n_steps, config.snapshot_every, seed=opv.trajectory_seed(config.seed, trajectory)
    )
    mine = ds.isel(sample=np.flatnonzero(ds["trajectory"].values == trajectory))
    assert mine.sizes["sample"] == 3
    for i in range(mine.sizes["sample"]):
        reference = run.isel(sample=int(np.flatnonzero(run["step"].values == int(mine["step"][i]))[0]))
        assert np.array_equal(mine["phase"][i].values, reference.values)
        assert float(mine["phi"][i]) == float(reference["phi"]) == 0.5
        assert float(mine["chi"][i]) == float(reference["chi"]) == 4.0
        assert float(mine["time"][i]) == float(reference["time"])
        assert float(mine["log_time"][i]) == pytest.approx(math.log10(float(reference["time"])))


def test_split_is_by_trajectory() -> None:
    config = opv.OPVDatasetConfig(**{**TINY, "phis": [0.4, 0.45, 0.5, 0.55, 0.6], "n_steps": 20, "n_snapshots": 2})
    ds = opv.make_opv_dataset(config)
    train, val = opv.split(ds, "train"), opv.split(ds, "val")
    assert train.sizes["sample"] + val.sizes["sample"] == ds.sizes["sample"]
    train_ids, val_ids = set(train["trajectory"].values), set(val["trajectory"].values)
    assert not train_ids & val_ids and len(train_ids | val_ids) == 10
    assert len(val_ids) == 2  # 20 % of 10 trajectories
    other = opv.make_opv_dataset(config.model_copy(update={"seed": 1}))
    assert len(set(opv.split(other, "val")["trajectory"].values)) == 2
    with pytest.raises(ValueError, match="which"):
        opv.split(ds, "test")  # type: ignore[arg-type]


def test_same_seed_same_dataset_other_seed_differs(ds: xr.Dataset, config: opv.OPVDatasetConfig) -> None:
    again = opv.make_opv_dataset(config)
    xr.testing.assert_identical(ds, again)
    other = opv.make_opv_dataset(config.model_copy(update={"seed": 7}))
    assert other.sizes["sample"] != ds.sizes["sample"] or not np.array_equal(other["phase"], ds["phase"])


def test_netcdf_round_trip_keeps_inf(ds: xr.Dataset, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ds = ds.copy(deep=True)
    ds["tau_donor"][0] = np.inf  # a non-percolating snapshot
    path = opv.write_opv_dataset(ds, tmp_path / "opv.nc")
    back = opv.read_opv_dataset(path)
    xr.testing.assert_equal(back, ds)
    assert np.isinf(back["tau_donor"][0]) and back["split"].dtype.kind == "U"
    assert back.attrs["config"] == ds.attrs["config"] and list(back.attrs["phase_names"]) == ["acceptor", "donor"]
    validate_volume(back["phase"])


def test_missing_variable_is_named(ds: xr.Dataset, tmp_path) -> None:  # type: ignore[no-untyped-def]
    broken = ds.drop_vars(["tau_acceptor", "split"])
    with pytest.raises(opv.OPVDatasetError, match=r"missing variables \['tau_acceptor', 'split'\]"):
        opv.write_opv_dataset(broken, tmp_path / "no.nc")
    write_netcdf(broken, tmp_path / "broken.nc")
    with pytest.raises(opv.OPVDatasetError, match="tau_acceptor"):
        opv.read_opv_dataset(tmp_path / "broken.nc")
    write_netcdf(ds.drop_vars("phase"), tmp_path / "nophase.nc")
    with pytest.raises(opv.OPVDatasetError, match="'phase'"):
        opv.read_opv_dataset(tmp_path / "nophase.nc")
    with pytest.raises(FileNotFoundError):
        opv.read_opv_dataset(tmp_path / "absent.nc")


def test_label_ranges_cover_finite_training_values(ds: xr.Dataset) -> None:
    ds = ds.copy(deep=True)
    train = np.flatnonzero(ds["split"].values == "train")
    val = np.flatnonzero(ds["split"].values == "val")
    ds["tau_acceptor"][train[0]] = np.inf
    ds["vf_donor"][val[0]] = 0.999  # outside every training value
    ranges = opv.label_ranges(ds)
    assert {"vf_donor", "tau_donor", "tau_acceptor", "phi", "chi", "log_time", "interfacial_area"} <= set(ranges)
    assert "split" not in ranges and "trajectory" not in ranges
    tau = ds["tau_acceptor"].values[train]
    assert ranges["tau_acceptor"] == (tau[np.isfinite(tau)].min(), tau[np.isfinite(tau)].max())
    assert ranges["vf_donor"] == (ds["vf_donor"].values[train].min(), ds["vf_donor"].values[train].max())
    assert ranges["vf_donor"][1] < 0.999


def test_three_phase_dataset_has_vf_mixed() -> None:
    config = opv.OPVDatasetConfig(
        shape=(16, 16, 16), phis=[0.5], chis=[4.5], n_phases=3, n_steps=80, snapshot_every=10, n_snapshots=2
    )
    ds = opv.make_opv_dataset(config)
    assert list(ds.attrs["phase_names"]) == ["acceptor", "donor", "mixed"]
    np.testing.assert_allclose(ds["vf_acceptor"] + ds["vf_donor"] + ds["vf_mixed"], 1.0)
    assert float(ds["vf_mixed"][-1]) > 0.05 and set(np.unique(ds["phase"][-1])) == {0, 1, 2}
    assert "vf_mixed" in json.loads(ds.attrs["labels"]) and (ds["split"] == "train").all()  # one trajectory
    assert np.all(ds["phi_mixed"].values == 0.3)  # the fixed fraction is a label too


def test_a_phi_mixed_range_varies_the_mixed_phase_per_trajectory() -> None:
    common = dict(shape=(12, 12, 12), phis=[0.45, 0.55], chis=[4.5, 5.0], n_phases=3, n_steps=60, snapshot_every=10)
    config = opv.OPVDatasetConfig(**common, n_snapshots=1, phi_mixed_range=(0.1, 0.45))
    drawn = [opv.trajectory_phi_mixed(config, t) for t in range(4)]
    assert all(0.1 <= v < 0.45 for v in drawn) and len(set(drawn)) == 4  # one draw per trajectory
    assert drawn == [opv.trajectory_phi_mixed(config.model_copy(update={"n_steps": 80}), t) for t in range(4)]
    assert drawn != [opv.trajectory_phi_mixed(config.model_copy(update={"seed": 1}), t) for t in range(4)]
    ds = opv.make_opv_dataset(config)
    for t, one in ds.groupby("trajectory"):
        assert np.all(one["phi_mixed"].values == drawn[int(t)])
        params = opv.trajectory_params(config, float(one["phi"][0]), float(one["chi"][0]), int(t))
        assert params.phi_mixed == drawn[int(t)]
    # More of the third component at the start leaves more mixed voxels at the end.
    order = np.argsort(ds["phi_mixed"].values)
    assert ds["vf_mixed"].values[order[-1]] > ds["vf_mixed"].values[order[0]]
    with pytest.raises(ValidationError, match="phi_mixed_range: expected 0 < low < high < 1"):
        opv.OPVDatasetConfig(**common, phi_mixed_range=(0.4, 0.2))
    with pytest.raises(ValidationError, match="phi_mixed_range: only for n_phases=3"):
        opv.OPVDatasetConfig(**TINY, phi_mixed_range=(0.1, 0.2))


def test_snapshots_are_log_spaced_from_the_first_separated_one() -> None:
    steps = np.arange(10, 1001, 10)
    separated = steps >= 40
    kept = steps[opv.select_snapshots(steps, separated, 5)]
    assert kept[0] == 40 and kept[-1] == 1000 and np.all(np.diff(kept) > 0)
    ratios = kept[1:] / kept[:-1]
    assert np.allclose(ratios, (1000 / 40) ** 0.25, rtol=0.1)
    assert opv.select_snapshots(steps, np.zeros_like(separated), 5).size == 0
    assert opv.select_snapshots(steps, separated, None).size == separated.sum()
    assert opv.select_snapshots(steps[:6], separated[:6], 5).tolist() == [3, 4, 5]


@pytest.mark.parametrize(
    ("update", "field"),
    [
        ({"phis": [0.0, 0.5]}, "phis"),
        ({"phis": [0.5, 1.2]}, "phis"),
        ({"phis": []}, "phis"),
        ({"chis": []}, "chis"),
        ({"chis": [1.5, 1.9]}, "chis"),
        ({"phis": [0.1], "chis": [2.5]}, "phis/chis"),  # outside the spinodal everywhere
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"snapshot_every": 200}, "snapshot_every"),
        ({"n_phases": 4}, "n_phases"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_config_names_the_field(update: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        opv.OPVDatasetConfig(**{**TINY, **update})


def test_cli_writes_a_readable_dataset(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert parse_grid("0.35:0.65:7", "--phis") == [0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65]
    assert parse_grid("3,4.5", "--chis") == [3.0, 4.5]
    with pytest.raises(ValueError, match="--phis"):
        parse_grid("0.3:0.6", "--phis")
    defaults = opv.OPVDatasetConfig()  # the command's default grid is the config's
    assert parse_grid("0.3:0.7:17", "--phis") == defaults.phis and parse_grid("2.6:4.2:9", "--chis") == defaults.chis
    from micro_doe.cli.app import app

    out = tmp_path / "opv.nc"
    args = ["data", "make", "cahn-hilliard", "--out", str(out), "--shape", "16", "16", "16",
            "--phis", "0.45,0.5", "--chis", "4", "--steps", "20"]  # fmt: skip
    result = CliRunner().invoke(app, [*args, "--snapshot-every", "10", "--snapshots", "2", "--seed", "3"])
    assert result.exit_code == 0, result.output
    back = opv.read_opv_dataset(out)
    config = opv.OPVDatasetConfig.model_validate_json(back.attrs["config"])
    assert config.phis == [0.45, 0.5] and config.chis == [4.0] and config.seed == 3
    assert set(back["trajectory"].values) == {0, 1} and (back["split"] == "val").sum() > 0
