"""A long study with a generator that takes milliseconds: what the driver itself costs per trial.

    python benchmarks/load.py [--trials 2000] [--storage sqlite:///micro-doe-runs/load/optuna.db | postgresql]
                              [--executor local|ray] [--sampler random|tpe] [--tracking] [--pictures]

The generator (registered here, ``instant-noise``) thresholds 8³ white noise: a millisecond per
volume, so nearly all of a trial's time is the platform's: asking, evaluating the descriptors of
an 8³ volume, writing the trial's attributes and constraints, telling. One volume per trial, no
tortuosity. Beside it, in the same run and on the same kind of storage, Optuna's own loop
(``study.optimize`` with an objective that returns at once, the same sampler): the reference.

Printed per row: trials, wall seconds, milliseconds per trial (all of it, and the last 10 %
alone: does a trial get slower as the study grows?), the storage's size on disk, and the
driver's peak resident memory. ``--tracking`` adds an MLflow run per trial (sqlite beside the
storage); ``--pictures`` draws each trial's montage (the study's ``pictures: true``, its default;
off here, as a study of a millisecond generator would set it). ``--storage postgresql`` starts a
PostgreSQL of its own (initdb and pg_ctl on the PATH; on 127.0.0.1, in a temporary folder,
stopped at the end) and measures both rows there; the size column then gives the database's size.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import optuna

import micro_doe as md
from micro_doe.platform.volumes import make_volume


@md.generator_kind("instant-noise", parameters={"threshold": (0.0, 1.0)}, phase_names=["matrix", "pore"])
class InstantNoise:
    """8³ uniform noise below ``threshold``: a generator that costs almost nothing."""

    def __init__(self, size: int = 8):
        self.size, self.phase_names = size, ["matrix", "pore"]

    def sample_batch(self, params, n, seed):  # type: ignore[no-untyped-def]
        volumes, seconds = [], []
        for i in range(n):
            start = time.perf_counter()
            labels = (np.random.default_rng(seed + i).random((self.size,) * 3) < params["threshold"]).astype(np.int8)
            labels.flat[0], labels.flat[1] = 0, 1  # never one phase
            volumes.append(make_volume(labels, phase_names=self.phase_names, source="instant-noise", seed=seed + i))
            seconds.append(time.perf_counter() - start)
        return md.GeneratedBatch(volumes, seconds)


def db_size(url: str) -> str:
    if url.startswith("postgresql"):
        import sqlalchemy

        with sqlalchemy.create_engine(url).connect() as conn:
            size = conn.execute(sqlalchemy.text("SELECT pg_database_size(current_database())")).scalar_one()
        return f"{size / 1e6:.1f} MB"
    if not url.startswith("sqlite:///"):
        return "n/a"
    path = Path(url[len("sqlite:///") :])
    total = sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())
    return f"{total / 1e6:.1f} MB"


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def own_postgres() -> Iterator[str]:
    """A PostgreSQL server of the benchmark's own on 127.0.0.1 (a free port, a temporary data
    folder; as root it runs as the ``postgres`` user), with two empty databases; yields its URL
    without a database name."""
    folder = Path(tempfile.mkdtemp(prefix="micro-doe-load-pg-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def as_pg(*cmd: str) -> None:
        if os.getuid() == 0:
            shutil.chown(folder, "postgres")
            cmd = ("su", "postgres", "-s", "/bin/sh", "-c", " ".join(cmd))
        subprocess.run(cmd, check=True, capture_output=True)

    as_pg("initdb", "-D", f"{folder}/data", "-A", "trust", "-U", "postgres")
    as_pg("pg_ctl", "-D", f"{folder}/data", "-o", f"'-p {port} -k /tmp -c listen_addresses=127.0.0.1'",
          "-l", f"{folder}/pg.log", "-w", "start")  # fmt: skip
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres",
                                          isolation_level="AUTOCOMMIT")  # fmt: skip
        with engine.connect() as conn:
            for name in ("micro_doe", "optuna_alone"):
                conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
        engine.dispose()
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        as_pg("pg_ctl", "-D", f"{folder}/data", "stop", "-m", "fast")
        shutil.rmtree(folder, ignore_errors=True)


def micro_doe_row(args: argparse.Namespace, storage: str, folder: Path) -> dict:
    marks: list[tuple[int, float]] = []

    def progress(p):  # type: ignore[no-untyped-def]
        marks.append((p.done + p.failed, time.perf_counter()))

    spec = {
        "name": "load", "generator": {"kind": "instant-noise"}, "search": {"threshold": {"float": [0.2, 0.8]}},
        "samples_per_trial": 1, "objectives": [{"name": "volume_fraction", "direction": "maximize"}],
        "constraints": [{"metric": "volume_fraction", "max": 0.7}], "sampler": {"kind": args.sampler, "seed": 0},
        "budget": {"n_trials": args.trials}, "evaluation": {"phase": "pore", "tortuosity_axis": None},
        "storage": storage, "tracking": f"sqlite:///{folder}/mlflow.db" if args.tracking else None,
        "artifacts": str(folder / "artifacts"), "pictures": args.pictures,
    }  # fmt: skip
    start = time.perf_counter()
    result = md.Study(spec, executor=args.executor).run(on_progress=progress)
    wall = time.perf_counter() - start
    done = [(n, t) for n, t in marks if n > 0]
    tail_from = next(t for n, t in done if n >= int(0.9 * args.trials))
    tail_ms = 1000 * (done[-1][1] - tail_from) / max(done[-1][0] - int(0.9 * args.trials), 1)
    extras = (", MLflow" if args.tracking else "") + (", montages" if args.pictures else ", no pictures")
    return {"what": f"micro-doe ({args.executor} executor{extras})", "trials": len(result.trials),
            "wall": wall, "ms": 1000 * wall / args.trials, "tail_ms": tail_ms, "size": db_size(storage), "mb": peak_mb()}


def optuna_row(args: argparse.Namespace, storage: str) -> dict:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.RandomSampler(seed=0) if args.sampler == "random" else optuna.samplers.TPESampler(seed=0)
    study = optuna.create_study(storage=storage, study_name="optuna-alone", sampler=sampler, direction="maximize")
    times: list[float] = []
    start = time.perf_counter()
    study.optimize(lambda t: t.suggest_float("threshold", 0.2, 0.8), n_trials=args.trials,
                   callbacks=[lambda s, t: times.append(time.perf_counter())])  # fmt: skip
    wall = time.perf_counter() - start
    tail = times[int(0.9 * args.trials) :]
    return {"what": "Optuna alone (study.optimize, same sampler and storage kind)", "trials": args.trials, "wall": wall,
            "ms": 1000 * wall / args.trials, "tail_ms": 1000 * (tail[-1] - tail[0]) / max(len(tail) - 1, 1),
            "size": db_size(storage), "mb": peak_mb()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--storage", default="sqlite:///micro-doe-runs/load/optuna.db")
    parser.add_argument("--executor", choices=("local", "ray"), default="local")
    parser.add_argument("--sampler", choices=("random", "tpe"), default="random")
    parser.add_argument("--tracking", action="store_true", help="an MLflow run per trial (sqlite)")
    parser.add_argument("--pictures", action="store_true", help="draw each trial's montage (a study's default)")
    args = parser.parse_args()
    folder = Path("micro-doe-runs/load")
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.db*"):
        old.unlink()  # a fresh study each run (this folder is the benchmark's own)
    with own_postgres() if args.storage == "postgresql" else nullcontext(None) as pg:
        storage = args.storage if pg is None else f"{pg}/micro_doe"
        reference_storage = args.storage.replace("optuna.db", "optuna-alone.db") if pg is None else f"{pg}/optuna_alone"
        rows = [optuna_row(args, reference_storage), micro_doe_row(args, storage, folder)]
    print(f"\n### {args.trials} trials, sampler {args.sampler}, storage {args.storage.split(':')[0]}\n")
    print("| loop | trials | wall s | ms / trial | ms / trial, last 10 % | storage on disk | driver peak memory MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['what']} | {r['trials']} | {r['wall']:.1f} | {r['ms']:.1f} | {r['tail_ms']:.1f} | {r['size']} | {r['mb']:.0f} |")


if __name__ == "__main__":
    main()
