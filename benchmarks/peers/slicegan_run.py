#!/usr/bin/env python
"""Peer baseline: 2D -> 3D reconstruction with SliceGAN (Kench & Cooper 2021, MIT).

SliceGAN is not on PyPI; it is imported from a checkout given with --slicegan
(see SLICEGAN.md). No SliceGAN code is copied here.

    .venv/bin/python benchmarks/peers/slicegan_run.py --slicegan .peers/SliceGAN \
        --images slices.npy --minutes 10 --size 32 --volumes 4 --seed 0 --out sg.npz

Input: an (n, 32, 32) integer stack of 2D label images with phases 0..k-1. The
microstructure is taken as isotropic: the same images are the real data for the
x, y and z planes (SliceGAN's isotropic mode, one shared discriminator), one-hot
encoded with one channel per phase (SliceGAN's 'nphase' image type).

Output .npz: ``volumes`` (V, N, N, N) int8 labels, ``seconds_per_volume`` (V,)
generation wall time of each volume, ``train_seconds`` (scalar) and ``settings``
(a JSON string with every knob and some diagnostics).

Errors are reported as one line on stderr with exit status 2.

Architecture for 32^2 slices (SliceGAN's defaults in run_slicegan.py are for 64^2):
SliceGAN's rules for a transposed-conv generator are s < k, k mod s = 0 and
p >= k - s (no checkerboard / edge artefacts), with a z input of spatial size 4
during training; the discriminator halves the slice size with k=4, s=2, p=1 and
ends with a k=4, s=2, p=0 layer that maps 4x4 to 1x1. We keep k=4, s=2, p=2,
lz=4, nz=32 and the resize-convolution generator of run_slicegan.py
(networks.slicegan_rc_nets), and remove one stage from each net:
  G: transposed convs 4 -> 6 -> 10 -> 18 (each 2L-2), then SliceGAN's trilinear
     upsample to 2(L-1) = 34 and a 3^3 conv without padding -> 32^3.
     gk=[4]*4, gs=[2]*4, gp=[2,2,2,3], gf=[32, 512, 128, 32, k]
     (the default [32, 1024, 512, 128, 32, k] without its widest stage; the last
     transposed conv is built by slicegan_rc_nets but unused by its forward, as
     in the 64^2 default).
  D: 32 -> 16 -> 8 -> 4 -> 1, dk=[4]*4, ds=[2]*4, dp=[1,1,1,0],
     df=[k, 64, 128, 256, 1] (the default [k, 64, 128, 256, 512, 1] without 512).
With lz latent cells the generator gives 16*lz - 32 voxels a side; a volume of
edge N is generated from lz = max(3, ceil((N + 32) / 16)) and centre-cropped
(exact for N = 32, 48, 64, ...), as SliceGAN generates larger volumes by
enlarging z (util.test_img, lf=8).

Training: SliceGAN's model.train() cannot be used as is: it reads training data
through preprocessing.batch (files; it samples l x l crops from images larger
than l, so 32^2 images with l=32 cannot be sampled) and runs a fixed 100 epochs
x 3600 iterations with no time or iteration hook. So a minimal loop written here
follows the paper's / model.train's WGAN-GP slice training with their constants
(batch 8, Adam lr 1e-4 betas (0.9, 0.99), gradient-penalty lambda 10, 5 critic
iterations per generator step, no weight init beyond PyTorch's, as in their
train()), and calls their code for the nets (networks.slicegan_rc_nets) and the
gradient penalty (util.calc_gradient_penalty). Each iteration: one fake batch of
8 volumes (lz=4) is sliced along x, y and z (their permute/reshape), and for each
plane the shared D takes a WGAN-GP step on 8 real images vs the 8*32 fake slices;
every 5th iteration G takes a step on -mean D over the three planes of a fresh
batch. The loop stops at the first iteration boundary after --minutes of wall time.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
import time

os.environ.setdefault("MPLBACKEND", "Agg")  # slicegan.util imports pyplot

import numpy as np
from peer_io import OneLineParser, UsageError, load_label_stack, run  # benchmarks/peers/, beside this script

IMAGE_SIDE = 32

# Settings from SliceGAN's run_slicegan.py / model.train, 32^2 architecture above.
NZ, LZ_TRAIN = 32, 4
BATCH, LR_G, LR_D, BETAS, GP_LAMBDA, CRITIC_ITERS = 8, 1e-4, 1e-4, (0.9, 0.99), 10.0, 5
GK, GS, GP = [4] * 4, [2] * 4, [2, 2, 2, 3]
DK, DS, DP = [4] * 4, [2] * 4, [1, 1, 1, 0]
# Permutations that turn a (B, C, X, Y, Z) volume batch into slices along each axis
# (the same index triples as model.train).
PLANES = list(zip([2, 3, 4], [3, 2, 2], [4, 4, 3]))




def parse_args(argv=None):
    p = OneLineParser(description="2D->3D reconstruction with SliceGAN (peer baseline).")
    p.add_argument("--slicegan", required=True, help="path to a SliceGAN checkout (holds slicegan/)")
    p.add_argument("--images", required=True,
                   help="(n, 32, 32) .npy stack of 2D label images, phases 0..k-1")
    p.add_argument("--minutes", type=float, required=True, help="training wall-time budget (minutes)")
    p.add_argument("--size", type=int, default=32, help="cube edge N of each volume (default 32)")
    p.add_argument("--volumes", type=int, default=1, help="number of volumes V")
    p.add_argument("--seed", type=int, default=0, help="seed for training and sampling")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    return p.parse_args(argv)


def load_images(path):
    return load_label_stack(path, side=IMAGE_SIDE)


def import_slicegan(path):
    root = os.path.abspath(path)
    pkg = os.path.join(root, "slicegan")
    for f in ("networks.py", "util.py"):
        if not os.path.isfile(os.path.join(pkg, f)):
            raise UsageError(f"--slicegan {path}: no slicegan/{f} there (give the checkout root)")
    sys.path.insert(0, root)
    try:
        from slicegan import networks, util
    except ModuleNotFoundError as exc:
        raise UsageError(f"SliceGAN needs the missing package '{exc.name}'") from exc
    if not os.path.abspath(networks.__file__).startswith(pkg + os.sep):
        raise UsageError(f"imported slicegan from {networks.__file__}, not from {pkg}")
    for name, mod in (("networks.slicegan_rc_nets", networks), ("util.calc_gradient_penalty", util)):
        if not hasattr(mod, name.split(".")[1]):
            raise UsageError(f"this SliceGAN checkout has no {name}")
    digest = hashlib.sha256()
    for f in ("networks.py", "util.py"):
        with open(os.path.join(pkg, f), "rb") as fh:
            digest.update(fh.read())
    return networks, util, digest.hexdigest()[:16]


class _Stream:
    """Shuffled index batches over the image stack, reshuffled every pass (like a
    shuffling DataLoader; works for any n >= 1)."""

    def __init__(self, n, batch, rng):
        self.n, self.batch, self.rng, self.buf = n, batch, rng, np.empty(0, dtype=np.int64)

    def next(self):
        while self.buf.size < self.batch:
            self.buf = np.concatenate([self.buf, self.rng.permutation(self.n)])
        out, self.buf = self.buf[:self.batch], self.buf[self.batch:]
        return out


def generated_edge(lz):
    return 16 * lz - 32


def main(argv=None):
    a = parse_args(argv)
    if not (a.minutes > 0 and math.isfinite(a.minutes)):
        raise UsageError("--minutes must be > 0")
    if a.size < 1:
        raise UsageError("--size must be >= 1")
    if a.volumes < 1:
        raise UsageError("--volumes must be >= 1")
    if a.threads < 0:
        raise UsageError("--threads must be >= 0")
    out_dir = os.path.dirname(os.path.abspath(a.out))
    if not os.path.isdir(out_dir):
        raise UsageError(f"--out directory does not exist: {out_dir}")
    if not os.path.isdir(a.slicegan):
        raise UsageError(f"--slicegan is not a directory: {a.slicegan}")
    images, k = load_images(a.images)

    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
    networks, util, src_hash = import_slicegan(a.slicegan)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    device = torch.device("cpu")
    side, nc = IMAGE_SIDE, k

    # One-hot (n, k, 32, 32) float, channel c = phase c (SliceGAN's nphase encoding).
    real_all = torch.from_numpy(np.stack([(images == c) for c in range(k)], axis=1).astype(np.float32))

    gf = [NZ, 512, 128, 32, nc]
    df = [nc, 64, 128, 256, 1]
    with tempfile.TemporaryDirectory(prefix="slicegan-") as tmp:
        # slicegan_rc_nets pickles the architecture to <pth>_params.data when Training=1.
        try:
            Disc, Gen = networks.slicegan_rc_nets(os.path.join(tmp, "run"), 1, "nphase",
                                                  DK, DS, df, DP, GK, GS, gf, GP)
        except TypeError as exc:
            raise UsageError(f"unexpected slicegan_rc_nets signature in this checkout: {exc}") from exc
    netG, netD = Gen().to(device), Disc().to(device)
    with torch.no_grad():  # check the 32^2 architecture against this checkout's nets
        g_out = tuple(netG.eval()(torch.zeros(1, NZ, LZ_TRAIN, LZ_TRAIN, LZ_TRAIN)).shape)
        d_out = tuple(netD(torch.zeros(2, nc, side, side)).shape)
    netG.train()
    if g_out != (1, nc, side, side, side) or d_out != (2, 1, 1, 1):
        raise UsageError(f"SliceGAN nets give G {g_out}, D {d_out}; expected (1,{nc},32,32,32), (2,1,1,1)")
    optG = torch.optim.Adam(netG.parameters(), lr=LR_G, betas=BETAS)
    optD = torch.optim.Adam(netD.parameters(), lr=LR_D, betas=BETAS)
    streams = [_Stream(images.shape[0], BATCH, rng) for _ in PLANES]

    budget = a.minutes * 60.0
    it = g_steps = 0
    wass = gp_val = float("nan")
    t0 = time.perf_counter()
    last_print = t0
    while True:
        it += 1
        # Critic: one fake batch, sliced along x, y and z; one D step per plane.
        with torch.no_grad():
            fake = netG(torch.randn(BATCH, NZ, LZ_TRAIN, LZ_TRAIN, LZ_TRAIN, device=device))
        for (d1, d2, d3), stream in zip(PLANES, streams):
            netD.zero_grad()
            real = real_all[torch.from_numpy(stream.next())].to(device)
            out_real = netD(real).view(-1).mean()
            fake_slices = fake.permute(0, d1, 1, d2, d3).reshape(side * BATCH, nc, side, side)
            out_fake = netD(fake_slices).mean()
            gpen = util.calc_gradient_penalty(netD, real, fake_slices[:BATCH], BATCH, side,
                                              device, GP_LAMBDA, nc)
            (out_fake - out_real + gpen).backward()
            optD.step()
        wass, gp_val = out_real.item() - out_fake.item(), gpen.item()
        # Generator: every CRITIC_ITERS iterations, -mean D over the three planes.
        if it % CRITIC_ITERS == 0:
            netG.zero_grad()
            fake = netG(torch.randn(BATCH, NZ, LZ_TRAIN, LZ_TRAIN, LZ_TRAIN, device=device))
            errG = 0
            for d1, d2, d3 in PLANES:
                errG = errG - netD(fake.permute(0, d1, 1, d2, d3).reshape(side * BATCH, nc, side, side)).mean()
            errG.backward()
            optG.step()
            g_steps += 1
        now = time.perf_counter()
        if now - last_print >= 30:
            print(f"train {now - t0:.0f}s: iteration {it}, G steps {g_steps}, "
                  f"wasserstein {wass:.4f}, gp {gp_val:.4f}", file=sys.stderr, flush=True)
            last_print = now
        if now - t0 >= budget:
            break
    train_seconds = time.perf_counter() - t0
    print(f"trained {train_seconds:.1f}s: {it} iterations, {g_steps} G steps",
          file=sys.stderr, flush=True)

    # Generate: eval mode (BatchNorm running statistics), as util.test_img does.
    lz = max(3, math.ceil((a.size + 32) / 16))
    edge = generated_edge(lz)
    off = (edge - a.size) // 2
    netG.eval()
    sampler = torch.Generator().manual_seed(a.seed + 1)
    volumes = np.zeros((a.volumes, a.size, a.size, a.size), dtype=np.int8)
    seconds = np.zeros(a.volumes, dtype=np.float64)
    vf_in = np.bincount(images.ravel(), minlength=k) / images.size
    for i in range(a.volumes):
        noise = torch.randn(1, NZ, lz, lz, lz, generator=sampler)
        t1 = time.perf_counter()
        with torch.no_grad():
            raw = netG(noise.to(device))
        vol = torch.argmax(raw[0], 0)[off:off + a.size, off:off + a.size, off:off + a.size]
        volumes[i] = vol.cpu().numpy().astype(np.int8)
        seconds[i] = time.perf_counter() - t1
        vf_out = np.bincount(volumes[i].ravel(), minlength=k)[:k] / volumes[i].size
        print(f"volume {i}: {seconds[i]:.2f} s, vf in {np.round(vf_in, 4).tolist()} "
              f"out {np.round(vf_out, 4).tolist()}", file=sys.stderr, flush=True)

    settings = {
        "tool": "slicegan", "slicegan": os.path.abspath(a.slicegan),
        "slicegan_source_sha256_16": src_hash, "torch_version": torch.__version__,
        "numpy_version": np.__version__, "device": str(device), "threads": torch.get_num_threads(),
        "images": os.path.abspath(a.images), "n_images": int(images.shape[0]),
        "image_side": side, "n_phases": int(k), "isotropic": True, "image_type": "nphase",
        "size": a.size, "volumes": a.volumes, "seed": a.seed, "minutes": a.minutes,
        "generator": {"nets": "slicegan_rc_nets", "gk": GK, "gs": GS, "gp": GP, "gf": gf,
                      "nz": NZ, "lz_train": LZ_TRAIN, "lz_generate": lz,
                      "generated_edge": edge, "crop_offset": off},
        "discriminator": {"dk": DK, "ds": DS, "dp": DP, "df": df},
        "training": {"loss": "WGAN-GP", "batch": BATCH, "fake_slices_per_plane": side * BATCH,
                     "lr_g": LR_G, "lr_d": LR_D, "betas": list(BETAS), "gp_lambda": GP_LAMBDA,
                     "critic_iters": CRITIC_ITERS, "iterations": it, "generator_steps": g_steps,
                     "stop": "first iteration boundary after the --minutes wall-time budget",
                     "final_wasserstein": wass, "final_gp": gp_val},
        "volume_fractions_input": vf_in.tolist(),
        "volume_fractions_output": (np.bincount(volumes.ravel().astype(np.int64), minlength=k)[:k]
                                    / volumes.size).tolist(),
    }
    np.savez_compressed(a.out, volumes=volumes, seconds_per_volume=seconds,
                        train_seconds=np.float64(train_seconds),
                        settings=np.array(json.dumps(settings)))
    return 0


if __name__ == "__main__":
    run(main)
