"""optuna-dashboard as a real subprocess on a small study whose trials carry PNG images."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import numpy as np
import pytest
from live_processes import free_port, get_json, serving

from micro_doe.studies.dashboard import artifact_store, dashboard_command, upload_trial_image


def test_command_binds_loopback_unless_told(tmp_path):
    cmd = dashboard_command("sqlite:///rel/optuna.db", tmp_path / "art", port=8123)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "8123"
    assert cmd[cmd.index("--artifact-dir") + 1] == str(tmp_path / "art") and not (tmp_path / "art").exists()
    assert cmd[cmd.index("--server") + 1] == "wsgiref"
    storage = next(a for a in cmd if a.startswith("sqlite:"))
    assert storage.startswith("sqlite:////") and storage.endswith("/rel/optuna.db")  # absolute
    for host in ("0.0.0.0", "::", "192.168.1.5"):
        with pytest.raises(ValueError, match="allow_remote"):
            dashboard_command("sqlite:////x.db", tmp_path / "art", host=host)
    remote = dashboard_command("sqlite:////x.db", tmp_path / "art", host="0.0.0.0", allow_remote=True)
    assert remote[remote.index("--host") + 1] == "0.0.0.0"
    assert dashboard_command("sqlite:////x.db", tmp_path / "art", host="localhost")


def test_dashboard_serves_trials_with_images(tmp_path):
    import optuna

    from micro_doe.platform.plots import slice_montage
    from micro_doe.platform.volumes import make_volume

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    store = artifact_store(tmp_path / "artifacts")
    study = optuna.create_study(storage=storage, study_name="dash", directions=["minimize"])
    rng = np.random.default_rng(0)
    for i in range(2):
        trial = study.ask({"n_h": optuna.distributions.IntDistribution(0, 4)})
        png = slice_montage(make_volume((rng.random((8, 8, 8)) < 0.4).astype(np.int8)), tmp_path / f"m{i}.png")
        upload_trial_image(study, trial, png, store)
        study.tell(trial, float(i))

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with serving(dashboard_command(storage, tmp_path / "artifacts", port=port), f"{base}/api/studies", timeout=30):
        studies = get_json(f"{base}/api/studies")["study_summaries"]
        assert [s["study_name"] for s in studies] == ["dash"]
        assert get_json(f"{base}/api/meta")["artifact_is_available"] is True
        detail = get_json(f"{base}/api/studies/{studies[0]['study_id']}")
        assert [t["state"] for t in detail["trials"]] == ["Complete", "Complete"]
        for trial in detail["trials"]:
            (artifact,) = trial["artifacts"]
            assert artifact["mimetype"] == "image/png"
            url = f"{base}/artifacts/{studies[0]['study_id']}/{trial['trial_id']}/{artifact['artifact_id']}"
            with urllib.request.urlopen(url, timeout=5) as response:
                assert response.headers["Content-Type"] == "image/png"
                assert response.read()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_dashboard_refuses_missing_storage_and_taken_port(tmp_path):
    from micro_doe.studies.dashboard import run_dashboard

    with pytest.raises(ValueError, match="no Optuna storage"):
        run_dashboard(f"sqlite:///{tmp_path / 'missing.db'}", tmp_path / "art", port=free_port())
    assert not (tmp_path / "missing.db").exists()
    (tmp_path / "o.db").touch()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ValueError, match="not available"):
            run_dashboard(f"sqlite:///{tmp_path / 'o.db'}", tmp_path / "art", port=taken.getsockname()[1])
