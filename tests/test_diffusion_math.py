"""Pure diffusion math: golden schedule numbers and closed forms computed independently here."""

import math

import numpy as np
import pytest
import torch

from guided_diffusion.diffusion import diffusion_math as dm


def _cosine_abar(u):
    return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2


def test_linear_schedule_golden():
    b = dm.get_named_beta_schedule("linear", 1000)
    assert b.dtype == np.float64 and b.shape == (1000,)
    assert b[0] == pytest.approx(1e-4, abs=1e-15) and b[-1] == pytest.approx(0.02, abs=1e-15)
    assert b[499] == pytest.approx(1e-4 + 499 * (0.02 - 1e-4) / 999, abs=1e-15)
    s = dm.schedule_from_betas(b)
    for t, v in ((0, 0.9999), (499, 0.07858724288177824), (999, 4.035829765375676e-05)):
        assert s.alphas_cumprod[t] == pytest.approx(v, abs=1e-8)
    # diffusers' golden number for the same schedule: variance(487) = 0.00979
    assert s.posterior_variance[487] == pytest.approx(0.00979157198569004, abs=1e-10)
    # other T: the schedule is rescaled by 1000 / T
    b4 = dm.get_named_beta_schedule("linear", 4000)
    assert b4[0] == pytest.approx(2.5e-5) and b4[-1] == pytest.approx(0.005)


def test_cosine_schedule_golden():
    b = dm.get_named_beta_schedule("cosine", 1000)
    assert b[0] == pytest.approx(4.128422482196914e-05, abs=1e-12)
    assert b[499] == pytest.approx(0.0031458862304780677, abs=1e-12)
    assert b[999] == 0.999  # clipped at max_beta
    s = dm.schedule_from_betas(b)
    # abar_t = f((t+1)/T) / f(0) where beta was not clipped (Nichol & Dhariwal eq. 17)
    for t in (0, 499, 900):
        assert s.alphas_cumprod[t] == pytest.approx(_cosine_abar((t + 1) / 1000) / _cosine_abar(0), rel=1e-10)
    assert s.alphas_cumprod[499] == pytest.approx(0.4938435904406382, abs=1e-8)
    assert dm.betas_for_alpha_bar(10, lambda u: 1 - u, max_beta=0.5)[-1] == 0.5


def test_scaled_linear_schedule_is_stable_diffusions():
    b = dm.get_named_beta_schedule("scaled_linear", 1000)
    assert b[0] == pytest.approx(0.00085, rel=1e-12) and b[-1] == pytest.approx(0.012, rel=1e-12)
    assert np.all(np.diff(np.sqrt(b)) == pytest.approx((0.012 ** 0.5 - 0.00085 ** 0.5) / 999, rel=1e-9))
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).betas
    np.testing.assert_allclose(b, ref.double().numpy(), rtol=1e-6)  # diffusers computes in float32


def test_bad_schedules_raise():
    with pytest.raises(ValueError, match="unknown beta schedule 'quad'"):
        dm.get_named_beta_schedule("quad", 10)
    with pytest.raises(ValueError):
        dm.schedule_from_betas([0.1, 0.0])
    with pytest.raises(ValueError):
        dm.schedule_from_betas(np.zeros((2, 2)) + 0.1)


def test_schedule_arrays_are_read_only_and_consistent():
    s = dm.schedule_from_betas(dm.get_named_beta_schedule("linear", 50))
    with pytest.raises(ValueError):
        s.betas[0] = 1.0
    np.testing.assert_allclose(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])
    assert s.alphas_cumprod_prev[0] == 1.0 and s.alphas_cumprod_next[-1] == 0.0
    assert s.posterior_variance[0] == 0.0
    assert s.posterior_log_variance_clipped[0] == pytest.approx(math.log(s.posterior_variance[1]))
    assert s.fixed_large_variance[0] == s.posterior_variance[1]
    np.testing.assert_array_equal(s.fixed_large_variance[1:], s.betas[1:])


def test_extract_shape_and_dtype():
    arr = np.arange(10, dtype=np.float64) / 10
    out = dm.extract(arr, torch.tensor([3, 7]), (2, 3, 4, 4))
    assert out.shape == (2, 3, 4, 4) and out.dtype == torch.float32
    assert out[0].unique().item() == pytest.approx(0.3) and out[1].unique().item() == pytest.approx(0.7)


@pytest.fixture
def setup():
    s = dm.schedule_from_betas(dm.get_named_beta_schedule("linear", 1000))
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 5, 5, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 10, 500, 999])
    return s, x0, eps, t


def test_q_sample_and_inversions(setup):
    s, x0, eps, t = setup
    ab = torch.tensor(s.alphas_cumprod[t.numpy()])[:, None, None, None]
    x_t = dm.q_sample(s, x0, t, eps)
    torch.testing.assert_close(x_t.double(), ab.sqrt() * x0 + (1 - ab).sqrt() * eps, rtol=1e-6, atol=1e-6)
    mean, var, log_var = dm.q_mean_variance(s, x0, t)
    torch.testing.assert_close(mean.double(), ab.sqrt() * x0, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(var.double(), (1 - ab).expand_as(x0), rtol=1e-6, atol=0)
    torch.testing.assert_close(log_var.exp(), var, rtol=1e-6, atol=0)
    x_t = x_t.double()
    x0_hat = dm.predict_xstart_from_eps(s, x_t, t, eps)
    torch.testing.assert_close(x0_hat.double(), x0, rtol=0, atol=2e-4)  # float32 coefficients, t = 999 amplifies
    eps_hat = dm.predict_eps_from_xstart(s, x_t, t, x0)
    torch.testing.assert_close(eps_hat.double(), eps, rtol=0, atol=1e-4)


def test_posterior_matches_ho_eq_6_7(setup):
    s, x0, eps, t = setup
    x_t = dm.q_sample(s, x0, t, eps).double()
    mean, var, log_var = dm.q_posterior_mean_variance(s, x0, x_t, t)
    b = np.linspace(1e-4, 0.02, 1000)
    ac = np.cumprod(1 - b)
    for i, ti in enumerate(t.tolist()):
        beta, abar, abar_prev = b[ti], ac[ti], ac[ti - 1]
        # the product of Gaussians q(x_t | x_{t-1}) q(x_{t-1} | x_0), by precisions
        precision = (1 - beta) / beta + 1 / (1 - abar_prev)
        var_ref = 1 / precision
        mean_ref = var_ref * (math.sqrt(1 - beta) / beta * x_t[i] + math.sqrt(abar_prev) / (1 - abar_prev) * x0[i])
        assert var[i, 0, 0, 0].item() == pytest.approx(var_ref, rel=1e-6)
        assert var_ref == pytest.approx((1 - abar_prev) / (1 - abar) * beta, rel=1e-10)  # eq. 7
        torch.testing.assert_close(mean[i].double(), mean_ref, rtol=1e-5, atol=1e-6)
        assert log_var[i, 0, 0, 0].item() == pytest.approx(math.log(var_ref), rel=1e-6)
    # the posterior mean solved back for x0
    x0_back = dm.predict_xstart_from_xprev(s, x_t, t, mean.double())
    torch.testing.assert_close(x0_back.double(), x0, rtol=0, atol=1e-3)


def test_learned_range_log_variance():
    s = dm.schedule_from_betas(dm.get_named_beta_schedule("cosine", 100))
    t = torch.tensor([0, 50])
    v = torch.tensor([-1.0, 0.5])[:, None, None, None].expand(2, 1, 2, 2)
    out = dm.learned_range_log_variance(s, t, v, (2, 1, 2, 2))
    assert out[0, 0, 0, 0].item() == pytest.approx(s.posterior_log_variance_clipped[0], rel=1e-6)
    frac = 0.75
    expect = frac * math.log(s.betas[50]) + (1 - frac) * math.log(s.posterior_variance[50])
    assert out[1, 0, 0, 0].item() == pytest.approx(expect, rel=1e-6)


def test_ddim_step_closed_forms(setup):
    s, x0, eps, t = setup
    ab = torch.tensor(s.alphas_cumprod[t.numpy()])[:, None, None, None]
    ab_prev = torch.tensor(s.alphas_cumprod_prev[t.numpy()])[:, None, None, None]
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    # with the true eps, eta = 0 moves along the same noise: x_prev = q_sample(x0, t-1, eps)
    x_prev = dm.ddim_step(x_t, eps, ab, ab_prev, eta=0.0)
    torch.testing.assert_close(x_prev, ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps)
    # eta = 1 gives the DDPM posterior variance (Song et al. sec. 4.1)
    sigma = dm.ddim_sigma(ab, ab_prev, 1.0)
    torch.testing.assert_close(sigma[:, 0, 0, 0] ** 2, torch.tensor(s.posterior_variance[t.numpy()]))
    z = torch.randn_like(x0)
    out = dm.ddim_step(x_t, eps, ab, ab_prev, eta=1.0, noise=z, pred_xstart=x0)
    torch.testing.assert_close(out, ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).sqrt() * eps + sigma * z)
    with pytest.raises(ValueError):
        dm.ddim_step(x_t, eps, ab, ab_prev, eta=0.5)


def test_ancestral_step_mask():
    mean, logvar, z = torch.zeros(2, 1, 2, 2), torch.full((2, 1, 2, 2), math.log(4.0)), torch.ones(2, 1, 2, 2)
    out = dm.ancestral_step(mean, logvar, z, dm.nonzero_mask(torch.tensor([0, 5]), 4))
    assert torch.all(out[0] == 0) and torch.allclose(out[1], torch.full((1, 2, 2), 2.0))


def test_spaced_betas_keep_alphas_cumprod():
    s = dm.schedule_from_betas(dm.get_named_beta_schedule("linear", 1000))
    keep = {999, 0, 250, 500, 750}
    betas, tmap = dm.spaced_betas(s.alphas_cumprod, keep)
    assert tmap == [0, 250, 500, 750, 999]
    np.testing.assert_allclose(np.cumprod(1 - betas), s.alphas_cumprod[tmap], rtol=1e-12)


def _lin_et_al_algorithm_1(betas):
    """Lin et al. 2024, Algorithm 1 (enforce_zero_terminal_snr), as printed in the paper, in torch."""
    alphas = 1 - betas
    alphas_bar = alphas.cumprod(0)
    alphas_bar_sqrt = alphas_bar.sqrt()
    alphas_bar_sqrt_0 = alphas_bar_sqrt[0].clone()
    alphas_bar_sqrt_T = alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt -= alphas_bar_sqrt_T
    alphas_bar_sqrt *= alphas_bar_sqrt_0 / (alphas_bar_sqrt_0 - alphas_bar_sqrt_T)
    alphas_bar = alphas_bar_sqrt**2
    alphas = alphas_bar[1:] / alphas_bar[:-1]
    alphas = torch.cat([alphas_bar[0:1], alphas])
    return 1 - alphas


def test_zero_terminal_snr_rescale_is_the_published_formula():
    b = dm.get_named_beta_schedule("linear", 1000)
    z = dm.rescale_zero_terminal_snr(b)
    np.testing.assert_allclose(z, _lin_et_al_algorithm_1(torch.tensor(b)).numpy(), rtol=0, atol=1e-12)
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as diffusers_rescale

    np.testing.assert_allclose(z, diffusers_rescale(torch.tensor(b)).numpy(), rtol=0, atol=1e-12)
    s = dm.schedule_from_betas(z)
    assert s.alphas_cumprod[-1] == 0.0 and z[-1] == 1.0  # the last step is pure noise
    assert s.sqrt_alphas_cumprod[0] == pytest.approx(math.sqrt(1 - b[0]), rel=1e-12)  # the first is kept
    assert (np.diff(s.alphas_cumprod) < 0).all() and s.alphas_cumprod[-2] > 0
    # x0 from eps at abar = 0 divides by sqrt(1e-8), as Masip et al.'s scheduler; elsewhere unchanged.
    assert s.sqrt_recip_alphas_cumprod[-1] == pytest.approx(1e4)
    assert s.sqrt_recip_alphas_cumprod[-2] == pytest.approx(1 / math.sqrt(s.alphas_cumprod[-2]))
    # Min-SNR's eps weight min(SNR, g) / SNR has the limit 1 at SNR 0 (no 0/0).
    w = dm.min_snr_weight(torch.tensor(s.alphas_cumprod[-3:]), 5.0)
    assert torch.isfinite(w).all() and float(w[-1]) == 1.0
    assert float(dm.min_snr_weight(np.array([0.0]), 5.0)[0]) == 1.0


def test_zero_terminal_snr_diffusion_trains_and_samples_finite():
    from guided_diffusion.sampling.sample_sets import sample_batch
    from guided_diffusion.script_util import create_gaussian_diffusion

    class Half(torch.nn.Module):
        def forward(self, x, t, **kw):
            return 0.5 * x

    torch.manual_seed(0)
    net = Half()
    base = create_gaussian_diffusion(steps=1000, rescale_zero_terminal_snr=True)
    x0 = torch.rand(4, 1, 4, 4) * 2 - 1
    t = torch.tensor([0, 500, 998, 999])
    xt = base.q_sample(x0, t, noise=torch.randn_like(x0))
    losses = base.training_losses(net, x0, t)
    assert torch.isfinite(losses["loss"]).all()
    torch.testing.assert_close(xt[3:], base.q_sample(torch.zeros_like(x0[3:]), t[3:], noise=xt[3:]))  # pure noise
    for spec, ddim in (("ddim10t", True), ("50", False)):
        d = create_gaussian_diffusion(steps=1000, rescale_zero_terminal_snr=True, timestep_respacing=spec)
        out = sample_batch(net, d, (2, 1, 4, 4), class_cond=False, ddim=ddim, device="cpu")
        assert torch.isfinite(out).all() and out.abs().max() <= 1.0 + 1e-6
    d = create_gaussian_diffusion(steps=1000, rescale_zero_terminal_snr=True, timestep_respacing="unipc10")
    with pytest.raises(ValueError, match="rescale_zero_terminal_snr sample with ddimN"):
        sample_batch(net, d, (2, 1, 4, 4), class_cond=False, device="cpu")
