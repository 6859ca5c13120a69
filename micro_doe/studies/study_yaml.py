"""Loading study.yaml files. :func:`load_spec` reads
YAML with a safe loader (no Python tags, no duplicate keys), merges overrides, validates with
:func:`parse_spec` and raises :class:`SpecError` naming the file and the field path of every
problem (pydantic's errors flattened by :func:`flatten_errors`), e.g.
``study.yaml: search.n_h.int: lower bound must be < upper bound``; loading writes nothing to
disk. Also here: the studies shipped with micro-doe (:func:`bundled_studies`) and the JSON
Schema of study.yaml (:func:`study_json_schema`). The spec model itself is
:class:`~micro_doe.studies.spec.StudySpec`, its generator blocks are in
:mod:`~micro_doe.studies.generator_blocks` and its parameter domains in
:mod:`~micro_doe.studies.search_space`.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from micro_doe.errors import InputError
from micro_doe.platform.volumes import why_missing
from micro_doe.studies.generator_blocks import (
    CahnHilliardGeneratorSpec,
    CustomGeneratorSpec,
    GeneratorSpec,
    LDMGeneratorSpec,
    Micro3DiffGeneratorSpec,
    check_model_ref,
)
from micro_doe.studies.objectives import known_objectives
from micro_doe.studies.search_space import (
    GENERATOR_PARAMETERS,
    PARAM_KINDS,
    CategoricalParam,
    FloatParam,
    IntParam,
    ParamDomain,
    ParamSpec,
    find_domain,
)
from micro_doe.studies.spec import (
    BudgetSpec,
    ConstraintSpec,
    EvaluationSpec,
    GPSamplerSpec,
    HyperbandPrunerSpec,
    InitialDesign,
    MedianPrunerSpec,
    NSGA2SamplerSpec,
    ObjectiveSpec,
    ParetoHalvingPrunerSpec,
    PrunerSpec,
    RandomSamplerSpec,
    ResourcesSpec,
    SamplerSpec,
    StudySpec,
    SuccessiveHalvingPrunerSpec,
    TPESamplerSpec,
)

EXAMPLES_DIR = Path(__file__).parent / "examples"


class SpecError(InputError):
    """An invalid study: ``file`` and ``problems`` as ``(field path, message)`` pairs."""

    def __init__(self, file: str, problems: list[tuple[str, str]]) -> None:
        self.file = file
        self.problems = problems
        lines = [f"{path}: {msg}" if path else msg for path, msg in problems]
        text = lines[0] if len(lines) == 1 else f"{len(lines)} problems:\n  " + "\n  ".join(lines)
        super().__init__(f"{file}: {text}")


# ============================================================================ loading


class _SafeLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader (no Python tags), refusing duplicate keys."""


def _mapping_without_duplicates(loader: _SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    for i, key in enumerate(keys):
        if key in keys[:i]:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", node.value[i][0].start_mark
            )
    return loader.construct_mapping(node, deep=deep)


_SafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def bundled_studies() -> dict[str, Path]:
    """Studies shipped with micro-doe, by name (``micro_doe/studies/examples/NAME.yaml``)."""
    return {p.stem: p for p in sorted(EXAMPLES_DIR.glob("*.yaml"))}


def study_json_schema() -> dict[str, Any]:
    """JSON Schema of study.yaml (StudySpec by alias)."""
    schema = StudySpec.model_json_schema(by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "title": "micro-doe study"}


def _locate(ref: str | os.PathLike[str]) -> Path:
    if isinstance(ref, os.PathLike):
        return Path(ref)
    path = Path(ref)
    if path.exists() or "/" in ref or os.sep in ref or path.suffix in (".yaml", ".yml"):
        return path
    studies = bundled_studies()
    if ref in studies:
        return studies[ref]
    raise SpecError(ref, [("", f"no such file, and not a bundled study (bundled: {', '.join(studies) or 'none'})")])


def _merge(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` into ``data``; a dotted key addresses nested keys, preferring
    the longest existing key at each level (so ``search.target.vf`` finds ``target.vf``)."""
    out = dict(data)
    for key, value in overrides.items():
        target, rest = out, str(key)
        while True:
            longest_first = sorted(target, key=lambda k: -len(str(k)))
            head = next((k for k in longest_first if rest == k or rest.startswith(f"{k}.")), None)
            head = head if head is not None else rest.split(".", 1)[0]
            if head == rest:
                break
            child = target.get(head)
            target[head] = dict(child) if isinstance(child, Mapping) else {}
            target, rest = target[head], rest[len(head) + 1 :]
        if isinstance(value, Mapping) and isinstance(target.get(rest), Mapping):
            target[rest] = _merge(dict(target[rest]), value)
        else:
            target[rest] = value
    return out


@contextlib.contextmanager
def _user_imports(folder: Path) -> Iterator[None]:
    """While validating: the study's folder importable (for ``module:function`` objectives)
    and no bytecode written, so loading creates no files."""
    added = str(folder) not in sys.path
    if added:
        sys.path.insert(0, str(folder))
    bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.dont_write_bytecode = bytecode
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(str(folder))


def parse_spec(data: Any, *, base: Path | None = None, file: str = "<study>") -> StudySpec:
    """Validate a study mapping (as read from YAML); relative model paths against ``base``.

    Raises :class:`SpecError` listing every problem by field path.
    """
    if data is None:
        raise SpecError(file, [("", "empty study (expected a mapping of keys such as name, generator, search)")])
    if not isinstance(data, Mapping):
        raise SpecError(file, [("", f"expected a mapping at the top level, got {type(data).__name__}")])
    folder = Path(os.path.abspath(base or Path.cwd()))
    try:
        with _user_imports(folder):
            return StudySpec.model_validate(dict(data), context={"base": folder})
    except ValidationError as err:
        raise SpecError(file, flatten_errors(err)) from None


def load_spec(ref: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> StudySpec:
    """Load and validate a study: a study.yaml path or a bundled study name (:func:`bundled_studies`).

    ``overrides`` is deep-merged into the YAML before validation; dotted keys address nested
    keys (``{"budget.n_trials": 2}``). Reads only; creates nothing on disk.
    """
    path = _locate(ref)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(file, [("", why_missing(path) or "no such file")]) from None
    except IsADirectoryError:
        raise SpecError(file, [("", "is a directory, expected a study.yaml file")]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(file, [("", why_missing(path) or f"cannot read ({err})")]) from None
    try:
        data = yaml.load(text, Loader=_SafeLoader)  # noqa: S506 — a SafeLoader subclass
    except yaml.YAMLError as err:
        raise SpecError(file, [("", f"invalid YAML: {' '.join(str(err).split())}")]) from None
    if overrides and isinstance(data, Mapping):
        data = _merge(dict(data), overrides)
    return parse_spec(data, base=path.parent, file=file)


# ============================================================================ error messages

_UNION_TAGS: dict[str, type[BaseModel]] = {
    **PARAM_KINDS,
    "micro3diff": Micro3DiffGeneratorSpec,
    "ldm": LDMGeneratorSpec,
    "cahn-hilliard": CahnHilliardGeneratorSpec,
    "custom": CustomGeneratorSpec,
    "tpe": TPESamplerSpec,
    "gp": GPSamplerSpec,
    "nsga2": NSGA2SamplerSpec,
    "random": RandomSamplerSpec,
    "median": MedianPrunerSpec,
    "successive_halving": SuccessiveHalvingPrunerSpec,
    "hyperband": HyperbandPrunerSpec,
    "pareto_halving": ParetoHalvingPrunerSpec,
}


def _unwrap(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        members = [get_args(a)[0] if get_origin(a) is Annotated else a for a in members]
        if len(members) == 1:
            return _unwrap(members[0])
        return tuple(members)  # a union: its members
    return tp


def _walk(loc: tuple[Any, ...]) -> tuple[str, Any, Any]:
    """Readable path of a pydantic error location (union tags dropped), the type at the
    parent of the last item, and the type at the location."""
    tp: Any = StudySpec
    parent: Any = None
    path = ""
    tagged = False
    for item in loc:
        tp = _unwrap(tp)
        if isinstance(tp, tuple):  # a union: the item is a tag or a member label, not a path part
            tp = _UNION_TAGS.get(item) if _UNION_TAGS.get(item) in tp else None
            tagged = True
            continue
        if not tagged and isinstance(item, str) and _UNION_TAGS.get(item) is tp:  # tag of a one-member union
            tagged = True
            continue
        tagged = False
        parent = tp
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = next((f for n, f in tp.model_fields.items() if item in (n, f.alias)), None)
            tp = field.annotation if field else None
            path += f".{item}" if path else str(item)
        elif get_origin(tp) is list and isinstance(item, int):
            tp = get_args(tp)[0]
            path += f"[{item}]"
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
            path += f".{item}" if path else str(item)
        else:
            tp = None
            path += f"[{item}]" if isinstance(item, int) else (f".{item}" if path else str(item))
    return path, parent, _unwrap(tp)


def _is_container(tp: Any) -> bool:
    return (isinstance(tp, type) and issubclass(tp, BaseModel)) or get_origin(tp) is dict


def _join(path: str, sub: str) -> str:
    return f"{path}.{sub}" if path and sub else path or sub


def flatten_errors(err: ValidationError) -> list[tuple[str, str]]:
    """Pydantic errors as ``(field path, message)``, one problem per path."""
    out: dict[str, list[str]] = {}
    for e in err.errors(include_url=False):
        path, parent, here = _walk(tuple(e["loc"]))
        kind, msg = e["type"], e["msg"]
        ctx = e.get("ctx") or {}
        if kind == "extra_forbidden":
            is_model = isinstance(parent, type) and issubclass(parent, BaseModel)
            allowed = [f.alias or n for n, f in parent.model_fields.items()] if is_model else []
            msg = "unknown key" + (f"; allowed keys: {', '.join(allowed)}" if allowed else "")
        elif kind == "missing":
            msg = "required key missing"
        elif kind == "union_tag_invalid":
            path = _join(path, "kind")
            msg = f"unknown kind {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
        elif kind == "union_tag_not_found":
            path = _join(path, str(ctx.get("discriminator", "kind")).strip("'"))
            msg = "required key missing"
        elif kind == "value_error":
            msg = msg.removeprefix("Value error, ")
            if _is_container(here):  # a model- or mapping-level check: "sub.path: message" lines
                for line in msg.split("\n"):
                    sub, sep, text = line.partition(": ")
                    if sep and re.fullmatch(r"[\w.\[\]*\-]+", sub):
                        out.setdefault(_join(path, sub), []).append(text)
                    else:
                        out.setdefault(path, []).append(line)
                continue
        out.setdefault(path, []).append(msg)
    return [(path, "; ".join(dict.fromkeys(msgs))) for path, msgs in out.items()]


__all__ = [
    "GENERATOR_PARAMETERS",
    "BudgetSpec",
    "CategoricalParam",
    "ConstraintSpec",
    "EvaluationSpec",
    "FloatParam",
    "GPSamplerSpec",
    "GeneratorSpec",
    "InitialDesign",
    "IntParam",
    "LDMGeneratorSpec",
    "Micro3DiffGeneratorSpec",
    "NSGA2SamplerSpec",
    "ObjectiveSpec",
    "ParamDomain",
    "ParamSpec",
    "PrunerSpec",
    "RandomSamplerSpec",
    "ResourcesSpec",
    "SamplerSpec",
    "SpecError",
    "StudySpec",
    "TPESamplerSpec",
    "bundled_studies",
    "check_model_ref",
    "find_domain",
    "flatten_errors",
    "known_objectives",
    "load_spec",
    "parse_spec",
    "study_json_schema",
]
