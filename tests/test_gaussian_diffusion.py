"""GaussianDiffusion: golden numbers from real guided-diffusion (ADM), closed forms, guidance.

``golden_cases(lib)`` runs every compared computation with the diffusion classes of ``lib``; the
fixture ``fixtures/adm_diffusion_golden.npz`` holds its results with ADM's own code (see
``fixtures/README.md``) and the test recomputes them with ours.
"""

import math
import os
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from guided_diffusion.diffusion import gaussian_diffusion as gd
from guided_diffusion.diffusion import respace
from guided_diffusion.diffusion.losses import normal_kl

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "adm_diffusion_golden.npz")

OURS = types.SimpleNamespace(
    GaussianDiffusion=gd.GaussianDiffusion,
    SpacedDiffusion=respace.SpacedDiffusion,
    space_timesteps=respace.space_timesteps,
    get_named_beta_schedule=gd.get_named_beta_schedule,
    ModelMeanType=gd.ModelMeanType,
    ModelVarType=gd.ModelVarType,
    LossType=gd.LossType,
)

MEAN_TYPES = ("EPSILON", "START_X", "PREVIOUS_X")
VAR_TYPES = ("FIXED_SMALL", "FIXED_LARGE", "LEARNED", "LEARNED_RANGE")
LOSS_TYPES = ("MSE", "RESCALED_MSE", "KL", "RESCALED_KL")


# ---------------------------------------------------------------------------------------------
# Deterministic toy networks and guidance (also used to make the fixture)


def _tcol(t):
    return t.float()[:, None, None, None]


def toy_model(x, t, y=None):
    """C output channels: a smooth function of x and of the (original) timestep."""
    out = torch.tanh(0.3 * x + 0.001 * _tcol(t))
    if y is not None:
        out = out + 0.05 * y.float()[:, None, None, None]
    return out


def toy_model_learned(x, t, y=None):
    """2C output channels: the toy mean half plus variance values in [-1, 1]."""
    return torch.cat([toy_model(x, t, y), torch.tanh(0.5 * x - 0.0007 * _tcol(t))], dim=1)


CLS_W = torch.tensor([-4.0, 0.0, 4.0])


def toy_classifier(x, t):
    """Logits of 3 classes, linear in the mean pixel (class 2 likes bright images)."""
    m = x.mean(dim=(1, 2, 3))
    return m[:, None] * CLS_W[None] + 1e-4 * _tcol(t)[:, :, 0, 0] * torch.arange(3.0)[None]


def toy_cond_fn(x, t, y=None, scale=3.0):
    """ADM-style guidance: scale * grad_x log softmax(classifier(x_t, t))[y]."""
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        logp = F.log_softmax(toy_classifier(x_in, t), dim=-1)[torch.arange(len(x)), y]
        return torch.autograd.grad(logp.sum(), x_in)[0] * scale


def _inputs():
    g = torch.Generator().manual_seed(2024)
    x_start = torch.randint(0, 256, (4, 3, 4, 4), generator=g).float() / 127.5 - 1.0  # hits -1 and 1 edges
    noise = torch.randn(4, 3, 4, 4, generator=g)
    x_t = torch.randn(4, 3, 4, 4, generator=g)
    noise_s = torch.randn(2, 3, 4, 4, generator=g)
    return x_start, noise, x_t, noise_s


def _diffusion(lib, mean="EPSILON", var="FIXED_LARGE", loss="MSE", schedule="linear", steps=1000, spacing=None,
               rescale=False):
    kwargs = dict(
        betas=lib.get_named_beta_schedule(schedule, steps),
        model_mean_type=lib.ModelMeanType[mean],
        model_var_type=lib.ModelVarType[var],
        loss_type=lib.LossType[loss],
        rescale_timesteps=rescale,
    )
    if spacing is None:
        return lib.GaussianDiffusion(**kwargs)
    return lib.SpacedDiffusion(use_timesteps=lib.space_timesteps(steps, spacing), **kwargs)


def _model_for(var):
    return toy_model_learned if var in ("LEARNED", "LEARNED_RANGE") else toy_model


def golden_cases(lib):
    """name -> float64 array for every computation compared with ADM."""
    res = {}
    x_start, noise, x_t, noise_s = _inputs()
    res["in_x_start"], res["in_noise"], res["in_x_t"], res["in_noise_s"] = x_start, noise, x_t, noise_s
    t = torch.tensor([0, 1, 517, 999])

    # training_losses for every mean x variance x loss type
    for mean in MEAN_TYPES:
        for var in VAR_TYPES:
            for loss in LOSS_TYPES:
                diff = _diffusion(lib, mean, var, loss)
                terms = diff.training_losses(_model_for(var), x_start, t, noise=noise)
                for k, v in terms.items():
                    res[f"loss/{mean}/{var}/{loss}/{k}"] = v
    # spaced, rescaled, cosine: the network must see original timesteps * 1000 / T
    diff = _diffusion(lib, "EPSILON", "LEARNED_RANGE", "RESCALED_MSE", schedule="cosine", spacing="ddim50",
                      rescale=True)
    for k, v in diff.training_losses(toy_model_learned, x_start, torch.tensor([0, 3, 25, 49]), noise=noise).items():
        res[f"loss_spaced/{k}"] = v

    # p_mean_variance
    t_p = torch.tensor([0, 10, 400, 999])
    for mean in MEAN_TYPES:
        for var in VAR_TYPES:
            diff = _diffusion(lib, mean, var)
            for clip in (True, False):
                out = diff.p_mean_variance(_model_for(var), x_t, t_p, clip_denoised=clip)
                for k in ("mean", "variance", "log_variance", "pred_xstart"):
                    res[f"pmv/{mean}/{var}/{clip}/{k}"] = out[k]

    # DDIM, 10 steps, eta 0 (given noise) and eta 0.5 (seeded)
    diff = _diffusion(lib, spacing="ddim10")
    res["ddim_eta0"] = diff.ddim_sample_loop(toy_model, (2, 3, 4, 4), noise=noise_s, device="cpu")
    torch.manual_seed(7)
    res["ddim_eta05"] = diff.ddim_sample_loop(toy_model, (2, 3, 4, 4), device="cpu", eta=0.5)
    res["ddim_reverse"] = diff.ddim_reverse_sample(toy_model, noise_s, torch.tensor([3, 3]))["sample"]

    # ancestral sampling on "10" spaced steps, seeded
    for var in ("FIXED_LARGE", "FIXED_SMALL", "LEARNED_RANGE"):
        diff = _diffusion(lib, var=var, spacing="10")
        torch.manual_seed(11)
        res[f"psample/{var}"] = diff.p_sample_loop(_model_for(var), (2, 3, 4, 4), device="cpu")

    # classifier guidance (noisy classifier, ADM's cond_fn contract)
    y = torch.tensor([2, 0])
    kw = {"y": y}
    diff = _diffusion(lib, spacing="ddim10")
    res["guided_ddim"] = diff.ddim_sample_loop(toy_model, (2, 3, 4, 4), noise=noise_s, cond_fn=toy_cond_fn,
                                               model_kwargs=kw, device="cpu")
    diff = _diffusion(lib, var="LEARNED_RANGE", spacing="10")
    torch.manual_seed(13)
    res["guided_psample"] = diff.p_sample_loop(toy_model_learned, (2, 3, 4, 4), cond_fn=toy_cond_fn,
                                               model_kwargs=kw, device="cpu")

    # the whole bound on 10 spaced steps
    diff = _diffusion(lib, var="LEARNED_RANGE", spacing="10")
    torch.manual_seed(17)
    for k, v in diff.calc_bpd_loop(toy_model_learned, x_start, clip_denoised=True).items():
        res[f"bpd/{k}"] = v
    return {k: v.detach().double().numpy() for k, v in res.items()}


# ---------------------------------------------------------------------------------------------
# Fixture comparison


@pytest.fixture(scope="module")
def golden():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def ours():
    return golden_cases(OURS)


def test_golden_keys_and_inputs(golden, ours):
    assert set(golden) == set(ours)
    for k in ("in_x_start", "in_noise", "in_x_t", "in_noise_s"):
        np.testing.assert_array_equal(ours[k], golden[k], err_msg=f"{k}: torch RNG changed; regenerate the fixture")


@pytest.mark.parametrize("group", ["loss/", "loss_spaced/", "pmv/", "ddim", "psample/", "guided_", "bpd/"])
def test_matches_adm(golden, ours, group):
    keys = [k for k in golden if k.startswith(group)]
    assert keys
    for k in keys:
        np.testing.assert_allclose(ours[k], golden[k], rtol=1e-5, atol=1e-5, err_msg=k)


# ---------------------------------------------------------------------------------------------
# Closed forms and behaviour


def test_learned_range_interpolates_log_variance():
    diff = _diffusion(OURS, var="LEARNED_RANGE")
    x = torch.zeros(3, 1, 2, 2)
    t = torch.tensor([5, 100, 900])
    for v, frac in ((-1.0, 0.0), (1.0, 1.0), (0.2, 0.6)):
        out = diff.p_mean_variance_from_output(torch.cat([x, torch.full_like(x, v)], 1), x, t)
        tn = t.numpy()
        expect = frac * np.log(diff.betas[tn]) + (1 - frac) * np.log(diff.posterior_variance[tn])
        np.testing.assert_allclose(out["log_variance"][:, 0, 0, 0].numpy(), expect, rtol=1e-6)
        np.testing.assert_allclose(out["variance"][:, 0, 0, 0].numpy(), np.exp(expect), rtol=1e-5)


def test_p_mean_variance_extra_keys():
    diff = _diffusion(OURS, var="LEARNED_RANGE")
    x = torch.randn(2, 3, 4, 4)
    t = torch.tensor([3, 600])
    out = diff.p_mean_variance(toy_model_learned, x, t, clip_denoised=True)
    raw = toy_model_learned(x, t)[:, :3]
    torch.testing.assert_close(out["model_output"], raw)
    torch.testing.assert_close(out["eps"], raw)
    again = diff.p_mean_variance_from_output(toy_model_learned(x, t), x, t, clip_denoised=True)
    for k in out:
        torch.testing.assert_close(out[k], again[k])
    # START_X: eps is derived from the unclipped x0 prediction
    diff = _diffusion(OURS, mean="START_X")
    out = diff.p_mean_variance(lambda x, t: 3 * x, x, t)
    ab = torch.tensor(diff.alphas_cumprod[t.numpy()], dtype=torch.float32)[:, None, None, None]
    torch.testing.assert_close(out["eps"], (x - ab.sqrt() * 3 * x) / (1 - ab).sqrt(), rtol=1e-4, atol=1e-4)
    assert out["pred_xstart"].abs().max() <= 1


def test_step_kl_matches_closed_form():
    m1, m2 = torch.randn(3, 2, 2, 2), torch.randn(3, 2, 2, 2)
    lv1, lv2 = torch.randn(3, 2, 2, 2), torch.randn(3, 2, 2, 2)
    kl = gd.step_kl(m1, lv1, m2, lv2)
    s1, s2 = lv1.exp(), lv2.exp()
    ref = 0.5 * (torch.log(s2 / s1) + (s1 + (m1 - m2) ** 2) / s2 - 1)
    torch.testing.assert_close(kl, ref.mean(dim=(1, 2, 3)) / math.log(2))
    assert torch.all(gd.step_kl(m1, lv1, m1, lv1).abs() < 1e-6)
    assert torch.equal(gd.GaussianDiffusion.step_kl(m1, lv1, m2, lv2), kl)


def test_dkdm_student_step_from_given_eps():
    """The student's (mean, logvar) from its detached eps and its own variance channels."""
    diff = _diffusion(OURS, var="LEARNED_RANGE")
    x_t = torch.randn(2, 3, 4, 4)
    t = torch.tensor([0, 500])
    teacher = diff.p_mean_variance(toy_model_learned, x_t, t, clip_denoised=True)
    out = torch.cat([torch.randn(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)], 1).requires_grad_(True)
    eps_s, v_s = out.split(3, dim=1)
    student = diff.p_mean_variance_from_output(torch.cat([eps_s.detach(), v_s], 1), x_t, t, clip_denoised=False)
    vb = gd.step_kl(teacher["mean"], teacher["log_variance"], student["mean"], student["log_variance"])
    vb.sum().backward()
    assert torch.all(out.grad[:, :3] == 0) and out.grad[:, 3:].abs().sum() > 0


def test_hybrid_loss_detaches_mean_from_vb():
    diff = _diffusion(OURS, var="LEARNED_RANGE")
    x0 = torch.rand(2, 3, 4, 4) * 2 - 1
    out = torch.randn(2, 6, 4, 4).requires_grad_(True)
    terms = diff.training_losses(lambda x, t: out, x0, torch.tensor([4, 700]))
    terms["vb"].sum().backward()
    assert torch.all(out.grad[:, :3] == 0) and out.grad[:, 3:].abs().sum() > 0
    assert set(terms) == {"loss", "mse", "vb"}
    assert set(_diffusion(OURS).training_losses(toy_model, x0, torch.tensor([1, 2]))) == {"loss", "mse"}


def test_rescaled_mse_scales_vb():
    kw = dict(var="LEARNED_RANGE", steps=250)
    x0, n, t = torch.rand(2, 3, 4, 4) * 2 - 1, torch.randn(2, 3, 4, 4), torch.tensor([3, 100])
    vb = _diffusion(OURS, loss="MSE", **kw).training_losses(toy_model_learned, x0, t, noise=n)["vb"]
    vb_r = _diffusion(OURS, loss="RESCALED_MSE", **kw).training_losses(toy_model_learned, x0, t, noise=n)["vb"]
    torch.testing.assert_close(vb_r, vb * 0.25)


def _smooth_eps(x, t):
    return 0.5 * torch.tanh(0.2 * x) + 1e-5 * _tcol(t)


def test_ddim_eta0_is_deterministic_and_invertible():
    diff = _diffusion(OURS, spacing="ddim20")
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    a = diff.ddim_sample_loop(_smooth_eps, (2, 3, 4, 4), noise=x_T, clip_denoised=False)
    torch.manual_seed(123)  # the global RNG must not matter at eta = 0
    b = diff.ddim_sample_loop(_smooth_eps, (2, 3, 4, 4), noise=x_T, clip_denoised=False)
    assert torch.equal(a, b)
    # encode a mid-trajectory point over 3 steps with the reverse ODE, then decode it back; the
    # first-order ODE discretisation error is small for fine steps and a slowly varying eps
    diff = _diffusion(OURS)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 0.5
    start = 300
    z = x
    for i in range(start, start + 3):
        z = diff.ddim_reverse_sample(_smooth_eps, z, torch.tensor([i, i]), clip_denoised=False)["sample"]
    for i in range(start + 3, start, -1):
        z = diff.ddim_sample(_smooth_eps, z, torch.tensor([i, i]), clip_denoised=False)["sample"]
    torch.testing.assert_close(z, x, rtol=0, atol=1e-4)
    with pytest.raises(ValueError):
        diff.ddim_reverse_sample(_smooth_eps, x, torch.tensor([1, 1]), eta=0.5)


def test_sampling_outputs_usable_in_autograd():
    diff = _diffusion(OURS, spacing="5")
    x = diff.p_sample_loop(toy_model, (2, 3, 4, 4), device="cpu")
    assert not x.is_inference()
    w = torch.ones(1, requires_grad=True)
    (x * w).sum().backward()
    steps = list(diff.ddim_sample_loop_progressive(toy_model, (1, 3, 4, 4), device="cpu"))
    assert len(steps) == 5 and set(steps[0]) == {"sample", "pred_xstart"}


def test_classifier_guided_ddim_moves_toward_target_class():
    diff = _diffusion(OURS, spacing="ddim10")
    noise = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    kw = {"y": torch.full((8,), 2)}
    plain = diff.ddim_sample_loop(toy_model, (8, 3, 4, 4), noise=noise, model_kwargs=kw)
    guided = diff.ddim_sample_loop(toy_model, (8, 3, 4, 4), noise=noise, cond_fn=toy_cond_fn, model_kwargs=kw)
    p_plain = F.softmax(toy_classifier(plain, torch.zeros(8)), -1)[:, 2]
    p_guided = F.softmax(toy_classifier(guided, torch.zeros(8)), -1)[:, 2]
    assert torch.all(p_guided > p_plain) and p_guided.mean() > p_plain.mean() + 0.1
    kw0 = {"y": torch.full((8,), 0)}
    away = diff.ddim_sample_loop(toy_model, (8, 3, 4, 4), noise=noise, cond_fn=toy_cond_fn, model_kwargs=kw0)
    assert torch.all(away.mean(dim=(1, 2, 3)) < plain.mean(dim=(1, 2, 3)))


def test_cond_fn_receives_original_timesteps():
    seen = []

    def cond_fn(x, t, **kw):
        seen.append(t.clone())
        return torch.zeros_like(x)

    diff = _diffusion(OURS, spacing="ddim10", rescale=True)
    diff.ddim_sample_loop(toy_model, (1, 3, 2, 2), cond_fn=cond_fn, device="cpu")
    assert [float(t[0]) for t in seen] == [float(v) for v in range(900, -1, -100)]


class _ParamModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, x, t, **kw):
        return torch.tanh(self.a * x + 0.001 * _tcol(t))


def test_guidance_through_pred_xstart():
    """GUIDE: cond_fn(x, t, pred_xstart=x̂0(x)) differentiates the classifier through the network."""
    net = _ParamModel()
    calls = []

    def cond_fn(x, t, pred_xstart=None, y=None):
        assert pred_xstart.requires_grad and x.requires_grad and x.is_leaf
        logp = F.log_softmax(toy_classifier(pred_xstart, t), -1)[torch.arange(len(x)), y]
        g = torch.autograd.grad(logp.sum(), x)[0]
        calls.append(g)
        return 3.0 * g

    cond_fn.needs_pred_xstart = True
    y = torch.full((4,), 2)
    x = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([6, 6, 6, 6])
    diff = _diffusion(OURS, spacing="ddim10")
    with torch.no_grad():
        out = diff.ddim_sample(net, x, t, cond_fn=cond_fn, model_kwargs={"y": y})
    assert not out["sample"].requires_grad and net.a.grad is None
    # the gradient equals autograd through x̂0(x_t) computed by hand
    xr = x.clone().requires_grad_(True)
    ab = float(diff.alphas_cumprod[6])
    x0 = ((xr - math.sqrt(1 - ab) * net(xr, torch.full((4,), 600))) / math.sqrt(ab)).clamp(-1, 1)
    logp = F.log_softmax(toy_classifier(x0, torch.full((4,), 600)), -1)[:, 2]
    (ref,) = torch.autograd.grad(logp.sum(), xr)
    torch.testing.assert_close(calls[0], ref, rtol=1e-4, atol=1e-6)
    # and the guided loop raises p(y=2 | x0)
    noise = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(9))
    kw = {"y": torch.full((8,), 2)}
    plain = diff.ddim_sample_loop(net, (8, 3, 4, 4), noise=noise, model_kwargs=kw)
    guided = diff.ddim_sample_loop(net, (8, 3, 4, 4), noise=noise, cond_fn=cond_fn, model_kwargs=kw)
    p = lambda s: F.softmax(toy_classifier(s, torch.zeros(8)), -1)[:, 2]  # noqa: E731
    assert torch.all(p(guided) > p(plain))
    # ancestral sampling takes the same contract (condition_mean)
    torch.manual_seed(0)
    s = diff.p_sample_loop(net, (8, 3, 4, 4), noise=noise, cond_fn=cond_fn, model_kwargs=kw)
    assert s.shape == (8, 3, 4, 4) and torch.isfinite(s).all()


def test_calc_bpd_prior_closed_form():
    diff = _diffusion(OURS, steps=100)
    x0 = torch.rand(2, 3, 4, 4) * 2 - 1
    ab = diff.alphas_cumprod[-1]
    m, v = math.sqrt(ab) * x0.double(), 1 - ab
    ref = 0.5 * (-1 - math.log(v) + v + m**2)
    expect = ref.mean(dim=(1, 2, 3)) / math.log(2)
    torch.testing.assert_close(diff._prior_bpd(x0).double(), expect, rtol=1e-5, atol=1e-7)
    assert torch.allclose(normal_kl(x0, torch.zeros_like(x0), x0, 0.0), torch.zeros_like(x0))


def test_bad_shapes_raise():
    diff = _diffusion(OURS, var="LEARNED_RANGE")
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="2C|learned-variance"):
        diff.p_mean_variance(toy_model, x, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="t must have shape"):
        diff.p_mean_variance(toy_model_learned, x, torch.tensor([1]))
