"""Model registry of bundles against a real MLflow sqlite store; the ``models`` CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow sqlite store per test session (creating its tables takes seconds)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        root = tmp_path_factory.getbasetemp() / "mlflow-store"
        yield f"sqlite:///{root / 'mlflow.db'}"


def test_importing_micro_doe_does_not_import_mlflow():
    code = (
        "import sys, micro_doe.tracking.registry, micro_doe.studies.mlflow_runs, micro_doe.studies.dashboard, "
        "micro_doe.cli.models; print('mlflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_register_resolve_and_cache(store, tiny_bundle, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from micro_doe.platform.micro3diff.bundle import load_bundle
    from micro_doe.tracking.registry import list_models, register_bundle, resolve_model

    version = register_bundle(tiny_bundle, "tiny-spheres", alias="champion", tracking_uri=store)
    assert version == 1
    tags = MlflowClient(store, registry_uri=store).get_model_version("tiny-spheres", "1").tags
    assert tags["card.title"] == tiny_bundle.name and tags["kind"] == "micro3diff" and len(tags["model_sha256"]) == 64

    cache = tmp_path / "cache"
    local = resolve_model("models:/tiny-spheres@champion", store, cache_dir=cache)
    assert local.startswith(str(cache))
    original, fetched = load_bundle(tiny_bundle), load_bundle(local)
    assert fetched.config == original.config
    state, fetched_state = original.model.state_dict(), fetched.model.state_dict()
    assert state.keys() == fetched_state.keys() and all(torch.equal(state[k], fetched_state[k]) for k in state)

    source = MlflowClient(store, registry_uri=store).get_model_version_download_uri("tiny-spheres", "1")
    assert source.startswith("file://") and (Path(source[len("file://") :]) / "model.pt").exists()  # copied, not moved
    stamp = Path(local).stat().st_mtime_ns, (Path(local) / "model.pt").stat().st_mtime_ns

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded again")

    monkeypatch.setattr("mlflow.artifacts.download_artifacts", no_download)
    assert resolve_model("models:/tiny-spheres@champion", store, cache_dir=cache) == local
    assert resolve_model("models:/tiny-spheres/1", store, cache_dir=cache) == local
    assert resolve_model("models:/tiny-spheres/latest", store, cache_dir=cache) == local
    assert (Path(local).stat().st_mtime_ns, (Path(local) / "model.pt").stat().st_mtime_ns) == stamp

    row = next(r for r in list_models(store) if r["name"] == "tiny-spheres")
    assert row["versions"] == [1] and row["aliases"] == {"champion": 1} and row["latest_version"] == 1
    assert row["description"].startswith("Micro3Diff 2D denoiser")


def test_unknown_references_and_pass_through(store, tiny_bundle, monkeypatch, tmp_path):
    from micro_doe.tracking.registry import default_cache_dir, register_bundle, resolve_model

    register_bundle(tiny_bundle, "tiny-known", alias="champion", tracking_uri=store)
    with pytest.raises(ValueError, match=r"models:/tiny-known@nope.*no alias 'nope'.*registered models: .*tiny-known"):
        resolve_model("models:/tiny-known@nope", store, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"models:/tiny-known/7.*no version 7"):
        resolve_model("models:/tiny-known/7", store, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"no registered model 'ghost'.*registered models: .*tiny-known \(@champion"):
        resolve_model("models:/ghost@champion", store, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="expected models:/NAME@ALIAS"):
        resolve_model("models:/just-a-name", store)
    assert resolve_model("pretrained:x") == "pretrained:x"
    assert resolve_model(str(tiny_bundle)) == str(tiny_bundle)
    assert resolve_model("some/relative/dir") == "some/relative/dir"
    monkeypatch.setenv("MICRO_DOE_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" / "models"


def test_broken_bundle_is_refused_before_registering(store, tiny_bundle, tmp_path):
    from micro_doe.platform.bundles import BundleError
    from micro_doe.tracking.registry import list_models, mlflow_client, register_bundle

    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    (broken / "model.pt").unlink()
    def registration_runs() -> int:
        exp = mlflow_client(store).get_experiment_by_name("micro-doe-models")
        return len(mlflow_client(store).search_runs([exp.experiment_id])) if exp else 0

    before = registration_runs()
    with pytest.raises(BundleError, match="model.pt is missing"):
        register_bundle(broken, "broken-model", alias="champion", tracking_uri=store)
    assert "broken-model" not in [r["name"] for r in list_models(store)]
    assert registration_runs() == before
    with pytest.raises(ValueError, match="alias"):
        register_bundle(tiny_bundle, "tiny-x", alias="v3", tracking_uri=store)
    with pytest.raises(ValueError, match="model name"):
        register_bundle(tiny_bundle, "a/b", tracking_uri=store)


def test_models_cli_register_and_list(store, tiny_bundle, tmp_path):
    from typer.testing import CliRunner

    from micro_doe.cli.models import models_app

    runner = CliRunner()
    done = runner.invoke(
        models_app, ["register", str(tiny_bundle), "--name", "cli-model", "--alias", "champion", "--tracking", store]
    )
    assert done.exit_code == 0, done.output
    assert "models:/cli-model@champion" in done.output.replace("\n", "")
    listed = runner.invoke(models_app, ["list", "--tracking", store], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    assert "cli-model" in listed.output and "@champion → v1" in listed.output
    for shipped in ("pretrained:spheres-32", "pretrained:opv-32"):  # what a new user has, beside the registry
        assert shipped in listed.output
    assert "micro3diff" in listed.output and "ldm" in listed.output and "32³" in listed.output
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    empty = runner.invoke(models_app, ["list", "--tracking", missing], env={"COLUMNS": "200"})
    assert empty.exit_code == 0 and "no models registered" in empty.output
    assert not (tmp_path / "none.db").exists()
    bad = runner.invoke(models_app, ["register", str(tmp_path), "--name", "nope", "--tracking", store])
    assert isinstance(bad.exception, ValueError)


def test_printed_commands_run_in_a_shell_without_the_venv(monkeypatch):
    import sys
    from pathlib import Path

    from micro_doe.tracking.registry import runnable, ui_hint

    venv_bin = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # a fresh shell: the venv not activated
    assert runnable("mlflow") == f"{venv_bin}/mlflow" and runnable("micro-doe") == f"{venv_bin}/micro-doe"
    first_line = ui_hint("sqlite:////x/m.db", "3").splitlines()[0]
    assert first_line == f"{venv_bin}/mlflow ui --backend-store-uri sqlite:////x/m.db --host 127.0.0.1"  # no comma
    monkeypatch.setenv("PATH", f"{venv_bin}:/usr/bin:/bin")  # activated: the short name
    assert runnable("mlflow") == "mlflow" and runnable("no-such-program") == "no-such-program"
