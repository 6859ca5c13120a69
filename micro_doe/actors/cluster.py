"""Where actors run: connect to Ray (a local instance, or a cluster named by RAY_ADDRESS),
and the actor options that place generators and evaluators on it.

This module owns the driver's Ray connection. :func:`connect` is idempotent and never turns
token authentication off: a local instance uses Ray's default (token auth on, the token
from ``RAY_AUTH_TOKEN``/``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``); a cluster uses
whatever ``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN`` the environment has. An unreachable cluster
raises :class:`ClusterConnectionError` at once instead of letting ``ray.init`` retry for
minutes, and so does a missing or refused token (one GCS request, under a second).
:func:`check_workers` checks that every node imports the driver's micro_doe version.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import ray

from micro_doe.errors import ExecutionError, InputError, MicroDoeError, cache_root
from micro_doe.platform.interrupts import interrupted

RESTARTS = 2  # an actor process may die this many times (OOM, node loss, ray.kill) and come back
TASK_RETRIES = 1  # a call in flight when its actor died is run again once on the restarted actor
PROBE_TIMEOUT_S = 5.0

_started_local: bool | None = None  # whether connect() started the instance it is attached to


class ClusterConnectionError(MicroDoeError, ConnectionError):
    """RAY_ADDRESS names a cluster this driver cannot reach or is not allowed into."""


@dataclass(frozen=True)
class ClusterInfo:
    """The Ray instance this driver is attached to (resources as seen when connecting)."""

    address: str
    local: bool
    cpus: float
    gpus: float


def connect(num_cpus: int | None = None) -> ClusterInfo:
    """Attach to Ray once and describe it.

    Already initialised: return its info (``num_cpus`` is ignored). ``RAY_ADDRESS`` set: join
    that cluster (``num_cpus`` ignored too: a cluster's resources are its own); a closed port
    fails at once, a refused token after Ray's own ~20 s of retries, both as
    :class:`ClusterConnectionError`. Otherwise start a local instance with ``num_cpus``
    (default: all cores), no dashboard, worker logs kept out of the driver's terminal, and the
    messages Ray pushes to the driver kept in :func:`ray_messages_log`.
    ``RAY_AUTH_MODE`` must be in the environment before ``import ray`` (Ray reads it then).
    """
    global _started_local
    if ray.is_initialized():
        return _info(_started_local if _started_local is not None else not os.environ.get("RAY_ADDRESS"))
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if address:
        _check_reachable(address)
        _check_token(address)
        try:
            _init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, TimeoutError, ray.exceptions.AuthenticationError) as err:
            raise ClusterConnectionError(_unreachable_message(address, err)) from err
        _started_local = False
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        _init(
            address="local",
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            log_to_driver=False,
        )
        _started_local = True
    return _info(_started_local)


def ray_messages_log() -> Path:
    """Where the driver writes the messages Ray's cluster pushes to it (see :func:`_keep_ray_messages_in_a_log`)."""
    return cache_root() / "logs" / "ray-messages.log"


def _keep_ray_messages_in_a_log() -> None:
    """Ray's driver prints every error message the cluster pushes to it ("(raylet) Task …
    failed … will be retried", a lost node's details) to stdout from a thread of its own,
    whatever ``log_to_driver`` says; a node loss put about 56 such lines between the study's
    progress lines. They go to :func:`ray_messages_log` instead, appended with the time; the
    study's own notes say what happened in one line. (Ray has no switch for it: its module
    function ``print_to_stdstream`` is wrapped, once.)"""
    import datetime

    import ray._private.worker as ray_worker

    original = ray_worker.print_to_stdstream
    if getattr(original, "_micro_doe", False):
        return

    def to_log(data: dict, ignore_prefix: bool) -> None:
        if data.get("pid") != "raylet":
            return original(data, ignore_prefix)
        try:
            path = ray_messages_log()
            path.parent.mkdir(parents=True, exist_ok=True)
            stamp = datetime.datetime.now().isoformat(timespec="seconds")
            with open(path, "a") as f:
                f.writelines(f"{stamp} {line}\n" for line in data.get("lines", []))
        except OSError:
            return original(data, ignore_prefix)  # never lose a message: the terminal then
        return None

    to_log._micro_doe = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = to_log


def _init(**kwargs: Any) -> None:
    """``ray.init``, stopped cleanly by Ctrl-C or SIGTERM while it starts: what it started is shut
    down, and SIGTERM comes out as :class:`~micro_doe.platform.interrupts.Interrupted` (ray.init
    installs a SIGTERM handler that calls ``sys.exit(15)``: a silent exit 15, Ray left running)."""
    _keep_ray_messages_in_a_log()
    try:
        ray.init(**kwargs)
    except SystemExit as stop:
        if stop.code != signal.SIGTERM:
            raise
        _stop_partial_start()
        raise interrupted(signal.SIGTERM) from None
    except KeyboardInterrupt:
        _stop_partial_start()
        raise


def _stop_partial_start() -> None:
    with contextlib.suppress(Exception):  # whatever the half-started instance is in, stop it
        ray.shutdown()


def shutdown() -> None:
    """Disconnect (and stop the local instance if :func:`connect` started one)."""
    global _started_local
    if ray.is_initialized():
        ray.shutdown()
    _started_local = None


class ClusterCapacityError(InputError):
    """The study asks for more actors than the Ray instance can ever place."""


class CapacityLostError(ExecutionError):
    """Every generator (or every evaluator) of a running study was lost with its node."""


def check_capacity(info: ClusterInfo, generators: int, evaluators: int, gpus_per_generator: float) -> None:
    """Every actor takes one CPU (and a generator its GPU share when the cluster has GPUs);
    a study that cannot place them all would wait forever, so refuse it before it starts."""
    cpus = generators + evaluators
    where = "this machine's local Ray" if info.local else f"the Ray cluster at {info.address}"
    if cpus > info.cpus:
        raise ClusterCapacityError(
            f"resources: {generators} generator(s) + {evaluators} evaluator(s) need {cpus} CPUs, "
            f"{where} has {info.cpus:g}; lower resources.evaluators or resources.generators"
        )
    if info.gpus > 0 and generators * gpus_per_generator > info.gpus:
        raise ClusterCapacityError(
            f"resources.gpus_per_generator: {generators} × {gpus_per_generator:g} GPUs exceed the {info.gpus:g} of {where}"
        )


def generator_options(
    resources_gpus_per_generator: float, info: ClusterInfo, *, name: str | None = None
) -> dict[str, Any]:
    """``.options()`` for a :class:`~micro_doe.actors.generator.GeneratorActor`.

    A GPU share per generator when the cluster has GPUs (Ray then sets
    ``CUDA_VISIBLE_DEVICES`` for the actor), none otherwise; one CPU; restarts and one
    retry of an interrupted call. ``name`` makes it findable with ``ray.get_actor``.
    """
    options: dict[str, Any] = {
        "num_cpus": 1,
        "num_gpus": resources_gpus_per_generator if info.gpus > 0 else 0,
        "max_restarts": RESTARTS,
        "max_task_retries": TASK_RETRIES,
    }
    if name is not None:
        options["name"] = name
    return options


def evaluator_options(*, name: str | None = None) -> dict[str, Any]:
    """``.options()`` for an :class:`~micro_doe.actors.evaluator.EvaluatorActor`: one CPU, restarts."""
    options: dict[str, Any] = {"num_cpus": 1, "max_restarts": RESTARTS, "max_task_retries": TASK_RETRIES}
    if name is not None:
        options["name"] = name
    return options


def in_actor() -> bool:
    """Whether this code runs inside a Ray actor."""
    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


def restarted() -> bool:
    """Whether this actor process is a restart (after a crash or ``ray.kill(no_restart=False)``)."""
    return in_actor() and bool(ray.get_runtime_context().was_current_actor_reconstructed)


def _info(local: bool) -> ClusterInfo:
    resources = ray.cluster_resources()
    return ClusterInfo(
        address=str(ray.get_runtime_context().gcs_address),
        local=local,
        cpus=float(resources.get("CPU", 0.0)),
        gpus=float(resources.get("GPU", 0.0)),
    )


def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` or ``ray://host:port`` → (host, port); None for ``auto`` and the like."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return parts.hostname, port


def _check_reachable(address: str) -> None:
    """Fail fast on a closed port: ``ray.init`` itself retries an unreachable GCS for minutes."""
    target = _host_port(address)
    if target is None:
        return
    host, port = target
    hosts = [host]
    if host in {"localhost", "127.0.0.1", "::1"}:  # Ray dials the node IP for loopback addresses
        hosts.append(ray.util.get_node_ip_address())
    errors = []
    for candidate in hosts:
        try:
            with socket.create_connection((candidate, port), timeout=PROBE_TIMEOUT_S):
                return
        except OSError as err:
            errors.append(f"{candidate}:{port}: {err}")
    raise ClusterConnectionError(_unreachable_message(address, "; ".join(errors)))


def _check_token(address: str) -> None:
    """Ask the GCS once with this process's token (under a second): ``ray.init`` itself
    retries a refused token for about 20 s and prints a long traceback."""
    if address.startswith("ray://") or _host_port(address) is None:
        return  # Ray Client and "auto" authenticate their own way
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" and not _has_token():
        # Ray's native client aborts the whole process (exit 1, its message on fd 2) in this case
        raise ClusterConnectionError(
            f"RAY_AUTH_MODE=token but this driver has no token for RAY_ADDRESS={address}: set RAY_AUTH_TOKEN, or "
            "RAY_AUTH_TOKEN_PATH to a file holding it, or write it to ~/.ray/auth_token (`ray get-auth-token` on "
            "the head prints it)"
        )
    from ray._raylet import GcsClient  # type: ignore[attr-defined]

    try:
        with _stderr_silenced():  # the C++ client logs each refusal to fd 2
            GcsClient(address=address).internal_kv_get(b"session_name", namespace=None, timeout=PROBE_TIMEOUT_S)
    except ray.exceptions.AuthenticationError:
        what = "refused this driver's token" if _has_token() else "needs a token and this driver has none"
        raise ClusterConnectionError(
            f"the Ray cluster at RAY_ADDRESS={address} {what}: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or "
            "RAY_AUTH_TOKEN_PATH) to the cluster's token (`ray get-auth-token` on the head prints it)"
        ) from None
    except Exception:  # noqa: BLE001 — anything else is ray.init's to report
        return


def _has_token() -> bool:
    """Whether Ray can find a token here: RAY_AUTH_TOKEN, a RAY_AUTH_TOKEN_PATH file that exists,
    or ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return Path(path).expanduser().is_file()
    return (Path.home() / ".ray" / "auth_token").is_file()


@contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the block (native code writes there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def check_workers(info: ClusterInfo, timeout_s: float = 120.0) -> None:
    """Every live node of a cluster imports micro_doe at the driver's version, or a one-line
    :class:`ClusterConnectionError` names the nodes that do not (checked before a study creates
    anything; actors would otherwise die on their first call). Local instances are skipped."""
    if info.local:
        return
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from micro_doe import __version__

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    probe = ray.remote(num_cpus=0, max_retries=0)(_package_version)
    refs = {  # by node id: the nodes of a cluster on one machine share its address
        n["NodeID"]: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
        for n in nodes
    }
    hosts = {n["NodeID"]: n["NodeManagerAddress"] for n in nodes}
    reports: dict[str, str | BaseException] = {}
    for node, ref in refs.items():
        where = hosts[node] if list(hosts.values()).count(hosts[node]) == 1 else f"{hosts[node]} (node {node[:8]})"
        try:
            reports[where] = ray.get(ref, timeout=timeout_s)
        except ray.exceptions.NodeDiedError:
            continue  # it died during the check: it hosts no actor, whatever it runs
        except Exception as err:  # noqa: BLE001 — reported below, node by node
            if not any(n["NodeID"] == node and n.get("Alive") for n in ray.nodes()):
                continue  # gone since the check began (a task for a vanished node is unschedulable)
            reports[where] = err
    problem = worker_package_problem(reports, __version__)
    if problem:
        raise ClusterConnectionError(problem)


def worker_package_problem(reports: dict[str, str | BaseException], version: str) -> str | None:
    """One line naming the nodes whose workers lack micro_doe ``version`` (None when all have it).

    ``reports``: node address → the version its worker imported, or the error it raised."""
    bad = []
    for host, got in sorted(reports.items()):
        if isinstance(got, BaseException):
            text = str(got)
            missing = "No module named 'micro_doe'" in text or "ModuleNotFoundError" in text
            bad.append(f"{host}: " + ("micro_doe is not installed" if missing else
                                      f"the check failed ({type(got).__name__}: {text.strip().splitlines()[-1][:120]})"))
        elif got != version:
            bad.append(f"{host}: micro_doe {got}")
    if not bad:
        return None
    return (f"the Ray workers must run micro_doe {version} like this driver; " + "; ".join(bad)
            + ". Install the same micro-doe on every node (or use the project's container image, deploy/README.md)")


def _package_version() -> str:
    import micro_doe

    return str(micro_doe.__version__)


def _unreachable_message(address: str, cause: object) -> str:
    return (
        f"cannot connect to the Ray cluster at RAY_ADDRESS={address} ({cause}). Check that the "
        "cluster is up and the address is right (host:port of the head's GCS, or ray://host:10001). "
        "Ray clusters use token authentication: the driver needs RAY_AUTH_MODE=token and a "
        "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) equal to the cluster's token "
        "(`ray get-auth-token` on the head prints it). Unset RAY_ADDRESS to run on a local instance."
    )
