"""Objective registry, built-in objectives and trial metrics, on real small volumes."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import numpy as np
import pytest

from micro_doe.platform.descriptors import describe
from micro_doe.platform.synthetic import spherical_inclusions
from micro_doe.platform.volumes import make_volume
from micro_doe.studies import objectives as objectives_module
from micro_doe.studies.objectives import (
    BUILTIN_OBJECTIVES,
    Objective,
    Sample,
    UnknownObjectiveError,
    evaluate_objectives,
    known_objectives,
    objective,
    resolve_objective,
    trial_metrics,
)

SHAPE = (24, 24, 24)


@pytest.fixture(scope="module")
def spheres():
    """Two sphere packings of the same statistics (seeds 1, 2) and their descriptors."""
    vols = [spherical_inclusions(SHAPE, mean_diameter=5.0, sd_diameter=1.0, volume_fraction=0.15, seed=s) for s in (1, 2)]
    return vols, [describe(v) for v in vols]


@pytest.fixture(scope="module")
def noise():
    """White noise with vf 0.5: nothing like spheres."""
    labels = (np.random.default_rng(0).random(SHAPE) < 0.5).astype(np.int8)
    vol = make_volume(labels, phase_names=["matrix", "inclusion"], source="noise", seed=0)
    return vol, describe(vol)


def make_sample(volume, descriptors, reference, *, seconds=1.0, params=None) -> Sample:
    return Sample(
        volume=volume, descriptors=descriptors, params=params or {}, predicted={}, seconds=seconds, reference=reference
    )


@pytest.fixture
def registry(monkeypatch) -> dict:
    fresh: dict = {}
    monkeypatch.setattr(objectives_module, "_REGISTRY", fresh)
    return fresh


# --------------------------------------------------------------------------- registry


def test_decorator_bare_and_called(registry):
    @objective
    def bumpiness(sample: Sample) -> float:
        """How bumpy."""
        return 1.0

    @objective(direction="maximize", name="pores")
    def count_pores(sample: Sample) -> float:
        return 2.0

    assert callable(bumpiness) and bumpiness(None) == 1.0  # returned unchanged
    assert bumpiness.__micro_doe_objective__ == Objective("bumpiness", bumpiness, "minimize", "How bumpy.")
    assert resolve_objective("bumpiness").direction == "minimize"
    assert resolve_objective("pores").fn is count_pores and resolve_objective("pores").direction == "maximize"
    assert known_objectives()[: len(BUILTIN_OBJECTIVES)] == list(BUILTIN_OBJECTIVES)
    assert {"bumpiness", "pores"} <= set(known_objectives())


def test_decorator_rejects_bad_use(registry):
    with pytest.raises(ValueError, match="built-in"):
        objective(lambda s: 0.0, name="s2_error")
    with pytest.raises(ValueError, match="'minimize' or 'maximize'"):
        objective(direction="up")(lambda s: 0.0)


def test_a_name_belongs_to_one_function(registry):
    def roughness(sample) -> float:  # type: ignore[no-untyped-def]
        return 1.0

    objective(roughness)
    objective(roughness)  # the same function again (a notebook cell run twice): fine, it replaces itself

    def roughness_again(sample) -> float:  # type: ignore[no-untyped-def]
        return 2.0

    with pytest.raises(ValueError, match=r"objective 'roughness': already registered by .*\.roughness; pick another"):
        objective(name="roughness")(roughness_again)
    assert resolve_objective("roughness").fn is roughness


def test_builtin_defaults():
    directions = {name: o.direction for name, o in BUILTIN_OBJECTIVES.items()}
    assert directions == {
        "s2_error": "minimize",
        "lineal_path_error": "minimize",
        "vf_error": "minimize",
        "size_error": "minimize",
        "diameter_error": "minimize",
        "volume_fraction": "maximize",
        "tortuosity": "minimize",
        "transport_tortuosity": "minimize",
        "percolating_fraction": "maximize",
        "interfacial_area": "maximize",
        "seconds_per_volume": "minimize",
        "connectivity_error": "minimize",
        "structure_error": "minimize",
    }


def test_unknown_objective_lists_known_ones(registry):
    with pytest.raises(UnknownObjectiveError) as info:
        resolve_objective("sharpness")
    assert isinstance(info.value, ValueError)
    assert all(name in str(info.value) for name in BUILTIN_OBJECTIVES)


def test_module_function_resolution(tmp_path, monkeypatch, registry):
    module = f"user_objectives_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from micro_doe.studies.objectives import objective\n"
        "@objective(direction='maximize')\n"
        "def roughness(sample):\n    '''Surface roughness.'''\n    return 3.0\n"
        "def plain(sample):\n    return sample.seconds * 2\n"
        "NOT_A_FUNCTION = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    decorated = resolve_objective(f"{module}:roughness")
    assert decorated.name == f"{module}:roughness"
    assert (decorated.direction, decorated.description) == ("maximize", "Surface roughness.")
    plain = resolve_objective(f"{module}:plain")
    assert (plain.name, plain.direction) == (f"{module}:plain", "minimize")
    with pytest.raises(UnknownObjectiveError, match="has no attribute 'missing'"):
        resolve_objective(f"{module}:missing")
    with pytest.raises(UnknownObjectiveError, match="not a function"):
        resolve_objective(f"{module}:NOT_A_FUNCTION")
    with pytest.raises(UnknownObjectiveError, match="cannot import module"):
        resolve_objective("no_such_module_xyz:f")


# --------------------------------------------------------------------------- evaluation


def test_evaluate_objectives_averages_per_sample(spheres):
    vols, descs = spheres
    samples = [
        make_sample(vols[0], descs[0], descs[1], seconds=1.0),
        make_sample(vols[1], descs[1], descs[1], seconds=3.0),
    ]
    twice = Objective("twice", lambda s: 2 * s.seconds, "minimize", "")
    values = evaluate_objectives([(twice, "minimize"), (BUILTIN_OBJECTIVES["volume_fraction"], "maximize")], samples)
    assert list(values) == ["twice", "volume_fraction"]
    assert values["twice"] == pytest.approx(4.0)
    assert values["volume_fraction"] == pytest.approx(np.mean([d.volume_fraction for d in descs]))
    s2 = evaluate_objectives([BUILTIN_OBJECTIVES["s2_error"]], samples)["s2_error"]
    assert s2 == pytest.approx(objectives_module.s2_error(samples[0]) / 2)  # the second sample is its own reference


def test_evaluate_objectives_rejects_non_finite(spheres):
    vols, descs = spheres
    samples = [make_sample(vols[0], descs[0], descs[1]), make_sample(vols[1], descs[1], descs[1])]
    nan_on_second = Objective("flaky", lambda s: math.nan if s is samples[1] else 1.0, "minimize", "")
    with pytest.raises(ValueError, match=r"objective 'flaky': got nan for sample 1"):
        evaluate_objectives([(nan_on_second, "minimize")], samples)
    with pytest.raises(ValueError, match="'infinite'"):
        evaluate_objectives([Objective("infinite", lambda s: math.inf, "minimize", "")], samples)
    with pytest.raises(ValueError, match="expected a number"):
        evaluate_objectives([Objective("texty", lambda s: "big", "minimize", "")], samples)
    with pytest.raises(ValueError, match="no samples"):
        evaluate_objectives([Objective("x", lambda s: 1.0, "minimize", "")], [])


def test_tortuosity_may_be_infinite(spheres):
    vols, descs = spheres
    blocked = descs[0].model_copy(update={"tortuosity": descs[0].tortuosity.model_copy(update={"tau": math.inf})})
    values = evaluate_objectives([BUILTIN_OBJECTIVES["tortuosity"]], [make_sample(vols[0], blocked, None)])
    assert values["tortuosity"] == math.inf


def test_error_objectives_zero_for_the_reference_and_large_for_noise(spheres, noise):
    vols, descs = spheres
    same = make_sample(vols[0], descs[0], descs[0])
    other = make_sample(vols[1], descs[1], descs[0])
    random = make_sample(noise[0], noise[1], descs[0])
    for name in ("s2_error", "lineal_path_error", "vf_error", "size_error", "diameter_error", "connectivity_error",
                 "structure_error"):
        fn = BUILTIN_OBJECTIVES[name].fn
        assert fn(same) == pytest.approx(0.0, abs=1e-12), name
        assert fn(random) > fn(other), name
    assert BUILTIN_OBJECTIVES["s2_error"].fn(random) > 30.0
    assert BUILTIN_OBJECTIVES["lineal_path_error"].fn(random) > 30.0
    assert BUILTIN_OBJECTIVES["vf_error"].fn(random) > 0.1
    assert BUILTIN_OBJECTIVES["size_error"].fn(random) > 30.0  # noise is thin where spheres are thick


def test_structure_error_is_the_sum_of_the_unsteered_judges(spheres, noise):
    vols, descs = spheres
    sample = make_sample(noise[0], noise[1], descs[0])
    parts = ("lineal_path_error", "size_error", "diameter_error", "connectivity_error")
    total = sum(BUILTIN_OBJECTIVES[n].fn(sample) for n in parts)
    assert BUILTIN_OBJECTIVES["structure_error"].fn(sample) == pytest.approx(total)
    old = descs[0].model_copy(update={"sizes": descs[0].sizes.model_copy(update={"largest_share": float("nan")})})
    with pytest.raises(ValueError, match="no connectivity"):  # a reference.nc from before connectivity existed
        BUILTIN_OBJECTIVES["connectivity_error"].fn(make_sample(vols[1], descs[1], old))


def test_size_objectives_need_size_distributions(spheres):
    vols, descs = spheres
    old_reference = descs[0].model_copy(update={"sizes": None})
    with pytest.raises(ValueError, match="no size distributions"):
        BUILTIN_OBJECTIVES["size_error"].fn(make_sample(vols[1], descs[1], old_reference))
    without = descs[1].model_copy(update={"sizes": None})
    with pytest.raises(ValueError, match="without size distributions"):
        BUILTIN_OBJECTIVES["diameter_error"].fn(make_sample(vols[1], without, descs[0]))


def test_vf_error_prefers_the_target(spheres):
    vols, descs = spheres
    sample = make_sample(vols[0], descs[0], None, params={"target.vf": 0.5})
    assert objectives_module.vf_error(sample) == pytest.approx(abs(descs[0].volume_fraction - 0.5))


def test_vf_error_reads_the_target_of_the_phase_of_interest(spheres):
    vols, descs = spheres  # phase 1 is "inclusion": an LDM study's target.vf_inclusion
    sample = make_sample(vols[0], descs[0], None, params={"target.vf_inclusion": 0.3, "target.vf_matrix": 0.7})
    assert objectives_module.vf_error(sample) == pytest.approx(abs(descs[0].volume_fraction - 0.3))


def test_transport_tortuosity_is_the_slower_phase(spheres):
    vols, descs = spheres
    matrix = describe(vols[0], phase=0)  # the matrix percolates with τ close to 1, the inclusions do not
    assert math.isinf(descs[0].tortuosity.tau) and 1.0 <= matrix.tortuosity.tau < 1.5
    assert objectives_module.transport_tortuosity(make_sample(vols[0], descs[0], None)) == math.inf
    layers = np.zeros(SHAPE, np.int8)
    layers[:, :, ::2] = 1  # columns along z in both phases: τ = 1 for each
    vol = make_volume(layers, phase_names=["matrix", "inclusion"], source="layers", seed=0)
    assert objectives_module.transport_tortuosity(make_sample(vol, describe(vol), None)) == pytest.approx(1.0, abs=1e-3)
    assert BUILTIN_OBJECTIVES["transport_tortuosity"].direction == "minimize"


def test_error_objectives_need_a_reference(spheres):
    vols, descs = spheres
    no_ref = make_sample(vols[0], descs[0], None)
    for name in ("s2_error", "lineal_path_error", "vf_error"):
        with pytest.raises(ValueError, match=f"{name}: needs the model's training-data reference"):
            BUILTIN_OBJECTIVES[name].fn(no_ref)
    matrix_ref = describe(vols[1], phase=0, tortuosity_axis=None)
    with pytest.raises(ValueError, match="phase 1 .* phase 0"):
        objectives_module.s2_error(make_sample(vols[0], descs[0], matrix_ref))


def test_trial_metrics(spheres):
    vols, descs = spheres
    samples = [make_sample(v, d, descs[0], seconds=s) for v, d, s in zip(vols, descs, (1.0, 2.0))]
    metrics = trial_metrics(samples)
    assert set(metrics) == {
        "volume_fraction",
        "vf_matrix",
        "vf_inclusion",
        "interfacial_area",
        "tortuosity",
        "effective_diffusivity",
        "percolating_fraction",
        "seconds_per_volume",
        "s2_error",
        "lineal_path_error",
        "vf_error",
        "size_error",
        "diameter_error",
        "connectivity_error",
        "structure_error",
        "largest_component_share",
        "components_per_kpx",
        "component_diameter",
        "component_diameter_std",
        "thickness_mean",
    }
    assert metrics["seconds_per_volume"] == pytest.approx(1.5)
    assert metrics["volume_fraction"] == pytest.approx(np.mean([d.volume_fraction for d in descs]))
    assert metrics["s2_error"] == pytest.approx(objectives_module.s2_error(samples[1]) / 2)
    without_ref = trial_metrics([make_sample(vols[0], descs[0], None)])
    assert not {"s2_error", "lineal_path_error", "vf_error"} & set(without_ref)
    assert all(objectives_module.is_known_metric(k) for k in metrics)


def test_the_docs_list_every_builtin_objective():
    readme = (Path(__file__).resolve().parents[2] / "docs" / "how-to" / "custom-objectives.md").read_text()
    listed = readme[readme.index("Built-ins:"):].split("\n\n")[0]
    assert [n for n in objectives_module.BUILTIN_OBJECTIVES if f"`{n}`" not in listed] == []
