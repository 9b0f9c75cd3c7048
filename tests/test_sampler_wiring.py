"""The few-step solvers wired into sampling: the grammar of sampler values that names them, the config rule,
``sample_sets.sample_batch`` running them with ADM's model conventions, and ``image_sample.py --sampler``."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from test_reliability_inputs import ROOT, TINY, one_error, run_script

from guided_diffusion.diffusion import diffusion_math as dm
from guided_diffusion.diffusion.respace import (
    logsnr_timesteps,
    sampler_label,
    sampler_of,
    space_timesteps,
    trailing_timesteps,
)
from guided_diffusion.runtime.config import ConfigError, load_config
from guided_diffusion.sampling import samplers
from guided_diffusion.sampling.config import adm_sampler, sampler_kind
from guided_diffusion.sampling.sample_sets import sample_batch
from guided_diffusion.script_util import create_gaussian_diffusion


def _ac(schedule="cosine", T=1000):
    return dm.schedule_from_betas(dm.get_named_beta_schedule(schedule, T)).alphas_cumprod


# ---------------------------------------------------------------------------------------------- grammar


def test_solver_specs_pick_the_solver_and_its_timesteps():
    ac = _ac()
    assert space_timesteps(1000, "dpmpp_2m10") == set(trailing_timesteps(1000, 10))  # default: trailing
    assert space_timesteps(1000, "dpmpp_2m10t") == set(trailing_timesteps(1000, 10))
    assert space_timesteps(1000, "unipc8l", ac) == set(logsnr_timesteps(8, ac))
    assert space_timesteps(1000, "ddim8l", ac) == space_timesteps(1000, "8L", ac) == set(logsnr_timesteps(8, ac))
    assert [sampler_of(s) for s in ("dpmpp_2m10", "UniPC5l", "ddim10", "250", "", "10t")] == \
        ["dpmpp_2m", "unipc", "", "", "", ""]
    d = create_gaussian_diffusion(steps=1000, noise_schedule="cosine", timestep_respacing="dpmpp_2m6l")
    assert d.sampler == "dpmpp_2m" and list(d.timestep_map) == sorted(logsnr_timesteps(6, ac))
    assert create_gaussian_diffusion(steps=100, timestep_respacing="ddim10").sampler == ""
    assert sampler_label("dpmpp_2m10") == "dpmpp_2m10"
    assert sampler_label("ddim50") == "ddim50 DDIM eta 0.0" and sampler_label("") == "full ancestral"
    assert sampler_label("ddim10t", 0.5) == "ddim10t DDIM eta 0.5" and sampler_label("250") == "250 ancestral"


@pytest.mark.parametrize("bad", ["dpmpp_2m", "dpmpp_2mx", "dpmpp_2m10tl", "unipc-3", "dpmpp_2m2000"])
def test_bad_solver_specs_are_refused(bad):
    with pytest.raises(ValueError, match="respacing|steps must be"):
        space_timesteps(1000, bad, _ac())


def test_logsnr_spacing_needs_the_schedule():
    with pytest.raises(ValueError, match="needs the schedule"):
        space_timesteps(1000, "10l")


def test_sampler_values_that_name_a_solver(tmp_path):
    assert sampler_kind("dpmpp_2m10") == "dpmpp_2m" and sampler_kind("ddim10l") == "ddim"
    assert adm_sampler("unipc10", False) == "unipc10" and adm_sampler("dpmpp_2m10", None) == "dpmpp_2m10"
    with pytest.raises(ConfigError, match="DDIM steps with the dpmpp_2m solver's 'dpmpp_2m10'"):
        adm_sampler("dpmpp_2m10", True)  # ADM's --use_ddim True beside a solver
    with pytest.raises(ConfigError, match="bad timestep respacing"):
        sampler_kind("unipcx")
    with pytest.raises(ConfigError, match="sample.sampler = 'unipcx': bad timestep respacing"):
        load_config(os.path.join(ROOT, "yaml/mnist/iid.yaml"), ["sample.sampler=unipcx"])
    with pytest.raises(ConfigError, match="sample.eta = 0.5 is DDIM's, but sample.sampler = 'dpmpp_2m10' is the "
                                          "dpmpp_2m solver"):
        load_config(os.path.join(ROOT, "yaml/mnist/iid.yaml"), ["sample.sampler=dpmpp_2m10", "sample.eta=0.5"])


# ---------------------------------------------------------------------------------------------- sample_batch


class ToyNet(torch.nn.Module):
    """A small conv net whose output depends on t (as the network sees it), channels ``out_mult`` x C."""

    def __init__(self, out_mult=1, c=2):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(c, c * out_mult, 3, padding=1)
        self.seen_t = []

    def forward(self, x, t, y=None):
        self.seen_t.append(t.detach().clone())
        return 0.5 * torch.tanh(self.conv(x)) + 1e-3 * t.float().view(-1, 1, 1, 1)


SHAPE = (3, 2, 6, 6)


def _plain(name, eps_fn, noise, spec, T=100, schedule="cosine", clip=True):
    ac = _ac(schedule, T)
    ts = sorted(space_timesteps(T, spec, ac), reverse=True)
    return samplers.sample(name, eps_fn, noise, ts, ac, clip_denoised=clip)


@pytest.mark.parametrize("spec", ["dpmpp_2m7", "unipc7l", "dpmpp_2m5t"])
@pytest.mark.parametrize("clip", [False, True])
def test_sample_batch_runs_the_named_solver(spec, clip):
    net = ToyNet()
    d = create_gaussian_diffusion(steps=100, noise_schedule="cosine", timestep_respacing=spec)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    got = sample_batch(net, d, SHAPE, class_cond=False, noise=noise, clip_denoised=clip)
    want = _plain(sampler_of(spec), lambda x, t: net(x, t), noise, spec, clip=clip)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert len(net.seen_t) == 2 * len(d.timestep_map)  # one evaluation per kept timestep (twice: two runs)


def test_learned_variance_and_rescaled_timesteps():
    """A 2C-output model: the solver uses its first C channels; with rescale_timesteps the network
    sees t * 1000 / T, as in ADM's loops."""
    net = ToyNet(out_mult=2)
    d = create_gaussian_diffusion(steps=100, noise_schedule="linear", learn_sigma=True, rescale_timesteps=True,
                                  timestep_respacing="dpmpp_2m6")
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    got = sample_batch(net, d, SHAPE, class_cond=False, noise=noise, clip_denoised=False)
    seen = sorted({int(v) for t in net.seen_t for v in t.round().long()})
    assert seen == sorted(int(t) * 10 for t in d.timestep_map)  # 1000 / 100
    want = _plain("dpmpp_2m", lambda x, t: net(x, t.float() * 10.0)[:, :2], noise, "dpmpp_2m6", schedule="linear",
                  clip=False)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_x0_predicting_model():
    net = ToyNet()
    d = create_gaussian_diffusion(steps=100, noise_schedule="cosine", predict_xstart=True,
                                  timestep_respacing="unipc6")
    ac = _ac("cosine", 100)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    got = sample_batch(net, d, SHAPE, class_cond=False, noise=noise, clip_denoised=False)

    def eps_fn(x, t):
        a = torch.from_numpy(ac.copy())[t].to(x.dtype).view(-1, 1, 1, 1)
        return (x - a.sqrt() * net(x, t)) / (1 - a).sqrt()

    torch.testing.assert_close(got, _plain("unipc", eps_fn, noise, "unipc6", clip=False), rtol=1e-5, atol=1e-5)


def test_classifier_guidance_through_the_solver():
    """ADM's cond_fn(x, t, y=...) with the timesteps the network sees guides the score
    (samplers.guided_eps), and changes the samples."""
    net = ToyNet()
    d = create_gaussian_diffusion(steps=100, noise_schedule="cosine", rescale_timesteps=True,
                                  timestep_respacing="dpmpp_2m5")
    y = torch.tensor([0, 1, 1])
    target = torch.linspace(-1, 1, 6)

    def cond_fn(x, t, y=None):
        assert float(t.max()) > 100  # rescaled to 0..1000
        return -(x - target) * (1.0 + y.float().view(-1, 1, 1, 1))

    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    got = sample_batch(net, d, SHAPE, y=y, class_cond=False, noise=noise, cond_fn=cond_fn, clip_denoised=False)
    ac = _ac("cosine", 100)
    eps = samplers.guided_eps(lambda x, t: net(x, t.float() * 10.0), lambda x, t: cond_fn(x, t.float() * 10.0, y=y),
                              ac)
    torch.testing.assert_close(got, _plain("dpmpp_2m", eps, noise, "dpmpp_2m5", clip=False), rtol=0, atol=0)
    plain = sample_batch(net, d, SHAPE, y=y, class_cond=False, noise=noise, clip_denoised=False)
    assert (got - target).abs().mean() < (plain - target).abs().mean()


def test_what_a_solver_cannot_do_is_refused():
    from guided_diffusion.sampling.mcmc import MCMCSettings

    net = ToyNet()
    d = create_gaussian_diffusion(steps=100, timestep_respacing="dpmpp_2m5")

    def guide(x, t, **kw):
        return torch.zeros_like(x)

    guide.needs_pred_xstart = True
    with pytest.raises(ValueError, match="ADM's DDIM/ancestral loops"):
        sample_batch(net, d, SHAPE, class_cond=False, cond_fn=guide)
    with pytest.raises(ValueError, match="eta = 0.5 is DDIM's"):
        sample_batch(net, d, SHAPE, class_cond=False, eta=0.5)
    with pytest.raises(ValueError, match="MCMC corrections"):
        sample_batch(net, d, SHAPE, class_cond=False, mcmc=MCMCSettings(sampler="ula"))


# ---------------------------------------------------------------------------------------------- image_sample.py


def test_image_sample_sampler_flags(tmp_path):
    from test_reliability_inputs import _weights_of

    weights = _weights_of(tmp_path)
    base = ["image_sample.py", "--config", "yaml/mnist/iid.yaml", *TINY[:5], "--out_dir", str(tmp_path),
            "--model_path", weights, "--num_samples", "2", "--batch_size", "2"]
    code, out, err = run_script(*base, "--sampler", "dpmpp_2m", "--steps", "3")
    assert code == 0, err
    assert "3 model evaluations per image" in out
    with np.load(tmp_path / "samples_2x28x28x1.npz") as f:
        first = f["arr_0"].copy()
    for same in (["--sampler", "dpmpp_2m3"], ["--timestep_respacing", "dpmpp_2m3"]):  # by value; ADM's flag
        code, out, err = run_script(*base, *same)
        assert code == 0, err
        with np.load(tmp_path / "samples_2x28x28x1.npz") as f:
            np.testing.assert_array_equal(f["arr_0"], first)
    one_error(*run_script(*base, "--sampler", "dpmpp_2m", "--steps", "3", "--timestep_respacing", "ddim5")[::2],
              "--sampler is the sampler: drop ADM's --timestep_respacing")
    one_error(*run_script(*base, "--steps", "3")[::2], "--steps and --spacing go with --sampler NAME")
    one_error(*run_script(*base, "--sampler", "ddim")[::2], "--sampler ddim needs --steps N")
    one_error(*run_script(*base, "--sampler", "heun", "--steps", "3")[::2], "--sampler 'heun'")
    one_error(*run_script(*base, "--sampler", "unipc", "--steps", "3", "--spacing", "adm")[::2], "--spacing adm")


def test_sampler_for_flags():
    import importlib.util

    spec = importlib.util.spec_from_file_location("image_sample", os.path.join(ROOT, "scripts", "image_sample.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.sampler_for("dpmpp_2m", 10) == "dpmpp_2m10t"
    assert mod.sampler_for("unipc", 8, "logsnr") == "unipc8l"
    assert mod.sampler_for("ddim", 50, "adm") == "ddim50"
    assert mod.sampler_for("ancestral", 20) == "20t"
    assert mod.sampler_words(["--sampler", "ddim", "--steps", "10", "--spacing=adm", "x.y=1"]) == \
        ["x.y=1", "--sampler", "ddim10"]
    assert mod.sampler_words(["--sampler", "unipc10l"]) == ["--sampler", "unipc10l"]


def test_guide_x0_guidance_with_a_solver_is_refused_before_training():
    """GUIDE's x̂0 guidance needs ADM's loops: a solver's sampler value for it is refused when the solver
    is built; guidance on x_t (noised classifier) and unguided replay take any sampler."""
    import dataclasses

    from guided_diffusion.continual.solver import Solver
    from guided_diffusion.continual.solver import GuidedOptions, SolverConfig

    from guided_diffusion.runtime.config import Config

    cfg = Config()
    cfg.model.class_cond = True
    cfg.solver = dataclasses.replace(SolverConfig(), replay="guided", sampler="dpmpp_2m10",
                                     guided=GuidedOptions(use_old_grad=True, use_new_grad=False))
    with pytest.raises(ConfigError, match="cannot guide through x̂0"):
        Solver(cfg, None, None, None, None, None, None, "cpu", "", None)
    for ok in (dict(guided=GuidedOptions(use_old_grad=True, use_new_grad=False, noised_classifier=True)),
               dict(sampler="ddim10t"), dict(replay="plain", guided=GuidedOptions())):
        cfg.solver = dataclasses.replace(cfg.solver, **ok)
        with pytest.raises(Exception) as e:  # gets past the check, then fails on the missing data (None)
            Solver(cfg, None, None, None, None, None, None, "cpu", "", None)
        assert "x̂0" not in str(e.value)


@pytest.mark.slow  # ~20-45 s on 2 cores: run with -m slow (the default suite stays under 10 minutes)
def test_sampler_steps_script_rows_resume_and_table(tmp_path, tiny_eval_classifier):
    """scripts/sampler_steps.py: one row per (spec, seed), a rerun with one more seed adds only its
    rows, and the table holds mean ± sd per cell."""
    import csv

    from test_reliability_inputs import _weights_of

    weights = _weights_of(tmp_path)
    args = ["sampler_steps.py", "--config", "yaml/mnist/iid.yaml", *TINY[:5], "--model_path", weights,
            "--out", str(tmp_path / "s"), "--samplers", "unipc,ddim", "--steps", "2,3", "--spacings", "trailing",
            "--reference", "ddim4", "evaluation.num_samples=10", "evaluation.batch_size=10",
            "evaluation.metrics=fid,class_acc", *tiny_eval_classifier]
    code, out, err = run_script(*args, "--seeds", "0")
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "s" / "steps.csv")))
    assert [(r["spec"], r["seed"], r["steps"]) for r in rows] == [
        ("unipc2t", "0", "2"), ("unipc3t", "0", "3"), ("ddim2t", "0", "2"), ("ddim3t", "0", "3"), ("ddim4", "0", "4")]
    code, out, err = run_script(*args, "--seeds", "0,1")
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "s" / "steps.csv")))
    assert len(rows) == 10 and [r["seed"] for r in rows[5:]] == ["1"] * 5
    md = (tmp_path / "s" / "steps.md").read_text()
    assert "| unipc | trailing | " in md and " ± " in md and "Reference `ddim4`" in md
    assert (tmp_path / "s" / "steps.png").stat().st_size > 0
