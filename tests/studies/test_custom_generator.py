"""A generator kind of your own: registered like an objective, named by a study, run on Ray
actors and in process, its parameters checked before anything is created."""

from __future__ import annotations

import textwrap

import pytest
import ray

import micro_doe as md
from micro_doe.platform.generators import find_generator_kind

pytestmark = pytest.mark.filterwarnings("ignore")

NOISE_FIELD = textwrap.dedent('''
    """Thresholded, smoothed Gaussian noise: a two-phase random field (a generator of your own)."""
    import time

    import numpy as np
    import scipy.ndimage as ndi

    import micro_doe as md
    from micro_doe.platform.volumes import make_volume


    @md.generator_kind("noise-field", parameters={"threshold": (-1.0, 1.0), "smoothing": (0.5, 4.0), "mode": ["wrap", "reflect"]},
                       phase_names=["matrix", "pore"])
    class NoiseField:
        def __init__(self, size: int = 16):
            self.size = size
            self.phase_names = ["matrix", "pore"]

        def sample_batch(self, params, n, seed):
            volumes, seconds = [], []
            for i in range(n):
                start = time.perf_counter()
                noise = np.random.default_rng(seed + i).standard_normal((self.size,) * 3)
                field = ndi.gaussian_filter(noise, params["smoothing"], mode=params.get("mode", "wrap"))
                labels = (field > params["threshold"] * field.std()).astype(np.int8)
                volumes.append(make_volume(labels, phase_names=self.phase_names, source="noise-field", seed=seed + i))
                seconds.append(time.perf_counter() - start)
            return md.GeneratedBatch(volumes, seconds)
''')


@pytest.fixture
def noise_module(tmp_path, monkeypatch):
    (tmp_path / "noise_field.py").write_text(NOISE_FIELD)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # Ray's workers import it by name
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    return tmp_path


def spec(tmp_path, **changes):  # type: ignore[no-untyped-def]
    return {
        "name": "noise", "generator": {"kind": "noise_field:NoiseField", "options": {"size": 16}},
        "search": {"threshold": {"float": [-0.5, 0.5]}, "smoothing": {"float": [1.0, 2.0]}},
        "samples_per_trial": 2, "objectives": [{"name": "interfacial_area", "direction": "maximize"}],
        "constraints": [{"metric": "volume_fraction", "min": 0.05}],
        "sampler": {"kind": "random", "seed": 0}, "budget": {"n_trials": 3},
        "evaluation": {"phase": "pore", "tortuosity_axis": "z"},
        "storage": f"sqlite:///{tmp_path}/optuna.db", "tracking": f"sqlite:///{tmp_path}/mlflow.db",
        "artifacts": f"{tmp_path}/artifacts",
    } | changes  # fmt: skip


def test_a_generator_of_your_own_runs_a_study_on_ray_and_in_process(noise_module):
    ray.shutdown()  # a fresh local Ray whose workers see PYTHONPATH
    on_ray = md.Study(spec(noise_module)).run()
    ray.shutdown()
    local = md.Study(spec(noise_module / "local", name="noise-local", storage="memory", tracking=None), executor="local").run()
    assert len(on_ray.completed) == len(local.completed) == 3 and not on_ray.failed
    for a, b in zip(sorted(on_ray.trials, key=lambda t: t.number), sorted(local.trials, key=lambda t: t.number)):
        assert a.params == b.params and a.values == pytest.approx(b.values)  # the same volumes, wherever they ran
    kind = find_generator_kind("noise-field")  # registered by its module's import
    assert kind.phase_names == ("matrix", "pore") and "threshold" in kind.parameters


def test_a_study_of_your_own_kind_is_checked_before_it_starts(noise_module):
    with pytest.raises(md.SpecError, match=r"search\.blur: not a parameter of the noise_field:NoiseField generator"):
        md.Study(spec(noise_module, search={"blur": {"float": [0.0, 1.0]}}))
    with pytest.raises(md.SpecError, match=r"search\.threshold\.float: upper bound must be ≤ 1"):
        md.Study(spec(noise_module, search={"threshold": {"float": [0.0, 3.0]}}))
    with pytest.raises(md.SpecError, match=r"search\.mode\.categorical: 'nearest' is not one of wrap, reflect"):
        md.Study(spec(noise_module, search={"mode": {"categorical": ["wrap", "nearest"]}}))
    with pytest.raises(md.SpecError, match="generator.kind: .*cannot import it"):
        md.Study(spec(noise_module, generator={"kind": "no_such_module:Thing"}))
    with pytest.raises(md.SpecError, match="generator.kind: .*unknown generator kind 'noise'"):
        md.Study(spec(noise_module, generator={"kind": "noise"}))
    with pytest.raises(md.SpecError, match=r"generator\.options: \['colour'\] are not keyword arguments of noise_field:NoiseField"):
        md.Study(spec(noise_module, generator={"kind": "noise_field:NoiseField", "options": {"colour": "red"}}))


def test_registering_a_kind_names_what_is_wrong():
    class Other:
        pass

    with pytest.raises(ValueError, match="not one of"):
        md.generator_kind("micro3diff", parameters={}, phase_names=["a", "b"])(Other)
    with pytest.raises(ValueError, match="at least 2 distinct phases"):
        md.generator_kind("one-phase", parameters={}, phase_names=["a"])(Other)
    with pytest.raises(ValueError, match="must be \\(low, high\\) or a list of choices"):
        md.generator_kind("bad-domain", parameters={"x": "wide"}, phase_names=["a", "b"])(Other)
    md.generator_kind("taken-name", parameters={}, phase_names=["a", "b"])(Other)

    class Another:
        pass

    with pytest.raises(ValueError, match="already registered"):
        md.generator_kind("taken-name", parameters={}, phase_names=["a", "b"])(Another)
    with pytest.raises(ValueError, match="a generated batch needs one entry per volume"):
        md.GeneratedBatch([], [1.0])
