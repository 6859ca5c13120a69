"""optuna-dashboard on a study's storage, with each trial's slice montage shown in its card.

Trial images live in a ``FileSystemArtifactStore`` folder (the study driver uploads the
trial's montage PNG with :func:`upload_trial_image` before ``tell``; Optuna records the
artifact's id, name and mimetype in the trial's system attrs, the bytes stay in the folder).
The dashboard must be given the same folder (``--artifact-dir``).

The dashboard binds 127.0.0.1 by default and refuses other interfaces unless
``allow_remote=True``: it has no authentication, and anyone who reaches the port can read
every study, and edit notes, delete artifacts or delete studies.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from micro_doe.tracking.registry import absolute_tracking_uri

if TYPE_CHECKING:
    from optuna.artifacts import FileSystemArtifactStore

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def artifact_store(path: str | os.PathLike[str]) -> FileSystemArtifactStore:
    """A ``FileSystemArtifactStore`` on ``path`` (created if missing)."""
    from optuna.artifacts import FileSystemArtifactStore

    folder = Path(path).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(folder)


def trial_montage(volumes: Any, path: str | os.PathLike[str], example: Any = None, *, title: str = "") -> Path:
    """Middle xy/xz/yz slices, one row per volume (a ``sample`` dim is split into rows), below
    ``example`` (a training image) when given, with a phase legend: the picture optuna-dashboard
    shows on a trial's page, and MLflow keeps with its run."""
    import xarray as xr

    from micro_doe.platform.plots import slice_montage

    vols = [volumes] if isinstance(volumes, xr.DataArray) else list(volumes)
    rows: list[Any] = []
    for v in vols:
        rows += [v.isel(sample=i) for i in range(v.sizes["sample"])] if "sample" in v.dims else [v]
    return slice_montage(rows, path, title=title, labels=[f"sample {i}" for i in range(len(rows))], reference=example)


def upload_trial_image(study: Any, trial: Any, png: str | os.PathLike[str], store: Any) -> str:
    """Attach ``png`` to a RUNNING trial (call before ``study.tell``); returns the artifact id.

    ``study`` is accepted for symmetry with the driver's calls; the trial knows its study.
    """
    from optuna.artifacts import upload_artifact

    return upload_artifact(artifact_store=store, file_path=str(png), study_or_trial=trial, mimetype="image/png")


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def dashboard_command(
    storage: str,
    artifact_dir: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    allow_remote: bool = False,
    server: str = "wsgiref",
) -> list[str]:
    """The optuna-dashboard command line for ``storage`` (a sqlite path made absolute).

    ``server="wsgiref"`` (threaded, one process, stops at once) is used because the default
    ``auto`` picks gunicorn whenever it is installed (MLflow installs it). Any host other
    than a loopback address raises ``ValueError`` unless ``allow_remote=True``, because the
    dashboard has no authentication and lets anyone who reaches it edit or delete studies.
    """
    if not is_loopback(host) and not allow_remote:
        raise ValueError(
            f"host {host!r}: the dashboard has no authentication, so anyone reaching it could read, edit "
            "or delete studies; it binds 127.0.0.1 by default (use an SSH tunnel), or pass allow_remote=True "
            "to expose it on purpose"
        )
    if not 0 < int(port) < 65536:
        raise ValueError(f"port: expected 1..65535, got {port}")
    folder = Path(artifact_dir).expanduser().resolve()
    script = Path(sys.executable).parent / "optuna-dashboard"
    if script.exists():
        program = [sys.executable, str(script)]
    elif shutil.which("optuna-dashboard"):
        program = [str(shutil.which("optuna-dashboard"))]
    else:  # the package has no __main__; its CLI module runs main() when executed
        program = [sys.executable, "-m", "optuna_dashboard._cli"]
    return [
        *program,
        absolute_tracking_uri(storage, create_parent=False),
        "--host",
        host,
        "--port",
        str(int(port)),
        "--artifact-dir",
        str(folder),
        "--server",
        server,
    ]


def run_dashboard(
    storage: str,
    artifact_dir: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    allow_remote: bool = False,
) -> None:
    """Run optuna-dashboard in the foreground until Ctrl-C; prints the URL first.

    Ctrl-C or SIGTERM stop the dashboard too (no orphaned server). Raises ``ValueError``
    when a sqlite storage file does not exist or the port is taken, ``RuntimeError`` when
    the dashboard exits with an error.
    """
    from micro_doe.studies.preflight import check_storage, masked_url

    problem = check_storage(storage)  # the dashboard does not create tables: it would just crash
    if problem is not None:
        raise ValueError(f"storage {masked_url(storage)}: {problem}")
    _check_port_free(host, port)
    command = dashboard_command(storage, artifact_dir, host, port, allow_remote=allow_remote)
    Path(artifact_dir).expanduser().mkdir(parents=True, exist_ok=True)  # only once everything is checked
    shown = f"[{host}]" if ":" in host else host
    print(f"optuna-dashboard: http://{shown}:{port}/dashboard  (Ctrl-C to stop)", flush=True)
    process = subprocess.Popen(command)
    forward = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if forward else None
    try:
        code = process.wait()
    except KeyboardInterrupt:  # Ctrl-C (the dashboard got it too) or SIGTERM: stop it, quietly
        code = 0
    finally:
        if forward:
            signal.signal(signal.SIGTERM, previous)
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    if code != 0:
        shown = " ".join(masked_url(part) if "://" in part else part for part in command)
        raise RuntimeError(f"optuna-dashboard exited with code {code}: {shown}")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the dashboard's server does
        try:
            probe.bind((host.strip("[]"), int(port)))
        except OSError as err:
            raise ValueError(
                f"port {port} on {host} is not available ({err.strerror}); choose another with --port"
            ) from None
