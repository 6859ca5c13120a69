"""A real multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: one raylet
process per node) for tests whose nodes die: the fixture and the node killer."""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from micro_doe.actors import shutdown


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head without CPUs and three 1-CPU workers: each actor gets a node of its own."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        home_token = Path.home() / ".ray" / "auth_token"  # as tests/actors/conftest.py: Ray caches the token
        if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or home_token.exists()):
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # kept for the process: Ray caches it
        shutdown()  # a local instance another test module left behind
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        for _ in range(3):
            c.add_node(num_cpus=1)
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False)
        mp.setenv("RAY_ADDRESS", c.address)  # a cluster: the study checks every node's micro_doe first
        try:
            yield c
        finally:
            shutdown()
            c.shutdown()


def remove_node_of(cluster: Cluster, kind: str) -> str:
    """Kill the worker node that runs the study's ``kind`` actor (the first one found), and
    the actor's process with it.

    ``cluster.remove_node`` kills the node's raylet; the worker processes it leaves notice only
    later, and meanwhile answer the driver's calls (they go from worker to worker, not through
    the raylet). A machine that dies takes every process at once, so the actor's process is
    killed too, and the kill returns only once it is gone."""
    from ray._private.state import state

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if f":{kind}" in a["name"]]
    table = state.actor_table(ray.get_actor(names[0])._actor_id.hex())
    node_id, pid = table["Address"]["NodeID"], table["Pid"]
    worker = next(n for n in cluster.worker_nodes if n.node_id == node_id)
    cluster.remove_node(worker, allow_graceful=False)
    _kill_and_wait(pid)
    return names[0]


def _kill_and_wait(pid: int, timeout_s: float = 30.0) -> None:
    """SIGKILL ``pid`` and wait until it has exited (gone, or a zombie nobody reaped yet)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    status = Path(f"/proc/{pid}/status")
    while time.monotonic() < deadline:
        try:
            if "State:\tZ" in status.read_text():
                return
        except FileNotFoundError:
            return
        time.sleep(0.05)
    raise TimeoutError(f"process {pid} still runs {timeout_s:g} s after SIGKILL")
