"""Malformed input, as a new user types it: for every case the command exits 2 with one line
that names the option, file or field, prints no traceback, and leaves the folder exactly as
it was (nothing created, nothing changed, nothing deleted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from micro_doe.cli.app import main
from micro_doe.platform.synthetic import spherical_inclusions
from micro_doe.platform.volumes import make_volume, write_netcdf

pytestmark = pytest.mark.filterwarnings("ignore")

STUDY = {
    "name": "bad-input",
    "generator": {"kind": "micro3diff", "model": "pretrained:spheres-32"},
    "search": {"n_h": {"int": [0, 1]}},
    "fixed": {"steps": 2},
    "samples_per_trial": 1,
    "objectives": [{"name": "s2_error"}],
    "budget": {"n_trials": 1},
    "storage": "sqlite:///runs/optuna.db",
    "tracking": "sqlite:///runs/mlflow.db",
    "artifacts": "runs/artifacts",
}


def study(**changes: object) -> dict:
    spec = json.loads(json.dumps(STUDY))
    for key, value in changes.items():
        head, _, tail = key.partition("__")
        if tail:
            spec[head][tail] = value
        else:
            spec[key] = value
    return spec


# (id, argv, what the one-line message must contain, files the case needs).
# "{x}" in an argument is replaced by the path of fixture file x (see make_files).
CASES = [
    # ---- run: the study file and its stores
    ("run-unknown-db", ["run", "{s:storage=notadb://x/y}"], "storage: unknown database kind 'notadb'"),
    ("run-db-under-a-file", ["run", "{s:storage=sqlite:///afile/optuna.db}"], "storage: "),
    ("run-db-in-proc", ["run", "{s:storage=sqlite:////proc/optuna.db}"], "storage: /proc"),
    ("run-db-not-sqlite", ["run", "{s:storage=sqlite:///afile}"], "afile exists and is not a SQLite database"),
    ("run-db-driver-missing", ["run", "{s:storage=mysql+mysqldb://u@localhost/db}"], "storage: the database driver"),
    ("run-tracking-not-a-uri", ["run", "{s:tracking=sqlite//runs/mlflow.db}"], "tracking: 'sqlite//"),
    ("run-artifacts-under-a-file", ["run", "{s:artifacts=afile/artifacts}"], "artifacts: "),
    ("run-name-too-long", ["run", "{s:name=" + "a" * 5000 + "}"], "name: at most 100 characters"),
    ("run-models-ref-without-registry", ["run", "{s:generator__model=models:/spheres@champion}"], "generator.model"),
    ("run-objective-exits", ["run", "{s:objectives=exiting}"], "called sys.exit(3)"),
    ("run-n-trials-bool", ["run", "{s:budget={n_trials: true}}"], "budget.n_trials"),
    ("run-timeout-huge", ["run", "{s:budget={n_trials: 1, timeout_s: 1e308}}"], "budget.timeout_s"),
    ("run-generators-bool", ["run", "{s:resources={generators: true}}"], "resources.generators"),
    ("run-verify-negative-tolerance",
     ["run", "{s:generator={kind: ldm, model: 'pretrained:opv-32', verify: {tolerance: -0.1}}}"],
     "generator.verify.tolerance"),
    ("generate-ldm-vf-below-0", ["generate", "pretrained:opv-32", "--out", "g.nc", "-t", "vf_donor=-0.5",
                                 "--allow-extrapolation"], "target vf_donor = -0.5: expected a value in [0, 1]"),
    ("generate-ternary-vf-sum", ["generate", "pretrained:opv-ternary-32", "--out", "g.nc", "-t", "vf_donor=0.6", "-t",
                                "vf_mixed=0.5"], "volume fractions that sum to 1.1"),
    ("generate-no-verify-with-tolerance",
     ["generate", "pretrained:opv-32", "--out", "g.nc", "-t", "vf_donor=0.4", "--no-verify", "--tolerance", "0.1"],
     "--no-verify: conflicts with --tolerance"),
    ("run-huge-n-trials", ["run", "{s:budget__n_trials=1e30}"], "budget.n_trials"),
    ("run-huge-samples", ["run", "{s:samples_per_trial=1e12}"], "samples_per_trial"),
    ("run-n-trials-0", ["run", "{s:}", "--n-trials", "0"], "--n-trials"),
    ("run-n-trials-negative", ["run", "{s:}", "--n-trials", "-1"], "--n-trials"),
    ("run-timeout-negative", ["run", "{s:}", "--timeout", "-1"], "--timeout"),
    ("run-timeout-nan", ["run", "{s:}", "--timeout", "nan"], "--timeout"),
    ("run-no-such-study", ["run", "nope.yaml"], "nope.yaml: no such file"),
    ("dashboard-before-any-run", ["dashboard", "{s:}"], "no Optuna storage there yet"),
    ("dashboard-bad-port", ["dashboard", "{s:}", "--port", "70000"], "--port"),
    ("dashboard-storage-a-folder", ["dashboard", "{s:storage=sqlite:///results}"], "results is a folder"),
    ("dashboard-storage-not-sqlite", ["dashboard", "{s:storage=sqlite:///afile}"], "afile exists and is not a SQLite"),
    ("dashboard-storage-password-masked", ["dashboard", "{s:storage=postgresql://u:hunter2@127.0.0.1:1/db}"],
     "postgresql://u:***@127.0.0.1:1/db"),
    # ---- generate
    ("generate-steps-0", ["generate", "pretrained:spheres-32", "--out", "g.nc", "--steps", "0"], "--steps"),
    ("generate-n-h-negative", ["generate", "pretrained:spheres-32", "--out", "g.nc", "--n-h", "-1"], "--n-h"),
    ("generate-sampler", ["generate", "pretrained:spheres-32", "--out", "g.nc", "--sampler", "foo"], "--sampler"),
    ("generate-eta", ["generate", "pretrained:spheres-32", "--out", "g.nc", "--eta", "-1"], "--eta"),
    ("generate-guidance", ["generate", "pretrained:opv-32", "--out", "g.nc", "--guidance", "-1"], "--guidance"),
    ("generate-n-0", ["generate", "pretrained:spheres-32", "--out", "g.nc", "--n", "0"], "--n:"),
    ("generate-cuda", ["generate", "pretrained:spheres-32", "--out", "g.nc", "--device", "cuda"], "--device cuda"),
    ("generate-over-a-file", ["generate", "pretrained:spheres-32", "--out", "{existing.nc}"], "--overwrite"),
    ("generate-suffix", ["generate", "pretrained:spheres-32", "--out", "g.txt"], "--out g.txt"),
    ("generate-no-model", ["generate", "nowhere", "--out", "g.nc"], "nowhere: not a model bundle"),
    ("generate-size-below-training", ["generate", "pretrained:spheres-32", "--out", "g.nc", "--size", "16"],
     "--size: an integer ≥ 32, the side of the model's training images"),
    ("generate-size-not-a-multiple", ["generate", "pretrained:spheres-32", "--out", "g.nc", "--size", "34"],
     "--size: a multiple of 4"),
    ("generate-size-too-large", ["generate", "pretrained:spheres-32", "--out", "g.nc", "--size", "8192"],
     "--size 8192: needs about"),
    ("generate-size-ldm", ["generate", "pretrained:opv-32", "--out", "g.nc", "--size", "64"], "--size: not an option of"),
    ("generate-variant", ["generate", "pretrained:spheres-32", "--out", "g.nc", "--variant", "foo"], "--variant"),
    ("generate-vf-out-of-range", ["generate", "pretrained:spheres-32", "--out", "g.nc", "--target", "vf_inclusion=0.9"],
     "--allow-extrapolation"),
    ("generate-target-syntax", ["generate", "pretrained:spheres-32", "--out", "g.nc", "--target", "vf_inclusion"], "--target"),
    ("generate-tolerance", ["generate", "pretrained:opv-32", "--out", "g.nc", "--tolerance", "-0.1"], "--tolerance"),
    ("generate-max-candidates", ["generate", "pretrained:opv-32", "--out", "g.nc", "--max-candidates", "0"],
     "--max-candidates"),
    ("generate-rescale", ["generate", "pretrained:opv-32", "--out", "g.nc", "--guidance-rescale", "2"],
     "--guidance-rescale"),
    ("generate-tolerance-micro3diff", ["generate", "pretrained:spheres-32", "--out", "g.nc", "--tolerance", "0.1"],
     "--tolerance: not an option of"),
    ("generate-no-target", ["generate", "pretrained:opv-32", "--out", "g.nc"], "give at least one of"),
    # ---- models, schema
    ("models-list-tracking", ["models", "list", "--tracking", "sqlite//x"], "--tracking: 'sqlite//x'"),
    ("models-register-no-bundle", ["models", "register", "nowhere", "--name", "x"], "nowhere: not a model bundle"),
    ("models-register-bad-name", ["models", "register", "pretrained:spheres-32", "--name", "bad name!"], "model name"),
    ("schema-over-a-file", ["schema", "--out", "{existing.nc}"], "--overwrite"),
    # ---- train
    ("train-into-a-folder-of-files", ["train", "micro3diff", "--data", "{spheres.nc}", "--out", "{results}"],
     "not a micro-doe bundle"),
    ("train-over-a-bundle", ["train", "micro3diff", "--data", "{spheres.nc}", "--out", "{bundle}"], "--overwrite"),
    ("train-missing-data", ["train", "micro3diff", "--data", "nothing.nc", "--out", "m"], "--data nothing.nc"),
    ("train-one-phase", ["train", "micro3diff", "--data", "{flat.nc}", "--out", "m"], "one phase"),
    ("train-steps-0", ["train", "micro3diff", "--data", "{spheres.nc}", "--out", "m", "--steps", "0"], "--steps"),
    ("train-cuda", ["train", "micro3diff", "--data", "{spheres.nc}", "--out", "m", "--device", "cuda"], "--device"),
    ("train-too-few-to-hold-out", ["train", "micro3diff", "--data", "{spheres.nc}", "--out", "m"], "--held-out 0.1"),
    ("train-crops-no-strip-to-hold-out", ["train", "micro3diff", "--data", "{image.nc}", "--crop-size", "24", "--out", "m"],
     "--crop-size 24"),
    ("train-not-square", ["train", "micro3diff", "--data", "{wide.nc}", "--out", "m"], "must be square"),
    ("train-tune-budget-1", ["train", "micro3diff", "--data", "{spheres.nc}", "--out", "m", "--tune-budget", "1"],
     "--tune-budget 1: a tuning budget must try at least 2 settings"),
    ("train-tune-budget-text", ["train", "micro3diff", "--data", "{spheres.nc}", "--out", "m", "--tune-budget", "lots"],
     "--tune-budget 'lots'"),
    ("train-tune-without-held-out", ["train", "micro3diff", "--data", "{spheres.nc}", "--out", "m", "--held-out", "0"],
     "--held-out 0: tuning judges"),
    ("train-threads-0", ["train", "micro3diff", "--data", "{spheres.nc}", "--out", "m", "--threads", "0", "--no-tune",
                         "--held-out", "0"], "--threads"),
    ("tune-without-held-out-images", ["tune", "{bundle}"], "--held-out-data"),
    ("tune-budget-1", ["tune", "{bundle}", "--tune-budget", "1"], "--tune-budget"),
    ("tune-budget-1-minute", ["tune", "{bundle}", "--tune-budget", "1m"], "--tune-budget 1m: at least 2 minutes"),
    ("tune-max-passes-below-the-paper", ["tune", "{bundle}", "--max-passes", "50"], "--max-passes 50: at least 100"),
    ("train-max-passes-below-the-paper", ["train", "micro3diff", "--data", "{spheres.nc}", "--out", "m", "--max-passes", "0"],
     "--max-passes 0: at least 100"),
    ("tune-held-out-data-missing", ["tune", "{bundle}", "--held-out-data", "nothing.nc"], "--held-out-data nothing.nc"),
    ("tune-an-ldm", ["tune", "pretrained:opv-32"], "micro-doe tune tunes Micro3Diff bundles"),
    ("train-ldm-over-folder", ["train", "ldm", "--data", "{spheres.nc}", "--out", "{results}"], "not a micro-doe bundle"),
    ("train-ldm-tracking", ["train", "ldm", "--data", "{spheres.nc}", "--out", "m", "--tracking", "mlruns"], "--tracking"),
    # ---- evaluate
    ("evaluate-one-voxel", ["evaluate", "{voxel.nc}"], "voxel.nc: shape (1, 1, 1)"),
    ("evaluate-text-npy", ["evaluate", "{text.npy}"], "text.npy: not a NumPy .npy file"),
    ("evaluate-threshold-on-labels", ["evaluate", "{spheres.nc}", "--threshold", "0.5"], "--threshold"),
    ("evaluate-axis", ["evaluate", "{spheres.nc}", "--axis", "q"], "--axis"),
    ("evaluate-json-over-a-file", ["evaluate", "{spheres.nc}", "--json", "{existing.nc}"], "--json"),
    ("evaluate-missing", ["evaluate", "missing.nc"], "missing.nc: no such file"),
    ("evaluate-symlink-loop", ["evaluate", "{loop.nc}"], "loop.nc: a symbolic link loop"),
    ("evaluate-dangling-link", ["evaluate", "{dangling.nc}"], "dangling.nc: a symbolic link to a missing target"),
    ("evaluate-more-labels-than-names", ["evaluate", "{three-labels.nc}"],
     "labels 0..2 but 2 phase names ['matrix', 'inclusion']"),
    ("evaluate-json-name-too-long", ["evaluate", "{spheres.nc}", "--json", "j" * 300 + ".json"], "--json"),
    ("run-study-symlink-loop", ["run", "{loop.yaml}"], "a symbolic link loop"),
    # ---- data make
    ("spheres-huge", ["data", "make", "spheres", "--shape", "5000", "5000", "5000", "--out", "s.nc"], "--shape 5000"),
    ("spheres-tiny", ["data", "make", "spheres", "--shape", "1", "1", "1", "--out", "s.nc"], "--shape"),
    ("spheres-diameter", ["data", "make", "spheres", "--shape", "16", "16", "16", "--out", "s.nc"], "--mean-diameter"),
    ("spheres-over-a-file", ["data", "make", "spheres", "--out", "{existing.nc}"], "--overwrite"),
    ("spheres-suffix", ["data", "make", "spheres", "--out", "s.txt"], "--out s.txt"),
    ("polycrystal-size", ["data", "make", "polycrystal", "--size", "4", "--out", "p.nc"], "--size"),
    ("polycrystal-grain", ["data", "make", "polycrystal", "--grain-size", "90", "--out", "p.nc"], "--grain-size"),
    ("crops-of-a-volume", ["data", "make", "crops", "--image", "{spheres.nc}", "--out", "c.nc"], "--image"),
    ("cahn-hilliard-shape", ["data", "make", "cahn-hilliard", "--shape", "2", "2", "2", "--out", "o.nc"], "--shape"),
    ("cahn-hilliard-phases", ["data", "make", "cahn-hilliard", "--phases", "4", "--out", "o.nc"], "--phases"),
    ("cahn-hilliard-phi-mixed-range", ["data", "make", "cahn-hilliard", "--phases", "3", "--phi-mixed", "0.5:0.2",
                                       "--out", "o.nc"], "--phi-mixed: expected 0 < low < high < 1"),
    ("cahn-hilliard-phi-mixed-two-phases", ["data", "make", "cahn-hilliard", "--phi-mixed", "0.2", "--out", "o.nc"],
     "--phi-mixed: only for --phases 3"),
    ("cahn-hilliard-phi-mixed-text", ["data", "make", "cahn-hilliard", "--phases", "3", "--phi-mixed", "a:b",
                                      "--out", "o.nc"], "--phi-mixed: expected a fraction"),
    ("cahn-hilliard-snapshot-every", ["data", "make", "cahn-hilliard", "--steps", "20", "--snapshot-every", "30",
                                      "--out", "o.nc"], "--snapshot-every: must be <= n_steps = 20"),
    ("train-ldm-label-dropout", ["train", "ldm", "--data", "{spheres.nc}", "--out", "m", "--label-dropout", "1.5"],
     "--label-dropout"),
    ("train-ldm-fp-outputs", ["train", "ldm", "--data", "{spheres.nc}", "--out", "m", "--fp-outputs", "phi"],
     "--fp-outputs: must include every conditioning label"),
    ("train-micro3diff-precision", ["train", "micro3diff", "--data", "{spheres.nc}", "--out", "m", "--precision",
                                    "fp16"], "--precision"),
    ("train-ldm-precision", ["train", "ldm", "--data", "{spheres.nc}", "--out", "m", "--precision", "fp16"],
     "--precision"),
]


def make_files(root: Path) -> dict[str, Path]:
    """The inputs the cases refer to, made once per case in an empty folder."""
    files: dict[str, Path] = {}
    files["spheres.nc"] = write_netcdf(
        spherical_inclusions((12, 12, 12), mean_diameter=4.0, sd_diameter=0.5, volume_fraction=0.1, seed=0), root / "spheres.nc"
    )
    files["wide.nc"] = write_netcdf(make_volume(np.arange(40 * 8 * 6).reshape(40, 8, 6) % 2), root / "wide.nc")
    files["image.nc"] = write_netcdf(make_volume(np.arange(40 * 40).reshape(40, 40) % 2), root / "image.nc")
    files["flat.nc"] = write_netcdf(make_volume(np.zeros((8, 12, 12), np.int8)), root / "flat.nc")
    files["voxel.nc"] = write_netcdf(make_volume(np.ones((1, 1, 1), np.int8)), root / "voxel.nc")
    (root / "text.npy").write_text("1 2 3\n")
    files["text.npy"] = root / "text.npy"
    files["existing.nc"] = root / "existing.nc"
    files["existing.nc"].write_text("the user's file")
    (root / "results").mkdir()
    (root / "results" / "thesis.txt").write_text("years of work")
    files["results"] = root / "results"
    (root / "bundle").mkdir()
    (root / "bundle" / "config.json").write_text(json.dumps({"kind": "micro3diff"}))
    files["bundle"] = root / "bundle"
    (root / "afile").write_text("not a folder")
    (root / "loop.nc").symlink_to(root / "loop.nc")
    files["loop.nc"] = root / "loop.nc"
    (root / "loop.yaml").symlink_to(root / "loop.yaml")
    files["loop.yaml"] = root / "loop.yaml"
    (root / "dangling.nc").symlink_to(root / "gone.nc")
    files["dangling.nc"] = root / "dangling.nc"
    three = make_volume(np.arange(8 * 8 * 8).reshape(8, 8, 8) % 3, phase_names=["matrix", "inclusion", "third"])
    three.attrs["phase_names"] = ["matrix", "inclusion"]  # a file whose names miss a label
    three.to_netcdf(root / "three-labels.nc")
    files["three-labels.nc"] = root / "three-labels.nc"
    (root / "exiting.py").write_text("import sys\nsys.exit(3)\n")
    return files


def study_file(root: Path, changes: str) -> str:
    """``{s:key=value}``: the base study with one field changed, written to study.yaml."""
    overrides: dict[str, object] = {}
    if changes:
        key, _, value = changes.partition("=")
        parsed = yaml.safe_load(value)
        if key == "objectives":
            parsed = [{"name": f"{value}:f"}]
        overrides[key] = parsed
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(study(**overrides)))
    return str(path)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    stats = {p: p.lstat() for p in root.rglob("*")}  # lstat: the links of the cases point nowhere
    return {str(p.relative_to(root)): (st.st_size, st.st_mtime_ns) for p, st in stats.items()}


@pytest.mark.parametrize(("case", "argv", "expected"), CASES, ids=[c[0] for c in CASES])
def test_malformed_input_gets_one_line_exit_2_and_leaves_nothing(case, argv, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    files = make_files(tmp_path)
    args = []
    for arg in argv:
        if arg.startswith("{s:"):
            args.append(study_file(tmp_path, arg[3:-1]))
        elif arg.startswith("{"):
            args.append(str(files[arg[1:-1]]))
        else:
            args.append(arg)
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as done:
        main(args)
    err = capsys.readouterr().err
    assert done.value.code == 2, err
    assert expected in err, err
    assert "Traceback" not in err and "pydantic" not in err and "errors.pydantic.dev" not in err
    assert "hunter2" not in err  # no case prints a password
    assert len(err.strip().splitlines()) == 1, err
    assert snapshot(tmp_path) == before


def test_an_unreachable_cluster_is_refused_before_any_store(tmp_path):
    # A fresh process: this one may already be attached to the suite's local Ray.
    path = study_file(tmp_path, "")
    before = snapshot(tmp_path)
    env = os.environ | {"RAY_ADDRESS": "127.0.0.1:1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.run([sys.executable, "-m", "micro_doe.cli.app", "run", path], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 2 and "127.0.0.1:1" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert snapshot(tmp_path) == before


def test_more_actors_than_cpus_is_refused_before_any_store(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study(resources={"generators": 1, "evaluators": 50})))
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as done:
        main(["run", str(path)])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "resources: 1 generator(s) + 50 evaluator(s) need 51 CPUs" in err
    assert snapshot(tmp_path) == before


def test_the_table_covers_every_command() -> None:
    commands = {c[1][0] if c[1][0] != "data" else " ".join(c[1][:3]) for c in CASES}
    assert {"run", "generate", "train", "evaluate", "models", "data make spheres", "data make cahn-hilliard"} <= commands
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)


def test_umask_is_respected_by_every_write(tmp_path, monkeypatch):
    from micro_doe.platform.volumes import atomic_directory, atomic_path

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("x")
        with atomic_directory(tmp_path / "bundle") as staging:
            (staging / "sub").mkdir()
            (staging / "config.json").write_text(json.dumps({"kind": "micro3diff"}))
        os.umask(0o077)
        with atomic_path(tmp_path / "private.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    mode = lambda p: (tmp_path / p).stat().st_mode & 0o777  # noqa: E731
    assert (mode("a.txt"), mode("bundle"), mode("bundle/sub"), mode("private.txt")) == (0o644, 0o755, 0o755, 0o600)
