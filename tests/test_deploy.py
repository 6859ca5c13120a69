"""The deployment files agree with the package: versions, token auth, loopback binds, a valid study.

(Their full validation needs tools CI does not install: ``python deploy/validate.py``.)"""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import yaml

import micro_doe
from micro_doe.studies.spec import StudySpec

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def docs(name: str) -> list[dict]:
    return list(yaml.safe_load_all((DEPLOY / name).read_text()))


def test_every_published_port_is_on_loopback_and_every_secret_is_required():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    ports = [p for service in compose["services"].values() for p in service.get("ports", [])]
    assert ports and all(p.startswith("127.0.0.1:") for p in ports)
    text = (DEPLOY / "compose.yaml").read_text()
    assert "${RAY_AUTH_TOKEN:?" in text and "${PGPASSWORD:?" in text
    assert compose["services"]["ray-head"]["environment"]["RAY_AUTH_MODE"] == "token"


def test_kuberay_manifests_run_this_version_with_token_auth():
    clusters = [d["spec"] for d in docs("kuberay/raycluster.yaml")]
    clusters += [d["spec"]["rayClusterSpec"] for d in docs("kuberay/rayjob.yaml") if d["kind"] == "RayJob"]
    for spec in clusters:
        assert spec["authOptions"] == {"mode": "token", "secretName": "micro-doe-ray-token"}
        assert spec["rayVersion"] == version("ray")
        pods = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
        images = {c["image"] for p in pods for c in p["template"]["spec"]["containers"]}
        assert images and all(re.fullmatch(rf"micro-doe:{micro_doe.__version__}-(cpu|cuda)", i) for i in images)
    secrets = {d["metadata"]["name"] for d in docs("kuberay/secrets.example.yaml")}
    assert secrets == {"micro-doe-ray-token", "micro-doe-postgres"}


def test_the_kubernetes_study_is_a_valid_study_without_a_password():
    config = next(d for d in docs("kuberay/rayjob.yaml") if d["kind"] == "ConfigMap")
    spec = StudySpec.model_validate(yaml.safe_load(config["data"]["study.yaml"]))
    assert spec.storage.startswith("postgresql+psycopg://doe@") and spec.tracking.startswith("http://")


def test_the_image_installs_from_the_lock_with_the_tested_torch():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f"torch=={version('torch').split('+')[0]}" in dockerfile
    assert dockerfile.count("--constraint requirements.lock") == 2  # pip and setuptools, then the package
    assert "requirements.lock" in (DEPLOY.parent / ".dockerignore").read_text()
