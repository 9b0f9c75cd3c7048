"""Energy parameterisation, classifier-free guidance, compositions and MCMC samplers (issue 10).

Every check compares the code with an independent computation: autograd or finite differences of
an energy written out by hand, a Metropolis-Hastings acceptance worked out in numpy, the moments of
a Gaussian target, the stationary covariance of ULA on a Gaussian, the exact score of Gaussian data.
"""

import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from guided_diffusion import experiment
from guided_diffusion.continual.replay import ddim_generate
from guided_diffusion.diffusion.resample import UniformSampler
from guided_diffusion.experiment import model_kwargs_from_config
from guided_diffusion.models.energy import EnergyModel, is_energy_model
from guided_diffusion.runtime.config import ConfigError, load_config
from guided_diffusion.sampling.classifier_free import (
    CFGModel,
    ComposedModel,
    cfg_model,
    composed_model,
    drop_labels,
    null_class_of,
)
from guided_diffusion.sampling.mcmc import (
    MCMCSettings,
    cha_step,
    correct,
    level_target,
    mala_step,
    sample_loop,
    uha_step,
    ula_step,
)
from guided_diffusion.models.unet import AttentionBlock
from guided_diffusion.sampling.sample_sets import SamplingSpec, sample_batch, sample_set
from guided_diffusion.script_util import create_gaussian_diffusion, create_model
from guided_diffusion.train_util import DiffusionObjective, StepContext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 3  # classes of the tiny models; label K is the null class
NULL = K
F64 = torch.float64

torch.set_num_threads(1)


def tiny_net(seed=0, dtype=torch.float32, **kw):
    """A class-conditional 8x8 UNet with attention and K + 1 label rows, weights perturbed so that
    ADM's zero-initialised layers are not zero (every path carries signal)."""
    torch.manual_seed(seed)
    args = dict(channel_mult="1,2", attention_resolutions="4", num_head_channels=16, class_cond=True,
                num_classes=K + 1, in_channels=1)
    args.update(kw)
    net = create_model(8, 32, 1, **args)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    assert any(isinstance(m, AttentionBlock) for m in net.modules())
    if dtype != torch.float32:  # the sinusoidal timestep features are float32 (ADM): cast them
        net.time_embed.register_forward_pre_hook(lambda mod, args: (args[0].to(dtype),))
        net.dtype = dtype  # the torso's dtype (ADM: float32 or float16)
    return net.to(dtype).eval()


def inputs(n=3, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g).to(dtype)
    t = torch.randint(0, 100, (n,), generator=g)
    y = torch.arange(n) % K
    return x, t, y


def energy_by_hand(net, x, t, y, form):
    """0.5 |x - s|^2 (dae) or 0.5 |s|^2 (l2) per sample, s = net(x), written out here."""
    s = net(x, t, y=y)
    d = x - s if form == "dae" else s
    return 0.5 * (d**2).sum(dim=(1, 2, 3))


def bsum(v):
    return v.flatten(1).sum(1)


# ------------------------------------------------------------------------------------ energy model


@pytest.mark.parametrize("form", ["dae", "l2"])
def test_energy_prediction_is_the_input_gradient_of_the_energy(form):
    net = tiny_net(dtype=F64)
    model = EnergyModel(net, form)
    x, t, y = inputs(dtype=F64)
    xr = x.clone().requires_grad_(True)
    e_hand = energy_by_hand(net, xr, t, y, form)
    (g_hand,) = torch.autograd.grad(e_hand.sum(), xr)
    torch.testing.assert_close(model.energy(x, t, y), e_hand.detach())
    e, g = model.energy_and_grad(x, t, y)
    torch.testing.assert_close(e, e_hand.detach())
    torch.testing.assert_close(g, g_hand)
    torch.testing.assert_close(model(x, t, y=y), g_hand)
    # Finite differences of the energy along a random direction (no autograd at all).
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=F64)
    h = 1e-5
    with torch.no_grad():
        fd = (model.energy(x + h * v, t, y) - model.energy(x - h * v, t, y)) / (2 * h)
    torch.testing.assert_close(fd, bsum(g * v), rtol=1e-6, atol=1e-7)
    # Sampling-time calls (no_grad, inference_mode): the same numbers, detached.
    with torch.no_grad():
        g0 = model(x, t, y=y)
    with torch.inference_mode():
        g1 = model(x, t, y=y)
    assert not g0.requires_grad and not g1.requires_grad
    torch.testing.assert_close(g0, g_hand)
    torch.testing.assert_close(g1, g_hand)
    assert is_energy_model(model) and not is_energy_model(net)


@pytest.mark.parametrize("form", ["dae", "l2"])
def test_energy_training_loss_reaches_every_parameter_through_the_double_backward(form):
    # The eps loss of an energy model differentiates dE/dx once more w.r.t. every parameter (a double
    # backward through the UNet, attention included). Every parameter gets a gradient, and the
    # gradients agree with finite differences of the loss.
    net = tiny_net(dtype=F64)
    model = EnergyModel(net, form)
    diffusion = create_gaussian_diffusion(steps=100)
    x0, t, y = inputs(dtype=F64)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4), dtype=F64)

    def loss_fn():
        return diffusion.training_losses(model, x0, t, model_kwargs={"y": y}, noise=noise)["loss"].mean()

    model.zero_grad()
    loss = loss_fn()
    x_t = diffusion.q_sample(x0, t, noise=noise)
    xr = x_t.clone().requires_grad_(True)
    (eps_hand,) = torch.autograd.grad(energy_by_hand(net, xr, t, y, form).sum(), xr)
    torch.testing.assert_close(loss.detach(), ((noise - eps_hand) ** 2).mean())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.any())]
    assert not missing, f"no gradient for {missing}"
    params = dict(model.named_parameters())
    qkv = next(n for n in params if n.endswith("attn.qkv.weight") or (".qkv." in n and n.endswith("weight")))
    h = 1e-6
    for name in (qkv, "net.out.2.weight", "net.label_emb.weight", "net.input_blocks.0.0.weight"):
        p = params[name]
        i = int(p.grad.abs().flatten().argmax())
        with torch.no_grad():
            p.view(-1)[i] += h
            lp = loss_fn()
            p.view(-1)[i] -= 2 * h
            lm = loss_fn()
            p.view(-1)[i] += h
        fd = float(lp - lm) / (2 * h)
        assert abs(fd - float(p.grad.view(-1)[i])) <= 1e-5 * max(1.0, abs(fd)), (name, fd, float(p.grad.view(-1)[i]))


def test_energy_gradients_same_for_both_attention_backends_and_gradient_checkpointing():
    a = EnergyModel(tiny_net(dtype=F64), "dae")
    b = EnergyModel(tiny_net(dtype=F64, attention_backend="einsum"), "dae")
    c = EnergyModel(tiny_net(dtype=F64, use_checkpoint=True), "dae")
    b.load_state_dict(a.state_dict())
    c.load_state_dict(a.state_dict())
    diffusion = create_gaussian_diffusion(steps=100)
    x0, t, y = inputs(dtype=F64)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4), dtype=F64)
    for m in (a, b, c):
        m.train()
        diffusion.training_losses(m, x0, t, model_kwargs={"y": y}, noise=noise)["loss"].mean().backward()
    for (n, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=n)
        torch.testing.assert_close(pa.grad, pc.grad, msg=n)


def test_l2_energy_of_a_fresh_model_trains():
    # ADM zero-initialises the output conv: for 0.5 |s|^2 the prediction (ds/dx)^T s would then be
    # quadratic in it and every parameter's gradient exactly zero, forever. EnergyModel re-initialises it.
    torch.manual_seed(0)
    fresh = create_model(8, 32, 1, channel_mult="1,2", attention_resolutions="4", num_head_channels=16,
                         class_cond=True, num_classes=K, in_channels=1)
    assert not fresh.out[2].weight.any()
    model = EnergyModel(fresh, "l2")
    assert fresh.out[2].weight.any()
    diffusion = create_gaussian_diffusion(steps=100)
    x0, t, y = inputs()
    diffusion.training_losses(model, x0, t, model_kwargs={"y": y})["loss"].mean().backward()
    assert fresh.out[2].weight.grad.abs().sum() > 0 and fresh.input_blocks[0][0].weight.grad.abs().sum() > 0
    # dae keeps ADM's zero output (the prediction starts as x and the output layer gets a gradient).
    torch.manual_seed(0)
    fresh = create_model(8, 32, 1, channel_mult="1,2", attention_resolutions="4", num_head_channels=16, in_channels=1)
    EnergyModel(fresh, "dae")
    assert not fresh.out[2].weight.any()


def test_energy_with_x0_prediction():
    # predict_xstart: the gradient of the energy is the x0 prediction, trained against x0.
    diffusion = create_gaussian_diffusion(steps=100, predict_xstart=True)
    net = tiny_net(dtype=F64)
    model = EnergyModel(net, "dae")
    x0, t, y = inputs(dtype=F64)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4), dtype=F64)
    terms = diffusion.training_losses(model, x0, t, model_kwargs={"y": y}, noise=noise)
    xr = diffusion.q_sample(x0, t, noise=noise).requires_grad_(True)
    (x0_pred,) = torch.autograd.grad(energy_by_hand(net, xr, t, y, "dae").sum(), xr)
    torch.testing.assert_close(terms["mse"].detach(), ((x0 - x0_pred) ** 2).mean(dim=(1, 2, 3)))
    terms["loss"].mean().backward()
    assert all(p.grad is not None and bool(p.grad.any()) for p in model.parameters())


# ------------------------------------------------------------------------------ MCMC level targets


@pytest.mark.parametrize("predict_xstart", [False, True])
def test_level_target_score_and_log_density(predict_xstart):
    # At respaced step `index` the network sees the original timestep, and the target's score is
    # -eps / sigma there; log p (energy models) has exactly that gradient (finite differences).
    diffusion = create_gaussian_diffusion(steps=1000, predict_xstart=predict_xstart, timestep_respacing="10")
    base = create_gaussian_diffusion(steps=1000)
    net = tiny_net(dtype=F64)
    model = EnergyModel(net, "dae")
    x, _, y = inputs(dtype=F64)
    index = 4
    orig = int(diffusion.timestep_map[index])
    assert orig == 444
    ab = float(base.alphas_cumprod[orig])
    t_orig = torch.full((x.shape[0],), orig)
    out = model(x, t_orig, y=y)
    eps = (x - ab**0.5 * out) / (1 - ab) ** 0.5 if predict_xstart else out
    score_hand = -eps / (1 - ab) ** 0.5

    target = level_target(diffusion, index, lambda x, t: model(x, t, y=y),
                          lambda x, t: model.energy_and_grad(x, t, y=y))
    log_p, score = target(x)
    torch.testing.assert_close(score, score_hand)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    h = 1e-5
    fd = (target(x + h * v)[0] - target(x - h * v)[0]) / (2 * h)
    torch.testing.assert_close(fd, bsum(score * v), rtol=1e-6, atol=1e-6)
    # A score model: the same score, no log-density.
    counter = {}
    log_p, score = level_target(diffusion, index, lambda x, t: model(x, t, y=y), None, counter)(x)
    assert log_p is None and counter == {"mcmc_evals": 1}
    torch.testing.assert_close(score, score_hand)


# ----------------------------------------------------------------------- samplers on a 2-D Gaussian

MU = np.array([1.0, -2.0])
COV = np.array([[1.0, 0.6], [0.6, 2.0]])
PREC = np.linalg.inv(COV)


def gauss(x):
    """Target: log N(x; MU, COV) + const and its score, in torch."""
    d = x - torch.as_tensor(MU)
    p = torch.as_tensor(PREC)
    return -0.5 * ((d @ p) * d).sum(1), -(d @ p)


def np_logpdf(x, mean, cov):
    d = x - mean
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d) - 0.5 * logdet - np.log(2 * np.pi)


def np_score(x):
    return -(x - MU) @ PREC


def test_mala_acceptance_is_the_analytic_metropolis_hastings_ratio():
    eps = 0.7
    x = torch.tensor([[0.0, 0.0], [1.0, -2.0], [3.0, 1.0], [-2.0, -5.0], [1.5, -1.0]], dtype=F64)
    torch.manual_seed(11)
    r = mala_step(x, gauss, eps)
    torch.manual_seed(11)  # the same draws, replayed: the proposal noise, then one uniform per sample
    z = torch.randn_like(x).numpy()
    u = torch.rand(x.shape[0]).numpy()
    xn = x.numpy()
    prop = xn + eps * np_score(xn) + np.sqrt(2 * eps) * z
    np.testing.assert_allclose(r.proposal.numpy(), prop, rtol=1e-12)
    # alpha = min(1, p(x') q(x | x') / (p(x) q(x' | x))), q(a | b) = N(a; b + eps grad log p(b), 2 eps I)
    q = lambda a, b: np_logpdf(a, b + eps * np_score(b), 2 * eps * np.eye(2))  # noqa: E731
    log_alpha = np_logpdf(prop, MU, COV) + q(xn, prop) - np_logpdf(xn, MU, COV) - q(prop, xn)
    alpha = np.minimum(1.0, np.exp(log_alpha))
    np.testing.assert_allclose(r.accept_prob.numpy(), alpha, rtol=1e-10)
    assert 0 < alpha.min() < 1  # both outcomes occur in this set
    np.testing.assert_array_equal(r.accepted.numpy(), u < alpha)
    np.testing.assert_allclose(r.x.numpy(), np.where((u < alpha)[:, None], prop, xn))
    # The carried state is (log p, score) at the new x.
    log_p, score = gauss(r.x)
    torch.testing.assert_close(r.state[0], log_p)
    torch.testing.assert_close(r.state[1], score)


def test_cha_acceptance_is_the_analytic_hamiltonian_ratio():
    eps, damping, L = 0.3, 0.8, 3
    x = torch.tensor([[0.0, 0.0], [1.0, -2.0], [3.0, 1.0], [-2.0, -5.0]], dtype=F64)
    v0 = torch.tensor([[1.0, 0.0], [0.0, -1.0], [0.5, 0.5], [-1.0, 2.0]], dtype=F64)
    torch.manual_seed(5)
    r = cha_step(x, gauss, np.sqrt(2 * eps), v=v0, damping=damping, leapfrog_steps=L)
    torch.manual_seed(5)
    z = torch.randn_like(x).numpy()
    u = torch.rand(x.shape[0]).numpy()
    v = damping * v0.numpy() + np.sqrt(1 - damping**2) * z
    h = np.sqrt(2 * eps)
    xp, vp = x.numpy().copy(), v.copy()
    for _ in range(L):
        vp = vp + 0.5 * h * np_score(xp)
        xp = xp + h * vp
        vp = vp + 0.5 * h * np_score(xp)
    H0 = -np_logpdf(x.numpy(), MU, COV) + 0.5 * (v**2).sum(1)
    H1 = -np_logpdf(xp, MU, COV) + 0.5 * (vp**2).sum(1)
    alpha = np.minimum(1.0, np.exp(H0 - H1))
    np.testing.assert_allclose(r.proposal.numpy(), xp, rtol=1e-12)
    np.testing.assert_allclose(r.accept_prob.numpy(), alpha, rtol=1e-10)
    acc = u < alpha
    np.testing.assert_array_equal(r.accepted.numpy(), acc)
    np.testing.assert_allclose(r.x.numpy(), np.where(acc[:, None], xp, x.numpy()))
    np.testing.assert_allclose(r.v.numpy(), np.where(acc[:, None], vp, -v))  # rejected: momentum flipped


def test_leapfrog_with_continual_diffusers_mass_by_hand():
    """Continual-Diffusers' Hamiltonian step at a level with beta: mass M = beta, leapfrog step h = c beta.
    On the standard normal (score -x), one UHA step with a full refresh (damping 0) and one leapfrog
    step, worked by hand: v0 = M z, v_half = v0 - (h/2) x, x1 = x + h v_half / M^2
    = (1 - c^2/2) x + c z: the position moves by c z whatever beta (c = 0.1: about 0.1)."""
    std_normal = lambda x: (None, -x)  # noqa: E731
    x = torch.tensor([[0.5, -1.0], [2.0, 0.0]], dtype=F64)
    for beta in (1e-4, 0.02):
        st = MCMCSettings("uha", steps=1, step_size=0.1, damping=0.0, leapfrog_steps=1)
        h, mass = st.hamiltonian(beta)
        assert (h, mass) == (pytest.approx(0.1 * beta), beta)
        torch.manual_seed(3)
        r = uha_step(x, std_normal, h, damping=0.0, leapfrog_steps=1, mass=mass)
        torch.manual_seed(3)
        z = torch.randn_like(x)
        torch.testing.assert_close(r.x, (1 - 0.1**2 / 2) * x + 0.1 * z)
        # v1 = v_half + (h/2) score(x1)
        torch.testing.assert_close(r.v, beta * z - 0.05 * beta * x - 0.05 * beta * r.x)
    # This project's earlier choice, mass: unit: h = sqrt(2 c beta), x1 = x + h z - (h^2/2) x.
    st = MCMCSettings("uha", step_size=0.1, mass="unit")
    h, mass = st.hamiltonian(0.02)
    assert (h, mass) == (pytest.approx(np.sqrt(2 * 0.1 * 0.02)), 1.0)
    torch.manual_seed(3)
    r = uha_step(x, std_normal, h, damping=0.0, leapfrog_steps=1, mass=mass)
    torch.manual_seed(3)
    z = torch.randn_like(x)
    torch.testing.assert_close(r.x, x + h * z - h**2 / 2 * x)


def test_cha_with_mass_accepts_by_the_mass_weighted_hamiltonian():
    """H = -log p + |v|^2 / (2 M^2): with M = beta the acceptance is the analytic ratio of that H."""
    beta, L = 0.05, 2
    st = MCMCSettings("cha", step_size=0.3, damping=0.0, leapfrog_steps=L)
    h, mass = st.hamiltonian(beta)
    x = torch.tensor([[0.0, 0.0], [1.0, -2.0], [3.0, 1.0], [-2.0, -5.0]], dtype=F64)
    torch.manual_seed(7)
    r = cha_step(x, gauss, h, damping=0.0, leapfrog_steps=L, mass=mass)
    torch.manual_seed(7)
    v = mass * torch.randn_like(x).numpy()
    u = torch.rand(x.shape[0]).numpy()
    xp, vp = x.numpy().copy(), v.copy()
    for _ in range(L):
        vp = vp + 0.5 * h * np_score(xp)
        xp = xp + h * vp / mass**2
        vp = vp + 0.5 * h * np_score(xp)
    H0 = -np_logpdf(x.numpy(), MU, COV) + 0.5 * (v**2).sum(1) / mass**2
    H1 = -np_logpdf(xp, MU, COV) + 0.5 * (vp**2).sum(1) / mass**2
    alpha = np.minimum(1.0, np.exp(H0 - H1))
    np.testing.assert_allclose(r.proposal.numpy(), xp, rtol=1e-12)
    np.testing.assert_allclose(r.accept_prob.numpy(), alpha, rtol=1e-10)
    np.testing.assert_array_equal(r.accepted.numpy(), u < alpha)


def test_mcmc_interval_is_continual_diffusers_by_hand(monkeypatch):
    """Respacing "10" of 1000 steps keeps 0, 111, ..., 888, 999. With start_t 500 the steps from 999, 888,
    777, 666 and 555 are followed by corrections (Continual-Diffusers: ``t >= start``), each at the level
    the sample reaches (888, ..., 444); none below (the earlier rule here, t <= start, picked the other
    steps). start_t 0: every step but the last, whose sample is x_0."""
    from guided_diffusion.sampling import mcmc

    diffusion = create_gaussian_diffusion(steps=1000, timestep_respacing="10")
    kept = [int(t) for t in diffusion.timestep_map]
    assert kept == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    levels = []
    real = mcmc.level_target
    monkeypatch.setattr(mcmc, "level_target", lambda d, j, *a, **k: levels.append(kept[j]) or real(d, j, *a, **k))
    fn = lambda x, t, **kw: 0.1 * x  # noqa: E731
    for start, want in ((500, [888, 777, 666, 555, 444]), (0, [888, 777, 666, 555, 444, 333, 222, 111, 0]),
                        (999, [888]), (1000, [])):
        levels.clear()
        st = MCMCSettings("ula", steps=1, start_t=start)
        sample_loop(diffusion, fn, (2, 1, 2, 2), st, predict=fn)
        assert levels == want, start
        assert st.stats.get("corrected_levels", 0) == len(want)
    assert MCMCSettings().start_t == 50 and MCMCSettings().mass == "beta"  # Continual-Diffusers' defaults


def run_chain(step_fn, n_steps=300, n=4000, **kw):
    torch.manual_seed(0)
    x = 3.0 * torch.randn(n, 2, dtype=F64)  # far from the target
    state, v, acc = (), None, []
    for _ in range(n_steps):
        r = step_fn(x, gauss, state=state, v=v, **kw)
        x, state, v = r.x, r.state, r.v
        if r.accept_prob is not None:
            acc.append(float(r.accepted.double().mean()))
    return x.numpy(), (np.mean(acc) if acc else None)


def _mala(x, target, state, v, step_size):
    return mala_step(x, target, step_size, state)


def _ula(x, target, state, v, step_size):
    return ula_step(x, target, step_size)


def _cha(x, target, state, v, step_size):  # unit mass, the leapfrog step of Langevin's eps
    return cha_step(x, target, np.sqrt(2 * step_size), v, damping=0.9, leapfrog_steps=3, state=state)


def _uha(x, target, state, v, step_size):
    return uha_step(x, target, np.sqrt(2 * step_size), v, damping=0.9, leapfrog_steps=3, state=state)


@pytest.mark.parametrize("name,step_fn", [("mala", _mala), ("cha", _cha)])
def test_metropolis_samplers_sample_the_gaussian_even_with_a_large_step(name, step_fn):
    x, acc = run_chain(step_fn, step_size=0.8)
    assert 0.2 < acc < 0.99
    np.testing.assert_allclose(x.mean(0), MU, atol=0.1)
    np.testing.assert_allclose(np.cov(x.T), COV, atol=0.15)


def test_ula_has_its_analytic_bias_and_uha_with_a_small_step_is_close():
    # ULA on N(MU, COV) with step eps is the AR(1) chain x' = x - eps P (x - MU) + sqrt(2 eps) z; its
    # stationary covariance is (P - eps P^2 / 2)^-1, visibly not COV at eps = 0.8 (what MALA fixes).
    eps = 0.8
    x, _ = run_chain(_ula, step_size=eps)
    biased = np.linalg.inv(PREC - eps * PREC @ PREC / 2)
    np.testing.assert_allclose(x.mean(0), MU, atol=0.1)
    np.testing.assert_allclose(np.cov(x.T), biased, rtol=0.08, atol=0.08)
    assert np.abs(biased - COV).max() > 0.5
    x, _ = run_chain(_uha, step_size=0.02)
    np.testing.assert_allclose(x.mean(0), MU, atol=0.1)
    np.testing.assert_allclose(np.cov(x.T), COV, atol=0.2)


# ------------------------------------------------------------- MCMC inside sampling: Gaussian data


class GaussianDataNet(torch.nn.Module):
    """The exact model of data x0 ~ N(0, s^2 I): at level t the marginal is N(0, v_t I) with
    v_t = abar s^2 + 1 - abar and eps*(x) = sqrt(1 - abar) x / v_t. Output r_t x with
    r_t^2 = sqrt(1 - abar) / v_t, so that the ``l2`` energy 0.5 |r_t x|^2 has gradient eps*, and
    log p_t = -E / sigma_t exactly."""

    def __init__(self, s2, alphas_cumprod):
        super().__init__()
        self.s2 = s2
        self.register_buffer("abar", torch.tensor(alphas_cumprod, dtype=torch.float32))
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def var(self, t):
        ab = self.abar[t.long()]
        return ab * self.s2 + 1 - ab

    def forward(self, x, t, y=None):
        ab = self.abar[t.long()]
        r = ((1 - ab).sqrt() / self.var(t)).sqrt()
        return r.view(-1, 1, 1, 1) * x + 0 * self.dummy


def test_mcmc_corrections_drive_a_level_to_the_exact_marginal():
    # From a wrong start (variance 9), K corrections at one level reach N(0, v_t): level_target and
    # the samplers agree on the model's distribution (and ULA's small-step bias is small).
    base = create_gaussian_diffusion(steps=1000)
    diffusion = create_gaussian_diffusion(steps=1000, timestep_respacing="20")
    net = GaussianDataNet(0.25, base.alphas_cumprod)
    model = EnergyModel(net, "l2")
    index = 10
    v_t = float(net.var(torch.tensor([int(diffusion.timestep_map[index])])).detach())
    for sampler in ("ula", "uha", "mala", "cha"):
        torch.manual_seed(1)
        x = 3.0 * torch.randn(2000, 1, 2, 2)
        target = level_target(diffusion, index, model, model.energy_and_grad)
        st = MCMCSettings(sampler, steps=60, step_size=0.1 * v_t, mass="unit")
        with torch.no_grad():  # as in sampling
            x = correct(x, target, st, 1.0)  # beta 1: Langevin step 0.1 v_t, leapfrog sqrt(0.2 v_t)
        assert not x.requires_grad
        var = float(x.var())
        assert abs(var - v_t) < 0.1 * v_t, (sampler, var, v_t)
        assert abs(float(x.mean())) < 0.05
        if sampler in ("mala", "cha"):
            assert st.stats["accepted"] / st.stats["proposals"] > 0.8


@pytest.mark.parametrize("sampler,per_level", [("none", 0), ("ula", 5), ("uha", 5 * 3 + 1), ("mala", 5 + 1),
                                               ("cha", 5 * 3 + 1)])
def test_sampling_with_mcmc_on_gaussian_data(sampler, per_level):
    # Ancestral sampling (DDPM, 25 respaced steps) of the exact model of Gaussian data N(0, 0.25):
    # the coarse reverse steps alone overshoot the variance (about 0.29); corrections after every
    # step pull it back to 0.25 (ULA's own step bias leaves part of the error).
    # Evaluations per corrected level are as documented.
    base = create_gaussian_diffusion(steps=1000)
    diffusion = create_gaussian_diffusion(steps=1000, timestep_respacing="25")
    model = EnergyModel(GaussianDataNet(0.25, base.alphas_cumprod), "l2")
    st = MCMCSettings(sampler, steps=5, step_size=20.0, start_t=0, mass="unit")
    torch.manual_seed(0)
    x = sample_batch(model, diffusion, (3000, 1, 2, 2), class_cond=False, ddim=False, clip_denoised=False,
                     mcmc=st if sampler != "none" else None)
    var = float(x.var())
    assert abs(float(x.mean())) < 0.02
    if sampler == "none":
        assert 0.275 < var < 0.31  # the ancestral sampler's own error at 25 steps
        return
    if sampler == "ula":
        assert 0.25 < var < 0.28
    else:
        assert abs(var - 0.25) < 0.012, var
    levels = diffusion.num_timesteps - 1  # every step but the last (to x_0)
    assert st.stats["reverse_steps"] == 25 and st.stats["corrected_levels"] == levels
    assert st.stats["mcmc_evals"] == levels * per_level
    if sampler in ("mala", "cha"):
        assert st.stats["proposals"] == 5 * levels * 3000 and 0.5 < st.stats["accepted"] / st.stats["proposals"] < 1


def test_metropolis_samplers_refuse_a_score_model():
    diffusion = create_gaussian_diffusion(steps=1000, timestep_respacing="4")
    net = tiny_net()
    for sampler in ("mala", "cha"):
        with pytest.raises(ValueError, match="energy model"):
            sample_batch(net, diffusion, (2, 1, 8, 8), y=torch.tensor([0, 1]), mcmc=MCMCSettings(sampler))
    x = sample_batch(net, diffusion, (2, 1, 8, 8), y=torch.tensor([0, 1]), mcmc=MCMCSettings("uha"))
    assert torch.isfinite(x).all()


# ------------------------------------------------------------------------ classifier-free guidance


def test_null_class_adds_exactly_one_label_row():
    common = ["data.dataset=digits", "data.image_size=8", "model.class_cond=true", "model.num_channels=32", "model.channel_mult=1,2",
              "model.attention_resolutions=4", "model.num_head_channels=32"]
    plain, cfg = load_config(None, common), load_config(None, common + ["train.uncond_p=0.1"])
    info = experiment.dataset_info(plain)
    assert model_kwargs_from_config(cfg, 10, 1)["num_classes"] == model_kwargs_from_config(plain, 10, 1)["num_classes"] + 1
    a, b = experiment.build_model(plain, info).state_dict(), experiment.build_model(cfg, info).state_dict()
    assert a.keys() == b.keys()
    diff = [k for k in a if a[k].shape != b[k].shape]
    assert diff == ["label_emb.weight"] and b["label_emb.weight"].shape[0] == a["label_emb.weight"].shape[0] + 1 == 11
    assert null_class_of(cfg, 10) == 10 and null_class_of(plain, 10) is None
    energy = experiment.build_model(load_config(None, common + ["train.uncond_p=0.1", "model.parameterization=energy"]),
                                    info)
    assert isinstance(energy, EnergyModel) and set(energy.state_dict()) == {"net." + k for k in b}
    assert energy.state_dict()["net.label_emb.weight"].shape[0] == 11


def test_label_dropout_rate_and_the_objective_trains_the_null_class():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (40000,), generator=g)
    d = drop_labels(y, 0.1, 10, torch.Generator().manual_seed(1))
    frac = float((d == 10).double().mean())
    assert abs(frac - 0.1) < 4 * (0.1 * 0.9 / 40000) ** 0.5
    keep = d != 10
    assert torch.equal(d[keep], y[keep])

    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, t, y=None):
            seen.append(y.clone())
            return torch.zeros_like(x)

    diffusion = create_gaussian_diffusion(steps=50)
    obj = DiffusionObjective(diffusion, UniformSampler(diffusion), class_cond=True, uncond_p=0.25, null_class=10)
    ctx = StepContext(0, 0, 1, torch.Generator().manual_seed(3), 0, 1)
    yb = torch.randint(0, 10, (8000,), generator=g)
    obj(Spy(), torch.zeros(8000, 1, 2, 2), yb, ctx)
    got = seen[-1]
    assert abs(float((got == 10).double().mean()) - 0.25) < 4 * (0.25 * 0.75 / 8000) ** 0.5
    assert torch.equal(got[got != 10], yb[got != 10])
    # uncond_p 0: labels untouched, and no extra draw from the step's generator.
    plain = DiffusionObjective(diffusion, UniformSampler(diffusion), class_cond=True)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    plain(Spy(), torch.zeros(8, 1, 2, 2), yb[:8], StepContext(0, 0, 1, g1, 0, 1))
    assert torch.equal(seen[-1], yb[:8])
    UniformSampler(diffusion).sample(8, "cpu", generator=g2)
    torch.randn((8, 1, 2, 2), generator=g2)
    assert torch.equal(g1.get_state(), g2.get_state())
    with pytest.raises(ValueError, match="null class"):
        DiffusionObjective(diffusion, UniformSampler(diffusion), class_cond=True, uncond_p=0.1)


def test_cfg_combination_by_hand():
    net = tiny_net()
    x, t, y = inputs()
    null = torch.full_like(y, NULL)
    with torch.no_grad():
        c, u = net(x, t, y=y), net(x, t, y=null)
        torch.testing.assert_close(CFGModel(net, 1.0, NULL)(x, t, y=y), c, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(CFGModel(net, 0.0, NULL)(x, t, y=y), u, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(CFGModel(net, 3.5, NULL)(x, t, y=y), u + 3.5 * (c - u), atol=1e-5, rtol=1e-5)
    assert cfg_model(net, 1.0, None) is net
    with pytest.raises(ValueError, match="label dropout"):
        cfg_model(net, 2.0, None)
    with pytest.raises(ValueError, match="class labels"):
        CFGModel(net, 2.0, NULL)(x, t)


def test_cfg_of_an_energy_model_guides_the_energy():
    model = EnergyModel(tiny_net(dtype=F64), "dae")
    x, t, y = inputs(dtype=F64)
    null = torch.full_like(y, NULL)
    w = 2.5
    guided = CFGModel(model, w, NULL)
    assert is_energy_model(guided)
    e = guided.energy(x, t, y=y)
    torch.testing.assert_close(e, model.energy(x, t, null) + w * (model.energy(x, t, y) - model.energy(x, t, null)))
    xr = x.clone().requires_grad_(True)
    (g_hand,) = torch.autograd.grad(guided.energy(xr, t, y=y).sum(), xr)
    e2, g = guided.energy_and_grad(x, t, y=y)
    torch.testing.assert_close(e2, e)
    torch.testing.assert_close(g, g_hand)
    with torch.no_grad():
        torch.testing.assert_close(guided(x, t, y=y), g_hand)


class HandGuided(torch.nn.Module):
    """eps_u + w (eps_c - eps_u) from two separate calls (not the batched wrapper)."""

    def __init__(self, net, w):
        super().__init__()
        self.net, self.w = net, w

    def forward(self, x, t, y=None):
        u = self.net(x, t, y=torch.full_like(y, NULL))
        return u + self.w * (self.net(x, t, y=y) - u)


@pytest.mark.parametrize("ddim", [False, True])
def test_cfg_scale_one_is_conditional_sampling(ddim):
    net = tiny_net()
    diffusion = create_gaussian_diffusion(steps=1000, timestep_respacing="8")
    y = torch.tensor([0, 1, 2, 1])
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    outs = []
    for model in (net, CFGModel(net, 1.0, NULL)):
        torch.manual_seed(3)
        outs.append(sample_batch(model, diffusion, (4, 1, 8, 8), y=y, ddim=ddim, noise=noise))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-4, rtol=1e-4)
    assert outs[0].std() > 0.1
    # Through the sample set, against guidance computed by hand (guidance on, then 1).
    spec = SamplingSpec(diffusion, (1, 8, 8), class_cond=True, ddim=ddim)
    kw = dict(num_samples=4, batch_size=4, seed=2, classes=range(K))
    guided, _ = sample_set(net, replace(spec, guidance_scale=3.0, null_class=NULL), **kw)
    hand, _ = sample_set(HandGuided(net, 3.0), spec, **kw)
    plain, labels = sample_set(net, spec, **kw)
    one, labels1 = sample_set(net, replace(spec, guidance_scale=1.0, null_class=NULL), **kw)
    assert np.abs(guided.astype(int) - hand.astype(int)).max() <= 1
    assert np.array_equal(one, plain) and np.array_equal(labels, labels1)
    assert np.abs(guided.astype(int) - plain.astype(int)).max() > 10


def test_cfg_scale_one_in_the_replay_generator_and_with_mcmc():
    net = tiny_net()
    diffusion = create_gaussian_diffusion(steps=1000)
    y = torch.tensor([0, 2])
    a = ddim_generate(net, diffusion, (2, 1, 8, 8), y, 3, 0.0, generator=torch.Generator().manual_seed(1), device="cpu")
    b = ddim_generate(CFGModel(net, 1.0, NULL), diffusion, (2, 1, 8, 8), y, 3, 0.0,
                      generator=torch.Generator().manual_seed(1), device="cpu")
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    model = EnergyModel(tiny_net(), "dae")
    spaced = create_gaussian_diffusion(steps=1000, timestep_respacing="6")
    outs = []
    for m in (model, CFGModel(model, 1.0, NULL)):
        torch.manual_seed(4)
        st = MCMCSettings("mala", steps=2, step_size=0.5)
        outs.append(sample_batch(m, spaced, (2, 1, 8, 8), y=y, ddim=False, mcmc=st))
        outs.append(st.stats["accepted"])
    torch.testing.assert_close(outs[2], outs[0], atol=1e-4, rtol=1e-4)
    assert outs[1] == outs[3]


# ------------------------------------------------------------------------------------- composition


def test_composition_weights_by_hand():
    net = tiny_net()
    x, t, _ = inputs()
    full = lambda c: torch.full((x.shape[0],), c)  # noqa: E731
    with torch.no_grad():
        e0, e2, u = net(x, t, y=full(0)), net(x, t, y=full(2)), net(x, t, y=full(NULL))
        out = ComposedModel(net, [0, 2], [1.5, 0.5], NULL)(x, t, y=full(1))  # y is ignored
        torch.testing.assert_close(out, u + 1.5 * (e0 - u) + 0.5 * (e2 - u), atol=1e-5, rtol=1e-5)
        out = composed_model(net, [0, 2], None, NULL)(x, t)
        torch.testing.assert_close(out, u + (e0 - u) + (e2 - u), atol=1e-5, rtol=1e-5)
        out = ComposedModel(net, [0, 2], [0.3, 0.7])(x, t)  # no null class: prod p(x | c_i)^w_i
        torch.testing.assert_close(out, 0.3 * e0 + 0.7 * e2, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="2 labels but 1 weights"):
        ComposedModel(net, [0, 2], [1.0])
    with pytest.raises(ValueError, match="at least one label"):
        ComposedModel(net, [])
    model = EnergyModel(tiny_net(dtype=F64), "l2")
    x, t, _ = inputs(dtype=F64)
    comp = ComposedModel(model, [0, 2], [1.5, 0.5], NULL)
    e = comp.energy(x, t)
    E = lambda c: model.energy(x, t, full(c))  # noqa: E731
    torch.testing.assert_close(e, E(NULL) + 1.5 * (E(0) - E(NULL)) + 0.5 * (E(2) - E(NULL)))
    xr = x.clone().requires_grad_(True)
    (g_hand,) = torch.autograd.grad(comp.energy(xr, t).sum(), xr)
    torch.testing.assert_close(comp.energy_and_grad(x, t)[1], g_hand)


@pytest.mark.parametrize("energy,mcmc", [(False, None), (True, None), (False, "ula"), (True, "cha")])
def test_composition_of_one_label_is_conditional_sampling(energy, mcmc):
    net = tiny_net()
    model = EnergyModel(net, "dae") if energy else net
    diffusion = create_gaussian_diffusion(steps=1000, timestep_respacing="4")
    spec = SamplingSpec(diffusion, (1, 8, 8), class_cond=True, ddim=False)
    kw = dict(num_samples=3, batch_size=3, seed=1, classes=range(K))
    outs = []
    for extra in (dict(class_label=2), dict(compose=[2], null_class=NULL), dict(compose=[2], compose_weights=[1.0])):
        st = MCMCSettings(mcmc, steps=2, step_size=0.5) if mcmc else None
        null = extra.pop("null_class", None)
        images, labels = sample_set(model, replace(spec, mcmc=st, null_class=null), **kw, **extra)
        assert list(labels) == [2, 2, 2]
        outs.append(images.astype(int))
    assert np.abs(outs[1] - outs[0]).max() <= 1 and np.abs(outs[2] - outs[0]).max() <= 1
    other, _ = sample_set(model, spec, class_label=0, **kw)
    assert np.abs(other - outs[0]).max() > 10


def test_composition_of_two_classes_with_every_sampler():
    model = EnergyModel(tiny_net(), "dae")
    diffusion = create_gaussian_diffusion(steps=1000, timestep_respacing="5")
    spec = SamplingSpec(diffusion, (1, 8, 8), class_cond=True, ddim=False, null_class=NULL)
    kw = dict(num_samples=2, batch_size=2, seed=1, classes=range(K), compose=[0, 1], compose_weights=[1.0, 2.0])
    for sampler in ("ula", "uha", "mala", "cha"):
        st = MCMCSettings(sampler, steps=1, step_size=0.5)
        images, labels = sample_set(model, replace(spec, mcmc=st), **kw)
        assert images.shape == (2, 8, 8, 1) and list(labels) == [0, 0]
        assert st.stats["corrected_levels"] == 4
        if sampler in ("mala", "cha"):
            assert 0 < st.stats["proposals"] == 4 * 2
    with pytest.raises(ValueError, match="class-conditional"):
        sample_set(model, SamplingSpec(diffusion, (1, 8, 8)), num_samples=1, batch_size=1, compose=[0])


# ---------------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("overrides,match", [
    (["sample.mcmc=mala"], "needs model.parameterization energy"),
    (["sample.mcmc=cha", "model.class_cond=true"], "needs model.parameterization energy"),
    (["model.class_cond=true", "sample.guidance_scale=3"], r"train.uncond_p > 0"),
    (["sample.guidance_scale=3"], "class-conditional"),
    (["sample.compose=0,1"], "sample.compose needs a class-conditional model"),
    (["model.class_cond=true", "sample.compose=0,1", "sample.compose_weights=1"], "1 values for 2 labels"),
    (["model.class_cond=true", "sample.compose_weights=1"], "without sample.compose"),
    (["train.uncond_p=0.1"], "needs model.class_cond"),
    (["model.class_cond=true", "train.uncond_p=1.0"], r"in \[0, 1\)"),
    (["model.parameterization=energy", "diffusion.learn_sigma=true"], "learn_sigma false"),
    (["model.parameterization=energie"], "model.parameterization"),
    (["model.energy_form=l1"], "model.energy_form"),
    (["sample.mcmc=hmc"], "sample.mcmc"),
    (["sample.mcmc=ula", "sample.mcmc_steps=0"], "mcmc_steps"),
    (["sample.mcmc=ula", "sample.mcmc_damping=1.0"], "mcmc_damping"),
])
def test_config_validation(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_valid_configs():
    cfg = load_config(None, ["model.class_cond=true", "model.parameterization=energy", "train.uncond_p=0.1",
                             "sample.mcmc=cha", "sample.guidance_scale=2", "model.energy_form=l2"])
    assert MCMCSettings.from_config(cfg.sample) == MCMCSettings("cha", 1, 0.1, 50, 0.9, 3, "beta")
    cfg = load_config(None, ["model.class_cond=true", "sample.compose=3,8", "sample.compose_weights=1,0.5",
                             "sample.mcmc=uha"])
    assert cfg.sample.compose == [3, 8] and cfg.sample.compose_weights == [1.0, 0.5]
    assert MCMCSettings.from_config(load_config(None, []).sample) is None


# --------------------------------------------------------------------------------- image_sample.py


def test_image_sample_script_with_mcmc_and_composition(tmp_path, monkeypatch, capsys):
    from guided_diffusion.runtime import checkpoint as ckpt

    over = ["data.dataset=digits", "data.image_size=8", "model.class_cond=true", "model.parameterization=energy", "train.uncond_p=0.1",
            "model.num_channels=32", "model.channel_mult=1,2", "model.attention_resolutions=4",
            "model.num_head_channels=32", "diffusion.diffusion_steps=100", f"out_dir={tmp_path}"]
    cfg = load_config(None, over)
    model = experiment.build_model(cfg, experiment.dataset_info(cfg))
    path = str(tmp_path / "ema.pt")
    ckpt.atomic_torch_save(model.state_dict(), path)
    cmd = [sys.executable, "scripts/image_sample.py", *over, "--model_path", path, "--num_samples", "4",
           "--batch_size", "4", "--timestep_respacing", "5", "--use_ddim", "false", "--mcmc", "mala", "--mcmc_steps",
           "2", "--mcmc_start_t", "0", "--compose", "0,1", "--compose_weights", "1,1", "--out_dir", str(tmp_path / "s")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("cost:"))
    # 5 reverse steps; 4 corrected levels (start_t 0: after every step but the last) x (2 + 1) MALA evaluations
    assert "17 model evaluations per image (5 reverse steps + 12 mala evaluations at 4 levels)" in line, line
    assert "acceptance" in line
    data = np.load(tmp_path / "s" / "samples_4x8x8x1.npz")
    assert data["arr_0"].shape == (4, 8, 8, 1) and list(data["arr_1"]) == [0, 0, 0, 0]
    assert os.path.exists(tmp_path / "s" / "samples_4x8x8x1.png")
    # --classes: samples class by class (a grid row each), here with guidance and CHA; in this process
    # (main() as the script runs it, without a second interpreter start).
    import runpy

    main = runpy.run_path(os.path.join(ROOT, "scripts", "image_sample.py"), run_name="image_sample")["main"]
    monkeypatch.setattr(sys, "argv", ["image_sample.py", *over, "train.num_threads=1", "--model_path", path,
                                      "--num_samples", "4", "--batch_size", "2", "--timestep_respacing", "3",
                                      "--use_ddim", "false", "--mcmc", "cha", "--mcmc_leapfrog_steps", "2",
                                      "--guidance_scale", "2", "--classes", "0,2", "--out_dir", str(tmp_path / "c")])
    assert main() == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("cost:"))
    assert "9 model evaluations per image (3 reverse steps + 6 cha evaluations at 2 levels)" in line, line
    assert list(np.load(tmp_path / "c" / "samples_4x8x8x1.npz")["arr_1"]) == [0, 0, 2, 2]


# --------------------------------------------------------------------------- continual replay (CFG)


def test_replay_label_dropout_targets_the_teachers_null_prediction():
    # Generative distillation with uncond_p > 0: replay labels are dropped too, and the distillation
    # target of a dropped replay sample is the (energy) teacher's null-class prediction on its input.
    import types

    from guided_diffusion.continual.methods.generative import ReplayObjective
    from guided_diffusion.continual.replay import ReplayBatch

    teacher = EnergyModel(tiny_net(), "dae")
    diffusion = create_gaussian_diffusion(steps=100)
    base = DiffusionObjective(diffusion, UniformSampler(diffusion), class_cond=True, uncond_p=0.5, null_class=NULL)
    method = types.SimpleNamespace(teacher=teacher, distill=True)
    obj = ReplayObjective(base, method, types.SimpleNamespace(index=1, old_classes=(0, 1)))
    g = torch.Generator().manual_seed(0)
    n = 64
    x = torch.randn(n, 1, 8, 8, generator=g)
    t = torch.randint(0, 100, (n,), generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    with torch.no_grad():
        target = teacher(x, t, y=y)
    ctx = StepContext(0, 0, 1, torch.Generator().manual_seed(1), 0, 1)
    out = obj.drop_replay_labels(ReplayBatch(x, t, y, target, n), ctx)
    dropped = out.y == NULL
    assert 10 < int(dropped.sum()) < 54 and torch.equal(out.y[~dropped], y[~dropped])
    with torch.no_grad():
        null_pred = teacher(x, t, y=torch.full_like(y, NULL))
    torch.testing.assert_close(out.target[dropped], null_pred[dropped], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.target[~dropped], target[~dropped])
    assert out.teacher_nfe == n + int(dropped.sum())


def test_sample_loop_with_a_plain_function_and_no_device():
    base = create_gaussian_diffusion(steps=1000)
    diffusion = create_gaussian_diffusion(steps=1000, timestep_respacing="4")
    net = GaussianDataNet(0.25, base.alphas_cumprod)
    st = MCMCSettings("ula", steps=1)
    fn = lambda x, t, **kw: net(x, t)  # noqa: E731
    torch.manual_seed(0)
    x = sample_loop(diffusion, fn, (5, 1, 2, 2), st, predict=fn)
    assert x.shape == (5, 1, 2, 2) and st.stats["corrected_levels"] == 3 and st.stats["mcmc_evals"] == 3
