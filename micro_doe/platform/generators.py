"""One interface for every generator, and the registry of generator kinds.

A generator turns parameters into volumes. Every kind, shipped or your own, has:

- ``sample_batch(params, n, seed)`` → :class:`GeneratedBatch`: ``n`` volumes (volume i from
  seed ``seed + i``, so each is reproducible alone), the seconds each took, and what the
  generator predicts beside each volume (the LDM's manufacturing recipe; ``{}`` otherwise);
- ``phase_names`` (label i is ``phase_names[i]``) and ``size`` (the cube edge, voxels).

The shipped kinds are ``micro3diff`` (:class:`~micro_doe.platform.micro3diff.generator.Micro3DiffGenerator`),
``ldm`` (:class:`~micro_doe.platform.ldm.generator.LDMGenerator`) and ``cahn-hilliard``
(:class:`~micro_doe.platform.synthetic.anneal.AnnealedFilmGenerator`). A kind of your own is
registered the way an objective is::

    @md.generator_kind("noise-field", parameters={"threshold": (-1.0, 1.0)}, phase_names=["matrix", "pore"])
    class NoiseField:
        def __init__(self, size: int = 32): ...
        def sample_batch(self, params, n, seed) -> md.GeneratedBatch: ...

and a study names it: ``generator: {kind: noise-field, options: {size: 24}}`` (or
``kind: my_module:NoiseField``, which imports ``my_module`` first). ``parameters`` says what a
study may search or fix: ``(low, high)`` for numbers (ints when both are ints; ``None``: no
bound) or a list of choices. The class is built once per generator actor with the block's
``options`` as keyword arguments (and ``device=`` when it takes one).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import xarray as xr

ATTRIBUTE = "__micro_doe_generator__"
BUILTIN_KINDS = ("micro3diff", "ldm", "cahn-hilliard")


@dataclass
class GeneratedBatch:
    """What one ``sample_batch`` call returns: per volume, the volume, its seconds, and what the
    generator predicted beside it."""

    volumes: list[xr.DataArray]
    seconds: list[float]
    predicted: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.predicted:
            self.predicted = [{} for _ in self.volumes]
        if not len(self.volumes) == len(self.seconds) == len(self.predicted):
            raise ValueError(f"a generated batch needs one entry per volume: {len(self.volumes)} volumes, "
                             f"{len(self.seconds)} seconds, {len(self.predicted)} predictions")


class Generator(Protocol):
    """What every generator kind offers (module doc)."""

    @property
    def phase_names(self) -> list[str]: ...

    @property
    def size(self) -> int: ...

    def sample_batch(self, params: Mapping[str, Any], n: int, seed: int) -> GeneratedBatch: ...


@dataclass(frozen=True)
class GeneratorKind:
    """A registered kind: its name, what builds it, what a study may search, its phases."""

    name: str
    factory: Callable[..., Generator]
    parameters: Mapping[str, tuple[float | None, float | None] | Sequence[Any]]
    phase_names: tuple[str, ...]


_REGISTRY: dict[str, GeneratorKind] = {}


def generator_kind(
    name: str, *, parameters: Mapping[str, Any], phase_names: Sequence[str]
) -> Callable[[Callable[..., Generator]], Callable[..., Generator]]:
    """Register a generator class (or factory) under ``name`` (module doc). The same class
    registered again replaces itself; another one under a taken name is an error."""

    def register(factory: Callable[..., Generator]) -> Callable[..., Generator]:
        if not isinstance(name, str) or not name or ":" in name or name in BUILTIN_KINDS:
            raise ValueError(f"generator kind {name!r}: expected a new name without ':' (not one of {list(BUILTIN_KINDS)})")
        if len(phase_names) < 2 or len(set(phase_names)) != len(phase_names):
            raise ValueError(f"generator kind {name!r}: phase_names must name at least 2 distinct phases, got {list(phase_names)}")
        earlier = _REGISTRY.get(name)
        if earlier is not None and _origin(earlier.factory) != _origin(factory):
            raise ValueError(f"generator kind {name!r}: already registered by {_origin(earlier.factory)}; pick another name")
        kind = GeneratorKind(name, factory, {k: _checked(name, k, v) for k, v in parameters.items()}, tuple(phase_names))
        _REGISTRY[name] = kind
        setattr(factory, ATTRIBUTE, kind)
        return factory

    return register


def find_generator_kind(name: str) -> GeneratorKind:
    """The registered kind ``name``, or the one ``module:attr`` registers (the module is
    imported). A ValueError lists the registered kinds otherwise."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            target = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"generator kind {name!r}: cannot import it ({type(err).__name__}: {err})") from None
        kind = getattr(target, ATTRIBUTE, None)
        if kind is None:
            raise ValueError(f"generator kind {name!r}: not registered; decorate it with @micro_doe.generator_kind")
        return kind
    known = [*BUILTIN_KINDS, *sorted(_REGISTRY)]
    raise ValueError(f"unknown generator kind {name!r}; known kinds: {', '.join(known)} (or 'module:Class' of your own)")


def _checked(kind: str, name: str, domain: Any) -> Any:
    if isinstance(domain, tuple) and len(domain) == 2 and all(v is None or isinstance(v, int | float) for v in domain):
        return domain
    if isinstance(domain, list) and domain:
        return tuple(domain)
    raise ValueError(f"generator kind {kind!r}: parameter {name!r} must be (low, high) or a list of choices, got {domain!r}")


def _origin(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


# ============================================================================ building one


def _micro3diff(model: str, device: str | None = None, batch_size: int | None = None, allow_extrapolation: bool = False,
                size: int | None = None) -> Generator:  # fmt: skip
    from micro_doe.platform.micro3diff.generator import Micro3DiffGenerator

    return Micro3DiffGenerator(model, device, batch_size=batch_size, allow_extrapolation=allow_extrapolation, size=size)


def _ldm(model: str, device: str | None = None, batch_size: int | None = None, allow_extrapolation: bool = False,
         size: int | None = None, verify: Any = None) -> Generator:  # fmt: skip
    """``verify``: absent (None) → the default verification, ``False`` → raw samples, a mapping
    → those settings."""
    from micro_doe.platform.ldm.generator import LDMGenerator
    from micro_doe.platform.ldm.verify import DEFAULT_VERIFY, VerifySettings

    settings = None if verify is False else DEFAULT_VERIFY if verify is None else VerifySettings.model_validate(verify)
    return LDMGenerator(model, device, verify=settings, batch_size=batch_size, allow_extrapolation=allow_extrapolation,
                        size=size)  # fmt: skip


def _cahn_hilliard(size: int = 32, phases: int = 2, device: str | None = None) -> Generator:
    from micro_doe.platform.synthetic.anneal import AnnealedFilmGenerator

    return AnnealedFilmGenerator(size, phases, device or "cpu")


BUILTIN_FACTORIES: dict[str, Callable[..., Generator]] = {"micro3diff": _micro3diff, "ldm": _ldm, "cahn-hilliard": _cahn_hilliard}


def generator_factory(kind: str) -> Callable[..., Generator]:
    """What builds a generator of ``kind`` (shipped, registered, or ``module:Class``)."""
    return BUILTIN_FACTORIES[kind] if kind in BUILTIN_FACTORIES else find_generator_kind(kind).factory


def takes_option(factory: Callable[..., Any], name: str) -> bool:
    params = inspect.signature(factory).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def build_generator(kind: str, options: Mapping[str, Any], factory: Callable[..., Generator] | None = None) -> Generator:
    """A generator of ``kind`` from a study's options (keyword arguments of its factory; an
    option it does not take is a ValueError naming it)."""
    factory = factory or generator_factory(kind)
    unknown = sorted(k for k in options if not takes_option(factory, k))
    if unknown:
        accepted = sorted(inspect.signature(factory).parameters)
        raise ValueError(f"generator spec: unknown keys {unknown} for kind {kind}; expected some of {accepted}")
    return factory(**options)
