"""Which ports a local Ray instance (as `micro-doe run` starts it) listens on, and on which interfaces.

    python deploy/local-ray-ports.py

Starts Ray the way :func:`micro_doe.actors.cluster.connect` does for a local run, runs one
task, and prints every listening TCP socket of Ray's processes (from ``ss -ltnp``, Linux).
README ("Security") quotes its output for the Ray version in use.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import ray

from micro_doe.actors.cluster import connect, shutdown


def main() -> None:
    if shutil.which("ss") is None:
        sys.exit("needs `ss` (iproute2) to list listening sockets")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    connect(num_cpus=1)
    ray.get(ray.remote(lambda: 1).remote())
    own = {str(os.getpid())}
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    print(f"ray {ray.__version__}: listening sockets of the local instance (address:port  process)")
    for line in sorted(out.splitlines()):
        fields = line.split()
        process = fields[-1]
        if any(name in process for name in ("gcs_server", "raylet", "ray::", "python")) and not any(p in process for p in own):
            print(f"  {fields[3]:<24} {process.split(',')[0].removeprefix('users:((')}")
    shutdown()


if __name__ == "__main__":
    main()
