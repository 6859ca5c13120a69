"""micro-doe: design-of-experiments over diffusion-model generators of 3D microstructures.

The public API, imported lazily so ``import micro_doe`` stays fast::

    import micro_doe as md

    @md.objective(direction="maximize")
    def percolating_interface(sample: md.Sample) -> float:
        return sample.descriptors.scalars()["interfacial_area"] * sample.descriptors.tortuosity.percolating_fraction

    result = md.Study.from_yaml("study.yaml").run()
    print(result.best_trials)

    ldm = md.LDMGenerator("pretrained:opv-32")       # targeted volumes and their predicted recipe
    (sample,) = ldm.generate({"vf_donor": 0.45, "tau_donor": 1.4}, n=1, seed=0)  # τ_acceptor left free;
    print(sample.verification.measured)  # verified by default: measured, within 0.03 or marked
    print(sample.predicted["phi"], sample.predicted["chi"], sample.predicted["time"])
    print(md.check_recipe(sample).summary_error)    # simulate that recipe, compare descriptors

    md.tune("my-model", md.TuneOptions(trials=16))  # a trained Micro3Diff bundle picks its own sampling
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "objective": "micro_doe.studies.objectives",
    "Sample": "micro_doe.studies.objectives",
    "Study": "micro_doe.studies.runner",
    "StudyResult": "micro_doe.studies.runner",
    "StudySpec": "micro_doe.studies.spec",
    "load_spec": "micro_doe.studies.study_yaml",
    "parse_spec": "micro_doe.studies.study_yaml",
    "SpecError": "micro_doe.studies.study_yaml",
    "MicroDoeError": "micro_doe.errors",
    "InputError": "micro_doe.errors",
    "ExecutionError": "micro_doe.errors",
    "tune": "micro_doe.studies.tuning",
    "TuneOptions": "micro_doe.studies.tuning",
    "describe": "micro_doe.platform.descriptors",
    "Descriptors": "micro_doe.platform.descriptors",
    "read_volume": "micro_doe.platform.volumes",
    "write_netcdf": "micro_doe.platform.volumes",
    "Micro3DiffGenerator": "micro_doe.platform.micro3diff.generator",
    "generator_kind": "micro_doe.platform.generators",
    "GeneratedBatch": "micro_doe.platform.generators",
    "Generator": "micro_doe.platform.generators",
    "LDMGenerator": "micro_doe.platform.ldm.generator",
    "VerifySettings": "micro_doe.platform.ldm.verify",
    "AnnealedFilmGenerator": "micro_doe.platform.synthetic.anneal",
    "check_recipe": "micro_doe.platform.ldm.recipe",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'micro_doe' has no attribute {name!r}")
