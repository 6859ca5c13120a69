"""Evaluator speed on a 64³ two-phase volume, against porespy measured in the same run.

    python benchmarks/descriptors.py [--size 64] [--repeats 5]
    python benchmarks/descriptors.py --scaling 32 64 96 128 256 [--workers 2]

Prints a Markdown table (median seconds of repeated calls after a warm-up, and each
time as a ratio to porespy's ``two_point_correlation`` on the same volume) and checks the
targets: S2 + L on all three axes at least 20× faster than porespy's
``two_point_correlation``; the whole ``describe`` call under 1 s.

``--scaling N …``: ``describe`` against the cube edge N (porespy blobs, minority phase 0.3): in
CPU seconds of one thread (robust to a busy machine; as a Ray evaluator runs it), and in wall
seconds with ``--workers`` threads (the sections shared out, τ in a thread beside them), with
and without τ; τ alone by the multigrid solver, beside the same solver set up by pyamg's
``ruge_stuben_solver`` (the hierarchy ``_amg`` rebuilds) and taufactor's (the reference), and the
section size distributions beside the first local-thickness implementation (every radius over
the whole array: the reference, kept in ``sizes._legacy_local_thickness``). The target: a 128³ volume described in under 2 s on 2 cores.
Run it on a quiet machine: the wall-second columns count every other process too.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

import numpy as np
import porespy as ps
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _timing import median_seconds  # noqa: E402

from micro_doe.platform.descriptors import (  # noqa: E402
    describe,
    interfacial_area,
    lineal_path_along_axes,
    percolating_fraction,
    s2_along_axes,
    s2_radial,
    tortuosity,
)


def cpu_seconds(fn, *args, **kwargs) -> float:  # type: ignore[no-untyped-def]
    start = time.process_time()
    fn(*args, **kwargs)
    return time.process_time() - start


def wall_seconds(fn, *args, **kwargs) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def scaling(sizes: list[int], workers: int) -> None:
    import pyamg

    from micro_doe.platform.descriptors import _amg as amg
    from micro_doe.platform.descriptors import section_sizes
    from micro_doe.platform.descriptors import sizes as sizes_module
    from micro_doe.platform.volumes import make_volume

    print(f"# describe against N: porespy blobs (minority phase 0.3); CPU seconds of one thread, and wall seconds "
          f"with {workers} workers (sections shared out; τ in a thread beside the rest, taufactor's on {workers} torch threads) "
          f"on {os.cpu_count()} cores")
    print()
    print(f"| N | describe, 1 thread (CPU s; τ by 'auto') | describe, {workers} workers (wall s) | the same without τ (wall s) "
          "| τ, multigrid (CPU s) | τ, multigrid set up by pyamg (CPU s, reference) | τ, taufactor (CPU s, reference) "
          "| τ multigrid / taufactor − 1 | section sizes (CPU s) | section sizes, first implementation (CPU s, reference) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    fast = sizes_module.local_thickness
    own_setup = amg.ruge_stuben_hierarchy

    def pyamg_setup(matrix, presmoother, postsmoother):  # type: ignore[no-untyped-def]
        return pyamg.ruge_stuben_solver(matrix, interpolation="direct", presmoother=presmoother, postsmoother=postsmoother)

    for n in sizes:
        volume = make_volume((~ps.generators.blobs([n] * 3, porosity=0.7, blobiness=1.0, seed=0)).astype(np.int8))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        whole = cpu_seconds(describe, volume, 1, workers=1)
        start = time.process_time()
        multigrid = tortuosity(volume, 1, "z", solver="multigrid")
        tau = time.process_time() - start
        amg.ruge_stuben_hierarchy = pyamg_setup
        try:
            tau_pyamg = cpu_seconds(tortuosity, volume, 1, "z", solver="multigrid")
        finally:
            amg.ruge_stuben_hierarchy = own_setup
        start = time.process_time()
        reference = tortuosity(volume, 1, "z", solver="taufactor")
        tau_reference = time.process_time() - start
        new = cpu_seconds(section_sizes, volume, 1)
        sizes_module.local_thickness = sizes_module._legacy_local_thickness
        try:
            old = cpu_seconds(section_sizes, volume, 1) if n <= 128 else math.nan  # the reference takes minutes at 256³
        finally:
            sizes_module.local_thickness = fast
        torch.set_num_threads(workers)
        parallel = wall_seconds(describe, volume, 1, workers=workers)
        without = wall_seconds(describe, volume, 1, tortuosity_axis=None, workers=workers)
        torch.set_num_threads(threads)
        print(f"| {n} | {whole:.2f} | {parallel:.2f} | {without:.2f} | {tau:.2f} | {tau_pyamg:.2f} | {tau_reference:.2f} "
              f"| {multigrid.tau / reference.tau - 1:+.1e} | {new:.2f} | {old:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scaling", type=int, nargs="+", help="describe against these cube edges")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--workers", type=int, default=2, help="describe's workers in --scaling (default 2)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.scaling:
        scaling(args.scaling, args.workers)
        return
    n, reps = args.size, args.repeats
    volume = ps.generators.blobs([n, n, n], porosity=0.5, blobiness=1.5, seed=0).astype(np.int8)
    pore = volume == 1

    reference = median_seconds(lambda: ps.metrics.two_point_correlation(pore), reps)
    rows: list[tuple[str, float]] = [("porespy two_point_correlation (reference)", reference)]
    try:
        tau_fd = ps.simulations.tortuosity_fd(pore, axis=0)
        rows.append(("porespy tortuosity_fd (z)", median_seconds(lambda: ps.simulations.tortuosity_fd(pore, axis=0), 1)))
        porespy_tau = f"{tau_fd.tortuosity:.3f}"
    except ImportError as err:  # openpnm missing: `pip install micro-doe[bench]`
        porespy_tau = f"n/a ({err})"

    ours = {
        "S2 along z, y, x (non-periodic)": lambda: s2_along_axes(volume),
        "S2 along z, y, x (periodic)": lambda: s2_along_axes(volume, periodic=True),
        "lineal path along z, y, x (non-periodic)": lambda: lineal_path_along_axes(volume),
        "S2 + L along z, y, x": lambda: (s2_along_axes(volume), lineal_path_along_axes(volume)),
        "S2 radial 3D (non-periodic)": lambda: s2_radial(volume),
        "percolating fraction (z)": lambda: percolating_fraction(volume, 1, "z"),
        "tortuosity (multigrid, z)": lambda: tortuosity(volume, 1, "z", solver="multigrid"),
        "tortuosity (taufactor, z; reference)": lambda: tortuosity(volume, 1, "z", solver="taufactor"),
        "interfacial area": lambda: interfacial_area(volume, 0, 1),
        "describe (all of the above)": lambda: describe(volume),
    }
    rows += [(name, median_seconds(fn, reps)) for name, fn in ours.items()]
    times = dict(rows)

    print(f"# descriptors on a {n}³ two-phase volume (vf 0.5), median of {reps}")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads")
    print()
    print("| descriptor | seconds | speed-up vs porespy two_point_correlation |")
    print("|---|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.4f} | {reference / seconds:.1f}× |")
    print()
    print(f"tortuosity τ(z): micro-doe (multigrid) {tortuosity(volume, 1, 'z', solver='multigrid').tau:.3f}, taufactor "
          f"{tortuosity(volume, 1, 'z', solver='taufactor').tau:.3f}, porespy tortuosity_fd {porespy_tau}")
    speedup = reference / times["S2 + L along z, y, x"]
    whole = times["describe (all of the above)"]
    print(f"target S2 + L ≥ 20× faster than porespy two_point_correlation: {speedup:.1f}× "
          f"{'PASS' if speedup >= 20 else 'MISS'}")
    print(f"target describe < 1 s: {whole:.3f} s {'PASS' if whole < 1 else 'MISS'}")


if __name__ == "__main__":
    main()
