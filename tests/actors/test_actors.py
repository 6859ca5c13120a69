"""Generator and evaluator actors on a real local Ray instance (no mocks).

The instance has 2 CPUs. The main generator uses :func:`generator_options` as is (1 CPU);
the other actors ask for a quarter CPU each so that all of them fit at once.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import ray

from micro_doe.actors import (
    ClusterInfo,
    EvaluatorPool,
    GeneratorActor,
    GeneratorWorker,
    connect,
    evaluator_options,
    generator_options,
)
from micro_doe.actors.cluster import worker_package_problem
from micro_doe.platform.bundles import GenerationError
from micro_doe.platform.descriptors.describe import describe
from micro_doe.platform.synthetic import spherical_inclusions
from micro_doe.platform.volumes import VolumeError, make_volume

SMALL = {"num_cpus": 0.25}
TINY = {"n_h": 0, "steps": 2}
SLOW = {"n_h": 1, "steps": 100}  # ~1 s per 16³ volume here


def spec(model) -> dict:
    return {"kind": "micro3diff", "model": str(model), "device": None, "batch_size": 64, "tracking_uri": None}


def wait_for_new_pid(actor, old_pid: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = ray.get(actor.info.remote(), timeout=timeout)["pid"]
            if pid != old_pid:
                return pid
        except ray.exceptions.RayActorError:  # restarting
            pass
        time.sleep(0.05)
    raise AssertionError("actor did not come back")


@pytest.fixture(scope="module")
def generator(ray_info, actor_bundle):
    actor = GeneratorActor.options(**generator_options(1, ray_info, name="test-generator")).remote(spec(actor_bundle))
    yield actor
    ray.kill(actor, no_restart=True)


@pytest.fixture(scope="module")
def pool(ray_info):
    evaluators = EvaluatorPool(2, options=evaluator_options(name="test-evaluator") | SMALL)
    yield evaluators
    evaluators.kill()


# --- options and connection ---------------------------------------------------------------


def test_generator_options_follow_the_cluster_gpus():
    cpu_only = ClusterInfo(address="a:1", local=True, cpus=2, gpus=0)
    with_gpus = ClusterInfo(address="a:1", local=False, cpus=64, gpus=4)
    assert generator_options(1, cpu_only)["num_gpus"] == 0
    assert generator_options(0.5, with_gpus)["num_gpus"] == 0.5
    options = generator_options(1, with_gpus, name="gen-0")
    assert options == {"num_cpus": 1, "num_gpus": 1, "max_restarts": 2, "max_task_retries": 1, "name": "gen-0"}
    assert "name" not in generator_options(1, cpu_only)
    assert evaluator_options() == {"num_cpus": 1, "max_restarts": 2, "max_task_retries": 1}
    assert evaluator_options(name="ev")["name"] == "ev"


def test_connect_twice_gives_the_same_local_instance(ray_info):
    assert ray_info.local and ray_info.cpus == 2 and ray_info.gpus == 0
    assert generator_options(1, ray_info)["num_gpus"] == 0
    assert connect() == ray_info


def test_ray_address_joins_a_running_cluster_with_its_token(ray_info):
    # this process's environment carries RAY_AUTH_MODE=token and the instance's token
    env = dict(os.environ, RAY_ADDRESS=ray_info.address, OMP_NUM_THREADS="1")
    code = "from micro_doe.actors import connect; i = connect(); print(i.address, i.local, i.cpus)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [ray_info.address, "False", "2.0"]


def test_an_unreachable_ray_address_fails_fast_and_says_why():
    env = dict(os.environ, RAY_ADDRESS="127.0.0.1:1", OMP_NUM_THREADS="1")
    code = "from micro_doe.actors import connect; connect()"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode != 0
    assert "ClusterConnectionError" in done.stderr
    assert "RAY_ADDRESS=127.0.0.1:1" in done.stderr
    assert "RAY_AUTH_MODE=token" in done.stderr and "RAY_AUTH_TOKEN" in done.stderr


def test_a_refused_token_fails_in_one_line_before_anything_is_created(ray_info, actor_bundle, tmp_path):
    from study_fixtures import write_study

    study = write_study(tmp_path, actor_bundle)
    before = sorted(p.name for p in tmp_path.iterdir())
    env = dict(os.environ, RAY_ADDRESS=ray_info.address, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64,
               OMP_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true")  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "micro_doe.cli.app", "run", study], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert f"RAY_ADDRESS={ray_info.address} refused this driver's token" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no store, no folder


def test_token_mode_without_any_token_fails_in_one_line_instead_of_aborting(ray_info, actor_bundle, tmp_path):
    """Ray's native client aborts the process (exit 1, nothing a user can read) when token auth
    is on and it finds no token; the driver says so before it gets there."""
    from study_fixtures import write_study

    study = write_study(tmp_path, actor_bundle)
    home = tmp_path / "home"  # no ~/.ray/auth_token there
    home.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env |= {"RAY_ADDRESS": ray_info.address, "RAY_AUTH_MODE": "token", "HOME": str(home), "OMP_NUM_THREADS": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true"}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "micro_doe.cli.app", "run", study], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "RAY_AUTH_MODE=token but this driver has no token" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_worker_package_problems_name_each_node():
    assert worker_package_problem({"10.0.0.1": "0.1.0", "10.0.0.2": "0.1.0"}, "0.1.0") is None
    missing = ModuleNotFoundError("No module named 'micro_doe'")
    line = worker_package_problem({"10.0.0.1": "0.1.0", "10.0.0.2": missing, "10.0.0.3": "0.0.9"}, "0.1.0")
    assert line is not None and "\n" not in line
    assert "10.0.0.2: micro_doe is not installed" in line and "10.0.0.3: micro_doe 0.0.9" in line
    assert "10.0.0.1" not in line


# --- generator ----------------------------------------------------------------------------


def test_generator_worker_in_process(actor_bundle):
    worker = GeneratorWorker(spec(actor_bundle) | {"size": 16})
    assert worker.info()["device"] == "cpu" and worker.info()["size"] == 16
    out = worker.sample(TINY, 1, 3)
    assert out["volumes"][0].shape == (16, 16, 16)
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
        GeneratorWorker(spec(actor_bundle) | {"colour": "red"})
    larger = GeneratorWorker(spec(actor_bundle) | {"size": 24})  # any N ≥ 16 the U-Net takes
    assert larger.info()["size"] == 24 and larger.sample(TINY, 1, 3)["volumes"][0].shape == (24, 24, 24)
    with pytest.raises(ValueError, match="a multiple of 2"):
        GeneratorWorker(spec(actor_bundle) | {"size": 25})
    with pytest.raises(ValueError, match="unknown generator kind 'gan'"):
        GeneratorWorker(spec(actor_bundle) | {"kind": "gan"})
    with pytest.raises(ValueError, match="a micro3diff bundle, not an LDM one"):
        GeneratorWorker(spec(actor_bundle) | {"kind": "ldm"})


def test_an_ldm_worker_returns_volumes_with_their_predicted_recipes(tiny_ldm_bundle):
    worker = GeneratorWorker({"kind": "ldm", "model": str(tiny_ldm_bundle), "device": "cpu", "size": 16, "verify": False})
    medians = worker.generator.bundle.config.condition_medians
    params = {f"target.{k}": v for k, v in medians.items()} | {"steps": 2, "sampler": "ddim", "guidance": 1.5}
    out = worker.sample(params, 2, 5)
    assert set(out) == {"volumes", "seconds", "predicted", "busy_seconds", "device"}
    assert [v.attrs["seed"] for v in out["volumes"]] == [5, 6] and out["volumes"][0].shape == (16, 16, 16)
    assert all({"phi", "chi", "log_time", "time", "vf_donor"} <= set(p) for p in out["predicted"])
    again = worker.sample(params, 1, 6)  # sample i is a pure function of seed + i
    np.testing.assert_array_equal(again["volumes"][0].values, out["volumes"][1].values)
    lo, hi = worker.generator.bundle.config.label_ranges["vf_donor"]
    with pytest.raises(ValueError, match="outside the training range"):
        worker.sample(params | {"target.vf_donor": hi + 0.2}, 1, 0)
    lenient = GeneratorWorker({"kind": "ldm", "model": str(tiny_ldm_bundle), "allow_extrapolation": True})
    row = lenient.sample(params | {"target.vf_donor": hi + 0.2}, 1, 0)["predicted"][0]
    assert row["verify.candidates"] >= 1  # a spec without verify: the default verification
    with pytest.raises(ValueError, match="unknown generator parameter 'n_h'"):
        worker.sample(params | {"n_h": 1}, 1, 0)


def test_an_ldm_worker_verifies_and_batches(tiny_ldm_bundle):
    spec = {"kind": "ldm", "model": str(tiny_ldm_bundle), "device": "cpu", "batch_size": 4,
            "verify": {"tolerance": 1e-9, "max_candidates": 3}}  # fmt: skip
    worker = GeneratorWorker(spec)
    vf = worker.generator.bundle.config.condition_medians["vf_donor"]
    params = {"target.vf_donor": vf, "steps": 2, "sampler": "ddim"}  # τ left free: an any-subset model
    out = worker.sample(params, 2, 5)
    for row, volume in zip(out["predicted"], out["volumes"]):  # nothing meets 1e-9: 3 candidates, closest kept
        assert row["verify.met"] == 0.0 and row["verify.candidates"] == 3.0
        assert row["verify.measured.vf_donor"] == pytest.approx(float((volume.values == 1).mean()))
    loose = worker.sample(params | {"tolerance": 1.0}, 2, 5)  # a searched tolerance overrides the block's
    assert [r["verify.candidates"] for r in loose["predicted"]] == [1.0, 1.0]
    assert [v.attrs["seed"] for v in loose["volumes"]] == [5, 6]
    with pytest.raises(ValueError, match=r"unknown keys \['verify'\] for kind micro3diff"):
        GeneratorWorker({"kind": "micro3diff", "model": "pretrained:spheres-32", "verify": {"tolerance": 0.1}})


def test_a_cahn_hilliard_worker_anneals_films_from_recipes():
    worker = GeneratorWorker({"kind": "cahn-hilliard", "size": 12, "phases": 2, "device": "cpu"})
    assert worker.info()["model"] == "cahn-hilliard:2-phase" and worker.info()["size"] == 12
    out = worker.sample({"phi": 0.4, "chi": 3.5, "time": 80}, 2, 7)
    assert set(out) == {"volumes", "seconds", "predicted", "busy_seconds", "device"}
    assert [v.attrs["seed"] for v in out["volumes"]] == [7, 8] and out["volumes"][0].shape == (12, 12, 12)
    with pytest.raises(ValueError, match="unknown generator parameters"):
        worker.sample({"phi": 0.4, "chi": 3.5, "time": 80, "n_h": 2}, 1, 0)
    with pytest.raises(ValueError, match=r"unknown keys \['model'\] for kind cahn-hilliard"):
        GeneratorWorker({"kind": "cahn-hilliard", "model": "pretrained:opv-32"})


def test_generator_loads_once_and_samples(generator, actor_bundle):
    first = ray.get(generator.info.remote())
    assert first["pid"] != os.getpid() and not first["restarted"]
    assert first["device"] == "cpu" and first["size"] == 16 and first["gpu_ids"] == []
    assert first["model"] == str(actor_bundle)
    out = ray.get(generator.sample.remote(TINY, 2, 7))
    assert set(out) == {"volumes", "seconds", "predicted", "busy_seconds", "device"}
    assert len(out["volumes"]) == len(out["seconds"]) == len(out["predicted"]) == 2
    assert out["predicted"] == [{}, {}] and out["device"] == "cpu"
    assert out["busy_seconds"] >= sum(out["seconds"]) > 0
    for i, volume in enumerate(out["volumes"]):
        assert volume.dims == ("z", "y", "x") and volume.shape == (16, 16, 16) and volume.dtype == np.int8
        assert volume.attrs["seed"] == 7 + i
        assert volume.attrs["source"].startswith("micro3diff:")
        assert '"steps": 2' in volume.attrs["generator_params"]
    again = ray.get(generator.sample.remote(TINY, 2, 7))
    for a, b in zip(out["volumes"], again["volumes"]):
        np.testing.assert_array_equal(a.values, b.values)
    other = ray.get(generator.sample.remote(TINY, 1, 8))
    np.testing.assert_array_equal(other["volumes"][0].values, out["volumes"][1].values)  # volume i ↔ seed + i
    assert ray.get(generator.info.remote())["pid"] == first["pid"]  # loaded once, same process


def test_bad_parameters_surface_as_value_errors(generator):
    pid = ray.get(generator.info.remote())["pid"]
    with pytest.raises(ValueError, match=r"unknown generator parameters \['guidance'\]"):
        ray.get(generator.sample.remote({"n_h": 1, "guidance": 2.0}, 1, 0))
    with pytest.raises(ValueError, match="steps"):
        ray.get(generator.sample.remote({"steps": 0}, 1, 0))
    with pytest.raises(ValueError, match="at most the model's T"):
        ray.get(generator.sample.remote({"steps": 10_000}, 1, 0))
    assert ray.get(generator.info.remote())["pid"] == pid  # the actor stays up


def test_a_nan_model_raises_generation_error(ray_info, actor_bundle, tmp_path):
    import torch

    broken = shutil.copytree(actor_bundle, tmp_path / "nan-model")
    state = torch.load(broken / "model.pt", weights_only=True)
    torch.save({k: torch.full_like(v, math.nan) if v.is_floating_point() else v for k, v in state.items()},
               broken / "model.pt")
    actor = GeneratorActor.options(**generator_options(1, ray_info) | SMALL).remote(spec(broken))
    try:
        with pytest.raises(GenerationError, match="non-finite"):
            ray.get(actor.sample.remote(TINY, 1, 0))
    finally:
        ray.kill(actor, no_restart=True)


def test_a_missing_model_kills_the_actor_with_the_reason(ray_info, tmp_path):
    actor = GeneratorActor.options(**generator_options(1, ray_info) | SMALL).remote(spec(tmp_path / "nowhere"))
    with pytest.raises(ray.exceptions.ActorDiedError, match="not a model bundle"):
        ray.get(actor.info.remote(), timeout=60)


# --- evaluators ---------------------------------------------------------------------------


def comparable(d: dict) -> dict:
    d = dict(d)
    d.pop("seconds")
    return d


def test_evaluator_pool_matches_in_process_describe_round_robin(pool):
    assert len(pool) == 2
    assert ray.get_actor("test-evaluator-0") is not None and ray.get_actor("test-evaluator-1") is not None
    volumes = [
        spherical_inclusions((16, 16, 16), mean_diameter=4, sd_diameter=1, volume_fraction=0.15, seed=s)
        for s in range(4)
    ]
    kwargs = [{}, {"tortuosity_axis": None}, {"phase": 0, "tortuosity_axis": "x"},
              {"phase": "matrix", "periodic": True}]
    refs = [pool.submit(v, **k) for v, k in zip(volumes, kwargs)]
    results = ray.get(refs, timeout=120)
    for volume, k, got in zip(volumes, kwargs, results):
        want = describe(volume, k.get("phase", 1), periodic=k.get("periodic", False),
                        tortuosity_axis=k.get("tortuosity_axis", "z")).model_dump()
        got_tau, want_tau = got.pop("tortuosity"), want.pop("tortuosity")
        assert comparable(got) == comparable(want)
        if want_tau is None:
            assert got_tau is None
        else:  # an iterative τ solve may differ in the last bits with another thread count
            assert got_tau.pop("axis") == want_tau.pop("axis")
            assert got_tau == pytest.approx(want_tau, rel=1e-6)
    calls = [ray.get(a.info.remote())["calls"] for a in pool.actors()]
    assert calls == [2, 2]
    with pytest.raises(VolumeError, match="phase 'pores' not found"):
        ray.get(pool.submit(volumes[0], phase="pores"))


# --- fault tolerance ----------------------------------------------------------------------


def test_a_generator_killed_mid_call_restarts_and_finishes_the_call(generator):
    before = ray.get(generator.info.remote())["pid"]
    ref = generator.sample.remote(SLOW, 1, 0)
    time.sleep(0.3)
    assert not ray.wait([ref], timeout=0)[0]  # still running when killed
    ray.kill(generator, no_restart=False)
    out = ray.get(ref, timeout=120)
    assert out["volumes"][0].shape == (16, 16, 16)
    after = ray.get(generator.info.remote())
    assert after["pid"] != before and after["restarted"] and after["load_seconds"] > 0  # model reloaded


def test_an_evaluator_killed_mid_call_restarts_and_finishes_the_call(pool):
    actor = pool.actors()[0]
    before = ray.get(actor.info.remote())["pid"]
    tile = spherical_inclusions((64, 64, 64), mean_diameter=8, sd_diameter=1, volume_fraction=0.15, seed=5)
    volume = make_volume(np.tile(tile.values, (2, 2, 2)), phase_names=tile.attrs["phase_names"])
    ref = actor.describe.remote(volume, phase=0)  # 128³: ~2.5 s here
    time.sleep(0.2)
    assert not ray.wait([ref], timeout=0)[0]
    ray.kill(actor, no_restart=False)
    got = ray.get(ref, timeout=120)
    assert got["shape"] == [128, 128, 128] and got["tortuosity"]["percolating_fraction"] > 0.9
    assert wait_for_new_pid(actor, before) != before
    assert ray.get(actor.info.remote())["restarted"]


def test_an_evaluator_actor_loads_no_torch():
    # What an evaluator's fresh worker runs: its module, the worker, and a describe call. (Ray may
    # also hand an actor a pooled worker whose earlier task loaded torch; then it costs nothing.)
    code = ("import sys, numpy as np; from micro_doe.actors.evaluator import EvaluatorWorker; "
            "from micro_doe.platform.volumes import make_volume; "
            "EvaluatorWorker().describe(make_volume((np.arange(512).reshape(8, 8, 8) % 3 == 0).astype('int8'))); "
            "print('torch' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr
    import micro_doe.actors as actors

    assert all(getattr(actors, name) is not None for name in actors.__all__)  # every lazy name resolves
