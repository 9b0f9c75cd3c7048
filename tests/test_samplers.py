"""Few-step samplers (``samplers.py``) against closed forms, golden numbers and the project's loops.

Gaussian data x0 ~ N(mu, diag(s^2)) has the optimal noise prediction in closed form,
eps*(x_t) = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar), and along the
probability-flow ODE z = (x_t - sqrt(abar_t) mu) / sqrt(abar_t s^2 + 1 - abar_t) is constant, so the
exact ODE map of x_T is x0 = mu + s z_T. Two errors are measured (RMS over samples and dimensions):

- "ode": against that exact map into clean data (abar = 1);
- "grid": against the exact ODE run over the grid's span, from timesteps[0] to timesteps[-1], followed
  by the exact denoiser there, mu + s z_T * sqrt(abar_L) s / sqrt(abar_L s^2 + 1 - abar_L): the step
  into abar = 1 is x = D for every solver (the published solvers' final step), so this isolates the
  solvers' own discretisation error. With "logsnr" spacing the last timestep is 0 and the two nearly
  coincide; with "trailing" spacing it is T/N - 1 (99 for 10 steps) and that shared last jump
  dominates the "ode" error.

``python tests/test_samplers.py`` (or ``pytest -s``) prints the error tables.
"""

import math

import numpy as np
import pytest
import torch

from guided_diffusion.diffusion import diffusion_math as dm
from guided_diffusion.diffusion.respace import space_timesteps, trailing_timesteps
from guided_diffusion.sampling import samplers as solvers
from guided_diffusion.script_util import create_gaussian_diffusion

T = 1000
ODE_SOLVERS = ("ddim", "dpmpp_2m", "unipc")


def _abar(schedule):
    return dm.schedule_from_betas(dm.get_named_beta_schedule(schedule, T)).alphas_cumprod


def _gauss_eps(mu, s, ac):
    """The optimal eps for x0 ~ N(mu, s^2), called with original timesteps."""
    acm = torch.tensor(ac, dtype=torch.float64)

    def eps_fn(x, t):
        a = acm.to(x.device)[t].view(-1, *([1] * (x.dim() - 1)))
        return ((1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s**2 + 1 - a)).to(x.dtype)

    return eps_fn


def _z(x, mu, s, abar):
    return (x - math.sqrt(abar) * mu) / (abar * s**2 + 1 - abar).sqrt()


def _exact(x_T, mu, s, ac, ts, ref):
    """The exact ODE map of x_T from ts[0]: into abar = 1 ("ode"), or to ts[-1] then the exact denoiser ("grid")."""
    z = _z(x_T, mu, s, ac[ts[0]])
    if ref == "ode":
        return mu + s * z
    a = ac[ts[-1]]
    return mu + s * z * (math.sqrt(a) * s / (a * s**2 + 1 - a).sqrt())


def _problem(d=64, n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.rand(d, generator=g, dtype=torch.float64) - 0.5
    s = 0.1 + 0.4 * torch.rand(d, generator=g, dtype=torch.float64)
    x_T = torch.randn(n, d, generator=g, dtype=torch.float64)
    return mu, s, x_T


def _rms(a, b):
    return (a - b).pow(2).mean().sqrt().item()


def error_table(schedule, spacing, steps, ref="ode", names=ODE_SOLVERS):
    """{(steps, solver): RMS error} on the Gaussian problem."""
    mu, s, x_T = _problem()
    ac = _abar(schedule)
    eps_fn = _gauss_eps(mu, s, ac)
    out = {}
    for n in steps:
        ts = solvers.sampling_timesteps(n, ac, spacing)
        target = _exact(x_T, mu, s, ac, ts, ref)
        for name in names:
            out[n, name] = _rms(solvers.sample(name, eps_fn, x_T, ts, ac), target)
    return out


def _print_table(title, table):
    steps = sorted({n for n, _ in table})
    names = [name for name in ODE_SOLVERS if (steps[0], name) in table]
    print(f"\n{title}\n{'steps':>6} " + " ".join(f"{n:>10}" for n in names) + "   ddim/2m  ddim/unipc")
    for n in steps:
        e = [table[n, name] for name in names]
        print(f"{n:>6} " + " ".join(f"{v:10.2e}" for v in e) + f"   {e[0] / e[1]:7.1f}  {e[0] / e[2]:9.1f}")


# ------------------------------------------------------------------ 1. Gaussian data: ODE solvers


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_ode_solvers_converge_to_exact_map(schedule):
    table = error_table(schedule, "logsnr", (100, 1000))
    _print_table(f"{schedule}, logsnr spacing, error vs the exact ODE map", table)
    for name in ("dpmpp_2m", "unipc"):
        assert table[100, name] < 1e-3, (name, table[100, name])
    assert table[100, "ddim"] < 2e-2
    for name in ODE_SOLVERS:  # 1000 steps: every timestep; what is left is the discrete schedule's own
        assert table[1000, name] < 2e-3, (name, table[1000, name])


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_second_order_beats_ddim_at_few_steps_logsnr(schedule):
    table = error_table(schedule, "logsnr", (5, 10, 20, 50))
    _print_table(f"{schedule}, logsnr spacing, error vs the exact ODE map", table)
    for n in (10, 20):  # measured >= 4.7x (linear, unipc, 10 steps); 6-17x otherwise
        for name in ("dpmpp_2m", "unipc"):
            assert table[n, "ddim"] > 3.0 * table[n, name], (n, name, table[n, "ddim"], table[n, name])


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_second_order_beats_ddim_at_few_steps_trailing(schedule):
    ode = error_table(schedule, "trailing", (10, 20), ref="ode")
    grid = error_table(schedule, "trailing", (10, 20), ref="grid")
    _print_table(f"{schedule}, trailing spacing, error vs the exact ODE map", ode)
    _print_table(f"{schedule}, trailing spacing, error vs the exact ODE to the last timestep + denoiser", grid)
    for n in (10, 20):
        for name in ("dpmpp_2m", "unipc"):
            # The solvers' own error: measured >= 3.7x smaller than DDIM's.
            assert grid[n, "ddim"] > 2.5 * grid[n, name], (n, name, grid[n, "ddim"], grid[n, name])
            # Into clean data the shared last jump from t = T/N - 1 dominates: measured 1.1-2.6x only.
            assert ode[n, name] < ode[n, "ddim"], (n, name)


@pytest.mark.parametrize("schedule, steps", [("cosine", (41, 81, 161)), ("linear", (21, 41, 81))])
def test_empirical_order(schedule, steps):
    """logsnr spacing: N - 1 doubling halves the lambda step. The ranges are where the asymptotic
    regime holds: below, pre-asymptotic; above, the integer timesteps near t = 0 saturate."""
    table = error_table(schedule, "logsnr", steps, ref="grid")
    _print_table(f"{schedule}, logsnr spacing, error vs the exact ODE to t = 0 + denoiser", table)
    for coarse, fine in zip(steps, steps[1:]):
        r = {name: table[coarse, name] / table[fine, name] for name in ODE_SOLVERS}
        print(f"  {coarse} -> {fine} steps: error ratio " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()))
        assert 1.6 < r["ddim"] < 2.4, r  # first order
        assert r["dpmpp_2m"] > 3.0, r  # second order (measured 3.8-4.0)
        assert r["unipc"] > 3.0, r  # UniC raises the order (measured 5.2-7.3)


# Golden numbers: diffusers 0.42.1, DPMSolverMultistepScheduler(algorithm_type="dpmsolver++",
# solver_order=2, lower_order_final=False, final_sigmas_type="zero") and UniPCMultistepScheduler(
# solver_order=2, predict_x0=True, solver_type="bh2", lower_order_final=True, final_sigmas_type="zero"),
# betas = the schedule's, timesteps and sigmas = sqrt((1 - abar) / abar) set to these, run in float64
# (DPMSolver's float32 upcast in step() removed).
GOLDEN_MU, GOLDEN_S = [0.3, -0.2, 0.1], [0.5, 0.2, 0.8]
GOLDEN_XT = [[1.0, -0.5, 0.25], [-1.5, 2.0, 0.75]]
GOLDEN = {
    ("cosine", "trailing", "dpmpp_2m"): [[0.775456171464, -0.27503324366, 0.295612221698],
                                         [-0.413201831215, 0.100140370441, 0.686844377456]],
    ("cosine", "trailing", "unipc"): [[0.781163498264, -0.275512867976, 0.299212937822],
                                      [-0.421763032372, 0.102058914981, 0.697646667792]],
    ("linear", "logsnr", "dpmpp_2m"): [[0.814877999006, -0.30158374892, 0.306577139332],
                                       [-0.474774877545, 0.20762896999, 0.720783970256]],
    ("linear", "logsnr", "unipc"): [[0.824442617261, -0.304524777206, 0.309643423997],
                                    [-0.489167463656, 0.219430545965, 0.729998447591]],
}  # fmt: skip


@pytest.mark.parametrize("key", list(GOLDEN))
def test_golden_against_diffusers(key):
    schedule, spacing, name = key
    ac = _abar(schedule)
    mu, s = torch.tensor(GOLDEN_MU, dtype=torch.float64), torch.tensor(GOLDEN_S, dtype=torch.float64)
    ts = solvers.sampling_timesteps(10, ac, spacing)
    x0 = solvers.sample(name, _gauss_eps(mu, s, ac), torch.tensor(GOLDEN_XT, dtype=torch.float64), ts, ac)
    np.testing.assert_allclose(x0.numpy(), GOLDEN[key], rtol=0, atol=1e-10)


def test_unipc_predictor_is_dpmpp_2m():
    """UniP-2 with bh2 is DPM-Solver++(2M)'s step, by hand; the samplers differ only by UniC, which
    does not act on 2 timesteps (the final x = D reuses the evaluation at the uncorrected point)."""
    g = torch.Generator().manual_seed(0)
    x, d0, d1 = (torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(3))
    ac = _abar("linear")
    abar = ac[[900, 600, 300]]
    alpha, sigma = np.sqrt(abar), np.sqrt(1 - abar)
    lam = np.log(alpha / sigma)
    h, h_prev = lam[2] - lam[1], lam[1] - lam[0]
    by_hand = sigma[2] / sigma[1] * x - alpha[2] * math.expm1(-h) * (d1 + (d1 - d0) * h / (2 * h_prev))
    ours = solvers._unipc_update(x, [d0, d1], list(lam[:2]), None, lam[2], alpha[2], sigma[2], sigma[1])
    torch.testing.assert_close(ours, by_hand, rtol=0, atol=1e-12)

    mu, s, x_T = _problem(d=4, n=8)
    eps_fn = _gauss_eps(mu, s, ac)
    for ts, same in (([999], True), ([999, 500], True), ([999, 600, 300], False)):
        a, b = solvers.sample_unipc(eps_fn, x_T, ts, ac), solvers.sample_dpmpp_2m(eps_fn, x_T, ts, ac)
        assert torch.equal(a, b) == same, ts


# ------------------------------------------------------------------ 2. ancestral sampling


def _ancestral_moments(mu, s, ac, ts):
    """Exact mean and variance of the ancestral chain on Gaussian data from x_T ~ N(0, I): each step
    is affine in x_t plus Gaussian noise, x_s = k x_t + o + sqrt(var) z."""
    m, v = torch.zeros_like(mu), torch.ones_like(mu)
    abar = list(ac[ts]) + [1.0]
    for a_t, a_s in zip(abar, abar[1:]):
        beta = 1 - a_t / a_s
        c1 = math.sqrt(a_s) * beta / (1 - a_t)
        c2 = math.sqrt(1 - beta) * (1 - a_s) / (1 - a_t)
        A = math.sqrt(a_t) * s**2 / (a_t * s**2 + 1 - a_t)  # D(x) = A x + mu (1 - sqrt(a_t) A)
        k, o = c1 * A + c2, c1 * mu * (1 - math.sqrt(a_t) * A)
        m, v = k * m + o, k**2 * v + beta * (1 - a_s) / (1 - a_t)
    return m, v.sqrt()


def test_ancestral_matches_gaussian_data():
    mu, s, _ = _problem(d=8)
    ac = _abar("cosine")
    n = 20000
    x_T = torch.randn(n, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ts = list(range(T - 1, -1, -1))
    x0 = solvers.sample_ancestral(_gauss_eps(mu, s, ac), x_T, ts, ac, generator=torch.Generator().manual_seed(2))
    m_exact, s_exact = _ancestral_moments(mu, s, ac, ts)
    # The chain itself, at 1000 steps, has the data's moments (its per-step variance misses only
    # c1^2 Var[x0 | x_t]).
    torch.testing.assert_close(m_exact, mu, rtol=0, atol=1e-3)
    torch.testing.assert_close(s_exact, s, rtol=2e-2, atol=0)  # measured: 1.1% at most
    # The samples have the chain's moments: 5 standard errors.
    assert ((x0.mean(0) - mu).abs() < 5 * s / math.sqrt(n)).all(), (x0.mean(0) - mu) / (s / math.sqrt(n))
    assert ((x0.std(0) - s).abs() < 5 * s / math.sqrt(2 * n) + (s_exact - s).abs()).all()


def test_ancestral_few_steps_matches_its_chain():
    """At 10 trailing steps the samples follow the chain's own (too narrow) moments exactly."""
    mu, s, _ = _problem(d=8)
    ac = _abar("linear")
    n = 20000
    x_T = torch.randn(n, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ts = solvers.sampling_timesteps(10, ac, "trailing")
    x0 = solvers.sample_ancestral(_gauss_eps(mu, s, ac), x_T, ts, ac, generator=torch.Generator().manual_seed(4))
    m_exact, s_exact = _ancestral_moments(mu, s, ac, ts)
    ratio = s_exact / s
    print(f"\nancestral, 10 trailing steps (linear): std / s = {ratio.min():.3f} .. {ratio.max():.3f}")
    assert ((x0.mean(0) - m_exact).abs() < 5 * s_exact / math.sqrt(n)).all()
    assert ((x0.std(0) - s_exact).abs() < 5 * s_exact / math.sqrt(2 * n)).all()
    assert (s_exact < s).all()  # fewer steps, narrower samples


def test_ancestral_equals_project_p_sample_loop():
    """The project's ancestral loop with beta~ (sigma_small) on ddim10t, same global RNG stream."""
    mu, s, x_T = _problem(d=6, n=16)
    mu, s, x_T = mu.float(), s.float(), x_T.float()
    ac = _abar("cosine")
    diffusion = create_gaussian_diffusion(steps=T, noise_schedule="cosine", sigma_small=True,
                                          timestep_respacing="ddim10t")
    eps_fn = _gauss_eps(mu, s, ac)
    torch.manual_seed(5)
    theirs = diffusion.p_sample_loop(eps_fn, tuple(x_T.shape), noise=x_T.clone(), clip_denoised=False)
    torch.manual_seed(5)
    ours = solvers.sample_ancestral(eps_fn, x_T, solvers.sampling_timesteps(10, ac, "trailing"), ac)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


# ------------------------------------------------------------------ 3. DDIM = the project's DDIM


@pytest.mark.parametrize("schedule, clip, shift",
                         [("cosine", False, 0.0), ("linear", False, 0.0), ("cosine", True, 0.8)])
def test_ddim_equals_project_ddim(schedule, clip, shift):
    """ddim_sample_loop on create_gaussian_diffusion(..., timestep_respacing="ddim10t"); its model is
    called with the original timesteps (SpacedDiffusion._scale_timesteps, rescale off)."""
    mu, s, x_T = _problem(d=6, n=16)
    mu, s, x_T = (mu + shift).float(), s.float(), x_T.float()
    ac = _abar(schedule)
    diffusion = create_gaussian_diffusion(steps=T, noise_schedule=schedule, timestep_respacing="ddim10t")
    eps_fn = _gauss_eps(mu, s, ac)
    theirs = diffusion.ddim_sample_loop(eps_fn, tuple(x_T.shape), noise=x_T.clone(), clip_denoised=clip)
    ours = solvers.sample_ddim(eps_fn, x_T, solvers.sampling_timesteps(10, ac, "trailing"), ac, clip_denoised=clip)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    if clip:
        assert ours.max() <= 1.0 and (ours == 1.0).any()  # clipping did act


@pytest.mark.parametrize("name", ["dpmpp_2m", "unipc", "ancestral"])
def test_clip_denoised_keeps_data_range(name):
    mu, s, x_T = _problem(d=6, n=64)
    ac = _abar("cosine")
    eps_fn = _gauss_eps(mu + 0.9, s, ac)  # much mass above 1
    ts = solvers.sampling_timesteps(10, ac, "logsnr")
    g = torch.Generator().manual_seed(0)
    clipped = solvers.sample(name, eps_fn, x_T, ts, ac, generator=g, clip_denoised=True)
    free = solvers.sample(name, eps_fn, x_T, ts, ac, generator=torch.Generator().manual_seed(0))
    assert clipped.max() <= 1.0 + 1e-12 and free.max() > 1.2


# ------------------------------------------------------------------ 4. guidance


@pytest.mark.parametrize("name", list(solvers.SAMPLERS))
def test_guided_eps_with_zero_gradient_changes_nothing(name):
    mu, s, x_T = _problem(d=4, n=8)
    ac = _abar("cosine")
    eps_fn = _gauss_eps(mu, s, ac)
    ts = solvers.sampling_timesteps(10, ac, "trailing")
    plain = solvers.sample(name, eps_fn, x_T, ts, ac, generator=torch.Generator().manual_seed(0))
    guided = solvers.sample(name, solvers.guided_eps(eps_fn, lambda x, t: torch.zeros_like(x), ac), x_T, ts, ac,
                            generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain, guided)


def test_guided_eps_turns_one_gaussian_into_another():
    """cond_fn = grad log (p'_t / p_t) for two Gaussian data laws makes eps exactly p''s, so every
    guided solver lands on p''s exact ODE map."""
    mu, s, x_T = _problem()
    mu2, s2 = -mu + 0.2, 0.5 * s + 0.1
    ac = _abar("linear")
    acm = torch.tensor(ac)

    def cond_fn(x, t):
        a = acm[t].view(-1, 1)
        return -(x - a.sqrt() * mu2) / (a * s2**2 + 1 - a) + (x - a.sqrt() * mu) / (a * s**2 + 1 - a)

    guided = solvers.guided_eps(_gauss_eps(mu, s, ac), cond_fn, ac)
    t = torch.full((x_T.shape[0],), 700)
    torch.testing.assert_close(guided(x_T, t), _gauss_eps(mu2, s2, ac)(x_T, t), rtol=0, atol=1e-12)
    ts = solvers.sampling_timesteps(100, ac, "logsnr")
    target = _exact(x_T, mu2, s2, ac, ts, "ode")
    assert _rms(solvers.sample_ddim(guided, x_T, ts, ac), target) < 2e-2
    for name in ("dpmpp_2m", "unipc"):
        assert _rms(solvers.sample(name, guided, x_T, ts, ac), target) < 1e-3


@pytest.mark.parametrize("name", list(solvers.SAMPLERS))
def test_guidance_toward_a_point_moves_samples_toward_it(name):
    """cond_fn = 0.3 grad_x log N(x; m, I) = 0.3 (m - x) pulls the samples toward m: every dimension's
    sample mean moves toward m (the tilted score also narrows the law, so single samples beyond m
    may end farther). Linear schedule: on the cosine one the first step from t = 999 (abar = 2.4e-9)
    turns the pull into an x0 shift 2e4 times larger (``solvers``' docstring, "Conditioning")."""
    mu, s, x_T = _problem()
    ac = _abar("linear")
    m = mu + 1.0
    eps_fn = _gauss_eps(mu, s, ac)
    guided = solvers.guided_eps(eps_fn, lambda x, t: 0.3 * (m - x), ac)
    ts = solvers.sampling_timesteps(20, ac, "trailing")
    plain = solvers.sample(name, eps_fn, x_T, ts, ac, generator=torch.Generator().manual_seed(0))
    pulled = solvers.sample(name, guided, x_T, ts, ac, generator=torch.Generator().manual_seed(0))
    shift = (pulled.mean(0) - plain.mean(0)) / (m - plain.mean(0))
    assert ((shift > 0.01) & (shift < 1.0)).all(), shift  # measured 0.02 .. 0.5
    assert (pulled - m).abs().mean() < 0.95 * (plain - m).abs().mean()  # measured 0.78 (ODE), 0.91 (ancestral)


@pytest.mark.parametrize("schedule, rtol", [("linear", 0.0), ("cosine", 1e-5)])
def test_guided_ddim_equals_project_condition_score(schedule, rtol):
    """guided_eps + sample_ddim = ddim_sample_loop(cond_fn=...) (condition_score), clip_denoised off.
    (With clipping ADM guides the already clamped x̂0 and does not clamp again; here the guided x0 is
    clamped.) On the cosine schedule the guided outputs reach ~70 (the t = 999 step amplifies the pull,
    see test_guidance_toward_a_point_moves_samples_toward_it): float32 agreement is relative there."""
    mu, s, x_T = _problem(d=6, n=16)
    mu, s, x_T = mu.float(), s.float(), x_T.float()
    ac = _abar(schedule)
    m = torch.linspace(-1, 1, 6)

    def cond_fn(x, t, **kwargs):
        return 0.7 * (m - x)

    diffusion = create_gaussian_diffusion(steps=T, noise_schedule=schedule, timestep_respacing="ddim10t")
    eps_fn = _gauss_eps(mu, s, ac)
    theirs = diffusion.ddim_sample_loop(eps_fn, tuple(x_T.shape), noise=x_T.clone(), clip_denoised=False,
                                        cond_fn=cond_fn)
    ours = solvers.sample_ddim(solvers.guided_eps(eps_fn, cond_fn, ac), x_T, solvers.sampling_timesteps(10, ac), ac)
    torch.testing.assert_close(ours, theirs, rtol=rtol, atol=1e-5)


def test_guided_eps_rejects_pred_xstart_cond_fn():
    def cond_fn(x, t, pred_xstart=None):
        return torch.zeros_like(x)

    cond_fn.needs_pred_xstart = True
    with pytest.raises(ValueError, match="needs_pred_xstart"):
        solvers.guided_eps(lambda x, t: x, cond_fn, _abar("linear"))


# ------------------------------------------------------------------ 5. timesteps


@pytest.mark.parametrize("n", [1, 7, 10, 50, 1000])
def test_trailing_equals_respace(n):
    ac = _abar("cosine")
    ts = solvers.sampling_timesteps(n, ac, "trailing")
    assert ts == trailing_timesteps(T, n)
    assert ts == sorted(space_timesteps(T, f"ddim{n}t"), reverse=True)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("n", [2, 3, 5, 10, 20, 50, 100, 500, 999, 1000])
def test_logsnr_timesteps_are_valid(schedule, n):
    ts = solvers.logsnr_timesteps(n, _abar(schedule))
    assert len(ts) == n and all(isinstance(t, int) for t in ts)
    assert ts[0] == T - 1 and ts[-1] == 0
    assert all(a > b for a, b in zip(ts, ts[1:]))  # strictly descending, hence distinct


def test_logsnr_timesteps_are_uniform_in_lambda():
    ac = _abar("linear")
    ts = solvers.logsnr_timesteps(10, ac)
    assert ts == [999, 886, 757, 603, 410, 202, 73, 22, 5, 0]
    lam = 0.5 * np.log(ac / (1 - ac))
    grid = np.linspace(lam[-1], lam[0], 10)
    assert np.abs(lam[ts] - grid).max() < 0.05 * (grid[1] - grid[0])
    assert solvers.logsnr_timesteps(T, ac) == list(range(T - 1, -1, -1))
    assert solvers.logsnr_timesteps(1, ac) == [T - 1]


def test_timestep_arguments_are_checked():
    ac = _abar("linear")
    with pytest.raises(ValueError, match="spacing"):
        solvers.sampling_timesteps(10, ac, "leading")
    with pytest.raises(ValueError, match="num_steps"):
        solvers.logsnr_timesteps(0, ac)
    with pytest.raises(ValueError, match="num_steps"):
        solvers.logsnr_timesteps(T + 1, ac)


# ------------------------------------------------------------------ the common interface


def test_sample_dispatch_and_errors():
    mu, s, x_T = _problem(d=4, n=4)
    ac = _abar("linear")
    eps_fn = _gauss_eps(mu, s, ac)
    ts = solvers.sampling_timesteps(5, ac)
    for name, fn in solvers.SAMPLERS.items():
        g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
        by_name = solvers.sample(name, eps_fn, x_T, ts, ac, generator=g1)
        assert torch.equal(by_name, fn(eps_fn, x_T, ts, ac, generator=g2))
    with pytest.raises(ValueError, match="did you mean 'dpmpp_2m'"):
        solvers.sample("dpmpp2m", eps_fn, x_T, ts, ac)
    with pytest.raises(ValueError, match="descending"):
        solvers.sample_ddim(eps_fn, x_T, [10, 20], ac)
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        solvers.sample_ddim(eps_fn, x_T, [1000, 10], ac)
    with pytest.raises(ValueError, match="empty"):
        solvers.sample_ddim(eps_fn, x_T, [], ac)


@pytest.mark.parametrize("name", list(solvers.SAMPLERS))
def test_dtype_shape_and_one_evaluation_per_timestep(name):
    ac = _abar("cosine")
    calls = []

    def eps_fn(x, t):
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        calls.append(int(t[0]))
        return torch.zeros_like(x)

    x = torch.randn(2, 3, 4, 4)
    ts = solvers.sampling_timesteps(7, ac, "logsnr")
    out = solvers.sample(name, eps_fn, x, ts, ac, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert calls == ts  # eps_fn sees the original timesteps, once each


if __name__ == "__main__":
    for schedule in ("cosine", "linear"):
        for spacing in ("trailing", "logsnr"):
            for ref in ("ode", "grid"):
                what = "exact ODE map" if ref == "ode" else "exact ODE to the last timestep + denoiser"
                _print_table(f"{schedule}, {spacing} spacing, RMS error vs the {what}",
                             error_table(schedule, spacing, (5, 10, 20, 50, 100, 200, 1000), ref=ref))
