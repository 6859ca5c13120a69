"""The public API re-exported from micro_doe (imported lazily)."""

from __future__ import annotations

import micro_doe as md


def test_every_public_name_resolves():
    for name in md.__all__:
        assert getattr(md, name).__name__ == name
    assert {"LDMGenerator", "check_recipe", "Study", "objective", "tune", "parse_spec", "SpecError"} <= set(md.__all__)


def test_every_error_micro_doe_raises_on_purpose_has_one_base():
    from micro_doe.actors import CapacityLostError, ClusterCapacityError, ClusterConnectionError
    from micro_doe.cli.options import OptionError
    from micro_doe.platform.bundles import BundleError, GenerationError
    from micro_doe.platform.ldm.dataset import OPVDatasetError
    from micro_doe.platform.memory import InsufficientMemoryError
    from micro_doe.platform.volumes import OutputExistsError, VolumeError
    from micro_doe.studies.objectives import UnknownObjectiveError
    from micro_doe.studies.tuning import TuningError

    inputs = (md.SpecError, OptionError, BundleError, OPVDatasetError, InsufficientMemoryError, OutputExistsError,
              VolumeError, UnknownObjectiveError, TuningError, ClusterCapacityError)
    assert all(issubclass(e, md.InputError) and issubclass(e, ValueError) for e in inputs)
    assert all(issubclass(e, md.ExecutionError) and not issubclass(e, ValueError) for e in (GenerationError, CapacityLostError))
    assert issubclass(ClusterConnectionError, md.MicroDoeError)
    assert issubclass(md.InputError, md.MicroDoeError) and issubclass(md.ExecutionError, md.MicroDoeError)
