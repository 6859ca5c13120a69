"""StudySpec: loading study.yaml, every rejection naming its field, bundled studies, schema."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import micro_doe.platform.bundles as bundle_module
from micro_doe.platform.bundles import shipped_models
from micro_doe.platform.descriptors import describe
from micro_doe.platform.diffusion import NoiseSchedule
from micro_doe.platform.ldm.verify import VerifySettings
from micro_doe.platform.micro3diff.bundle import Micro3DiffConfig, TrainingRecipe
from micro_doe.platform.micro3diff.generator import VARIANTS, SamplingSettings
from micro_doe.platform.micro3diff.unet import UNetConfig
from micro_doe.platform.volumes import make_volume
from micro_doe.studies import objectives as objectives_module
from micro_doe.studies.pareto_pruner import ParetoHalvingPruner
from micro_doe.studies.search_space import GENERATOR_PARAMETERS, IntParam
from micro_doe.studies.spec import StudySpec
from micro_doe.studies.study_storage import make_pruner
from micro_doe.studies.study_yaml import SpecError, bundled_studies, load_spec, parse_spec, study_json_schema


def write_config_bundle(path: Path, T: int = 1000) -> Path:
    """A bundle directory holding only config.json and a reference.nc (of a vf-0.2 volume): all
    that loading a spec reads."""
    config = Micro3DiffConfig(
        image_size=32,
        phase_names=["matrix", "inclusion"],
        unet=UNetConfig(),
        schedule=NoiseSchedule.linear(T=T).to_dict(),
        recipe=TrainingRecipe(
            steps=1, batch_size=1, lr=1e-3, weight_decay=0, ema_decay=0.9, grad_clip=1,
            augment=False, seed=0, data="test", n_images=1,
        ),
    )
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(config.model_dump_json())
    labels = np.zeros((10, 10, 10), dtype=np.int8)
    labels[:2] = 1
    describe(make_volume(labels, phase_names=["matrix", "inclusion"]), tortuosity_axis=None).to_dataset().to_netcdf(
        path / "reference.nc"
    )
    return path


OPV_RANGES = {"vf_donor": (0.15, 0.85), "tau_donor": (1.1, 3.0), "tau_acceptor": (1.1, 3.0)}


def write_ldm_config_bundle(path: Path, trained: Path, label_dropout: float | None = None) -> Path:
    """A config-only LDM bundle: the tiny trained bundle's config.json with OPV_RANGES as training ranges
    (and another label dropout, if given)."""
    config = json.loads((trained / "config.json").read_text())
    config["label_ranges"] = config["label_ranges"] | OPV_RANGES
    if label_dropout is not None:
        config["unet"]["label_dropout"] = label_dropout
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    return path


def write_ternary_config_bundle(path: Path, trained: Path) -> Path:
    """A config-only three-phase LDM bundle (the tiny bundle's config with a mixed phase and vf_mixed)."""
    write_ldm_config_bundle(path, trained)
    config = json.loads((path / "config.json").read_text())
    config["phase_names"] = ["acceptor", "donor", "mixed"]
    config["conditioning"] = ["vf_donor", "vf_mixed", "tau_donor", "tau_acceptor"]
    config["label_ranges"]["vf_mixed"] = (0.0, 0.63)  # as the shipped model's
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture
def fake_shipped(tmp_path_factory, monkeypatch, tiny_ldm_bundle) -> Path:
    """A shipped-models folder with config-only spheres-32, polycrystal-32 (T = 1000) and opv-32 (an LDM)."""
    root = tmp_path_factory.mktemp("shipped")
    write_config_bundle(root / "spheres-32")
    write_config_bundle(root / "polycrystal-32")
    write_ldm_config_bundle(root / "opv-32", tiny_ldm_bundle)
    write_ternary_config_bundle(root / "opv-ternary-32", tiny_ldm_bundle)
    monkeypatch.setattr(bundle_module, "SHIPPED_DIR", root)
    return root


@pytest.fixture
def registry(monkeypatch) -> dict:
    fresh: dict = {}
    monkeypatch.setattr(objectives_module, "_REGISTRY", fresh)
    return fresh


VALID: dict[str, Any] = {
    "name": "demo",
    "generator": {"kind": "micro3diff", "model": "pretrained:spheres-32"},
    "search": {"n_h": {"int": [0, 4]}, "steps": {"int": [10, 100], "log": True}},
    "samples_per_trial": 2,
    "objectives": [{"name": "s2_error", "direction": "minimize"}, {"name": "volume_fraction"}],
    "constraints": [{"metric": "vf_error", "max": 0.03}],
    "sampler": {"kind": "tpe", "seed": 0, "initial_design": {"kind": "sobol", "n": 4}},
    "budget": {"n_trials": 12, "timeout_s": 900},
}


def write_study(folder: Path, data: Any, name: str = "study.yaml") -> Path:
    path = folder / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def problems(data: dict, tmp_path: Path) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        load_spec(write_study(tmp_path, data))
    assert str(info.value).startswith(str(tmp_path / "study.yaml"))
    return dict(info.value.problems)


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --------------------------------------------------------------------------- valid


def test_valid_spec_round_trips(fake_shipped, tmp_path):
    spec = load_spec(write_study(tmp_path, VALID))
    assert spec.name == "demo" and spec.samples_per_trial == 2
    assert spec.directions() == ["minimize", "maximize"]  # volume_fraction defaults to maximize
    assert spec.param_names() == ["n_h", "steps"]
    assert isinstance(spec.search["n_h"], IntParam) and spec.search["steps"].log
    assert spec.sampler.kind == "tpe" and spec.sampler.initial_design.n == 4
    assert spec.resources.generators == 1 and spec.evaluation.tortuosity_axis == "z"
    dumped = spec.model_dump(mode="json", by_alias=True)
    assert dumped["search"]["n_h"] == {"int": [0, 4], "log": False, "step": 1}
    assert parse_spec(dumped) == spec
    assert parse_spec(yaml.safe_load(yaml.safe_dump(dumped))) == spec


def test_search_space_drives_optuna(fake_shipped, tmp_path):
    import optuna

    data = copy.deepcopy(VALID)
    data["search"]["eta"] = {"float": [0.0, 1.0]}
    data["search"]["variant"] = {"categorical": list(VARIANTS)}
    spec = load_spec(write_study(tmp_path, data))
    dists = spec.distributions()
    assert dists["steps"].log and dists["n_h"].high == 4 and dists["variant"].choices == tuple(VARIANTS)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    params = {name: p.suggest(trial, name) for name, p in spec.search.items()}
    assert 0 <= params["n_h"] <= 4 and 10 <= params["steps"] <= 100 and params["variant"] in VARIANTS
    assert trial.distributions == dists


def test_micro3diff_parameter_table_matches_sampling_settings():
    # every setting is a parameter; the targets dict is searched as target.vf_<phase>
    assert set(GENERATOR_PARAMETERS["micro3diff"]) - {"target.*"} == set(SamplingSettings.model_fields) - {"targets"}
    assert GENERATOR_PARAMETERS["micro3diff"]["variant"].choices == tuple(VARIANTS)


def test_bundle_path_is_relative_to_the_study_file(tmp_path, monkeypatch):
    write_config_bundle(tmp_path / "models" / "mine")
    data = copy.deepcopy(VALID) | {"generator": {"kind": "micro3diff", "model": "models/mine"}}
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    spec = load_spec(write_study(tmp_path, data))
    assert spec.generator.model == str(tmp_path / "models" / "mine")
    assert spec.generator.bundle_config().phase_names == ["matrix", "inclusion"]


def test_judging_against_held_out_images_needs_a_bundle_that_has_them(tmp_path):
    write_config_bundle(tmp_path / "mine")
    data = copy.deepcopy(VALID) | {"generator": {"kind": "micro3diff", "model": "mine", "reference": "held_out"}}
    found = problems(data, tmp_path)
    assert any("has no held-out images" in msg and "reference" in field for field, msg in found.items()), found
    (tmp_path / "mine" / "held_out.nc").write_bytes((tmp_path / "mine" / "reference.nc").read_bytes())
    assert load_spec(write_study(tmp_path, data)).generator.reference == "held_out"


def test_micro3diff_volume_size_is_checked_against_the_model(tmp_path):
    write_config_bundle(tmp_path / "mine")  # 32² images, U-Net levels (1, 2, 2): N a multiple of 4
    data = copy.deepcopy(VALID) | {"generator": {"kind": "micro3diff", "model": "mine", "size": 64}}
    assert load_spec(write_study(tmp_path, data)).generator.size == 64
    for bad in (16, 66):
        data["generator"]["size"] = bad
        found = problems(data, tmp_path)
        assert any("multiple of 4 of at least the training size 32" in msg for msg in found.values()), found


def test_registry_model_reference_is_accepted_unchecked(tmp_path):
    data = copy.deepcopy(VALID) | {"generator": {"kind": "micro3diff", "model": "models:/spheres@champion"}}
    assert load_spec(write_study(tmp_path, data)).generator.model == "models:/spheres@champion"


def test_overrides_and_bundled_name(fake_shipped, tmp_path):
    path = write_study(tmp_path, VALID)
    spec = load_spec(path, {"budget.n_trials": 2, "sampler": {"seed": 7}, "fixed": {"variant": "moment"}})
    assert spec.budget.n_trials == 2 and spec.budget.timeout_s == 900
    assert spec.sampler.seed == 7 and spec.sampler.initial_design.n == 4
    assert spec.fixed == {"variant": "moment"}
    with pytest.raises(SpecError, match="budget.n_trials"):
        load_spec(path, {"budget.n_trials": 0})
    assert load_spec("quickstart").name == "quickstart"


def test_resolved_paths(fake_shipped, tmp_path):
    data = copy.deepcopy(VALID) | {"tracking": "http://mlflow:5000"}
    spec = load_spec(write_study(tmp_path, data)).resolved_paths(Path("/runs/here"))
    assert spec.storage == "sqlite:////runs/here/micro-doe-runs/optuna.db"
    assert spec.tracking == "http://mlflow:5000"
    assert spec.artifacts == "/runs/here/micro-doe-runs/artifacts"
    again = spec.resolved_paths(Path("/other"))
    assert again.storage == spec.storage and again.artifacts == spec.artifacts


def test_loading_creates_no_files(fake_shipped, tmp_path, monkeypatch, registry):
    (tmp_path / "my_objectives_nofiles.py").write_text(
        "from micro_doe.studies.objectives import objective\n"
        "@objective(direction='maximize')\n"
        "def roughness(sample):\n    return 1.0\n"
    )
    data = copy.deepcopy(VALID)
    data["objectives"].append({"name": "my_objectives_nofiles:roughness"})
    path = write_study(tmp_path, data)
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    spec = load_spec(path)
    assert spec.directions() == ["minimize", "maximize", "maximize"]
    assert tree(tmp_path) == before  # no micro-doe-runs/, no databases, no __pycache__


# --------------------------------------------------------------------------- invalid


def _set(path: str, value: Any):
    def apply(data: dict) -> None:
        *parents, last = path.split("/")
        for key in parents:
            data = data[int(key)] if isinstance(data, list) else data.setdefault(key, {})
        data[last] = value

    return apply


INVALID = {
    "unknown top-level key": (_set("bogus", 1), "bogus", "unknown key; allowed keys: name, generator"),
    "unknown nested key": (_set("generator/modle", "x"), "generator.modle", "allowed keys: kind, model, device"),
    "unknown sampler key": (_set("sampler/seeds", 1), "sampler.seeds", "unknown key"),
    "wrong type": (_set("samples_per_trial", "many"), "samples_per_trial", "valid integer"),
    "wrong type nested": (_set("budget/n_trials", [3]), "budget.n_trials", "valid integer"),
    "empty search space": (_set("search", {}), "search", "search space is empty"),
    "lo >= hi": (_set("search/n_h", {"int": [4, 4]}), "search.n_h.int", "lower bound must be < upper bound"),
    "float lo >= hi": (_set("search/eta", {"float": [1.0, 0.5]}), "search.eta.float", "lower bound must be < upper bound"),
    "log with lo <= 0": (_set("search/eta", {"float": [0.0, 1.0], "log": True}), "search.eta.float", "log scale"),
    "int log with lo 0": (_set("search/n_h", {"int": [0, 4], "log": True}), "search.n_h.int", "log scale"),
    "step 0": (_set("search/n_h", {"int": [0, 4], "step": 0}), "search.n_h.step", "greater than or equal to 1"),
    "no range kind": (_set("search/n_h", 3), "search.n_h", "exactly one of int"),
    "two range kinds": (_set("search/n_h", {"int": [0, 1], "float": [0, 1]}), "search.n_h", "exactly one of int"),
    "empty categorical": (_set("search/variant", {"categorical": []}), "search.variant.categorical", "at least 1"),
    "duplicate categorical": (_set("search/variant", {"categorical": ["paper", "paper"]}), "search.variant.categorical", "unique"),
    "unknown search parameter": (
        _set("search/guidance", {"float": [0, 1]}),
        "search.guidance",
        "allowed: n_h, steps, sampler, eta, variance, variant",
    ),
    "unknown fixed parameter": (_set("fixed/size", 32), "fixed.size", "allowed: n_h, steps"),
    "n_h below domain": (_set("search/n_h", {"int": [-1, 2]}), "search.n_h.int", "lower bound must be ≥ 0"),
    "steps above T": (_set("search/steps", {"int": [10, 2000]}), "search.steps.int", "T = 1000"),
    "unknown variant": (
        _set("search/variant", {"categorical": ["paper", "fancy"]}),
        "search.variant.categorical",
        "'fancy' is not one of paper",
    ),
    "variant fixed unknown": (_set("fixed/variant", "fancy"), "fixed.variant", "not one of"),
    "float range for int parameter": (_set("search/n_h", {"float": [0, 2]}), "search.n_h.float", "takes integers"),
    "searched and fixed": (_set("fixed/n_h", 1), "fixed.n_h", "either searched or fixed"),
    "missing model": (_set("generator/model", "pretrained:nope"), "generator.model",
                      "shipped models: opv-32, opv-ternary-32, polycrystal-32, spheres-32"),
    "missing model path": (_set("generator/model", "no/such/bundle"), "generator.model", "no such bundle directory"),
    "bad registry ref": (_set("generator/model", "models:/spheres"), "generator.model", "models:/NAME@ALIAS"),
    "unknown generator kind": (_set("generator/kind", "gan"), "generator.kind", "unknown generator kind 'gan'"),
    "model of another kind": (_set("generator/kind", "ldm"), "generator.model",
                              "a model of kind micro3diff; use generator kind: micro3diff"),
    "unknown sampler kind": (_set("sampler/kind", "cma"), "sampler.kind", "'tpe', 'gp', 'nsga2', 'random'"),
    "learn_from_pruned on nsga2": (
        lambda d: d.update(sampler={"kind": "nsga2", "learn_from_pruned": True}), "sampler.learn_from_pruned", "unknown key"
    ),
    "unknown objective": (_set("objectives/0/name", "sharpness"), "objectives[0].name", "known objectives: s2_error, lineal_path_error"),
    "bad direction": (_set("objectives/0/direction", "up"), "objectives[0].direction", "'minimize' or 'maximize'"),
    "duplicate objective": (_set("objectives/1/name", "s2_error"), "objectives[1].name", "listed twice"),
    "constraint without bounds": (_set("constraints", [{"metric": "vf_error"}]), "constraints[0]", "give max, min or both"),
    "constraint min > max": (_set("constraints", [{"metric": "vf_error", "min": 1, "max": 0}]), "constraints[0].min", "≤ max"),
    "unknown constraint metric": (_set("constraints/0/metric", "beauty"), "constraints[0].metric", "known metrics: s2_error"),
    "pass cap without steps": (
        lambda d: (d["search"].pop("steps"), d["constraints"].append({"metric": "passes_per_volume", "max": 100})),
        "constraints[1].metric",
        "steps is neither",
    ),
    "bad name": (_set("name", "My Study"), "name", "lowercase"),
    "no objectives": (_set("objectives", []), "objectives", "at least 1"),
    "missing budget": (lambda d: d.pop("budget"), "budget", "required key missing"),
    "storage not a URL": (_set("storage", "optuna.db"), "storage", "database URL"),
    "phase not in model": (_set("evaluation/phase", 3), "evaluation.phase", "0=matrix, 1=inclusion"),
    "tortuosity objective without axis": (
        lambda d: (d["objectives"].append({"name": "tortuosity"}), d.update(evaluation={"tortuosity_axis": None})),
        "objectives[2].name",
        "needs evaluation.tortuosity_axis",
    ),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_spec_names_the_field(case, fake_shipped, tmp_path):
    mutate, field, text = INVALID[case]
    data = copy.deepcopy(VALID)
    mutate(data)
    found = problems(data, tmp_path)
    assert field in found, f"{case}: expected a problem at {field}, got {found}"
    assert text in found[field], f"{case}: {found[field]!r} lacks {text!r}"


def test_unknown_objective_lists_registered_ones(fake_shipped, tmp_path, registry):
    @objectives_module.objective
    def smoothness(sample):  # noqa: ANN001, ANN202
        return 0.0

    data = _with(VALID, objectives=[{"name": "smothness"}])
    assert "smoothness" in problems(data, tmp_path)["objectives[0].name"]
    spec = load_spec(write_study(tmp_path, _with(VALID, objectives=[{"name": "smoothness"}])))
    assert spec.directions() == ["minimize"]


def test_constraint_on_registered_objective(fake_shipped, tmp_path, registry):
    @objectives_module.objective(direction="maximize")
    def contrast(sample):  # noqa: ANN001, ANN202
        return 1.0

    constraints = [{"metric": "contrast", "min": 0.5}, {"metric": "vf_matrix", "max": 0.9}]
    spec = load_spec(write_study(tmp_path, _with(VALID, constraints=constraints)))
    assert [o.name for o in spec.constraint_objectives()] == ["contrast"]
    assert spec.constraints[0].violation(0.7) == pytest.approx(-0.2)
    assert spec.constraints[0].violation(0.4) == pytest.approx(0.1)


def _with(base: dict, **changes: Any) -> dict:
    return copy.deepcopy(base) | changes


def test_several_problems_are_all_reported(fake_shipped, tmp_path):
    data = _with(VALID, samples_per_trial=0, bogus=True)
    data["search"]["n_h"] = {"int": [5, 1]}
    found = problems(data, tmp_path)
    assert {"samples_per_trial", "bogus", "search.n_h.int"} <= set(found)


# --------------------------------------------------------------------------- files and YAML


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty study"),
        ("# only a comment\n", "empty study"),
        ("- a\n- b\n", "expected a mapping at the top level, got list"),
        ("name: [unclosed\n", "invalid YAML"),
        ("!!python/object/apply:os.system ['echo hacked']\n", "invalid YAML"),
        ("name: a\nname: b\n", "duplicate key 'name'"),
    ],
)
def test_bad_yaml_names_the_file(text, message, tmp_path):
    path = write_study(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_python_tag_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = write_study(tmp_path, f"name: !!python/object/apply:pathlib.Path.touch ['{marker}']\n")
    with pytest.raises(SpecError, match="invalid YAML"):
        load_spec(path)
    assert not marker.exists()


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "absent.yaml")
    with pytest.raises(SpecError, match="not a bundled study .*quickstart"):
        load_spec("no-such-study")
    with pytest.raises(SpecError, match="is a directory"):
        load_spec(tmp_path)


# --------------------------------------------------------------------------- bundled studies, schema, CLI


def test_bundled_studies_are_listed_and_validate(fake_shipped):
    studies = bundled_studies()
    assert {"quickstart", "micro3diff-tuning", "opv-design", "opv-ternary-design", "opv-recipes"} <= set(studies)
    for name, path in studies.items():
        spec = load_spec(path)
        assert spec.name == name, f"{path}: name should match the file name"
    quick = load_spec("quickstart")
    assert quick.generator.model == "pretrained:spheres-32"
    assert quick.objective_names() == ["lineal_path_error", "seconds_per_volume"]
    assert quick.directions() == ["minimize"] * 2
    worst = (quick.search["n_h"].high + 1) * quick.search["steps"].high * quick.samples_per_trial
    assert worst * 0.1 * quick.budget.n_trials <= 300  # ≈ 0.1 s per pass of 32 slices on a CPU core
    tuning = load_spec("micro3diff-tuning")
    assert tuning.resources.generators == 4 and tuning.samples_per_trial == 8
    assert load_spec("opv-design").sampler.kind == "gp"  # chosen by benchmarks/search.py
    ternary = load_spec("opv-ternary-design")
    assert "target.tau_donor" not in ternary.search and ternary.generator.verify.max_candidates == 16
    assert ternary.generator.verify.correct  # the model under-delivers vf_mixed: request correction


def test_bundled_studies_validate_against_the_shipped_model():
    assert {"spheres-32", "polycrystal-32", "opv-32"} <= set(shipped_models())
    for path in bundled_studies().values():
        load_spec(path)


def test_json_schema_has_the_top_level_properties():
    schema = study_json_schema()
    assert {"name", "generator", "search", "objectives", "constraints", "sampler", "budget", "resources", "storage"} <= set(
        schema["properties"]
    )
    assert set(schema["required"]) == {"name", "generator", "search", "objectives", "budget"}
    assert schema["additionalProperties"] is False
    json.dumps(schema)


def test_cli_schema_and_studies(fake_shipped, tmp_path, capsys, monkeypatch):
    from micro_doe.cli.studies import schema, studies

    monkeypatch.setenv("COLUMNS", "250")

    out = tmp_path / "sub" / "study.schema.json"
    schema(out)
    assert json.loads(out.read_text())["title"] == "micro-doe study"
    schema(None)
    assert '"properties"' in capsys.readouterr().out
    studies()
    printed = capsys.readouterr().out
    assert "quickstart" in printed and "micro3diff-tuning" in printed


def test_cli_studies_shows_invalid_ones(tmp_path, monkeypatch, capsys):
    from micro_doe.cli.studies import studies

    monkeypatch.setenv("COLUMNS", "250")

    monkeypatch.setattr(bundle_module, "SHIPPED_DIR", tmp_path / "empty")
    studies()
    assert "invalid here" in capsys.readouterr().out


def test_spec_construction_in_python(fake_shipped):
    spec = StudySpec.model_validate(VALID)
    assert spec.storage.startswith("sqlite:///") and os.path.isabs(spec.resolved_paths(Path(".")).artifacts)


# --------------------------------------------------------------------------- the ldm kind

LDM_STUDY: dict[str, Any] = VALID | {
    "generator": {"kind": "ldm", "model": "pretrained:opv-32"},
    "search": {"target.vf_donor": {"float": [0.3, 0.6]}, "guidance": {"float": [1.0, 3.0]}},
    "fixed": {"target.tau_donor": 1.5, "target.tau_acceptor": 1.6, "steps": 20, "sampler": "ddim"},
    "objectives": [{"name": "interfacial_area"}, {"name": "transport_tortuosity"}],
    "constraints": [{"metric": "vf_error", "max": 0.05}],
    "evaluation": {"phase": "donor"},
}


def test_an_ldm_study_searches_the_models_conditioning_targets(fake_shipped, tmp_path, tiny_ldm_bundle):
    spec = load_spec(write_study(tmp_path, LDM_STUDY))
    domains = spec.generator.domains()
    assert {"target.vf_donor", "target.tau_donor", "target.tau_acceptor", "guidance", "guidance_rescale",
            "feature_guidance", "steps", "sampler", "tolerance", "max_candidates"} == set(domains)
    assert (domains["target.vf_donor"].low, domains["target.vf_donor"].high) == OPV_RANGES["vf_donor"]
    assert spec.directions() == ["maximize", "minimize"]

    missing = copy.deepcopy(LDM_STUDY)
    del missing["fixed"]["target.tau_acceptor"]
    assert load_spec(write_study(tmp_path, missing)).generator.required_parameters() == []  # any subset: τ_acc free
    full = write_ldm_config_bundle(tmp_path / "opv-full", tiny_ldm_bundle, label_dropout=0.0)
    missing["generator"]["model"] = str(full)  # trained without label dropout: every label is required
    assert "target.tau_acceptor: required" in problems(missing, tmp_path)["search"]
    verified = copy.deepcopy(LDM_STUDY)
    verified["generator"]["verify"] = {"tolerance": 0.05, "max_candidates": 4}
    verified["search"]["tolerance"] = {"float": [0.02, 0.1]}
    block = load_spec(write_study(tmp_path, verified)).generator
    assert (block.verify.tolerance, block.verify.max_candidates, block.batch_size) == (0.05, 4, 16)
    verified["generator"]["verify"] = {"tolerance": 0.05, "max_candidates": 0, "retries": 1}
    found = problems(verified, tmp_path)
    assert any("max_candidates" in k for k in found) and any("retries" in k for k in found), found
    default = copy.deepcopy(LDM_STUDY)  # no verify: verified generation with its defaults
    assert load_spec(write_study(tmp_path, default)).generator.verify == VerifySettings()
    for off in (False, None):  # raw samples; the actor's spec says so explicitly (absent there: the default)
        default["generator"]["verify"] = off
        block = load_spec(write_study(tmp_path, default)).generator
        assert block.verify is None and block.model_dump()["verify"] is False
    outside = copy.deepcopy(LDM_STUDY)
    outside["search"]["target.vf_donor"] = {"float": [0.3, 0.95]}
    assert "upper bound must be ≤ 0.85" in problems(outside, tmp_path)["search.target.vf_donor.float"]
    outside["generator"]["allow_extrapolation"] = True
    assert load_spec(write_study(tmp_path, outside)).generator.allow_extrapolation
    outside["search"]["target.vf_donor"] = {"float": [0.3, 1.35]}  # extrapolated, but no volume has vf 1.35
    assert "upper bound must be ≤ 1" in problems(outside, tmp_path)["search.target.vf_donor.float"]
    unknown = copy.deepcopy(LDM_STUDY)
    unknown["fixed"] |= {"target.porosity": 0.3, "n_h": 1}
    found = problems(unknown, tmp_path)
    assert "not a parameter of the ldm generator" in found["fixed.target.porosity"]
    assert "not a parameter of the ldm generator" in found["fixed.n_h"]
    wrong_kind = copy.deepcopy(LDM_STUDY)
    wrong_kind["generator"]["kind"] = "micro3diff"
    assert "a model of kind ldm; use generator kind: ldm" in problems(wrong_kind, tmp_path)["generator.model"]


def test_a_cahn_hilliard_study_searches_the_recipe(fake_shipped, tmp_path):
    study = {"name": "recipes", "generator": {"kind": "cahn-hilliard", "size": 16},
             "search": {"phi": {"float": [0.3, 0.7]}, "chi": {"float": [2.6, 4.2]}}, "fixed": {"time": 200},
             "objectives": [{"name": "interfacial_area", "direction": "maximize"}],
             "evaluation": {"phase": "donor"}, "budget": {"n_trials": 4}}  # fmt: skip
    spec = load_spec(write_study(tmp_path, study))
    assert set(spec.generator.domains()) == {"phi", "chi", "time"} and spec.generator.phase_names() == ["acceptor", "donor"]
    assert spec.generator.model == "cahn-hilliard solver, 2 phases, 16³"
    missing = copy.deepcopy(study)
    del missing["fixed"]
    assert "time: required" in problems(missing, tmp_path)["search"]
    two = copy.deepcopy(study) | {"fixed": {"time": 200, "phi_mixed": 0.2}}
    assert "not a parameter of the cahn-hilliard generator" in problems(two, tmp_path)["fixed.phi_mixed"]
    three = copy.deepcopy(two)
    three["generator"]["phases"] = 3
    assert load_spec(write_study(tmp_path, three)).generator.phase_names()[2] == "mixed"
    bad = copy.deepcopy(study)
    bad["generator"] |= {"model": "pretrained:opv-32", "size": 4}
    found = problems(bad, tmp_path)
    assert "unknown key" in found["generator.model"] and "greater than or equal to 8" in found["generator.size"]
    outside = copy.deepcopy(study)
    outside["search"]["phi"] = {"float": [0.0, 0.7]}
    assert "search.phi.float" in problems(outside, tmp_path)


def test_a_micro3diff_study_searches_vf_targets_within_the_documented_range(fake_shipped, tmp_path):
    spec = parse_spec(VALID | {"search": {"target.vf_inclusion": {"float": [0.16, 0.25]}, "n_h": {"int": [0, 2]}},
                               "fixed": {"variant": "anchored"}})  # fmt: skip
    domain = spec.generator.domains()["target.vf_inclusion"]
    assert (domain.low, domain.high) == pytest.approx((0.15, 0.28))  # vf_range (0.75, 1.4) × training vf 0.2
    outside = VALID | {"search": {"target.vf_inclusion": {"float": [0.15, 0.45]}}, "fixed": {"variant": "anchored"}}
    assert "upper bound must be ≤ 0.28" in problems(outside, tmp_path)["search.target.vf_inclusion.float"]
    allowed = outside | {"generator": VALID["generator"] | {"allow_extrapolation": True}}
    parse_spec(allowed)
    wrong = VALID | {"fixed": {"target.vf_nothing": 0.2}}
    assert "not a parameter of the micro3diff generator" in problems(wrong, tmp_path)["fixed.target.vf_nothing"]


def test_the_pruner_block(fake_shipped, tmp_path):
    for kind in ("median", "successive_halving", "hyperband", "pareto_halving"):
        spec = load_spec(write_study(tmp_path, VALID | {"pruner": {"kind": kind, "every": 1}}))
        assert spec.pruner.kind == kind
    assert load_spec(write_study(tmp_path, VALID)).pruner is None
    assert "samples_per_trial (2)" in problems(VALID | {"pruner": {"kind": "median", "every": 2}}, tmp_path)["pruner.every"]
    assert "unknown kind 'asha'" in problems(VALID | {"pruner": {"kind": "asha"}}, tmp_path)["pruner.kind"]
    found = problems(VALID | {"pruner": {"kind": "hyperband", "reduction_factor": 1, "patience": 3}}, tmp_path)
    assert "greater than or equal to 2" in found["pruner.reduction_factor"] and "unknown key" in found["pruner.patience"]
    found = problems(VALID | {"pruner": {"kind": "pareto_halving", "reduction_factor": 1, "n_startup_trials": 3}}, tmp_path)
    assert "greater than or equal to 2" in found["pruner.reduction_factor"] and "unknown key" in found["pruner.n_startup_trials"]
    names = [o["name"] for o in VALID["objectives"]]
    spec = load_spec(write_study(tmp_path, VALID | {"pruner": {"kind": "pareto_halving", "objectives": names[:1]}}))
    assert spec.pruner.objectives == names[:1]
    found = problems(VALID | {"pruner": {"kind": "pareto_halving", "objectives": ["size_error", names[0], names[0]]}}, tmp_path)
    assert "'size_error' is not one of the study's objectives" in found["pruner.objectives[0]"]
    assert "listed twice" in found["pruner.objectives[2]"]
    assert "leave the key out" in problems(VALID | {"pruner": {"kind": "pareto_halving", "objectives": []}}, tmp_path)["pruner.objectives"]
    found = problems(VALID | {"pruner": {"kind": "pareto_halving", "margin": 1.0}}, tmp_path)
    assert "1.0 needs min_resource >= 2" in found["pruner.margin"], found
    assert "greater than or equal to 0" in problems(VALID | {"pruner": {"kind": "pareto_halving", "margin": -1}}, tmp_path)["pruner.margin"]
    assert "finite number" in problems(VALID | {"pruner": {"kind": "pareto_halving", "margin": float("inf")}}, tmp_path)["pruner.margin"]
    margined = {"samples_per_trial": 4, "pruner": {"kind": "pareto_halving", "min_resource": 2, "margin": 1.5, "every": 2}}
    pruner = make_pruner(load_spec(write_study(tmp_path, VALID | margined)))
    assert isinstance(pruner, ParetoHalvingPruner) and pruner._margin == 1.5  # the spec's margin reaches the pruner
    assert pruner._margin_errors == "own"  # the default
    margined["pruner"] |= {"margin_errors": "pooled"}
    assert make_pruner(load_spec(write_study(tmp_path, VALID | margined)))._margin_errors == "pooled"
    unmargined = margined | {"pruner": margined["pruner"] | {"margin": 0}}
    assert "needs a margin > 0" in problems(VALID | unmargined, tmp_path)["pruner.margin_errors"]
    margined["pruner"] |= {"margin_errors": "shared"}
    assert "'own' or 'pooled'" in problems(VALID | margined, tmp_path)["pruner.margin_errors"]
    for kind in ("successive_halving", "hyperband", "pareto_halving"):
        found = problems(VALID | {"pruner": {"kind": kind, "min_resource": 2}}, tmp_path)  # samples_per_trial is 2
        assert "less than samples_per_trial (2)" in found["pruner.min_resource"]


def test_volume_seeds_are_per_trial_or_common(tmp_path):
    assert load_spec(write_study(tmp_path, VALID)).volume_seeds == "per_trial"
    assert load_spec(write_study(tmp_path, VALID | {"volume_seeds": "common"})).volume_seeds == "common"
    assert "'per_trial' or 'common'" in problems(VALID | {"volume_seeds": "shared"}, tmp_path)["volume_seeds"]


def test_hysteresis_decoding_is_a_choice_of_two_phase_micro3diff_models_only(tmp_path):
    decoding = {"decode": {"categorical": ["sign", "hysteresis"]}}
    two = parse_spec(VALID | {"search": decoding})
    assert "hysteresis" in two.generator.domains()["decode"].choices
    three = VALID | {"generator": {"kind": "micro3diff", "model": "pretrained:ternary-blend-32"}, "search": decoding}
    assert "hysteresis" in problems(three, tmp_path)["search.decode.categorical"]
