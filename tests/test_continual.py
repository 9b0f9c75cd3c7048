"""Continual methods: hand computations of each loss, scenarios, buffers, and short real runs."""

import copy
import math
import csv
import dataclasses
import os
import types

import numpy as np
import pytest
import torch

import guided_diffusion.evaluation  # noqa: E402,F401  (the evaluation section's schema: the mnist presets have one)
from guided_diffusion.continual.methods.buffer import balanced_cut, reservoir_update
from guided_diffusion.continual.replay import (
    ddim_generate,
    mirror_noise,
    replay_criterion,
    replay_inputs,
    trailing_timesteps,
)
from guided_diffusion import experiment
from guided_diffusion.continual.config import ContinualConfig
from guided_diffusion.continual.scenario import build_scenario
from guided_diffusion.runtime.config import ConfigError, load_config
from guided_diffusion.runtime.precision import describe_cpu
from guided_diffusion.script_util import create_gaussian_diffusion
from guided_diffusion.train_util import DiffusionObjective, StepContext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Toy(torch.nn.Module):
    """A tiny conditional eps-model: conv + a per-class and per-time bias."""

    def __init__(self, c=1, classes=10):
        super().__init__()
        self.conv = torch.nn.Conv2d(c, c, 3, padding=1)
        self.emb = torch.nn.Embedding(classes, c)
        self.tw = torch.nn.Parameter(torch.tensor(0.01))

    def forward(self, x, t, y=None):
        h = self.conv(x) + self.tw * t.float().view(-1, 1, 1, 1) / 1000
        if y is not None:
            h = h + self.emb(y).view(-1, x.shape[1], 1, 1)
        return h


def ctx_for(step=0, seed=0):
    return StepContext(step, 0, 1, torch.Generator().manual_seed(seed), 0, 1)


# ------------------------------------------------------------------ scenarios


def test_split_mnist_preset():
    s = build_scenario(ContinualConfig(scenario="split_mnist", num_steps=7, first_task_num_steps=9), 10)
    assert [t.classes for t in s.tasks] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert s.tasks[0].num_steps == 9 and s.tasks[1].num_steps == 7
    assert s.tasks[2].old_classes == (0, 1, 2, 3) and s.tasks[2].seen_classes == (0, 1, 2, 3, 4, 5)


def test_seeded_explicit_and_first_task_larger():
    s = build_scenario(ContinualConfig(num_tasks=3, class_order="seeded", class_order_seed=3), 6)
    assert sorted(s.class_order) == list(range(6)) and list(s.class_order) != list(range(6))
    assert s.class_order == tuple(np.random.RandomState(3).permutation(6))
    s = build_scenario(ContinualConfig(num_tasks=3, first_task_num_classes=4, class_order="5,4,3,2,1,0,6,7"), 8)
    assert [t.classes for t in s.tasks] == [(5, 4, 3, 2), (1, 0), (6, 7)]


def test_scenario_errors():
    with pytest.raises(ConfigError, match="needs 12 classes"):
        build_scenario(ContinualConfig(num_tasks=3, classes_per_task=4), 10)
    with pytest.raises(ConfigError, match="needs a dataset with 100 classes"):
        build_scenario(ContinualConfig(scenario="cifar100_5"), 10)
    with pytest.raises(ConfigError, match="did you mean 'split_mnist'"):
        build_scenario(ContinualConfig(scenario="split_mnst"), 10)


def test_the_datas_own_tasks():
    """``scenario: from_data``: a task dict's tasks, in the file's order, with however many classes each."""
    s = build_scenario(ContinualConfig(scenario="from_data", num_steps=5, first_task_num_steps=8), 6,
                       ((4, 5), (0,), (1, 2, 3)))
    assert [t.classes for t in s.tasks] == [(4, 5), (0,), (1, 2, 3)] and s.class_order == (4, 5, 0, 1, 2, 3)
    assert s.tasks[2].old_classes == (4, 5, 0) and [t.num_steps for t in s.tasks] == [8, 5, 5]
    assert len(build_scenario(ContinualConfig(scenario="from_data", limit_tasks=2), 6, ((4, 5), (0,), (1,))).tasks) == 2
    with pytest.raises(ConfigError, match="class 0 occurs in the data's tasks 0 and 1"):
        build_scenario(ContinualConfig(scenario="from_data"), 3, ((0, 1), (0, 2)))
    with pytest.raises(ConfigError, match="this one has none"):
        build_scenario(ContinualConfig(scenario="from_data"), 10)


# ------------------------------------------------------------------ replay inputs


def test_trailing_timesteps():
    assert trailing_timesteps(1000, 10) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert trailing_timesteps(1000, 2) == [999, 499]


def test_partial_generation_stops_at_each_samples_t():
    # With eps == 0 and no clipping, a DDIM(eta=0) step maps x_a to sqrt(ab_b / ab_a) x_a, so a
    # trajectory from 999 stopped at t ends at sqrt(ab_t / ab_999) x_999 whatever the steps were.
    diffusion = create_gaussian_diffusion(steps=1000, noise_schedule="linear")
    zero = lambda x, t, **kw: torch.zeros_like(x)  # noqa: E731
    stop = torch.tensor([998, 700, 499, 250, 3, 999])
    x = ddim_generate(zero, diffusion, (6, 1, 4, 4), None, 4, stop_t=stop,
                      generator=torch.Generator().manual_seed(1), clip=False)
    x_T = torch.randn((6, 1, 4, 4), generator=torch.Generator().manual_seed(1))
    ab = torch.tensor(diffusion.alphas_cumprod)
    expect = (ab[stop] / ab[999]).sqrt().float().view(-1, 1, 1, 1) * x_T
    torch.testing.assert_close(x, expect, rtol=1e-5, atol=1e-6)


def test_per_sample_partial_schedule_by_hand():
    """Masip et al.'s partial generation: each sample takes ``steps`` DDIM steps evenly spaced from 999 to
    its own t (s_k = t + round(k (999 - t) / steps)); the shared grid instead steps 999, 499 and jumps."""
    from guided_diffusion.continual.replay import partial_timesteps

    stop = torch.tensor([499, 0, 998, 999, -1])
    pairs = [(tc.tolist(), tn.tolist()) for tc, tn in partial_timesteps(1000, 2, stop, per_sample=True)]
    # 999 - 499 = 500: 999 -> 749 -> 499; 999 - 0 = 999: 999 -> 500 (round half to even of 499.5) -> 0;
    # 998: one step of round(0.5) = 0 then the step 999 -> 998; 999: no step; -1 (to x0): the trailing grid.
    assert pairs == [([999, 999, 999, 999, 999], [749, 500, 998, 999, 499]),
                     ([749, 500, 998, 999, 499], [499, 0, 998, 999, -1])]
    grid = [(tc.tolist(), tn.tolist()) for tc, tn in partial_timesteps(1000, 2, stop)]
    assert grid == [([999] * 5, [499, 499, 998, 999, 499]), ([499] * 5, [499, 0, 998, 999, -1])]
    # The trajectory is DDIM along those pairs: with eps == 0 and no clipping every step scales x by
    # sqrt(ab_next / ab_cur), so each sample ends at sqrt(ab_t / ab_999) x_999 whatever its path.
    diffusion = create_gaussian_diffusion(steps=1000, noise_schedule="linear")
    zero = lambda x, t, **kw: torch.zeros_like(x)  # noqa: E731
    stop = torch.tensor([998, 700, 499, 3, 999])
    x = ddim_generate(zero, diffusion, (5, 1, 4, 4), None, 3, stop_t=stop, per_sample=True,
                      generator=torch.Generator().manual_seed(1), clip=False)
    x_T = torch.randn((5, 1, 4, 4), generator=torch.Generator().manual_seed(1))
    ab = torch.tensor(diffusion.alphas_cumprod)
    torch.testing.assert_close(x, (ab[stop] / ab[999]).sqrt().float().view(-1, 1, 1, 1) * x_T, rtol=1e-5, atol=1e-6)


def test_clipped_x0_with_and_without_the_eps_rederived():
    """One DDIM step from 999 to 499 (one sample, eps_net = 2 x): x0 = (x - s eps) / a is clipped to [-1, 1];
    with ``rederive_eps`` the step uses eps' = (x - a x0c) / s (GLIDE), without it the network's eps
    (Masip et al.'s pipeline): x' = a' x0c + s' eps."""
    diffusion = create_gaussian_diffusion(steps=1000, noise_schedule="linear")
    net = lambda x, t, **kw: 2 * x  # noqa: E731
    x_T = torch.randn((1, 1, 3, 3), generator=torch.Generator().manual_seed(2))
    ab = diffusion.alphas_cumprod
    a, s, a2, s2 = math.sqrt(ab[999]), math.sqrt(1 - ab[999]), math.sqrt(ab[499]), math.sqrt(1 - ab[499])
    x0c = ((x_T - s * 2 * x_T) / a).clamp(-1, 1)
    for rederive, eps in ((True, (x_T - a * x0c) / s), (False, 2 * x_T)):
        out = ddim_generate(net, diffusion, (1, 1, 3, 3), None, 2, stop_t=torch.tensor([499]), rederive_eps=rederive,
                            generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(out, a2 * x0c + s2 * eps, rtol=1e-4, atol=1e-5)


def test_distillation_target_is_teacher_prediction():
    diffusion = create_gaussian_diffusion(steps=100)
    teacher = Toy().eval()
    for source in ("full_generation", "partial_generation", "gaussian", "gaussian_symmetry"):
        rb = replay_inputs(teacher, diffusion, source=source, n=5, shape=(1, 6, 6), old_classes=[0, 1, 2],
                           distill=True, teacher_steps=3, generator=torch.Generator().manual_seed(0), device="cpu")
        with torch.no_grad():
            expect = teacher(rb.x, rb.t, y=rb.y)
        torch.testing.assert_close(rb.target, expect)
        assert set(rb.y.tolist()) <= {0, 1, 2}
    gauss = replay_inputs(teacher, diffusion, source="gaussian", n=5, shape=(1, 6, 6), old_classes=None,
                          distill=True, generator=torch.Generator().manual_seed(0), device="cpu")
    assert gauss.teacher_nfe == 5


def test_mirror_noise_bands():
    n = torch.randn(4, 1, 6, 6)
    t = torch.tensor([10, 400, 900, 100])  # T = 900: low <= 300 both mirrors, high > 600 untouched
    m = mirror_noise(n, t, 900, torch.Generator().manual_seed(0))
    assert torch.equal(m[2], n[2])
    for i in (0, 3):
        assert torch.equal(m[i], m[i].flip(-1)) and torch.equal(m[i], m[i].flip(-2))
    assert torch.equal(m[1], m[1].flip(-1)) or torch.equal(m[1], m[1].flip(-2))


def test_min_snr_is_per_sample():
    diffusion = create_gaussian_diffusion(steps=1000)
    pred, target = torch.zeros(2, 1, 2, 2), torch.stack([torch.ones(1, 2, 2), 2 * torch.ones(1, 2, 2)])
    t = torch.tensor([10, 900])
    ab = torch.tensor(diffusion.alphas_cumprod)[t].float()
    snr = ab / (1 - ab)
    w = torch.clamp(snr, max=5.0) / snr
    expect = (w * torch.tensor([1.0, 4.0])).mean()
    torch.testing.assert_close(replay_criterion("min_snr", pred, target, t, diffusion), expect)
    torch.testing.assert_close(replay_criterion("mse", pred, target, t, diffusion), torch.tensor(2.5))
    # train.loss_weighting=min_snr: the replay MSE takes the data term's per-sample weights -- the same
    # number as Masip's min_snr criterion, from one implementation (diffusion_math.min_snr_weight).
    from guided_diffusion.diffusion.resample import UniformSampler
    from guided_diffusion.train_util import DiffusionObjective

    base = DiffusionObjective(diffusion, UniformSampler(diffusion), class_cond=False, loss_weighting="min_snr")
    torch.testing.assert_close(base.loss_weight(t), w)
    torch.testing.assert_close(replay_criterion("mse", pred, target, t, diffusion, weights=base.loss_weight(t)),
                               expect)
    # An x0-predicting model: min(SNR, gamma) on its x0 loss (Hang et al. eq. 10).
    x0_diffusion = create_gaussian_diffusion(steps=1000, predict_xstart=True)
    x0_base = DiffusionObjective(x0_diffusion, UniformSampler(x0_diffusion), class_cond=False, loss_weighting="min_snr")
    torch.testing.assert_close(x0_base.loss_weight(t), torch.clamp(snr, max=5.0))
    # No weighting: ones (ADM's loss); sample_t's weights are the sampler's alone.
    plain = DiffusionObjective(diffusion, UniformSampler(diffusion), class_cond=False)
    assert torch.equal(plain.loss_weight(t), torch.ones(2))


def test_replay_criterion_min_snr_twice_refused():
    import guided_diffusion.continual.methods  # noqa: F401
    from guided_diffusion.continual.methods.generative import check_replay_weighting
    from guided_diffusion.runtime.config import ConfigError, load_config

    import dataclasses

    path = os.path.join(ROOT, "yaml/mnist/generative_distillation.yaml")
    with pytest.raises(ConfigError, match="already takes the data term's weighting"):  # refused when loaded
        load_config(path, ["train.loss_weighting=min_snr", "method.criterion=min_snr"])
    cfg = load_config(path, ["train.loss_weighting=min_snr"])
    with pytest.raises(ConfigError, match="already takes the data term's weighting"):
        check_replay_weighting(dataclasses.replace(cfg.method, criterion="min_snr"), cfg)


# ------------------------------------------------------------------ objectives


def _method(kind, teacher, **cfg):
    from guided_diffusion.continual.methods.generative import (
        GenerativeDistillation,
        GenerativeReplay,
    )

    cls = GenerativeDistillation if kind == "gd" else GenerativeReplay
    m = cls.__new__(cls)
    m.mcfg = cls.Config(**cfg)
    m.teacher = teacher
    return m


def _objective(kind, teacher, task_index=1, **cfg):
    from guided_diffusion.continual.methods.generative import ReplayObjective
    from guided_diffusion.continual.scenario import Task
    from guided_diffusion.diffusion.resample import UniformSampler

    diffusion = create_gaussian_diffusion(steps=100)
    base = DiffusionObjective(diffusion, UniformSampler(diffusion), class_cond=True)
    task = Task(task_index, (2, 3), (0, 1, 2, 3), 5)
    return base, ReplayObjective(base, _method(kind, teacher, **cfg), task)


def test_lambda_zero_equals_naive():
    torch.manual_seed(0)
    student, teacher = Toy(), Toy().eval()
    x, y = torch.randn(4, 1, 6, 6), torch.tensor([2, 3, 2, 3])
    base, obj = _objective("gd", teacher, lambd=0.0, weight_replay_loss=False)
    loss_base, _ = base(student, x, y, ctx_for())
    loss, terms = obj(student, x, y, ctx_for())
    torch.testing.assert_close(loss, loss_base, rtol=1e-6, atol=1e-7)
    _, obj = _objective("gd", teacher, lambd=0.0, weight_replay_loss=True)  # task 1: w = 1/2
    loss, _ = obj(student, x, y, ctx_for())
    torch.testing.assert_close(loss, 0.5 * loss_base, rtol=1e-6, atol=1e-7)


def test_replay_batch_is_global_and_split_over_ranks():
    """method.replay_batch counts over all ranks, as train.batch_size: with 2 ranks each makes half
    (the same replay term as one process asked for that half), and an uneven split is refused."""
    import types

    from guided_diffusion.continual.methods.generative import check_replay_batch
    from guided_diffusion.runtime.config import ConfigError

    torch.manual_seed(0)
    student, teacher = Toy(), Toy().eval()
    x, y = torch.randn(4, 1, 6, 6), torch.tensor([2, 3, 2, 3])
    _, two = _objective("gd", teacher, source="gaussian", replay_batch=6)
    _, one = _objective("gd", teacher, source="gaussian", replay_batch=3)
    rank0_of_2 = StepContext(0, 0, 1, torch.Generator().manual_seed(0), 0, 2)
    loss2, terms2 = two(student, x, y, rank0_of_2)
    loss1, terms1 = one(student, x, y, ctx_for())
    assert float(terms2["teacher_nfe"]) == float(terms1["teacher_nfe"]) == 3
    torch.testing.assert_close(loss2, loss1)
    check_replay_batch(types.SimpleNamespace(replay_batch=6), 2)
    with pytest.raises(ConfigError, match="replay_batch 7 is not divisible by the world size 2"):
        check_replay_batch(types.SimpleNamespace(replay_batch=7), 2)


def test_gd_loss_by_hand():
    torch.manual_seed(0)
    student, teacher = Toy(), Toy().eval()
    x, y = torch.randn(4, 1, 6, 6), torch.tensor([2, 3, 2, 3])
    base, obj = _objective("gd", teacher, task_index=2, lambd=2.0, source="gaussian", replay_batch=3)
    loss, terms = obj(student, x, y, ctx_for())
    # Recompute: same generator order (t, noise, then the replay batch).
    g = torch.Generator().manual_seed(0)
    t, _ = base.schedule_sampler.sample(4, "cpu", generator=g)
    noise = torch.randn(x.shape, generator=g)
    rb = replay_inputs(teacher, base.diffusion, source="gaussian", n=3, shape=(1, 6, 6), old_classes=(0, 1),
                       distill=True, generator=g, device="cpu")
    x_t = base.diffusion.q_sample(x, t, noise=noise)
    data = ((student(x_t, t, y=y) - noise) ** 2).mean()
    with torch.no_grad():
        target = teacher(rb.x, rb.t, y=rb.y)
    replay = ((student(rb.x, rb.t, y=rb.y) - target) ** 2).mean()
    w = 2 / 3
    torch.testing.assert_close(loss, (1 - w) * data + w * 2.0 * replay, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["replay_loss"], replay.detach(), rtol=1e-5, atol=1e-6)


def test_generative_replay_target_is_noise():
    torch.manual_seed(0)
    student, teacher = Toy(), Toy().eval()
    x, y = torch.randn(2, 1, 6, 6), torch.tensor([2, 3])
    base, obj = _objective("gr", teacher, lambd=1.0, teacher_steps=2)
    loss, terms = obj(student, x, y, ctx_for())
    g = torch.Generator().manual_seed(0)
    base.schedule_sampler.sample(2, "cpu", generator=g)
    torch.randn(x.shape, generator=g)
    rb = replay_inputs(teacher, base.diffusion, source="full_generation", n=2, shape=(1, 6, 6),
                       old_classes=(0, 1), distill=False, teacher_steps=2, generator=g, device="cpu")
    # The replay input is a noised teacher sample and the target is exactly the noise used.
    ab = torch.tensor(base.diffusion.alphas_cumprod)[rb.t].float().view(-1, 1, 1, 1)
    x0 = (rb.x - (1 - ab).sqrt() * rb.target) / ab.sqrt()
    assert x0.abs().max() <= 1 + 1e-4  # clipped DDIM samples in [-1, 1]
    assert rb.teacher_nfe == 4


def test_lwf_uses_teacher_on_current_inputs():
    torch.manual_seed(0)
    student, teacher = Toy(), Toy().eval()
    x, y = torch.randn(3, 1, 6, 6), torch.tensor([2, 3, 2])
    base, obj = _objective("gd", teacher, lambd=1.0, source="lwf", weight_replay_loss=False)
    loss, terms = obj(student, x, y, ctx_for())
    g = torch.Generator().manual_seed(0)
    t, _ = base.schedule_sampler.sample(3, "cpu", generator=g)
    noise = torch.randn(x.shape, generator=g)
    x_t = base.diffusion.q_sample(x, t, noise=noise)
    pred = student(x_t, t, y=y)
    with torch.no_grad():
        tgt = teacher(x_t, t, y=y)
    expect = ((pred - noise) ** 2).mean() + ((pred - tgt) ** 2).mean()
    torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-6)


def test_replay_objectives_feed_a_loss_aware_sampler_the_data_loss():
    """generative_distillation (and lwf): the data term's per-sample losses at the sampler's t reach a
    loss-second-moment sampler exactly as DiffusionObjective gives them; the replay term's do not."""
    from guided_diffusion.diffusion.resample import LossSecondMomentResampler

    torch.manual_seed(0)
    student, teacher = Toy(), Toy().eval()
    x, y = torch.randn(4, 1, 6, 6), torch.tensor([2, 3, 2, 3])
    for source in ("gaussian", "lwf"):
        base, obj = _objective("gd", teacher, source=source, replay_batch=3)
        base.schedule_sampler = LossSecondMomentResampler(base.diffusion)
        ref = DiffusionObjective(base.diffusion, LossSecondMomentResampler(base.diffusion), class_cond=True)
        for step in range(3):
            obj(student, x, y, ctx_for(step, seed=step))
            ref(student, x, y, ctx_for(step, seed=step))  # the same draws of t and noise: the same data losses
        got, want = base.schedule_sampler, ref.schedule_sampler
        assert got._loss_counts.sum() == 3 * 4, source  # real samples only (the replay batch has 3 more)
        assert np.array_equal(got._loss_counts, want._loss_counts)
        np.testing.assert_allclose(got._loss_history, want._loss_history, rtol=1e-5, atol=1e-7)

    # Once every t has its history the weights follow the losses (a 4-step chain warms up fast).
    diffusion = create_gaussian_diffusion(steps=4, noise_schedule="cosine")
    base = DiffusionObjective(diffusion, LossSecondMomentResampler(diffusion, history_per_term=2), class_cond=True)
    from guided_diffusion.continual.methods.generative import ReplayObjective
    from guided_diffusion.continual.scenario import Task

    method = _method("gd", teacher, source="gaussian", replay_batch=2)
    obj = ReplayObjective(base, method, Task(1, (2, 3), (0, 1, 2, 3), 5))
    for step in range(6):
        obj(student, x, y, ctx_for(step, seed=step))
    w = base.schedule_sampler.weights()
    assert base.schedule_sampler._warmed_up() and not np.allclose(w, w[0])


# ------------------------------------------------------------------ EWC and buffers


def test_ewc_penalty_and_per_sample_fisher():
    from guided_diffusion.continual.methods.ewc import EWC, per_sample_fisher

    torch.manual_seed(0)
    diffusion = create_gaussian_diffusion(steps=50)
    model = Toy()
    x, y = torch.randn(3, 1, 5, 5), torch.tensor([0, 1, 2])
    fisher = per_sample_fisher(model, diffusion, x, y, True, seed=4, device="cpu")
    # By hand: mean over images of squared per-image gradients, same t and noise draws.
    g = torch.Generator().manual_seed(4)
    params = list(model.parameters())
    manual = [torch.zeros_like(p) for p in params]
    for i in range(3):
        t = torch.randint(0, 50, (1,), generator=g)
        n = torch.randn((1, 1, 5, 5), generator=g)
        loss = ((model(diffusion.q_sample(x[i:i + 1], t, noise=n), t, y=y[i:i + 1]) - n) ** 2).mean()
        for m_, gr in zip(manual, torch.autograd.grad(loss, params)):
            m_ += gr ** 2 / 3
    for a, b in zip(fisher, manual):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    ewc = EWC.__new__(EWC)
    ewc.params = params
    ewc.anchors = [(fisher, [p.detach().clone() for p in params])]
    assert ewc.penalty().item() == 0.0
    with torch.no_grad():
        params[0].add_(0.1)
    expect = (fisher[0] * 0.01).sum()
    torch.testing.assert_close(ewc.penalty(), expect, rtol=1e-5, atol=1e-8)


def test_balanced_buffer_is_label_uniform():
    labels = np.repeat(np.arange(6), 50)
    per_task = {0: np.arange(0, 100), 1: np.arange(100, 200), 2: np.arange(200, 300)}
    out = balanced_cut(per_task, labels, 60, True, np.random.RandomState(0))
    for k, idx in out.items():
        assert len(idx) == 20 and np.bincount(labels[idx], minlength=6)[2 * k: 2 * k + 2].tolist() == [10, 10]
    assert len(set(np.concatenate(list(out.values())))) == 60


def test_reservoir_keeps_size_and_is_uniform():
    rng = np.random.RandomState(0)
    counts = np.zeros(100)
    for _ in range(300):
        buf, seen = reservoir_update(np.zeros(0, np.int64), 0, np.arange(50), 10, rng)
        buf, seen = reservoir_update(buf, seen, np.arange(50, 100), 10, rng)
        assert len(buf) == 10 and seen == 100 and len(set(buf)) == 10
        counts[buf] += 1
    # Every item has chance 10/100: the first and second halves are kept equally often.
    assert abs(counts[:50].sum() - counts[50:].sum()) < 0.15 * counts.sum()


# ------------------------------------------------------------------ real runs on mnist5k

TINY = [
    "data.dataset=mnist5k", "data.image_size=28", "model.num_channels=32", "model.num_res_blocks=1",
    "model.channel_mult=1,2", "model.attention_resolutions=14", "model.num_head_channels=32",
    "model.class_cond=true", "diffusion.diffusion_steps=100", "train.batch_size=8", "train.log_interval=2",
    "train.save_interval=2", "train.num_threads=1", "continual.num_tasks=5", "continual.classes_per_task=2",
    "continual.limit_tasks=2", "continual.num_steps=3", "continual.first_task_num_steps=3", "continual.grid_per_class=1",
    "continual.eval_sampler=ddim5", "train.ema_rate=0.9",
    # the main job's preset evaluates after every task (300 samples, 50 steps): a small one here
    "evaluation.num_samples=12", "evaluation.batch_size=12", "evaluation.sampler=5",
]


EVAL = []  # the tiny evaluation classifier's overrides (the main job's preset evaluates), set below


@pytest.fixture(autouse=True, scope="module")
def _tiny_eval(tiny_eval_classifier):
    EVAL[:] = tiny_eval_classifier


def _cfg(tmp_path, method_yaml, extra=()):
    cfg = load_config(os.path.join(ROOT, method_yaml), TINY + EVAL + [f"out_dir={tmp_path}", *extra])
    return cfg


def _final_model(run_dir, task):
    from guided_diffusion.runtime import checkpoint as ckpt

    d = f"{run_dir}/task_{task}"
    step = ckpt.latest_checkpoint(d)
    return ckpt.load_torch(f"{d}/model{step:06d}.pt")


@pytest.mark.parametrize("method", ["naive", "joint", "buffer_replay", "ewc", "generative_replay",
                                    "generative_replay_guide", "generative_distillation",
                                    "gd_partial_generation", "gd_gaussian", "gd_lwf"])
def test_two_task_run(tmp_path, method):
    from guided_diffusion.continual.loop import run_continual

    extra = ["method.n_per_task=4", "method.generation_batch=4", "method.sampler=ddim5"] \
        if method == "generative_replay_guide" else []
    if method == "ewc":
        extra = ["method.num_samples=4"]
    cfg = _cfg(tmp_path, f"yaml/mnist/{method}.yaml", extra)
    ctx = run_continual(cfg)
    with open(f"{ctx.run_dir}/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["task"] for r in rows] == ["0", "1"]
    assert all(float(r["sec_per_step"]) > 0 for r in rows)
    # Each row records the precision it trained in (train.precision: auto, as it resolved here) and the CPU.
    want = experiment.precision_of(cfg)
    assert all(r["precision"] == want.name and r["cpu"] == describe_cpu() for r in rows)
    assert os.path.exists(f"{ctx.run_dir}/task_1/samples.png")
    if method.startswith(("generative", "gd_")) and method != "generative_replay_guide":
        assert float(rows[1]["final_replay_loss"]) > 0  # the replay term was trained on in task 1
    if method == "generative_replay_guide":
        assert int(rows[1]["images"]) == 900 + 4  # the task's real images + n_per_task * 1 generated
    if method == "buffer_replay":
        assert int(rows[1]["images"]) == 900 + 200  # + the buffer of task 0


def test_masip_generation_keys_reach_the_teacher(tmp_path, monkeypatch):
    """method.partial_schedule and method.rederive_eps go to the teacher's DDIM (replay.ddim_generate)."""
    from guided_diffusion.continual import replay
    from guided_diffusion.continual.loop import run_continual

    seen = []
    real = replay.ddim_generate
    monkeypatch.setattr(replay, "ddim_generate", lambda *a, **k: seen.append((k["per_sample"], k["rederive_eps"]))
                        or real(*a, **k))
    cfg = _cfg(tmp_path, "yaml/mnist/gd_partial_generation.yaml",
               ["method.partial_schedule=per_sample", "method.rederive_eps=false", "evaluation.enabled=false"])
    run_continual(cfg)
    assert seen and set(seen) == {(True, False)}
    with pytest.raises(ConfigError, match="method.partial_schedule 'each'"):
        _cfg(tmp_path, "yaml/mnist/gd_partial_generation.yaml", ["method.partial_schedule=each"])


def test_resume_between_tasks_is_bit_identical(tmp_path):
    """A run stopped between the tasks ends as the uninterrupted one. With a loss-aware sampler
    (train.schedule_sampler=loss-second-moment) there is one sampler for the whole run: task 1
    continues task 0's history (its replay objective feeds it the data losses), and the resumed run
    takes it from task 0's final checkpoint."""
    from guided_diffusion.continual.loop import run_continual
    from guided_diffusion.runtime import checkpoint as ckpt

    yaml, lsm = "yaml/mnist/generative_distillation.yaml", ["train.schedule_sampler=loss-second-moment"]
    a = _cfg(tmp_path / "a", yaml, lsm)
    run_continual(a)
    b1 = _cfg(tmp_path / "b", yaml, lsm + ["continual.limit_tasks=1"])
    run_continual(b1)
    b2 = _cfg(tmp_path / "b", yaml, lsm)
    run_continual(b2)
    wa, wb = _final_model(f"{tmp_path}/a/{a.name}", 1), _final_model(f"{tmp_path}/b/{b2.name}", 1)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    def sampler(run, task):
        state = ckpt.load_torch(f"{tmp_path}/{run}/{a.name}/task_{task}/state000003.pt")
        return state["components"]["objective"]["sampler"]

    s0, s1 = sampler("a", 0), sampler("a", 1)
    assert int(s0["loss_counts"].sum()) == 3 * 8  # 3 steps of 8 real images on 100 timesteps: no t full
    assert int(s1["loss_counts"].sum()) == 2 * 3 * 8 and bool((s1["loss_counts"] >= s0["loss_counts"]).all())
    r1 = sampler("b", 1)
    assert torch.equal(r1["loss_counts"], s1["loss_counts"]) and torch.equal(r1["loss_history"], s1["loss_history"])


def test_a_run_resumed_after_a_task_copies_its_teacher_in_the_compute_layout(tmp_path, monkeypatch):
    """The teacher (and whatever a method computes before the task) sees the network in the layout it
    trains in, also where the run resumed after a task and the weights were just read back: bf16
    convolutions round differently in another layout, which broke bit-identical resumption on AMX CPUs
    (auto: bf16, channels_last)."""
    from guided_diffusion.continual import loop as loop_mod

    layouts = []
    real_freeze = loop_mod.freeze

    def recording_freeze(teacher):
        w = next(p for p in teacher.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] > 1)
        layouts.append(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous())
        return real_freeze(teacher)

    monkeypatch.setattr(loop_mod, "freeze", recording_freeze)
    cl = ["train.memory_format=channels_last", "train.precision=fp32"]
    yaml = "yaml/mnist/generative_distillation.yaml"
    loop_mod.run_continual(_cfg(tmp_path / "a", yaml, cl + ["continual.limit_tasks=1"]))
    loop_mod.run_continual(_cfg(tmp_path / "a", yaml, cl))  # resumes after task 0: task 1 copies its teacher
    assert layouts == [True]


def test_resume_mid_task_is_bit_identical(tmp_path):
    from guided_diffusion.continual.loop import run_continual

    a = _cfg(tmp_path / "a", "yaml/mnist/ewc.yaml", ["method.num_samples=4", "continual.num_steps=4"])
    run_continual(a)
    b = _cfg(tmp_path / "b", "yaml/mnist/ewc.yaml", ["method.num_samples=4", "continual.num_steps=4"])
    run_continual(b)
    # Take task 1 back to its step-2 checkpoint, as if the process had been killed after step 2.
    run_dir = f"{tmp_path}/b/{b.name}"
    os.remove(f"{run_dir}/task_1/checkpoint000004.json")
    os.remove(f"{run_dir}/task_1/task_done.json")
    run_continual(b)
    wa, wb = _final_model(f"{tmp_path}/a/{a.name}", 1), _final_model(run_dir, 1)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_unknown_method_and_bad_option(tmp_path):
    import guided_diffusion.continual.methods  # noqa: F401  (registers the schemas)

    with pytest.raises(ConfigError, match="did you mean 'generative_replay'"):
        load_config(None, ["method.name=generative_replya"])
    with pytest.raises(ConfigError, match=r"method\.lamda.*did you mean 'lambd'"):
        load_config(None, ["method.name=generative_distillation", "method.lamda=1"])


# ------------------------------------------------------------------ the continual classifier (GUIDE)


def test_guidance_moves_prediction_toward_new_class():
    """GUIDE's x̂0 guidance with a toy linear classifier: guided samples of an old class are pushed
    toward the new classes."""
    from guided_diffusion.continual.solver import GuidedOptions, guide_cond_fn

    torch.manual_seed(0)
    diffusion = create_gaussian_diffusion(steps=1000, timestep_respacing="ddim10")
    # A denoiser whose x̂0 increases with x (eps = 0.1 x): guidance on x̂0 then acts in the same direction
    # on x. (A random conv can flip dx̂0/dx and reverse any x̂0-guidance.)
    net = lambda x, t, y=None: 0.1 * x  # noqa: E731

    class Linear(torch.nn.Module):
        def forward(self, x, t=None):  # class 3 likes bright images, class 0 dark ones
            m = x.mean(dim=(1, 2, 3))
            return torch.stack([-m, 0 * m, 0 * m, m], 1) * 5

    clf = Linear()
    seen = torch.tensor([True, True, True, True])
    old = torch.tensor([True, True, False, False])
    scales = torch.full((6,), 5.0)
    cond = guide_cond_fn(clf, None, seen, (3,), old, scales, GuidedOptions(), True)  # one new class: target 3
    y = torch.zeros(6, dtype=torch.long)
    noise = torch.randn(6, 1, 6, 6)
    plain = diffusion.ddim_sample_loop(net, (6, 1, 6, 6), noise=noise, model_kwargs={"y": y})
    guided = diffusion.ddim_sample_loop(net, (6, 1, 6, 6), noise=noise, model_kwargs={"y": y}, cond_fn=cond)
    p_plain = torch.softmax(clf(plain), -1)[:, 3]
    p_guided = torch.softmax(clf(guided), -1)[:, 3]
    assert (p_guided > p_plain).all(), (p_plain, p_guided)

    # the noised-classifier variant: the same classifier on (x_t, t), no pass through the denoiser; ancestral too
    cond_n = guide_cond_fn(clf, None, seen, (3,), old, scales, GuidedOptions(), True, noised=True)
    assert not getattr(cond_n, "needs_pred_xstart", False)
    for loop in (diffusion.ddim_sample_loop, diffusion.p_sample_loop):
        torch.manual_seed(1)
        plain = loop(net, (6, 1, 6, 6), noise=noise, model_kwargs={"y": y})
        torch.manual_seed(1)
        guided = loop(net, (6, 1, 6, 6), noise=noise, model_kwargs={"y": y}, cond_fn=cond_n)
        p_plain, p_guided = (torch.softmax(clf(v), -1)[:, 3] for v in (plain, guided))
        assert (p_guided > p_plain).all(), (loop.__name__, p_plain, p_guided)


def test_solver_batch_composition_and_trimmed_logits(tmp_path):
    from guided_diffusion.continual.loop import run_continual
    from guided_diffusion.continual.solver import run_solver

    cfg = _cfg(tmp_path, "yaml/mnist/solver.yaml",
               ["solver.init_num_steps=3", "solver.num_steps=2", "solver.batch_size=12", "solver.sampler=ddim5",
                "solver.log_interval=1", "solver.augment=crop,flip,rotation,jitter,erasing",
                "solver.generation_interval=1"])
    run_continual(cfg)
    for replay in ("plain", "soft", "soft_kd", "guided"):
        c = cfg.__class__(**{**cfg.__dict__, "solver": cfg.solver.__class__(**{**cfg.solver.__dict__, "replay": replay})})
        solver = run_solver(c)
        with open(f"{solver.run_dir}/metrics.csv") as f:
            rows = list(csv.DictReader(f))
        assert [int(r["real_per_batch"]) for r in rows] == [12, 6]  # B/(i+1) real ...
        assert [int(r["replay_per_batch"]) for r in rows] == [0, 6]  # ... and B*i/(i+1) replay
        assert int(rows[1]["gen_images"]) == 2 * 6  # regenerated every step
        assert 0 <= float(rows[1]["replay_label_agree"]) <= 1 and float(rows[1]["replay_old_entropy"]) >= 0
        assert 0 <= float(rows[1]["avg_acc"]) <= 1
    # GUIDE's train_noised_classifier: a second classifier trained on q_sample(x, t) guides on x_t
    noised = dataclasses.replace(cfg.solver.guided, noised_classifier=True)
    c = cfg.__class__(**{**cfg.__dict__, "solver": dataclasses.replace(cfg.solver, replay="guided", guided=noised)})
    solver = run_solver(c)
    assert solver.run_dir.endswith("solver_guided_noised") and solver.nclf is not None
    assert os.path.exists(f"{solver.run_dir}/noised_classifier_task_1.pt")
    with open(f"{solver.run_dir}/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert int(rows[1]["gen_images"]) == 2 * 6 and float(rows[1]["gen_sec"]) > 0
    with pytest.raises(ConfigError, match="noised_classifier"):
        run_solver(cfg.__class__(**{**cfg.__dict__, "solver": dataclasses.replace(cfg.solver, replay="plain",
                                                                                   guided=noised)}))

    # Trimmed logits: after task 0 the classifier was trained on classes 0 and 1 only, so the
    # unseen classes' logits received no gradient pushing them up; all its task-0 test
    # predictions are 0 or 1 when trained long enough -- here we check the mask itself.
    logits = torch.zeros(2, 10).masked_fill(~torch.tensor([True, True] + [False] * 8), float("-inf"))
    assert torch.isinf(torch.nn.functional.log_softmax(logits, -1)[:, 2:]).all()


def test_init_from_takes_another_methods_first_task_bit_identically(tmp_path):
    """Task 0 is method-independent: an EWC run seeded with a naive run's task 0 equals an EWC run
    that trained it itself (task 1 weights, the Fisher and the metrics rows); a source made with
    other settings is refused, naming the differing key, before anything is written."""
    from guided_diffusion.continual.loop import run_continual
    from guided_diffusion.runtime.config import ConfigError

    ewc = ["method.num_samples=4"]
    src = run_continual(_cfg(tmp_path / "src", "yaml/mnist/naive.yaml", ["continual.limit_tasks=1"]))
    own = run_continual(_cfg(tmp_path / "own", "yaml/mnist/ewc.yaml", ewc))
    seeded = run_continual(_cfg(tmp_path / "seeded", "yaml/mnist/ewc.yaml", ewc + [f"continual.init_from={src.run_dir}"]))
    wa, wb = _final_model(own.run_dir, 1), _final_model(seeded.run_dir, 1)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    from guided_diffusion.runtime import checkpoint as ckpt

    fa, fb = (ckpt.load_torch(f"{r.run_dir}/task_0/method_state.pt") for r in (own, seeded))
    def leaves(obj):
        if isinstance(obj, dict):
            return [v for k in sorted(obj) for v in leaves(obj[k])]
        if isinstance(obj, (list, tuple)):
            return [v for item in obj for v in leaves(item)]
        return [obj]

    la, lb = leaves(fa), leaves(fb)
    assert len(la) == len(lb) and any(torch.is_tensor(v) for v in la)  # the Fisher and the anchors
    assert all(torch.equal(u, v) if torch.is_tensor(u) else u == v for u, v in zip(la, lb))
    with open(f"{own.run_dir}/metrics.csv") as f, open(f"{seeded.run_dir}/metrics.csv") as g:
        ra, rb = list(csv.DictReader(f)), list(csv.DictReader(g))
    assert [r["final_loss"] for r in ra] == [r["final_loss"] for r in rb]
    assert "task 0 taken from" in open(f"{seeded.run_dir}/log.txt").read()

    with pytest.raises(ConfigError, match=r"train\.lr"):
        run_continual(_cfg(tmp_path / "bad", "yaml/mnist/ewc.yaml",
                           ewc + ["train.lr=0.5", f"continual.init_from={src.run_dir}"]))
    assert not os.path.exists(f"{tmp_path}/bad/split_mnist_ewc/task_0")


def test_soft_target_kd_by_hand_and_finite_with_trimmed_logits():
    """The soft_kd replay loss: T^2 KL(p_teacher over the old classes || p_student over its logits), by
    hand in numpy; finite when the student's unseen logits are -inf and the teacher's are large."""
    import numpy as np

    from guided_diffusion.continual.solver import soft_target_kd

    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(5, 10, generator=g) * 3
    teacher[:, 4:] = 50.0  # the previous classifier's untrained logits: must not matter
    student = torch.randn(5, 10, generator=g) * 3
    student[:, 6:] = float("-inf")  # trimmed: classes 0..5 seen, 0..3 old
    old, T = [0, 1, 2, 3], 2.0
    kd = soft_target_kd(student, teacher, old, T)

    t, s = teacher.double().numpy()[:, old] / T, student.double().numpy()[:, :6] / T
    pt = np.exp(t - t.max(1, keepdims=True))
    pt /= pt.sum(1, keepdims=True)
    log_ps = s - s.max(1, keepdims=True) - np.log(np.exp(s - s.max(1, keepdims=True)).sum(1, keepdims=True))
    want = (pt * (np.log(pt) - log_ps[:, old])).sum(1).mean() * T * T
    assert torch.isfinite(kd) and abs(kd.item() - want) < 1e-5

    # zero when the student copies the teacher on the old classes and gives the new ones nothing
    copy = torch.full((5, 10), float("-inf"))
    copy[:, old] = teacher[:, old]
    assert abs(soft_target_kd(copy, teacher, old, T).item()) < 1e-6
    # positive as soon as the student puts mass on a new class
    copy[:, 4] = teacher[:, 0]
    assert soft_target_kd(copy, teacher, old, T).item() > 0.1
