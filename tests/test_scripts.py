"""The scripts as a user runs them: one process, mpiexec -n 2 and torchrun (gloo on CPU)."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["model.num_channels=32", "model.num_res_blocks=1", "model.channel_mult=1,2", "model.attention_resolutions=14",
        "diffusion.diffusion_steps=50", "train.batch_size=8", "train.num_threads=1", "train.log_interval=5",
        "train.sample_at_end=4", "sample.sampler=ddim5", "sample.batch_size=4"]
HAVE_MPI = shutil.which("mpiexec") is not None


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    e.pop("GD_PROGRESS", None)
    return e


def run(args, launcher=(), timeout=300, check=True):
    # torchrun starts the Python interpreter itself; mpiexec and a plain run need it named.
    cmd = [*launcher, *args] if launcher == TORCHRUN else [*launcher, sys.executable, *args]
    p = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


MPI = ("mpiexec", "-n", "2")
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")


def final_model(run_dir):
    from guided_diffusion.runtime import checkpoint as ckpt

    step = ckpt.latest_checkpoint(run_dir)
    return step, ckpt.load_torch(f"{run_dir}/model{step:06d}.pt")


def test_dry_run_prints_resolved_config():
    p = run(["scripts/image_train.py", "--config", "yaml/mnist/iid.yaml", "--dry-run", "train.lr=0.5"])
    import yaml

    cfg = yaml.safe_load(p.stdout)
    assert cfg["train"]["lr"] == 0.5 and cfg["data"]["dataset"] == "mnist5k"


# Bad input (one clear line, exit 2): tests/test_reliability_inputs.py


@pytest.mark.slow  # ~20-45 s on 2 cores: run with -m slow (the default suite stays under 10 minutes)
@pytest.mark.skipif(not HAVE_MPI, reason="mpiexec not installed (pip install -e .[mpi])")
def test_mpiexec_train_killed_and_resumed_equals_uninterrupted(tmp_path):
    args = ["scripts/image_train.py", "--config", "yaml/mnist/iid.yaml", *TINY, "train.total_steps=40",
            "train.save_interval=2", "train.keep_checkpoints=0", "train.sample_at_end=0"]
    run(args + [f"out_dir={tmp_path}/a"], MPI)
    # Same command, killed (SIGKILL to every process) once a checkpoint exists, then rerun.
    cmd = [*MPI, sys.executable, *args, f"out_dir={tmp_path}/b"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    run_dir = f"{tmp_path}/b/mnist_iid"
    deadline = time.time() + 240
    while not os.path.exists(f"{run_dir}/checkpoint000004.json"):
        assert proc.poll() is None and time.time() < deadline, "run ended or stalled before its first checkpoints"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at, _ = final_model(run_dir)
    assert killed_at < 40
    p = run(args + [f"out_dir={tmp_path}/b"], MPI)
    assert f"resumed from step {killed_at}" in p.stdout
    step_a, wa = final_model(f"{tmp_path}/a/mnist_iid")
    step_b, wb = final_model(run_dir)
    assert step_a == step_b == 40
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow  # a multi-process or twice-killed run (10-20 s): -m slow; the default suite stays under 10 minutes
@pytest.mark.skipif(not HAVE_MPI, reason="mpiexec not installed")
def test_torchrun_and_mpiexec_train_the_same_model(tmp_path):
    args = ["scripts/image_train.py", "--config", "yaml/mnist/iid.yaml", *TINY, "train.total_steps=4",
            "train.save_interval=0"]
    run(args + [f"out_dir={tmp_path}/mpi"], MPI)
    run(args + [f"out_dir={tmp_path}/tr"], TORCHRUN)
    _, wa = final_model(f"{tmp_path}/mpi/mnist_iid")
    _, wb = final_model(f"{tmp_path}/tr/mnist_iid")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert os.path.exists(f"{tmp_path}/tr/mnist_iid/samples.png")


@pytest.mark.slow  # ~20-45 s on 2 cores: run with -m slow (the default suite stays under 10 minutes)
@pytest.mark.skipif(not HAVE_MPI, reason="mpiexec not installed")
def test_image_sample_npz_same_for_any_world_size(tmp_path):
    run(["scripts/image_train.py", "--config", "yaml/mnist/iid.yaml", *TINY, "train.total_steps=2",
         f"out_dir={tmp_path}", "train.sample_at_end=0"])
    model = f"{tmp_path}/mnist_iid/ema_0.999_000002.pt"
    common = ["scripts/image_sample.py", "--config", "yaml/mnist/iid.yaml", *TINY, f"out_dir={tmp_path}",
              "--model_path", model, "--num_samples", "10", "--batch_size", "4", "--timestep_respacing", "ddim5"]
    run(common + ["--out_dir", f"{tmp_path}/one"])
    run(common + ["--out_dir", f"{tmp_path}/two"], MPI)
    a = np.load(f"{tmp_path}/one/samples_10x28x28x1.npz")
    b = np.load(f"{tmp_path}/two/samples_10x28x28x1.npz")
    assert a["arr_0"].dtype == np.uint8 and a["arr_0"].shape == (10, 28, 28, 1)
    assert a["arr_1"].dtype == np.int64 and a["arr_1"].shape == (10,) and a["arr_1"].max() < 10
    assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])
    assert os.path.exists(f"{tmp_path}/one/samples_10x28x28x1.png")
    # One class, and RGB for ADM's evaluator.
    run(common + ["--out_dir", f"{tmp_path}/c3", "--class", "3", "--to_rgb", "true"])
    c = np.load(f"{tmp_path}/c3/samples_10x28x28x3.npz")
    assert (c["arr_1"] == 3).all() and c["arr_0"].shape == (10, 28, 28, 3)


def test_classifier_train_runs_and_logs_accuracy(tmp_path):
    run(["scripts/classifier_train.py", "--config", "yaml/mnist/iid.yaml", f"out_dir={tmp_path}",
         "classifier.width=32", "classifier.depth=1", "classifier.attention_resolutions=7", "classifier.iterations=6",
         "classifier.batch_size=16", "classifier.eval_interval=3", "classifier.save_interval=3", "train.num_threads=1",
         "diffusion.diffusion_steps=50"])
    import csv

    with open(f"{tmp_path}/mnist_iid/classifier/progress.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and "val_acc_t0" in rows[-1] and 0.0 <= float(rows[-1]["val_acc_t0"]) <= 1.0


@pytest.mark.slow  # a multi-process or twice-killed run (10-20 s): -m slow; the default suite stays under 10 minutes
@pytest.mark.skipif(not HAVE_MPI, reason="mpiexec not installed")
def test_continual_two_processes(tmp_path, tiny_eval_classifier):
    run(["scripts/image_train.py", "--config", "yaml/mnist/generative_distillation.yaml", *TINY,  # GUIDE: one script
         *tiny_eval_classifier,
         "model.class_cond=true", f"out_dir={tmp_path}", "continual.limit_tasks=2", "continual.num_steps=2",
         "continual.first_task_num_steps=2", "continual.grid_per_class=1", "continual.eval_sampler=ddim5",
         "method.replay_batch=4", "evaluation.num_samples=8", "evaluation.batch_size=4", "evaluation.sampler=5"], MPI)
    run_dir = f"{tmp_path}/split_mnist_generative_distillation"
    assert os.path.exists(f"{run_dir}/task_1/task_done.json") and os.path.exists(f"{run_dir}/task_1/samples.png")
