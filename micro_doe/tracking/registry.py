"""MLflow Model Registry for model bundles: register a bundle directory, resolve ``models:/`` refs.

What is logged where (one tracking store, e.g. ``sqlite:////abs/micro-doe-runs/mlflow.db``):

- experiment ``micro-doe-models``: one run per :func:`register_bundle` call, named
  ``register-NAME``, with the bundle directory as artifacts under ``bundle/``
  (``config.json``, ``model.pt``, ``reference.nc``, ``card.md``). For a sqlite store the
  artifacts live beside the database in ``<db dir>/artifacts/micro-doe-models/``;
- registered model ``NAME``: a new version whose ``source`` is ``<run artifact uri>/bundle``
  (no MLflow flavour, no ``MLmodel`` file: a bundle is loaded with
  :func:`micro_doe.platform.micro3diff.bundle.load_bundle`, never unpickled by MLflow), tagged with the
  card's summary (``card.title``, ``card.summary``, ``kind``, ``image_size``, ``phases``,
  ``model_sha256``), described by the full ``card.md``; optionally an alias (``champion``).

:func:`resolve_model` turns ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` into a local
bundle directory, downloaded once into a cache (``$MICRO_DOE_CACHE/models``, default
``~/.cache/micro-doe/models``) keyed by name and version (plus a short hash of the store and
the version's run, so two stores never share an entry). It is what a Ray generator actor
calls on its own node. Anything else (``pretrained:NAME``, a path) passes through unchanged.

MLflow is imported lazily (it takes seconds); :func:`import_mlflow` turns telemetry and
progress bars off unless the environment says otherwise. Only ``MlflowClient`` is used: no
fluent global state (active runs, global tracking URI).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from micro_doe.errors import cache_root
from micro_doe.platform.bundles import REGISTRY_PREFIX
from micro_doe.platform.volumes import current_umask

if TYPE_CHECKING:
    from mlflow import MlflowClient

MODELS_EXPERIMENT = "micro-doe-models"
DEFAULT_TRACKING_URI = "sqlite:///micro-doe-runs/mlflow.db"
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a database store by default
TRIALS_VIEW = "micro-doe-trials"  # a study's shared view of its runs page (studies.mlflow_runs.trials_view)
ML_LAYOUT = "workflowType=machine_learning"  # MLflow 3.17's model-training layout (GenAI's otherwise)
TRIALS_VIEW_QUERY = f"viewStateShareKey={TRIALS_VIEW}&{ML_LAYOUT}"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
_ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


# ---------------------------------------------------------------- shared MLflow plumbing


def import_mlflow() -> Any:
    """``import mlflow`` with telemetry and artifact progress bars off (unless set explicitly)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    return mlflow


TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "file", "databricks")


def check_tracking_uri(uri: str) -> str:
    """A URI with a scheme MLflow 3 can track to (``sqlite:///…``, ``postgresql://…``,
    ``http(s)://…``, ``file:///…``); ``ValueError`` otherwise. Plain paths are refused: MLflow 3
    keeps the file store in maintenance mode, and ``sqlite//x`` is a typo, not a folder."""
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*):", uri)
    if not scheme or scheme.group(1).split("+")[0].lower() not in TRACKING_SCHEMES:
        raise ValueError(f"{uri!r} is not a tracking URI MLflow can open; expected sqlite:///PATH, "
                         "postgresql://…, http(s)://HOST:PORT or file:///PATH")
    return uri


def ui_hint(uri: str, experiment_id: str | None = None) -> str:
    """How a person opens the MLflow UI for a store: a tracking server is its own UI (open its
    URL); a database store is served locally with ``mlflow ui`` on 127.0.0.1 (the command on a
    line of its own, runnable as it is: :func:`runnable`). The experiment's link asks for the
    runs ("machine learning") layout, MLflow 3.17 opens the traces one otherwise, and for the
    study's trials view (every trial flat, best first; written by the study's tracker)."""
    page = f"/#/experiments/{experiment_id}/runs?{TRIALS_VIEW_QUERY}" if experiment_id else ""
    if uri.startswith(("http://", "https://")):
        return f"open {uri.rstrip('/')}{page} (the tracking server serves the UI)"
    return f"{runnable('mlflow')} ui --backend-store-uri {uri} --host 127.0.0.1\n  then open {LOCAL_UI}{page}"


def runnable(program: str) -> str:
    """``program`` as a shell can run it: its name when the shell's PATH finds this environment's
    copy, else that copy's full path (a venv that is not activated)."""
    mine = Path(sys.executable).parent / program
    if not mine.exists():
        return program
    found = shutil.which(program)
    return program if found and Path(found).resolve() == mine.resolve() else str(mine)


def absolute_tracking_uri(uri: str, *, create_parent: bool = True) -> str:
    """A sqlite URI with an absolute path (parent folder created); other URIs unchanged.

    ``sqlite:///rel.db`` follows the working directory; resolving it once means every
    process (driver, actors, ``mlflow ui``) opens the same file.
    """
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or ":memory:" in uri:
        return uri
    path, sep, query = uri[len(prefix) :].partition("?")
    db = Path(os.path.abspath(Path(path).expanduser()))
    if create_parent:
        db.parent.mkdir(parents=True, exist_ok=True)
    return f"{prefix}{db}{sep}{query}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    if not uri.startswith("sqlite:///") or ":memory:" in uri:
        return None
    return Path(absolute_tracking_uri(uri, create_parent=False)[len("sqlite:///") :].split("?", 1)[0])


@contextmanager
def sqlite_creation_lock(db: Path) -> Iterator[None]:
    """Serialise the first open of a sqlite database across processes (two drivers starting
    on a new store would both create its tables, and one would fail): an exclusive
    ``flock`` on ``DB.lock`` beside it, a file this program creates and keeps."""
    import fcntl

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@lru_cache(maxsize=8)
def mlflow_client(tracking_uri: str) -> MlflowClient:
    """One ``MlflowClient`` per store and process (the first open of a new sqlite store
    creates its tables, which takes seconds, one process at a time). The registry URI is
    the tracking URI."""
    import_mlflow()
    from mlflow import MlflowClient

    db = sqlite_path(tracking_uri)
    if db is None:
        return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    with sqlite_creation_lock(db):
        # The tracking and the registry store each create or migrate the tables when first made: both now.
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)
    return client


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name``, created (with ``artifact_location``) or restored if needed."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:  # created meanwhile by another process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def _error_code(err: Exception) -> str:
    return str(getattr(err, "error_code", ""))


# ---------------------------------------------------------------- register


def register_bundle(bundle: str | os.PathLike[str], name: str, *, alias: str | None = None, tracking_uri: str) -> int:
    """Register a bundle directory (or ``pretrained:NAME``) as a new version of model ``name``.

    Either kind of bundle (Micro3Diff or conditional LDM) is loaded first, so a broken bundle
    raises :class:`~micro_doe.platform.bundles.BundleError` before anything is written to the
    store. Returns the new version number.
    """
    from micro_doe.platform.bundles import bundle_kind, resolve_bundle_path
    from micro_doe.platform.ldm.bundle import load_ldm_bundle
    from micro_doe.platform.micro3diff.bundle import load_bundle

    check_model_name(name)
    if alias is not None:
        check_alias(alias)
    path = resolve_bundle_path(bundle)
    load = load_ldm_bundle if bundle_kind(path) == "ldm" else load_bundle
    loaded = load(path)  # validates config, weights and reference
    uri = absolute_tracking_uri(tracking_uri)
    client = mlflow_client(uri)
    from mlflow.exceptions import MlflowException

    db = sqlite_path(uri)
    location = (db.parent / "artifacts" / MODELS_EXPERIMENT).as_uri() if db is not None else None
    experiment_id = ensure_experiment(client, MODELS_EXPERIMENT, location)
    card = (path / "card.md").read_text() if (path / "card.md").exists() else ""
    tags = card_tags(card) | {
        "kind": loaded.config.kind,
        "image_size": str(loaded.config.image_size),
        "phases": ",".join(loaded.config.phase_names),
        "model_sha256": _sha256(path / "model.pt"),
        "bundle_source": str(path.resolve()),
    }
    run = client.create_run(
        experiment_id, run_name=f"register-{name}", tags={"micro_doe.role": "bundle", "micro_doe.model": name}
    )
    run_id = run.info.run_id
    try:
        client.log_artifacts(run_id, str(path), artifact_path="bundle")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    try:
        client.create_registered_model(name, description=tags.get("card.summary", ""))
    except MlflowException as err:
        if _error_code(err) != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/bundle", run_id=run_id, tags=tags, description=card[:5000] or None
    )
    if alias is not None:
        client.set_registered_model_alias(name, alias, version.version)
    return int(version.version)


def card_tags(card: str) -> dict[str, str]:
    """``card.title`` (the first heading) and ``card.summary`` (the first plain line), plus the
    card's ``final loss`` and error-rate lines when present."""
    tags: dict[str, str] = {}
    for line in card.splitlines():
        text = line.strip()
        if not text:
            continue
        if text.startswith("#") and "card.title" not in tags:
            tags["card.title"] = text.lstrip("#").strip()
        elif not text.startswith(("#", "-")) and "card.summary" not in tags:
            tags["card.summary"] = text[:500]
        elif text.startswith("- final loss"):
            tags["card.final_loss"] = text.split(":", 1)[-1].strip()
        elif text.startswith("- S2 error rate"):
            tags["card.s2_error_2d"] = text.split(":", 1)[-1].strip()
        elif text.startswith("- lineal path error rate"):
            tags["card.lineal_path_error_2d"] = text.split(":", 1)[-1].strip()
    return tags


def check_model_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise ValueError(
            f"model name {name!r}: use letters, digits, '.', '_' and '-' (starting with a letter or digit), "
            "so that models:/NAME@ALIAS stays unambiguous"
        )
    return name


def check_alias(alias: str) -> str:
    if not _ALIAS.match(alias or "") or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise ValueError(
            f"alias {alias!r}: use letters, digits, '_' and '-'; 'latest' and 'v<N>' are reserved by MLflow"
        )
    return alias


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- resolve


def parse_model_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` → (NAME, ALIAS, None); ``models:/NAME/VERSION`` → (NAME, None, VERSION)
    (VERSION may be ``latest``)."""
    body = ref[len(REGISTRY_PREFIX) :].strip("/")
    if "@" in body:
        name, _, alias = body.partition("@")
        if name and alias and "/" not in body:
            return name, alias, None
    elif body.count("/") == 1:
        name, _, version = body.partition("/")
        if name and (version.isdigit() or version == "latest"):
            return name, None, version
    raise ValueError(f"{ref}: expected models:/NAME@ALIAS or models:/NAME/VERSION")


def default_cache_dir() -> Path:
    """``$MICRO_DOE_CACHE/models`` if set, else ``~/.cache/micro-doe/models``."""
    return cache_root() / "models"


def resolve_model_version(ref: str, tracking_uri: str | None = None) -> Any:
    """The registered model version a ``models:/`` reference names now (nothing downloaded,
    no folder created); ``ValueError`` naming the reference when there is none."""
    name, alias, version = parse_model_ref(ref)
    uri = absolute_tracking_uri(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI,
                                create_parent=False)
    return _model_version(mlflow_client(uri), ref, name, alias, version, uri)


def resolve_model(ref: str, tracking_uri: str | None = None, cache_dir: Path | None = None) -> str:
    """A ``models:/`` reference → a local bundle directory; anything else returned unchanged.

    The store is ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else
    :data:`DEFAULT_TRACKING_URI`. The alias is looked up on every call (aliases move); the
    files are downloaded only when the cache has no entry for that version. Unknown names,
    aliases or versions raise ``ValueError`` naming the reference and the registered models.
    """
    if not isinstance(ref, str):
        return os.fspath(ref)
    if not ref.startswith(REGISTRY_PREFIX):
        return ref
    name, alias, version = parse_model_ref(ref)
    uri = absolute_tracking_uri(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)
    client = mlflow_client(uri)
    mv = _model_version(client, ref, name, alias, version, uri)
    key = hashlib.sha256(f"{uri}\n{mv.run_id}\n{mv.source}".encode()).hexdigest()[:10]
    target = Path(cache_dir or default_cache_dir()) / _safe(name) / f"v{mv.version}-{key}"
    if (target / "config.json").exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        mlflow = import_mlflow()
        # The version's own artifact URI, not models:/...: MLflow 3.17 resolves models:/ URIs
        # against the default registry (./mlflow.db), ignoring registry_uri.
        source = client.get_model_version_download_uri(name, mv.version)
        got = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(staging), tracking_uri=uri))
        if not got.resolve().is_relative_to(staging.resolve()):  # never move the store's own files
            got = Path(shutil.copytree(got, staging / "copy"))
        found = got if (got / "config.json").exists() else next(iter(got.glob("*/config.json")), None)
        if found is None:
            raise ValueError(f"{ref}: version {mv.version} of {name!r} ({mv.source}) is not a model bundle")
        bundle_dir = found if found.is_dir() else found.parent
        os.chmod(bundle_dir, 0o777 & ~current_umask())  # mkdtemp's 0700 would hide it from the team
        try:
            os.rename(bundle_dir, target)
        except OSError:
            if not (target / "config.json").exists():  # not a concurrent download that won the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def _model_version(client: MlflowClient, ref: str, name: str, alias: str | None, version: str | None, uri: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as err:
        if _error_code(err) not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        raise ValueError(f"{ref}: no registered model {name!r} in {uri}; {_registered_summary(client)}") from None
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        if version == "latest":
            versions = client.search_model_versions(f"name = '{name}'")
            if not versions:
                raise ValueError(f"{ref}: model {name!r} has no versions")
            return max(versions, key=lambda v: int(v.version))
        return client.get_model_version(name, str(version))
    except MlflowException as err:
        if _error_code(err) not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        what = f"alias {alias!r}" if alias is not None else f"version {version}"
        aliases = ", ".join(f"{a}→v{v}" for a, v in sorted(model.aliases.items())) or "none"
        raise ValueError(
            f"{ref}: model {name!r} has no {what} (its aliases: {aliases}); {_registered_summary(client)}"
        ) from None


def _registered_summary(client: MlflowClient) -> str:
    models = _all_registered(client)
    if not models:
        return "no models are registered (micro-doe models register BUNDLE --name NAME)"
    parts = []
    for m in models:
        aliases = ", ".join(f"@{a}→v{v}" for a, v in sorted(m.aliases.items()))
        parts.append(f"{m.name} ({aliases})" if aliases else m.name)
    return "registered models: " + "; ".join(parts)


def _all_registered(client: MlflowClient) -> list[Any]:
    out: list[Any] = []
    token = None
    while True:
        page = client.search_registered_models(max_results=200, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return sorted(out, key=lambda m: m.name)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


# ---------------------------------------------------------------- list


def list_models(tracking_uri: str) -> list[dict]:
    """Registered models: ``name``, ``versions`` (ascending numbers), ``aliases`` ({alias: version}),
    ``latest_version`` (or None) and ``description`` (first line of the model description or,
    failing that, of the latest version's card)."""
    uri = absolute_tracking_uri(tracking_uri)
    client = mlflow_client(uri)
    rows = []
    for model in _all_registered(client):
        versions = client.search_model_versions(f"name = '{model.name}'")
        numbers = sorted(int(v.version) for v in versions)
        latest = max(versions, key=lambda v: int(v.version)) if versions else None
        text = model.description or ""
        if not text.strip() and latest is not None:
            text = latest.tags.get("card.summary") or latest.description or ""
        first = next((ln.strip().lstrip("#").strip() for ln in text.splitlines() if ln.strip()), "")
        rows.append(
            {
                "name": model.name,
                "versions": numbers,
                "aliases": {a: int(v) for a, v in sorted(model.aliases.items())},
                "latest_version": numbers[-1] if numbers else None,
                "description": first,
            }
        )
    return rows
