"""Fault class: bad input. Unknown or mistyped keys, impossible combinations, missing data sets or
weights, checkpoints of another model, a data set with fewer classes than the scenario: each gives
one clear line (``error: ...``), a non-zero exit, and happens before any work is lost (an existing
run folder is left as it was).

The scripts run in this process (``runpy``, as ``python scripts/X.py`` would, exit code included)
where the error comes before any training, so that the list stays cheap; a few run as real
subprocesses (the exit code of the process itself, and several ranks).
"""

import contextlib
import hashlib
import io
import os
import runpy
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from guided_diffusion.runtime import dist_util

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_MPI = shutil.which("mpiexec") is not None
TINY = ["model.num_channels=32", "model.num_res_blocks=1", "model.channel_mult=1,2", "model.attention_resolutions=14",
        "diffusion.diffusion_steps=50", "train.batch_size=8", "train.num_threads=1", "continual.num_steps=2",
        "continual.first_task_num_steps=2", "continual.limit_tasks=2"]


def run_script(script, *args):
    """``python scripts/<script> args`` in this process, from the repository root: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    argv, threads, cwd = sys.argv, torch.get_num_threads(), os.getcwd()
    sys.argv = [os.path.join(ROOT, "scripts", script), *map(str, args)]
    code = 0
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(sys.argv[0], run_name="__main__")
            except SystemExit as e:
                code = e.code
    finally:
        os.chdir(cwd)
        sys.argv = argv
        torch.set_num_threads(threads)
        dist_util.cleanup()
    return code, out.getvalue(), err.getvalue()


def one_error(code, err, *needles):
    """The run failed with exit code 2 and exactly one error line on stderr, ``error: ...`` holding every
    needle (besides, at most, the start's ``warning:`` lines naming config sections the script does not read)."""
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("warning: ") or "does not read" not in ln]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err[-3000:])
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(folder):
    """{relative path: sha256} of every file under ``folder`` but the append-only logs."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            if name in ("log.txt", "progress.csv", "progress.jsonl"):
                continue
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def continual(config, tmp_path, *extra):
    return run_script("continual_train.py", "--config", f"yaml/mnist/{config}.yaml", *TINY, f"out_dir={tmp_path}",
                      *extra)


def write_npz(path, classes, n_per_class=4, size=28):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(classes), n_per_class)
    images = rng.integers(0, 256, (len(labels), size, size, 1), dtype=np.uint8)
    np.savez(path, arr_0=images, arr_1=labels)
    return str(path)


# ---------------------------------------------------------------------------------------------- keys and types


def test_bad_input_gives_one_clear_error(tmp_path):
    """As a real process: exit code 2 and one line (moved from tests/test_scripts.py)."""
    p = subprocess.run([sys.executable, "scripts/image_train.py", "--config", "yaml/mnist/iid.yaml",
                        "train.totl_steps=3"],
                       cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=120)
    one_error(p.returncode, p.stderr, "unknown key 'train.totl_steps'", "did you mean 'total_steps'")


def test_mistyped_method_key_and_wrong_type(tmp_path):
    one_error(*continual("generative_distillation", tmp_path, "method.lamda=2")[::2],
              "unknown key 'method.lamda'", "'lambd'")
    one_error(*continual("naive", tmp_path, "train.batch_size=eight")[::2], "train.batch_size", "eight")
    one_error(*continual("naive", tmp_path, "continual.scenario=split_mnst")[::2], "did you mean 'split_mnist'")
    assert snapshot(tmp_path) == {}  # nothing written but the log


# ---------------------------------------------------------------------------------------------- impossible combinations


def test_guide_and_guidance_need_a_class_conditional_model(tmp_path):
    one_error(*continual("generative_replay_guide", tmp_path, "model.class_cond=false")[::2],
              "GUIDE", "class-conditional model")
    one_error(*continual("generative_distillation", tmp_path, "model.class_cond=false", "sample.guidance_scale=3")[::2],
              "sample.guidance_scale", "class-conditional")
    code, _, err = run_script("classifier_cl_train.py", "--config", "yaml/mnist/solver.yaml",
                              "solver.replay=guided", "model.class_cond=false", f"out_dir={tmp_path}")
    one_error(code, err, "solver.replay guided needs a class-conditional diffusion model")


def test_batch_not_divisible_by_the_world_size(tmp_path, monkeypatch):
    """Checked before any work (every rank); here a world of 3 is faked, -m slow runs mpiexec -n 3."""
    monkeypatch.setattr(dist_util, "get_world_size", lambda: 3)
    one_error(*continual("naive", tmp_path)[::2], "train.batch_size 8 is not divisible by the world size 3")
    assert snapshot(tmp_path) == {}


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MPI, reason="mpiexec not installed (pip install -e .[mpi])")
def test_batch_not_divisible_by_the_world_size_under_mpiexec(tmp_path):
    p = subprocess.run(["mpiexec", "-n", "3", sys.executable, "scripts/continual_train.py", "--config",
                        "yaml/mnist/naive.yaml", *TINY, f"out_dir={tmp_path}"], cwd=ROOT,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr[-3000:]
    assert len(lines) == 3 and all("train.batch_size 8 is not divisible by the world size 3" in ln for ln in lines)


def test_image_size_the_data_cannot_give(tmp_path):
    one_error(*continual("naive", tmp_path, "data.resize=pad", "data.image_size=16")[::2],
              "resize='pad' needs images no larger than 16, got 28x28")
    one_error(*continual("naive", tmp_path, "data.resize=center_crop", "data.image_size=64")[::2],
              "resize='center_crop' needs images at least 64x64, got 28x28")


# ---------------------------------------------------------------------------------------------- missing files


def test_missing_dataset_and_weights(tmp_path):
    one_error(*continual("naive", tmp_path, "data.dataset=cifar10", f"data.data_dir={tmp_path}/nothing")[::2],
              f"{tmp_path}/nothing")
    code, _, err = run_script("image_sample.py", "--config", "yaml/mnist/iid.yaml", "--model_path",
                              f"{tmp_path}/none.pt", f"out_dir={tmp_path}")
    one_error(code, err, "none.pt")
    code, _, err = run_script("dynamic_prepare.py", "--config", "yaml/mnist/dkdm.yaml",
                              f"dkdm.teacher_path={tmp_path}/teacher.pt", f"out_dir={tmp_path}")
    one_error(code, err, f"{tmp_path}/teacher.pt")


# ------------------------------------------------------------------------------------ checkpoints of another model


def _weights_of(tmp_path, *overrides, channels=1):
    """A state_dict file of the iid config's UNet (with ``overrides``) for ``channels`` channels."""
    from guided_diffusion import experiment
    from guided_diffusion.runtime.config import load_config

    cfg = load_config(os.path.join(ROOT, "yaml/mnist/iid.yaml"), list(TINY[:5]) + list(overrides))
    model = experiment.build_model(cfg, experiment.DataInfo(10, channels, 28))
    path = str(tmp_path / f"w{channels}_{len(overrides)}.pt")
    torch.save(model.state_dict(), path)
    return path


def test_checkpoint_with_other_channels_or_shapes(tmp_path):
    sample = ["image_sample.py", "--config", "yaml/mnist/iid.yaml", *TINY[:5], f"out_dir={tmp_path}",
              "--num_samples", "2", "--batch_size", "2"]
    rgb = _weights_of(tmp_path, channels=3)
    line = one_error(*run_script(*sample, "--model_path", rgb)[::2], rgb, "does not fit the configured model",
                     "shape mismatch", "input_blocks.0.0.weight: file (32, 3, 3, 3) vs model (32, 1, 3, 3)")
    assert "model options" in line
    wider = _weights_of(tmp_path, "model.num_channels=64")
    one_error(*run_script(*sample, "--model_path", wider)[::2], wider, "shape mismatch")
    assert not any(n.endswith(".npz") for n in os.listdir(tmp_path))  # nothing sampled


# ---------------------------------------------------------------------------------------------- data vs scenario


def test_dataset_with_fewer_classes_than_the_scenario(tmp_path):
    four = write_npz(tmp_path / "four.npz", classes=4)
    data = ["data.dataset=npz", f"data.data_dir={four}", f"data.test_dir={four}"]
    one_error(*continual("naive", tmp_path, *data)[::2],
              "continual.scenario split_mnist needs a dataset with 10 classes; the dataset has 4")
    one_error(*continual("naive", tmp_path, *data, "continual.scenario=", "continual.num_tasks=5",
                         "continual.classes_per_task=2")[::2],
              "the scenario needs 10 classes", "but the dataset has 4 classes")
    one_error(*continual("naive", tmp_path, *data, "continual.scenario=", "continual.num_tasks=2",
                         "model.num_classes=3")[::2], "model.num_classes = 3", "has 4 classes")
