"""Which images should training set aside for the tuning to judge against? One contiguous block
(what `train micro3diff --held-out` does: the last 10 %, one cube's z-slices here) against the
same number of images spread over the stack, each judged by how far its 2D descriptors are from
those of the whole population.

    python benchmarks/held_out_choice.py [--morphologies clustered fibers] [--population 20]

The data are `benchmarks/unseen_morphologies.py`'s: the z-slices of 10 PoreSpy cubes of 32³ (320
images); the population is the z-slices of ``--population`` fresh cubes (seeds 3000…). For each
choice of 32 images: the L error (eq. 24, 2D lineal path pooled over the images) and the size error
(local thickness) of their descriptors against the population's, as the tuning computes its
judges against a held-out reference. The data floor of this comparison is the 288 training images
themselves against the population. A choice closer to the population is a better judge.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import unseen_morphologies as um  # noqa: E402

from micro_doe.platform.descriptors import Descriptors, error_rate, size_error  # noqa: E402
from micro_doe.platform.micro3diff.training_data import training_reference  # noqa: E402
from micro_doe.platform.volumes import make_volume  # noqa: E402

PER_CUBE = um.SIZE  # z-slices per cube
HELD = 32  # the images `train micro3diff` sets aside from 320 (10 %)


def reference(images: np.ndarray, names: list[str]) -> Descriptors:
    stack = make_volume(images, dims=("sample", "y", "x"), phase_names=names)
    return training_reference(stack, stack)


def choices(data: np.ndarray) -> dict[str, np.ndarray]:
    """The held-out images of each choice (32 of them), and the training images as the floor."""
    blocks = lambda cubes, size: np.concatenate([data[PER_CUBE * c + PER_CUBE - size : PER_CUBE * (c + 1)] for c in cubes])  # noqa: E731
    out = {"the last block (one cube; what training does)": data[-HELD:]}
    out |= {f"the block of cube {c}": data[PER_CUBE * c : PER_CUBE * (c + 1)] for c in range(um.N_CUBES - 1)}
    out["4 blocks of 8 (cubes 2, 5, 7, 9)"] = blocks((2, 5, 7, 9), 8)
    out["8 blocks of 4 (cubes 2–9)"] = blocks(range(2, 10), 4)
    out["every 10th image"] = data[9::10]
    out["the 288 training images (floor)"] = data[:-HELD]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--morphologies", nargs="+", default=["clustered", "fibers"], choices=list(um.MORPHOLOGIES))
    parser.add_argument("--population", type=int, default=20, help="fresh cubes whose z-slices are the population")
    args = parser.parse_args()
    for name in args.morphologies:
        cubes = um.cubes(name, range(um.N_CUBES))
        names = list(cubes[0].attrs["phase_names"])
        data = np.concatenate([v.values for v in cubes])
        population = reference(np.concatenate([v.values for v in um.cubes(name, range(3000, 3000 + args.population))]), names)
        print(f"\n{name}: 2D descriptors of 32 held-out images against the z-slices of {args.population} fresh cubes\n")
        print("| held-out images | L error % | size error % |")
        print("|---|---:|---:|")
        for what, images in choices(data).items():
            held = reference(images, names)
            l_error = error_rate(population.lineal_path_mean(), held.lineal_path_mean())
            print(f"| {what} | {l_error:.1f} | {size_error(population.sizes, held.sizes):.1f} |", flush=True)


if __name__ == "__main__":
    main()
