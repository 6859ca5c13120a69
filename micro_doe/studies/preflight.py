"""Every check a study can make before anything exists on disk or on the cluster.

:func:`check_before_start` runs after the spec has validated (:func:`~micro_doe.studies.study_yaml.load_spec`)
and before Ray, Optuna or MLflow create anything. It reads only:

1. ``storage``: a database URL SQLAlchemy knows, whose driver is installed; a sqlite file
   in a folder that exists and is writable, or can be created; a server that answers;
2. ``tracking``: the store behind the URI (its scheme is checked when the spec validates),
   checked the same way;
3. ``artifacts``: a writable folder (or one that can be created), or a URI;
4. ``generator.model`` as ``models:/NAME@ALIAS``: the registry exists and holds it.

Each problem raises :class:`~micro_doe.studies.study_yaml.SpecError` naming the field.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

from micro_doe.platform.volumes import OutputExistsError, check_writable_folder, nearest_existing
from micro_doe.studies.spec import MEMORY_STORAGE, StudySpec
from micro_doe.studies.study_yaml import SpecError

CONNECT_TIMEOUT_S = 10
DRIVER_HINTS = {"postgresql": "psycopg2-binary (or postgresql+psycopg:// with psycopg)", "mysql": "pymysql (mysql+pymysql://)"}


def check_before_start(spec: StudySpec, file: str = "<study>") -> None:
    """Raise :class:`SpecError` for the first field that cannot work (module doc); create nothing."""
    problems = []
    for field, check in (("storage", _check_database), ("tracking", _check_tracking), ("artifacts", _check_artifacts)):
        value = getattr(spec, field)
        if value is None or (field == "storage" and value == MEMORY_STORAGE):
            continue  # no MLflow, or this process's memory: nothing to check
        message = check(value)
        if message:
            problems.append((field, message))
    if not problems and spec.generator.model.startswith("models:/") and spec.tracking is None:
        problems.append(("generator.model", f"{spec.generator.model}: a registered model needs tracking (the registry's "
                                            "MLflow URI); tracking is null"))
    if not problems and spec.generator.model.startswith("models:/") and spec.tracking is not None:
        message = _check_registered(spec.generator.model, spec.tracking)
        if message:
            problems.append(("generator.model", message))
    if problems:
        raise SpecError(file, problems)


def check_storage(url: str) -> str | None:
    """What is wrong with an Optuna storage URL that must already hold studies (the dashboard's):
    the checks of ``storage`` above, plus a sqlite file that exists. None when it can be opened."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    problem = _check_database(url)
    if problem is not None:
        return problem
    try:
        parsed = make_url(url)
    except ArgumentError:  # (reported above)
        return None
    database = parsed.database or ""
    if parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:") and not database.startswith("file:"):
        if not Path(database).is_file():
            return f"{database}: no Optuna storage there yet; run the study first (or check the storage URL)"
    return None


def masked_url(url: str) -> str:
    """A storage URL without its password (SQLAlchemy's rendering, as in the messages above)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _in_job_working_dir(path: Path) -> bool:
    """Whether ``path`` lies in Ray's per-job copy of a ``--working-dir`` (``…/runtime_resources/working_dir_files/…``)."""
    parts = path.resolve().parts
    return "runtime_resources" in parts and "working_dir_files" in parts


def _job_copy_message(path: Path) -> str:
    return (f"{path} lies in the copy Ray made of `ray job submit --working-dir` (deleted with the job, so the "
            "study could not resume); give an absolute path outside it, a database server or a tracking server")


def _check_database(url: str) -> str | None:
    """A SQLAlchemy URL with its driver installed; a sqlite file that can be written."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return f"{url!r} is not a database URL (expected e.g. sqlite:///runs/optuna.db or postgresql://user@host/db)"
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        return f"unknown database kind {parsed.drivername!r} in {url!r} (sqlite, postgresql, mysql …)"
    try:
        dialect.import_dbapi()
    except ImportError as err:
        backend = parsed.get_backend_name()
        hint = DRIVER_HINTS.get(backend, f"the driver of {parsed.drivername}")
        return f"the database driver for {parsed.drivername} is not installed ({err.name or err}); pip install {hint}"
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            return None
        problem = _check_file(Path(database))
        if problem is None and Path(database).is_file() and Path(database).stat().st_size and not _is_sqlite(database):
            problem = f"{database} exists and is not a SQLite database"
        return problem
    return _check_server(url, parsed.get_backend_name())


def _is_sqlite(path: str) -> bool:
    """Whether ``path`` is a SQLite database, asked through SQLite itself (read-only).

    Never with Python's ``open()``: closing any descriptor of a file drops every POSIX lock this
    process holds on it, so in a process that has the database open already (``micro-doe tune``
    opens its study before the run checks its stores) another program's reader could then take
    the database for unused, checkpoint it and delete the write-ahead log still being written,
    losing every trial written after that. SQLite's own connections are safe from this."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro", uri=True)) as db:
            db.execute("PRAGMA schema_version").fetchone()
    except sqlite3.DatabaseError:
        return False
    return True


def _check_server(url: str, backend: str) -> str | None:
    """A database server answers (connecting creates nothing there)."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    timeout = {"connect_timeout": CONNECT_TIMEOUT_S} if backend in ("postgresql", "mysql") else {}
    engine = create_engine(url, connect_args=timeout)
    try:
        with engine.connect():
            return None
    except SQLAlchemyError as err:
        cause = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        return f"cannot connect to {engine.url.render_as_string(hide_password=True)} ({cause})"
    finally:
        engine.dispose()


def _check_tracking(uri: str) -> str | None:
    """The store behind a tracking URI (its scheme was checked when the spec validated)."""
    base = uri.split(":", 1)[0].split("+")[0].lower()
    if base in ("sqlite", "postgresql", "mysql", "mssql"):
        return _check_database(uri)
    if base == "file":
        return _check_folder(Path(uri.removeprefix("file://")))
    return None


def _check_artifacts(location: str) -> str | None:
    if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", location):
        return _check_folder(Path(location.removeprefix("file://"))) if location.startswith("file://") else None
    return _check_folder(Path(location))


def _check_file(path: Path) -> str | None:
    """An existing writable file, or a new one in a folder that exists writable or can be made."""
    if _in_job_working_dir(path):
        return _job_copy_message(path)
    if path.exists():
        if path.is_dir():
            return f"{path} is a folder; expected a database file"
        if not os.access(path, os.R_OK | os.W_OK):
            return f"{path} is not writable"
        return None
    return _check_folder(path.parent)


def _check_folder(folder: Path) -> str | None:
    if _in_job_working_dir(folder):
        return _job_copy_message(folder)
    try:
        check_writable_folder(folder)
    except (OutputExistsError, PermissionError) as err:
        return str(err)
    return _probe(folder)


def _probe(folder: Path) -> str | None:
    """Create and remove a file in ``folder`` (or its nearest existing parent), restoring the
    folder's times: permissions can say yes where the file system says no (/proc, read-only
    mounts seen by root)."""
    here = nearest_existing(folder)
    before = here.stat()
    try:
        fd, name = tempfile.mkstemp(prefix=".micro-doe-probe-", dir=here)
    except OSError as err:
        return f"{here}: files cannot be created there ({err.strerror})"
    os.close(fd)
    os.unlink(name)
    with contextlib.suppress(OSError):
        os.utime(here, ns=(before.st_atime_ns, before.st_mtime_ns))
    return None


def _check_registered(ref: str, tracking: str) -> str | None:
    """The registry exists (without creating a database) and holds the model, alias or version."""
    from micro_doe.tracking.registry import parse_model_ref, resolve_model_version, sqlite_path

    try:
        parse_model_ref(ref)
    except ValueError as err:
        return str(err)
    db = sqlite_path(tracking)
    if db is not None and not db.exists():
        return (f"{ref}: there is no model registry at {tracking} yet "
                "(register a bundle first: micro-doe models register BUNDLE --name NAME)")
    try:
        resolve_model_version(ref, tracking)
    except ValueError as err:
        return str(err)
    return None
