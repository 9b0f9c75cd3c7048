"""The guided-diffusion user's contract: ADM's flags mean ADM's things, --help is the manual,
image_train.py runs continual configs, released weights start runs and sample without the data."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from guided_diffusion.launch import cli
from guided_diffusion.runtime.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A 0.1M UNet on 8x8 digits (scikit-learn's, shipped): seconds per run.
TINY = ["data.dataset=digits", "data.image_size=8", "model.num_channels=16", "model.num_res_blocks=1",
        "model.channel_mult=1,2", "model.attention_resolutions=4", "model.num_head_channels=16",
        "model.norm_groups=8", "model.class_cond=true", "diffusion.diffusion_steps=20", "train.batch_size=8",
        "train.num_threads=1", "train.log_interval=1", "train.sample_at_end=0", "sample.batch_size=4"]


def run(args, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "GD_PROGRESS"):
        env.pop(k, None)
    p = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def test_adm_flags_set_the_keys_adm_means(monkeypatch):
    cfg, args = cli.parse("doc", ["--num_channels", "48", "--class_cond", "True", "--lr=2e-4", "--learn_sigma", "True",
                                  "--noise_schedule", "cosine", "--timestep_respacing", "250",
                                  "--lr_anneal_steps", "300", "--use_fp16", "True"], adm="train")
    assert (cfg.model.num_channels, cfg.model.class_cond, cfg.train.lr) == (48, True, 2e-4)
    assert cfg.diffusion.learn_sigma and cfg.diffusion.noise_schedule == "cosine"
    assert cfg.diffusion.timestep_respacing == "250"  # training: the diffusion's respacing, as ADM
    assert (cfg.train.total_steps, cfg.train.lr_schedule) == (300, "linear")  # ADM: linear decay to 0, stop there
    assert cfg.model.use_fp16 and cfg.train.precision == "fp16"
    assert ("--num_channels 48", ["model.num_channels=48"]) in args.translations
    # ADM's --batch_size is per process: the global batch is B x processes.
    cfg, _ = cli.parse("doc", ["--batch_size", "16"], adm="train")
    assert cfg.train.batch_size == 16
    for k, v in dict(RANK="0", WORLD_SIZE="4", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29999").items():
        monkeypatch.setenv(k, v)
    cfg, _ = cli.parse("doc", ["--batch_size", "16"], adm="train")
    assert cfg.train.batch_size == 64
    cfg, _ = cli.parse("doc", ["--batch_size", "16"], adm="classifier")
    assert cfg.classifier.batch_size == 64
    # Sampling: --timestep_respacing 250 is 250 ancestral steps (ADM), ddim250 is DDIM: sample.sampler by ADM's rule.
    cfg, args = cli.parse("doc", ["--timestep_respacing", "250"], adm="sample")
    assert cfg.sample.sampler == "250" and ("--timestep_respacing 250", ["sample.sampler=250"]) in args.translations
    cfg, _ = cli.parse("doc", ["--timestep_respacing", "ddim250"], adm="sample")
    assert cfg.sample.sampler == "ddim250"
    for flags, value in ((["--use_ddim", "True", "--timestep_respacing", ""], "ddim1000"),  # DDIM over every step
                         (["--timestep_respacing", "", "--use_ddim", "True", "--diffusion_steps", "100"], "ddim100"),
                         (["--use_ddim", "t"], "ddim1000"),  # ADM's default respacing "" under it
                         (["--use_ddim", "False", "--timestep_respacing", "ddim10t"], "10t"),
                         (["--use_ddim", "True", "--timestep_respacing", "50t"], "ddim50t"),
                         (["--use_ddim", "False", "--timestep_respacing", "unipc10l"], "unipc10l")):
        cfg, args = cli.parse("doc", flags, adm="sample")
        assert cfg.sample.sampler == value, flags
        assert args.translations[-1][1] == [f"sample.sampler={value}"]
    with pytest.raises(ConfigError, match=r"--use_ddim True --timestep_respacing 250: DDIM steps on ADM's even spacing "
                                          r"'250' have no sampler value here: give --timestep_respacing ddim250"):
        cli.parse("doc", ["--use_ddim", "True", "--timestep_respacing", "250"], adm="sample")
    cfg, _ = cli.parse("doc", ["--classifier_width", "64", "--classifier_scale", "2.5"], adm="sample")
    assert (cfg.classifier.width, cfg.sample.classifier_scale) == (64, 2.5)  # classifier_sample.py's flags
    with pytest.raises(ConfigError, match="train forever"):
        cli.parse("doc", ["--lr_anneal_steps", "0"], adm="train")
    with pytest.raises(ConfigError, match="no equivalent"):
        cli.parse("doc", ["--fp16_scale_growth", "1e-3"], adm="train")
    with pytest.raises(ConfigError, match="did you mean --num_channels"):
        cli.parse("doc", ["--num_chanels", "8"], adm="train")


def test_adm_flags_without_a_config_start_from_adms_defaults(tmp_path):
    # A flag left out means ADM's default (script_util.model_and_diffusion_defaults), not this
    # project's: guided-diffusion's 128 channels, attention at 16 and 8, 64 px, the full chain.
    cfg, args = cli.parse("doc", ["--data_dir", "/data/x"], adm="train")
    assert (cfg.data.image_size, cfg.model.num_channels, cfg.model.attention_resolutions) == (64, 128, "16,8")
    assert "model.num_channels=128" in args.adm_defaults
    cfg, _ = cli.parse("doc", ["--num_channels", "32"], adm="sample")
    assert (cfg.model.num_channels, cfg.sample.sampler) == (32, "")  # ADM's "" and use_ddim False: every step, ancestral
    # With a config, or with no ADM flag at all, the config's own defaults hold.
    cfg, args = cli.parse("doc", ["model.dropout=0.1"], adm="train")
    assert (cfg.model.num_channels, args.adm_defaults) == (64, [])
    path = tmp_path / "c.yaml"
    path.write_text("model: {dropout: 0.1}\n")
    cfg, _ = cli.parse("doc", ["--config", str(path), "--data_dir", "/data/x"], adm="train")
    assert (cfg.model.num_channels, cfg.data.image_size) == (64, 28)


def test_a_section_the_script_does_not_read_is_named(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    # class_cond: the solver's replay (guided by default) needs it, checked at load where solver is read
    path.write_text("model: {num_channels: 32, class_cond: true}\nsolver: {lr: 0.1}\n")
    cli.parse("doc", ["--config", str(path)], uses=("data", "model"), program="x.py")
    err = capsys.readouterr().err
    assert "x.py does not read the section(s) solver" in err
    cli.parse("doc", ["--config", str(path), "solver.lr=0.2"], uses=("model", "solver"))
    assert "does not read" not in capsys.readouterr().err


def test_help_is_the_manual():
    out = run(["scripts/image_train.py", "--help"]).stdout
    assert "One entry point, as GUIDE's" in out and "Rerunning the same command resumes" in out
    assert "--num_channels" in out and "model.num_channels (int, default 64; without --config ADM's 128)" in out
    assert "--batch_size" in out and "per process" in out
    out = run(["scripts/image_sample.py", "--help"]).stdout
    for option in ("--classes 0,1,2", "--to_rgb BOOL", "--model_path", "--use_ddim", "sample.sampler"):
        assert option in out
    out = run(["scripts/learning_curve.py", "--help"]).stdout
    assert "--points POINTS" in out and "default 4k:64k" in out


def _tiny_cfg(tmp_path, extra=()):
    from guided_diffusion.runtime.config import load_config

    return load_config(None, TINY + [f"out_dir={tmp_path}", *extra])


def _adm_checkpoint(tmp_path, seed, extra=()):
    """A state_dict in ADM's layout (our UNet's keys are ADM's), saved as ADM saves it: torch.save(.pt)."""
    from guided_diffusion import experiment

    cfg = _tiny_cfg(tmp_path, [f"seed={seed}", *extra])
    model = experiment.build_model(cfg, experiment.DataInfo(10, 1, 8))
    path = str(tmp_path / f"released_{seed}.pt")
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def test_resume_checkpoint_starts_training_from_adm_weights(tmp_path):
    path, released = _adm_checkpoint(tmp_path, seed=7)
    run(["scripts/image_train.py", *TINY, f"out_dir={tmp_path}", "name=ft", "train.total_steps=1", "train.lr=1e-9",
         "train.warmup_steps=0", "--resume_checkpoint", path])
    from guided_diffusion.runtime import checkpoint as ckpt

    trained = ckpt.load_torch(f"{tmp_path}/ft/model000001.pt")
    for k, v in released.items():  # one step at lr 1e-9 from the released weights, not from seed 0's init
        torch.testing.assert_close(trained[k], v, atol=1e-6, rtol=0)
    log = open(f"{tmp_path}/ft/log.txt").read()
    assert f"initial weights from {path}" in log
    # Another architecture: one clear error, exit 2.
    wide, _ = _adm_checkpoint(tmp_path, seed=3, extra=["model.num_channels=24", "model.num_head_channels=8"])
    p = run(["scripts/image_train.py", *TINY, f"out_dir={tmp_path}", "name=bad", "train.total_steps=1",
             f"model.init_path={wide}"], check=False)
    assert p.returncode == 2 and "does not fit the configured model (model.init_path)" in p.stderr


def test_sampling_a_released_checkpoint_needs_no_data_set(tmp_path):
    path, _ = _adm_checkpoint(tmp_path, seed=1)
    # CIFAR-10 at a folder that does not exist: the channels and classes come from the weights.
    p = run(["scripts/image_sample.py", *TINY, "data.dataset=cifar10", f"data.data_dir={tmp_path}/nowhere",
             f"out_dir={tmp_path}", "--model_path", path, "--num_samples", "4", "--timestep_respacing", "5",
             "--out_dir", f"{tmp_path}/s"])
    z = np.load(f"{tmp_path}/s/samples_4x8x8x1.npz")
    assert z["arr_0"].shape == (4, 8, 8, 1) and z["arr_1"].max() < 10


def test_image_train_runs_a_continual_config(tmp_path):
    p = run(["scripts/image_train.py", "--config", "yaml/mnist/naive.yaml", *TINY, f"out_dir={tmp_path}",
             "name=cl", "continual.limit_tasks=2", "continual.num_steps=2", "continual.first_task_num_steps=2",
             "continual.grid_per_class=0", "evaluation.enabled=false"])
    rows = open(f"{tmp_path}/cl/metrics.csv").read().splitlines()
    assert len(rows) == 3 and os.path.exists(f"{tmp_path}/cl/task_1/task_done.json")
    assert "all tasks done" in p.stdout + p.stderr
    # continual_train.py refuses an IID config rather than running something else.
    p = run(["scripts/continual_train.py", "--config", "yaml/mnist/iid.yaml", "--dry-run"], check=False)
    assert p.returncode == 2 and "no method or continual section" in p.stderr


def test_ddpm_ip_teacher_preset_is_dkdms_57m_cnn():
    """yaml/cifar10_32/ddpm_ip_teacher.yaml builds DDPM-IP's CIFAR-10 UNet from the config alone (no
    CIFAR-10 files): DKDM's 57M-CNN teacher; dkdm.yaml's student is its 14M."""
    import guided_diffusion.dkdm.config  # noqa: F401  (the dkdm section)
    from guided_diffusion import experiment
    from guided_diffusion.runtime.config import load_config

    cfg = load_config(os.path.join(ROOT, "yaml/cifar10_32/ddpm_ip_teacher.yaml"), ["data.data_dir=/nonexistent"])
    info = experiment.info_for_weights(cfg)
    assert (info.channels, info.num_classes) == (3, 0)
    teacher = experiment.build_model(cfg, info)
    assert round(sum(p.numel() for p in teacher.parameters()) / 1e6) == 57
    assert teacher.state_dict()["out.2.weight"].shape[0] == 6  # learn_sigma: eps and the variance
    student = load_config(os.path.join(ROOT, "yaml/cifar10_32/dkdm.yaml"))
    assert student.dkdm.teacher_model["num_channels"] == cfg.model.num_channels
    assert round(sum(p.numel() for p in experiment.build_model(student, info).parameters()) / 1e6) == 14


@pytest.mark.parametrize("script", sorted(f for f in os.listdir(os.path.join(ROOT, "scripts")) if f.endswith(".py")))
def test_every_scripts_help_is_its_docstring(script):
    import ast

    with open(os.path.join(ROOT, "scripts", script)) as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ""
    out = run([f"scripts/{script}", "--help"]).stdout
    lines = [ln.strip() for ln in doc.splitlines() if ln.strip()]
    shown = [ln for ln in lines if ln in out]
    assert lines and len(shown) == len(lines), f"{script} --help leaves out: {[ln for ln in lines if ln not in out][:3]}"


def test_adm_dist_util_names_work_in_a_fresh_single_process():
    """ADM's scripts call dist_util.setup_dist(), dev(), load_state_dict(path, map_location=...), sync_params():
    the same names work here (the old flat path included), one process without a launcher."""
    code = ("import torch\nfrom guided_diffusion import dist_util\n"
            "dist_util.setup_dist()\n"
            "assert not dist_util.is_initialized() and dist_util.get_world_size() == 1  # no group for one process\n"
            "assert dist_util.dev() == torch.device('cpu')\n"
            "p = torch.nn.Linear(2, 2)\ndist_util.sync_params(p.parameters())\n"
            "import tempfile, os\nf = os.path.join(tempfile.mkdtemp(), 'w.pt')\ntorch.save(p.state_dict(), f)\n"
            "sd = dist_util.load_state_dict(f, map_location='cpu')\nassert torch.equal(sd['weight'], p.weight)\n"
            "print('ok')\n")
    p = run(["-c", code])
    assert p.stdout.strip().endswith("ok")
