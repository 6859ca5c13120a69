"""What a person reviewing a study sees, read through the real servers' own HTTP APIs: a small
study runs (local Ray, sqlite stores), then optuna-dashboard and ``mlflow server`` start on
127.0.0.1 and are asked what their UIs show: objective names, constraints and feasibility,
study attributes, Pareto tags, real trial durations, the experiment's kind and description."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from live_processes import free_port, get_json, serving

from micro_doe.studies.dashboard import dashboard_command
from micro_doe.studies.runner import Study

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, tiny_bundle):
    root = tmp_path_factory.mktemp("review")
    spec = {
        "name": "review",
        "purpose": "Which n_h and S give the tiny model's truest S2 for the seconds spent?",
        "generator": {"kind": "micro3diff", "model": str(tiny_bundle)},
        "search": {"n_h": {"int": [0, 1]}, "steps": {"int": [2, 4]}},
        "samples_per_trial": 1,
        "objectives": [{"name": "s2_error"}, {"name": "seconds_per_volume"}],
        "constraints": [{"metric": "vf_error", "max": 0.05}],
        "sampler": {"kind": "tpe", "seed": 0},
        "budget": {"n_trials": 4},
        "storage": f"sqlite:///{root}/optuna.db",
        "tracking": f"sqlite:///{root}/mlflow.db",
        "artifacts": f"{root}/artifacts",
    }
    (root / "study.yaml").write_text(yaml.safe_dump(spec))
    result = Study.from_yaml(root / "study.yaml").run()
    return root, result


def test_optuna_dashboard_shows_names_constraints_feasibility_and_attributes(finished_study):
    root, result = finished_study
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with serving(dashboard_command(f"sqlite:///{root}/optuna.db", root / "artifacts" / "optuna", port=port),
                f"{base}/api/studies"):
        (summary,) = get_json(f"{base}/api/studies")["study_summaries"]
        attrs = {a["key"]: a["value"] for a in summary["user_attrs"]}
        assert attrs["generator"] == "micro3diff" and attrs["constraints"] == "vf_error ≤ 0.05"
        assert attrs["purpose"].startswith("Which n_h and S")  # what the study is for, on its page
        assert attrs["objectives"] == "s2_error (minimize), seconds_per_volume (minimize)"
        detail = get_json(f"{base}/api/studies/{summary['study_id']}")
        assert detail["objective_names"] == ["s2_error", "seconds_per_volume"]
        trials = [t for t in detail["trials"] if t["state"] == "Complete"]
        assert len(trials) == 4
        for t in trials:
            (violation,) = t["constraints"]  # what the dashboard colours feasible / infeasible by
            shown = {a["key"]: a["value"] for a in t["user_attrs"]}
            assert shown["feasible"] == str(violation <= 0.0)
            assert float(shown["constraint: vf_error ≤ 0.05"]) == pytest.approx(violation + 0.05)  # the value, not slack
            assert [a["mimetype"] for a in t["artifacts"]] == ["image/png"]
            assert re.fullmatch(r"http://127\.0\.0\.1:5000/#/experiments/\d+/runs/[0-9a-f]{32}\?workflowType=machine_learning",
                                shown["mlflow run"])  # the model-training layout, not GenAI's
            assert float(shown["s2_error [%]"]) == pytest.approx(t["values"][0], rel=1e-3)  # named, with its unit
            assert float(shown["seconds_per_volume [s]"]) == pytest.approx(t["values"][1], rel=1e-3)
        feasible_front = {t.number for t in result.best_trials}
        assert {t["number"] for t in detail["best_trials"]} >= feasible_front


def test_mlflow_server_shows_durations_pareto_tags_and_descriptions(finished_study):
    root, result = finished_study
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    api = f"{base}/api/2.0/mlflow"
    with serving(command, f"{api}/experiments/get-by-name?experiment_name=review"):
        experiment = get_json(f"{api}/experiments/get-by-name?experiment_name=review")["experiment"]
        tags = {t["key"]: t["value"] for t in experiment["tags"]}
        assert tags["mlflow.experimentKind"] == "custom_model_development"
        assert "`lineal_path_error`" in tags["mlflow.note.content"] and "[s]" in tags["mlflow.note.content"]
        # plain words first: the experiments list shows the description's start as raw text
        assert tags["mlflow.note.content"].startswith("micro-doe study review: Which n_h and S")
        rows = [line for line in tags["mlflow.note.content"].splitlines() if line.startswith("| `")]
        cells = {row.split("`")[1]: re.split(r"(?<!\\)\|", row)[2].strip() for row in rows}  # split on bare pipes
        assert cells["vf_error"].startswith("\\|vf − target\\|")  # a literal |x| does not end the cell
        assert cells["vf_<phase name>"] and all(cells.values())  # vf_grain, vf_boundary … are defined too
        runs = get_json(f"{api}/runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})["runs"]
        by_role: dict[str, list] = {}
        for run in runs:
            run_tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
            by_role.setdefault(run_tags["micro_doe.role"], []).append((run, run_tags))
        (parent, parent_tags), = by_role["invocation"]
        metrics = {m["key"]: m["value"] for m in parent["data"]["metrics"]}
        assert metrics["trials_complete"] == 4 and metrics["trials_pareto"] == len(result.best_trials)
        assert "Pareto front" in parent_tags["mlflow.note.content"]
        pareto = {int(tags["optuna_trial_number"]) for _, tags in by_role["trial"] if tags["micro_doe.pareto"] == "true"}
        assert pareto == {t.number for t in result.best_trials}
        for run, _ in by_role["trial"]:  # the run spans the trial, not the few ms of logging it
            seconds = next(m["value"] for m in run["data"]["metrics"] if m["key"] == "trial_seconds")
            duration = (int(run["info"]["end_time"]) - int(run["info"]["start_time"])) / 1000
            assert duration == pytest.approx(seconds, abs=0.01)
        view = json.loads(tags["mlflow.sharedViewState.micro-doe-trials"])  # the description links to it
        assert view["searchFilter"] == "tags.`micro_doe.role` = 'trial'" and view["orderByKey"] == "metrics.`s2_error`"
        assert view["selectedColumns"][:3] == ["metrics.`s2_error`", "metrics.`seconds_per_volume`", "metrics.`vf_error`"]
        assert "viewStateShareKey=micro-doe-trials&workflowType=machine_learning" in tags["mlflow.note.content"]
        for run, run_tags in by_role["trial"]:  # units and provenance in each trial run's description
            note = run_tags["mlflow.note.content"]
            assert "`s2_error` = " in note and " %," in note and note.count(" s. ") >= 1
            params = {p["key"]: p["value"] for p in run["data"]["params"]}
            assert f"seeds {params['seed']} … {params['seed']}" in note and "model_sha256" in params
        artifacts = get_json(f"{api}/artifacts/list?run_id={parent['info']['run_id']}")
        assert {"pareto.csv", "pareto.png", "summary.json"} <= {f["path"] for f in artifacts["files"]}


# ----------------------------------------------------------------------------- in a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs chromium on the PATH (apt-get install chromium); "
                                                             "`make browser-test` runs these where it is")


def rendered(url: str) -> tuple[str, str]:
    """(visible text, DOM) of ``url`` after its scripts ran for 15 s of virtual time in headless Chromium."""
    dom = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1440,1000",
                          "--virtual-time-budget=15000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=180, check=True).stdout  # fmt: skip
    text = re.sub(r"<(style|script)[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))), dom


@needs_chromium
def test_a_browser_shows_the_trial_page_and_the_mlflow_run_it_links_to(finished_study):
    root, result = finished_study
    dash_port, mlflow_port = free_port(), free_port()
    dash, base = f"http://127.0.0.1:{dash_port}", f"http://127.0.0.1:{mlflow_port}"
    mlflow_server = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                     "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"]
    api = f"{base}/api/2.0/mlflow"
    with (serving(dashboard_command(f"sqlite:///{root}/optuna.db", root / "artifacts" / "optuna", port=dash_port),
                  f"{dash}/api/studies"),
          serving(mlflow_server, f"{api}/experiments/get-by-name?experiment_name=review")):
        (summary,) = get_json(f"{dash}/api/studies")["study_summaries"]
        trial = result.completed[0]
        text, dom = rendered(f"{dash}/dashboard/studies/{summary['study_id']}/trials?numbers={trial.number}")
        assert f"Trial {trial.number}" in text
        for seen in ("s2_error [%]", "seconds_per_volume [s]", "constraint: vf_error ≤ 0.05", "feasible", "mlflow run"):
            assert seen in text, f"the trial page does not show {seen!r}"
        assert re.search(rf'<img[^>]+alt="trial-{trial.number}\.png"[^>]+src="/artifacts/', dom)  # the montage
        link = re.search(r"http://127\.0\.0\.1:5000(/#/experiments/\d+/runs/[0-9a-f]{32}\?workflowType=machine_learning)", text)
        assert link is not None, "the trial page shows no link to its MLflow run"

        run_text, _ = rendered(base + link.group(1))  # the run the trial page links to, on this server
        assert f"trial-{trial.number}" in run_text and "Runs" in run_text and "Evaluations" not in run_text
        for seen in ("s2_error", "model_sha256", "setting.n_h", "optuna_trial_number", "(volume i from seed + i)", " %,"):
            assert seen in run_text, f"the MLflow run page does not show {seen!r}"

        experiment = get_json(f"{api}/experiments/get-by-name?experiment_name=review")["experiment"]["experiment_id"]
        view_text, _ = rendered(f"{base}/#/experiments/{experiment}/runs?viewStateShareKey=micro-doe-trials"
                                "&workflowType=machine_learning")
        shown = set(re.findall(r"trial-(\d+)", view_text))  # every trial, without expanding a parent row
        assert shown == {str(t.number) for t in result.completed} and "s2_error" in view_text
        assert "invocation-" not in view_text
