"""Fixtures of the tuning tests: a tiny bundle with held-out images, and small tuning options."""

from __future__ import annotations

import pytest
from study_fixtures import empty_tracking_store

from micro_doe.studies.tuning.options import TuneOptions


@pytest.fixture(autouse=True)
def quiet_env(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="package")
def held_out_bundle(tmp_path_factory, sphere_slices, tiny_unet):
    """A tiny bundle trained with 15 % of its images held out."""
    from micro_doe.platform.micro3diff.training import TrainConfig, train_micro3diff

    config = TrainConfig(steps=12, batch_size=8, checkpoint_every=6, unet=tiny_unet, quality_images=0, held_out=0.15)
    out = tmp_path_factory.mktemp("held") / "tiny-held"
    return train_micro3diff(sphere_slices, out, config, device="cpu", data_label="spheres fixture", progress=False)


@pytest.fixture
def options():  # type: ignore[no-untyped-def]
    """``options(tmp_path, **changes)``: TuneOptions of one volume everywhere, stores under tmp_path."""
    def options(tmp_path, **changes) -> TuneOptions:  # type: ignore[no-untyped-def]
        base = {"trials": 2, "samples_per_trial": 1, "confirm_volumes": 1, "calibration_volumes": 1, "finalist_volumes": 1,
                "storage": f"sqlite:///{tmp_path}/optuna.db", "tracking": f"sqlite:///{tmp_path}/mlflow.db",
                "artifacts": f"{tmp_path}/artifacts"}
        if "tracking" not in changes:
            empty_tracking_store(tmp_path / "mlflow.db")
        return TuneOptions(**(base | changes))

    return options
