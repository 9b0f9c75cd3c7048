"""Issue 37: no silent surprises for a guided-diffusion user. Each habit either works or fails with
one line (``error: ...``, exit 2) that names the fix, before anything is written to disk."""

import os

import numpy as np
import pytest

from test_reliability_inputs import ROOT, TINY, one_error, run_script, snapshot

B = ["--config", "yaml/mnist/naive.yaml", "continual.num_steps=2", "continual.first_task_num_steps=2"]


# ---------------------------------------------------------------------------------------------- counts (item 4)


@pytest.mark.parametrize("override,key", [
    ("continual.num_steps=-5", "continual.num_steps must be >= 0"),
    ("continual.first_task_num_steps=-2", "continual.first_task_num_steps must be >= 0 (or -1: unset)"),
    ("train.total_steps=-3", "train.total_steps must be > 0"),
    ("continual.grid_per_class=-1", "continual.grid_per_class must be >= 0"),
    ("train.save_interval=-10", "train.save_interval must be >= 0"),
])
def test_negative_counts_are_refused_at_load(tmp_path, override, key):
    code, _, err = run_script("image_train.py", *B, override, f"out_dir={tmp_path}")
    one_error(code, err, key, "the command line")
    assert os.listdir(tmp_path) == []


def test_negative_count_in_a_method_section_and_a_yaml_file(tmp_path):
    code, _, err = run_script("image_train.py", "--config", "yaml/mnist/buffer_replay.yaml", "method.buffer_size=-3",
                              f"out_dir={tmp_path}")
    one_error(code, err, "method.buffer_size must be >= 0")
    cfg = tmp_path / "neg.yaml"
    cfg.write_text("base: %s/yaml/mnist/naive.yaml\ncontinual:\n  num_steps: -5\n" % ROOT)
    code, _, err = run_script("image_train.py", "--config", cfg, f"out_dir={tmp_path}")
    one_error(code, err, f"{cfg}: continual.num_steps must be >= 0")


def test_image_sample_refuses_negative_num_samples(tmp_path):
    code, _, err = run_script("image_sample.py", "--num_samples", "-3", f"sample.out_dir={tmp_path}")
    one_error(code, err, "sample.num_samples must be >= 0", "(--num_samples -3)")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------- messages (item 10)


def test_override_typo_is_blamed_on_the_command_line_not_the_yaml(tmp_path):
    code, _, err = run_script("image_train.py", *B, "train.lrr=3", f"out_dir={tmp_path}")
    line = one_error(code, err, "the command line: unknown key 'train.lrr'", "did you mean 'lr'")
    assert "naive.yaml" not in line


@pytest.mark.parametrize("order,needle", [
    ("", "continual.class_order is empty"),
    ("0,1,1,2", "continual.class_order lists class 1 more than once"),
    ("fixd", "continual.class_order must be fixed, seeded or a list of class ids, got 'fixd' (did you mean 'fixed'"),
])
def test_class_order_mistakes_are_named_at_load(tmp_path, order, needle):
    code, _, err = run_script("image_train.py", *B, f"continual.class_order={order}", f"out_dir={tmp_path}")
    one_error(code, err, "the command line: " + needle)
    assert os.listdir(tmp_path) == []


def test_short_class_order_is_named_not_the_dataset(tmp_path):
    code, _, err = run_script("image_train.py", *B, "continual.class_order=0,1,2", f"out_dir={tmp_path}")
    line = one_error(code, err, "continual.class_order lists 3 of the dataset's 10")
    assert "the dataset has 3 classes" not in line
    assert os.listdir(tmp_path) == []  # item 11: no run folder left


def test_evaluate_names_a_typo_and_a_missing_file(tmp_path):
    np.savez(tmp_path / "S.npz", arr_0=np.zeros((4, 28, 28, 1), np.uint8))
    code, _, err = run_script("evaluate.py", "mnist5kk", tmp_path / "S.npz")
    one_error(code, err, "'mnist5kk' is not a data set name", "did you mean 'mnist5k'")
    code, _, err = run_script("evaluate.py", "mnist5k", tmp_path / "missing.npz")
    one_error(code, err, "missing.npz: no such file")


def test_garbage_checkpoint_is_one_line(tmp_path):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"hello \xff\xfe not a checkpoint\n" * 50)
    code, _, err = run_script("image_train.py", *B, f"model.init_path={bad}", f"out_dir={tmp_path}/out")
    one_error(code, err, "not a file written by torch.save")
    assert not os.path.exists(tmp_path / "out")  # item 11: nothing left


# ---------------------------------------------------------------------------------------------- leftovers (item 11)


def test_missing_inputs_leave_no_run_folder(tmp_path):
    code, _, err = run_script("image_train.py", *B, "data.dataset=npz", f"data.data_dir={tmp_path}/nope.npz",
                              f"out_dir={tmp_path}/out")
    one_error(code, err, "data.data_dir", "no such file or folder")
    code, _, err = run_script("image_train.py", *B, "train.wandb=some_project", f"out_dir={tmp_path}/out")
    if "wandb" not in err or "not installed" not in err:
        pytest.skip("wandb is installed here")
    one_error(code, err, "pip install wandb")
    assert not os.path.exists(tmp_path / "out")


# ---------------------------------------------------------------------------------------------- run names (item 3)


def _saved_config(tmp_path, config, name="r"):
    code, out, err = run_script("image_train.py", "--config", config, "--dry-run", f"out_dir={tmp_path}", f"name={name}")
    assert code == 0, err
    os.makedirs(tmp_path / name)
    (tmp_path / name / "config.yaml").write_text(out)


def test_run_folder_refuses_another_method_unless_forced(tmp_path):
    _saved_config(tmp_path, "yaml/mnist/buffer_replay.yaml")
    before = snapshot(tmp_path)
    code, _, err = run_script("image_train.py", "--config", "yaml/mnist/naive.yaml", f"out_dir={tmp_path}", "name=r")
    one_error(code, err, "holds another run", "method.name: 'buffer_replay' there, 'naive' here", "--force", "name=")
    code, _, err = run_script("image_train.py", "--config", "yaml/mnist/buffer_replay.yaml", f"out_dir={tmp_path}",
                              "name=r", "continual.num_steps=7")
    one_error(code, err, "continual.num_steps: 180 there, 7 here")
    assert snapshot(tmp_path) == before
    code, _, err = run_script("image_train.py", "--config", "yaml/mnist/naive.yaml", f"out_dir={tmp_path}", "name=r",
                              "--force", "--dry-run")
    assert code == 0, err
    code, _, err = run_script("image_train.py", "--config", "yaml/mnist/buffer_replay.yaml", f"out_dir={tmp_path}",
                              "name=r", "continual.limit_tasks=1", "--dry-run")  # the same run, rerun: fine
    assert code == 0, err


# ---------------------------------------------------------------------------------------------- ADM's --data_dir (item 1)


def _adm_folder(path):
    from PIL import Image

    os.makedirs(path)
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(f"{path}/{c}_{i}.png")


def test_adm_data_dir_is_the_data_set(tmp_path):
    _adm_folder(tmp_path / "data")
    adm = ["--data_dir", tmp_path / "data", "--image_size", "32", "--num_channels", "32", "--lr_anneal_steps", "2",
           "--batch_size", "4", f"out_dir={tmp_path}/out"]
    code, out, err = run_script("image_train.py", *adm, "--dry-run")
    assert code == 0, err
    assert "data.dataset=image_folder" in out and "dataset: image_folder" in out
    code, _, err = run_script("image_train.py", *adm[:-1], f"data.data_dir={tmp_path}/nothing", "--dry-run")
    one_error(code, err, "no such file or folder")  # --dry-run runs the run's checks


def test_adm_data_dir_trains_on_the_folder(tmp_path):
    _adm_folder(tmp_path / "data")
    code, out, err = run_script("image_train.py", "--data_dir", tmp_path / "data", "--image_size", "32",
                                "--num_channels", "32", "--lr_anneal_steps", "2", "--batch_size", "4",
                                "--attention_resolutions", "16", "train.sample_at_end=0", "train.num_threads=1",
                                f"out_dir={tmp_path}/out")
    assert code == 0, err[-2000:]
    assert os.path.exists(tmp_path / "out" / "run" / "config.yaml")


# ---------------------------------------------------------------------------------------------- saved config (item 2)


def test_saved_config_keeps_adms_sampler_rule(tmp_path):
    from guided_diffusion.launch.cli import _register_section_schemas
    from guided_diffusion.runtime.config import dump_config, load_config

    _register_section_schemas()
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_config(load_config(os.path.join(ROOT, "yaml/mnist/naive.yaml"))))
    import yaml

    from guided_diffusion.sampling.config import sampler_kind

    assert yaml.safe_load(saved.read_text())["sample"]["sampler"] == "ddim50"  # one value, its kind in it
    for respacing, kind in (("25", "ancestral"), ("ddim25", "ddim"), ("unipc10l", "unipc")):
        code, out, err = run_script("image_sample.py", "--config", saved, "--timestep_respacing", respacing,
                                    "--dry-run")
        assert code == 0, err
        assert f"# --timestep_respacing {respacing} -> sample.sampler={respacing}" in out  # ADM's rule
        sample = yaml.safe_load("\n".join(ln for ln in out.splitlines() if not ln.startswith("#")))["sample"]
        assert sample["sampler"] == respacing and sampler_kind(sample["sampler"]) == kind
    code, out, err = run_script("image_sample.py", "--config", saved, "--timestep_respacing", "25", "--use_ddim",
                                "true", "--dry-run")  # ADM's DDIM on its even 25-step spacing: no value, said so
    assert code == 2 and "DDIM steps on ADM's even spacing '25' have no sampler value here" in err, err
    # A run saved before sample.sampler (its config.yaml beside its log.txt) is read as it ran, the flag on top.
    old = tmp_path / "old"
    old.mkdir()
    (old / "log.txt").write_text("")
    assert "\n  sampler: ddim50\n" in saved.read_text()
    (old / "config.yaml").write_text(saved.read_text().replace("\n  sampler: ddim50\n",
                                                              "\n  use_ddim: null\n  timestep_respacing: ddim50\n"))
    code, out, err = run_script("image_sample.py", "--config", old / "config.yaml", "--timestep_respacing", "25",
                                "--dry-run")
    assert code == 0, err
    assert yaml.safe_load("\n".join(ln for ln in out.splitlines() if not ln.startswith("#")))["sample"]["sampler"] == "25"


def test_cost_line_names_the_sampler():
    import runpy
    from types import SimpleNamespace

    cost_line = runpy.run_path(os.path.join(ROOT, "scripts", "image_sample.py"), run_name="x")["cost_line"]
    s = SimpleNamespace(batch_size=4, sampler="25", eta=0.0)
    assert "with the sampler 25 ancestral" in cost_line(s, None, 1.0, 4, 25)


# ---------------------------------------------------------------------------------------------- ADM's resume (item 5)

RESUME_TINY = ["--config", "yaml/mnist/iid.yaml", "model.num_channels=16", "model.num_head_channels=16",
               "model.channel_mult=1,2", "model.attention_resolutions=14", "train.batch_size=4", "train.num_threads=1", "train.sample_at_end=0",
               "train.log_interval=1", "train.ema_rate=0.999"]


def _adm_files(folder, step, opt=True, ema=True):
    """ADM's layout: model{step}.pt, opt{step}.pt (the optimizer's state_dict), ema_{rate}_{step}.pt."""
    import torch

    from guided_diffusion import experiment
    from guided_diffusion.launch.cli import _register_section_schemas
    from guided_diffusion.runtime.config import load_config

    _register_section_schemas()
    cfg = load_config(os.path.join(ROOT, "yaml/mnist/iid.yaml"), RESUME_TINY[2:])
    torch.manual_seed(1)
    model = experiment.build_model(cfg, experiment.dataset_info(cfg))
    params = [p for p in model.parameters() if p.requires_grad]
    adam = torch.optim.AdamW(params, lr=1e-4)
    for p in params:
        p.grad = torch.ones_like(p)
    adam.step()
    os.makedirs(folder, exist_ok=True)
    torch.save(model.state_dict(), f"{folder}/model{step:06d}.pt")
    if opt:
        torch.save(adam.state_dict(), f"{folder}/opt{step:06d}.pt")
    if ema:
        torch.save({k: v + 1 for k, v in model.state_dict().items()}, f"{folder}/ema_0.999_{step:06d}.pt")
    return f"{folder}/model{step:06d}.pt"


def test_resume_checkpoint_resumes_step_optimizer_and_ema(tmp_path):
    path = _adm_files(tmp_path / "adm", 3)
    code, out, err = run_script("image_train.py", *RESUME_TINY, "train.total_steps=4", "--resume_checkpoint", path,
                                f"out_dir={tmp_path}/out")
    assert code == 0, err[-3000:]
    line = next(ln for ln in out.splitlines() if "--resume_checkpoint" in ln)
    assert "resumed step 3" in line and "optimizer (opt000003.pt)" in line and "EMA 0.999 (ema_0.999_000003.pt)" in line
    assert os.path.exists(tmp_path / "out" / "mnist_iid" / "model000004.pt")  # one step, 3 -> 4
    assert not os.path.exists(tmp_path / "out" / "mnist_iid" / "model000001.pt")


def test_resume_checkpoint_weights_only_says_so(tmp_path):
    path = _adm_files(tmp_path / "adm", 3, opt=False, ema=False)
    code, out, err = run_script("image_train.py", *RESUME_TINY, "train.total_steps=1", "--resume_checkpoint", path,
                                f"out_dir={tmp_path}/out")
    assert code == 0, err[-3000:]
    assert "weights only" in out and "step 0, fresh optimizer and EMA" in out


def test_classifier_train_takes_resume_checkpoint(tmp_path):
    code, _, err = run_script("classifier_train.py", "--config", "yaml/mnist/classifier.yaml", "--resume_checkpoint",
                              tmp_path / "missing.pt", f"out_dir={tmp_path}")
    one_error(code, err, "--resume_checkpoint", "no such file")
    code, out, err = run_script("classifier_train.py", "--help")
    for path in (w for w in out.split() if w.startswith("yaml/") and w.endswith(".yaml")):
        assert os.path.exists(os.path.join(ROOT, path)), path  # item 13: --help points to files that exist


# ---------------------------------------------------------------------------------------------- GUIDE's habits (item 13)


def test_guide_flags_map_to_continual_keys(tmp_path):
    code, out, err = run_script("image_train.py", "--config", "yaml/mnist/generative_replay.yaml", "--num_tasks", "5",
                                "--first_task_num_steps", "3", "--num_steps", "2", "--gr_n_generated_examples_per_task",
                                "10", "--use_fp16", "f", "--class_cond", "t", "--dry-run")
    assert code == 0, err
    for line in ("# --num_tasks 5 -> continual.num_tasks=5", "# --first_task_num_steps 3 -> continual.first_task_num_steps=3",
                 "# --num_steps 2 -> continual.num_steps=2", "-> method.n_per_task=10",
                 "# --use_fp16 f -> model.use_fp16=false"):
        assert line in out, line
    assert "first_task_num_steps: 3" in out and "n_per_task: 10" in out and "class_cond: true" in out


def test_guide_flags_without_a_key_point_to_one(tmp_path):
    code, _, err = run_script("image_train.py", *B, "--cl_method", "generative_replay", f"out_dir={tmp_path}")
    one_error(code, err, "GUIDE's flag --cl_method", "method.name=")
    code, _, err = run_script("image_train.py", *B, "--dataset", "CIFAR10", f"out_dir={tmp_path}")
    one_error(code, err, "data.dataset 'cifar10' needs data.data_dir")
    # GUIDE's phase-1 command: --use_ddim chooses its replay sampler, which is method.sampler here
    code, _, err = run_script("image_train.py", *B, "--timestep_respacing=1000", "--use_ddim=False", f"out_dir={tmp_path}")
    one_error(code, err, "GUIDE's flag --use_ddim", "method.sampler=1000")
    assert os.listdir(tmp_path) == []


def test_evaluate_says_it_converts_rgb_and_size(tmp_path):
    clf = os.path.join(ROOT, "model", "eval_classifier_mnist5k.safetensors")
    if not os.path.exists(clf):
        pytest.skip("no mnist5k domain classifier in model/")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "rgb32.npz", arr_0=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    code, out, err = run_script("evaluate.py", "mnist5k", tmp_path / "rgb32.npz", "--metrics", "fid", "--limit", "8",
                                "--classifier_path", clf)
    assert code == 0, err
    assert "note: SAMPLES are 32x32x3; the domain classifier reads 28x28x1: converted (RGB to grey, 32x32 to 28x28 px)" in out


# ---------------------------------------------------------------------------------------------- sampling a checkpoint (item 8)


def test_image_sample_without_config_reads_the_json_beside_the_checkpoint(tmp_path, monkeypatch):
    code, _, err = run_script("image_train.py", *RESUME_TINY, "train.total_steps=2", "model.norm_groups=8",
                              f"out_dir={tmp_path}")
    assert code == 0, err[-3000:]
    run = tmp_path / "mnist_iid"
    code, out, err = run_script("image_sample.py", "--model_path", run / "model000002.pt", "--num_samples", "2",
                                "--batch_size", "2", "--timestep_respacing", "3", "train.num_threads=1")
    assert code == 0, err[-3000:]
    assert f"note: no --config: the architecture from {run}/ema_0.999_000002.json" in out
    assert os.path.exists(run / "samples_2x28x28x1.npz")  # beside the model
    monkeypatch.setenv("OPENAI_LOGDIR", str(tmp_path / "logdir"))
    code, out, err = run_script("image_sample.py", "--model_path", run / "ema_0.999_000002.pt", "--num_samples", "2",
                                "--batch_size", "2", "--timestep_respacing", "3", "train.num_threads=1")
    assert code == 0, err[-3000:]
    assert os.path.exists(tmp_path / "logdir" / "samples_2x28x28x1.npz")  # ADM's log folder
    code, out, err = run_script("image_sample.py", "--config", run / "config.yaml", "--model_path",
                                run / "model000002.pt", "--num_samples", "2", "--batch_size", "2",
                                "--timestep_respacing", "3", "--dry-run")
    assert code == 0 and "does not read" not in err, err  # a run's config.yaml: no warning about its sections


# ---------------------------------------------------------------------------------------------- progress (item 12)


def test_a_sampling_stage_logs_one_summary_line():
    import torch

    from guided_diffusion import experiment
    from guided_diffusion.runtime.config import Config
    from guided_diffusion.sampling.sample_sets import sample_set

    class Zero(torch.nn.Module):
        def forward(self, x, t, **kwargs):
            return torch.zeros_like(x)

    cfg = Config()
    cfg.diffusion.diffusion_steps = 20
    spec = experiment.sampling_spec(cfg, (1, 8, 8), 0, sampler="ddim3", device="cpu")
    lines = []
    images, _ = sample_set(Zero(), spec, num_samples=5, batch_size=2, log=lines.append, desc="task 3 grid")
    assert images.shape == (5, 8, 8, 1)
    assert len(lines) == 1 and lines[0].startswith("task 3 grid: 5 images (3 DDIM steps) in "), lines


def test_missing_dkdm_teacher_leaves_no_run_folder(tmp_path):
    code, _, err = run_script("dynamic_prepare.py", "--config", "yaml/mnist/dkdm.yaml",
                              f"dkdm.teacher_path={tmp_path}/teacher.pt", f"out_dir={tmp_path}/out")
    one_error(code, err, f"{tmp_path}/teacher.pt")
    assert not os.path.exists(tmp_path / "out")


# ---------------------------------------------------------------------------------------------- ADM's defaults (item 7)


def test_without_a_config_adms_defaults_apply_in_full():
    from guided_diffusion.launch import cli

    for argv in ([], ["--num_channels", "32"]):  # the bare script, or ADM's flags alone
        cfg, args = cli.parse("doc", argv, adm="train")
        assert (cfg.train.grad_clip, cfg.train.ema_warmup) == (0.0, False)  # ADM's TrainLoop: no clipping, no warm-up
        assert (cfg.data.image_size, cfg.model.attention_resolutions) == (64, "16,8")  # a UNet that builds
    cfg, _ = cli.parse("doc", ["--config", os.path.join(ROOT, "yaml/mnist/iid.yaml"), "--num_channels", "32"], adm="train")
    assert cfg.train.grad_clip == 1.0  # a config keeps its own


def test_without_a_config_the_defaults_adms_script_lacks_are_named(capsys):
    """ADM's image_train trains until stopped and needs --data_dir: a run without --config says what it does
    instead, in one line, and names neither once the user set them."""
    from guided_diffusion.launch import cli

    cli.parse("doc", ["--num_channels", "32"], adm="train")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("note: without --config, ADM's defaults apply except ")
    assert "train.total_steps=1000 (ADM's trains until stopped" in err and "data.dataset=mnist5k" in err
    cli.parse("doc", ["--num_channels", "32", "--lr_anneal_steps", "5", "data.dataset=digits8"], adm="train")
    assert capsys.readouterr().err == ""
    cli.parse("doc", ["--config", os.path.join(ROOT, "yaml/mnist/iid.yaml")], adm="train")
    assert capsys.readouterr().err == ""


def test_help_shows_the_adm_default_that_applies():
    code, out, _ = run_script("image_train.py", "--help")
    assert code == 0
    assert "model.num_channels (int, default 64; without --config ADM's 128)" in out
    assert "Without --config (ADM's flags alone, or none), ADM's defaults apply: train.grad_clip=0" in out


# ---------------------------------------------------------------------------------------------- W&B (item 9)

FAKE_WANDB = '''
import json, os

def _write(entry):
    with open(os.environ["FAKE_WANDB_LOG"], "a") as f:
        f.write(json.dumps(entry) + "\\n")

class _Run:
    def __init__(self, kwargs):
        self.id = kwargs.get("id")
    def log(self, data, step=None):
        _write({"log": data, "step": step, "id": self.id})
    def finish(self):
        _write({"finish": self.id})

def init(**kwargs):
    _write({"init": {k: v for k, v in kwargs.items() if k != "config"}})
    return _Run(kwargs)
'''


def test_wandb_is_one_run_with_one_step_axis_and_the_per_task_metrics(tmp_path, monkeypatch):
    import json
    import sys

    (tmp_path / "fake" / "wandb").mkdir(parents=True)
    (tmp_path / "fake" / "wandb" / "__init__.py").write_text(FAKE_WANDB)
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))
    monkeypatch.setenv("FAKE_WANDB_LOG", str(tmp_path / "wandb.jsonl"))
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    code, _, err = run_script("image_train.py", *B, *TINY, "continual.grid_per_class=0", "train.wandb=proj",
                              "train.log_interval=1", f"out_dir={tmp_path}/out")
    sys.modules.pop("wandb", None)
    assert code == 0, err[-3000:]
    entries = [json.loads(ln) for ln in (tmp_path / "wandb.jsonl").read_text().splitlines()]
    inits = [e for e in entries if "init" in e]
    assert len(inits) == 1 and sum("finish" in e for e in entries) == 1  # one W&B run for the whole continual run
    logs = [e for e in entries if "log" in e]
    assert all(e["step"] is None for e in logs)  # wandb's own step: never reset by a new task
    assert [e["log"]["task"] for e in logs if "task" in e["log"]] == [0, 1]  # each task's metrics row


# ---------------------------------------------------------------------------------------------- more of items 13, 11, 1 and 3


def test_classifier_sample_exists_and_needs_a_classifier(tmp_path):
    code, _, err = run_script("classifier_sample.py", "--model_path", tmp_path / "m.pt")
    one_error(code, err, "give --classifier_path")


def test_classifier_train_checks_its_data_before_the_run_folder(tmp_path):
    code, _, err = run_script("classifier_train.py", "--config", "yaml/mnist/classifier.yaml", "data.dataset=npz",
                              f"data.data_dir={tmp_path}/none.npz", f"out_dir={tmp_path}/out")
    one_error(code, err, "none.npz", "no such file or folder")
    assert not os.path.exists(tmp_path / "out")


def test_dry_run_checks_the_scenario_as_the_run_does(tmp_path):
    code, _, err = run_script("image_train.py", *B, "continual.class_order=0,1,2", f"out_dir={tmp_path}", "--dry-run")
    one_error(code, err, "continual.class_order lists 3 of the dataset's 10")


def test_forced_method_change_over_finished_tasks_is_one_line(tmp_path):
    args = [*TINY, "continual.limit_tasks=1", "continual.grid_per_class=0", f"out_dir={tmp_path}", "name=r"]
    code, _, err = run_script("image_train.py", "--config", "yaml/mnist/naive.yaml", *args)
    assert code == 0, err[-3000:]
    code, _, err = run_script("image_train.py", "--config", "yaml/mnist/buffer_replay.yaml", *args, "--force")
    one_error(code, err, "method_state.pt is not a state of method buffer_replay", "name=")
