"""The continual classifier's pieces against hand computations: GUIDE's guidance flags, the
time-conditioned noised classifier, Masip's soft replay loss, trailing timestep spacing and the
replay judgement (Masip et al.'s solver, GUIDE's guidance)."""

import os
import dataclasses

import numpy as np
import pytest
import torch

from guided_diffusion.classifiers.nets import TimeConditioned, create_classifier_net
from guided_diffusion.continual.solver import (
    guide_cond_fn,
    masip_soft_loss,
    replay_judgement,
)
from guided_diffusion.continual.solver import (REPLAY_MODES, GuidedOptions, SoftOptions, SolverConfig, soft_target_kd,
                                              trims_logits)
from guided_diffusion.diffusion.respace import SpacedDiffusion, space_timesteps
from guided_diffusion.runtime.config import ConfigError
from guided_diffusion.script_util import create_gaussian_diffusion

# ------------------------------------------------------------------ GUIDE's flags

C, SHAPE = 4, (1, 2, 2)  # classes 0, 1 old, 2, 3 new (task 1 of 2 x 2)
SEEN = torch.tensor([True, True, True, True])
OLD = torch.tensor([True, True, False, False])


class Affine(torch.nn.Module):
    """logits = A flatten(x) + b: d log p(k | x) / dx = A_k - sum_j p_j A_j, by hand."""

    def __init__(self, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = torch.randn(C, int(np.prod(SHAPE)), generator=g, dtype=torch.float64)
        self.b = torch.randn(C, generator=g, dtype=torch.float64)

    def forward(self, x, t=None):
        return x.flatten(1).double() @ self.A.T + self.b


def _grad_log_p(net, x0, k, mask):
    """numpy: d log p(k | x0) / d x0 for an Affine net, softmax over the classes in ``mask``."""
    A, b = net.A.numpy(), net.b.numpy()
    z = x0.reshape(len(x0), -1) @ A.T + b
    z = np.where(mask.numpy(), z, -np.inf)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return np.stack([A[k[i]] - p[i] @ A for i in range(len(x0))]).reshape(x0.shape)


def _call(cond_fn, x):
    """The cond_fn as p_sample calls it with needs_pred_xstart: x̂0 = 2 x (so d x̂0 / dx = 2)."""
    x = x.clone().requires_grad_(True)
    y = torch.tensor([0, 1, 1])
    return cond_fn(x, torch.tensor([10, 20, 30]), pred_xstart=2 * x, y=y).detach().numpy()


@pytest.mark.parametrize("flags", [
    dict(use_new_grad=True, guid_to_new_classes=True),
    dict(use_new_grad=True, guid_to_new_classes=False),
    dict(use_new_grad=False, use_old_grad=True),
    dict(use_new_grad=False, use_old_grad=True, negate_old_grad=True),
    dict(use_new_grad=True, guid_to_new_classes=True, trim_logits=False),
    dict(use_new_grad=False, use_old_grad=True, trim_logits=False),
])
def test_guide_cond_fn_each_flag_combination_by_hand(flags):
    flags = dict(flags)
    solver = dataclasses.replace(SolverConfig(), trim_logits=flags.pop("trim_logits", None))
    s = dataclasses.replace(GuidedOptions(), **flags)
    clf, prev = Affine(1), Affine(2)
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    scales = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    got = _call(guide_cond_fn(clf, prev, SEEN, (2, 3), OLD, scales, s, trims_logits(solver)), x)

    x0, y = 2 * x.numpy(), np.array([0, 1, 1])
    all_classes = torch.ones(C, dtype=torch.bool)
    trim = solver.trim_logits is not False  # unset: trimmed (GUIDE), for every replay but soft
    if s.use_old_grad:  # toward y under the previous classifier, over the old classes
        g = _grad_log_p(prev, x0, y, OLD if trim else all_classes)
        g = -g if s.negate_old_grad else g
    elif s.guid_to_new_classes:  # toward the new class with the largest logit of the current one
        z = x0.reshape(3, -1) @ clf.A.numpy().T + clf.b.numpy()
        target = 2 + z[:, 2:].argmax(1)
        g = _grad_log_p(clf, x0, target, SEEN if trim else all_classes)
    else:  # away from y under the current classifier
        g = -_grad_log_p(clf, x0, y, SEEN)
    want = scales.numpy().reshape(-1, 1, 1, 1) * 2 * g
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)  # the logits are taken in float32


def test_guide_cond_fn_neither_gradient_is_no_guidance_and_both_are_refused():
    s = GuidedOptions(use_new_grad=False, use_old_grad=False)
    assert guide_cond_fn(Affine(1), Affine(2), SEEN, (2, 3), OLD, torch.ones(3), s, True) is None
    s = GuidedOptions(use_new_grad=True, use_old_grad=True)
    with pytest.raises(ConfigError, match="use_old_grad and solver.guided.use_new_grad"):
        guide_cond_fn(Affine(1), Affine(2), SEEN, (2, 3), OLD, torch.ones(3), s, True)


def test_noised_guidance_gives_t_to_the_classifier_and_differentiates_x_t():
    """The noised variant: the classifiers see (x_t, t), the gradient is d/dx_t (no x̂0)."""
    seen_t = []

    class Recording(Affine):
        def forward(self, x, t=None):
            seen_t.append(t)
            return super().forward(x)

    s = GuidedOptions(use_new_grad=True, guid_to_new_classes=True)
    clf = Recording(1)
    cond = guide_cond_fn(clf, None, SEEN, (2, 3), OLD, torch.ones(3, dtype=torch.float64), s, True, noised=True)
    assert not getattr(cond, "needs_pred_xstart", False)
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    t = torch.tensor([999, 500, 7])
    got = cond(x, t, y=torch.tensor([0, 1, 1])).numpy()
    assert len(seen_t) == 1 and torch.equal(seen_t[0], t)
    z = x.numpy().reshape(3, -1) @ clf.A.numpy().T + clf.b.numpy()
    np.testing.assert_allclose(got, _grad_log_p(clf, x.numpy(), 2 + z[:, 2:].argmax(1), SEEN), rtol=1e-5, atol=1e-7)


def test_time_conditioned_classifier_starts_as_its_net_and_learns_to_use_t():
    torch.manual_seed(0)
    net = create_classifier_net("cnn", 10, 1, time_conditioned=True)
    assert isinstance(net, TimeConditioned)
    net.eval()
    x = torch.randn(4, 1, 16, 16)
    t = torch.tensor([0, 250, 500, 999])
    # the time MLP's last layer starts at zero: exactly the wrapped net, whatever t
    assert torch.equal(net(x, t), net.net(x)) and torch.equal(net(x), net(x, torch.zeros(4)))
    # a task only t can solve: the label is whether t > 500, the images are the same noise
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    xs = torch.randn(1, 1, 16, 16).expand(64, -1, -1, -1)
    ts = torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(1))
    labels = (ts > 500).long()
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xs, ts), labels).backward()
        opt.step()
    net.eval()
    assert (net(xs, ts).argmax(-1) == labels).float().mean() > 0.9


# ------------------------------------------------------------------ Masip's soft replay


def test_masip_soft_loss_by_hand_and_finite_with_trimmed_student_logits():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(5, 10, generator=g, dtype=torch.float64) * 3
    student = torch.randn(5, 10, generator=g, dtype=torch.float64) * 3
    student[:, 6:] = float("-inf")  # trimmed: classes 0..5 seen
    T = 2.0
    got = masip_soft_loss(student, teacher, T)
    s, t = student.numpy()[:, :6] / T, teacher.numpy() / T
    ps = np.exp(s - s.max(1, keepdims=True))
    ps /= ps.sum(1, keepdims=True)
    log_pt = t - t.max(1, keepdims=True) - np.log(np.exp(t - t.max(1, keepdims=True)).sum(1, keepdims=True))
    want = -(ps * log_pt[:, :6]).sum(1).mean() * T * T  # over ALL teacher logits, student's softmax first
    assert torch.isfinite(got) and abs(got.item() - want) < 1e-5


def test_masip_soft_loss_moves_the_student_to_the_teachers_argmax():
    """Its "reversed" form: with an uncertain teacher (0.4 / 0.35 / 0.25) the student's mass goes to
    the teacher's most likely class, not to the teacher's distribution."""
    teacher = torch.log(torch.tensor([[0.4, 0.35, 0.25]])) * 2.0  # softmax(teacher / 2) = (0.4, 0.35, 0.25)
    student = torch.zeros(1, 3, requires_grad=True)
    opt = torch.optim.SGD([student], lr=1.0)
    for _ in range(300):
        opt.zero_grad()
        masip_soft_loss(student, teacher, 2.0).backward()
        opt.step()
    p = torch.softmax(student / 2.0, -1)[0]
    assert p[0] > 0.9, p


def test_replay_judgement_by_hand():
    logits = torch.tensor([[3.0, 1.0, 9.0], [0.0, 2.0, 9.0], [1.0, 1.0, -9.0]])
    old = torch.tensor([True, True, False])
    agree, entropy = replay_judgement(lambda x: x, logits, torch.tensor([0, 0, 1]), old)
    assert agree == pytest.approx(1 / 3)  # argmax over the old classes: 0, 1, 0 (a tie: the first)
    p = torch.softmax(logits[:, :2], -1)
    assert entropy == pytest.approx(float(-(p * p.log()).sum(-1).mean()), rel=1e-6)


# ------------------------------------------------------------------ trailing spacing


def test_trailing_respacing_starts_at_the_last_timestep():
    want = {99, 199, 299, 399, 499, 599, 699, 799, 899, 999}
    assert space_timesteps(1000, "ddim10t") == want == space_timesteps(1000, "10T")
    assert max(space_timesteps(1000, "ddim10")) == 900  # ADM's leading spacing, unchanged
    d = create_gaussian_diffusion(steps=1000, noise_schedule="cosine", timestep_respacing="ddim10t")
    assert isinstance(d, SpacedDiffusion) and d.timestep_map[-1] == 999 and d.num_timesteps == 10
    # the first sampling step starts from (nearly) pure noise: alpha-bar of t = 999, not of 900
    assert d.alphas_cumprod[-1] < 1e-3
    for bad in ("ddimxt", "t", "ddim0t", "2000t"):
        with pytest.raises(ValueError, match="respacing|trailing"):
            space_timesteps(1000, bad)


def test_soft_replay_is_untrimmed_and_refuses_trimming():
    """Masip's soft targets are all logits of an untrimmed classifier: trim_logits unset means
    untrimmed for soft and trimmed (GUIDE) for the others; soft with trim_logits true is refused."""
    from guided_diffusion.continual.solver import Solver, trims_logits
    from guided_diffusion.runtime.config import Config

    for replay, want in (("soft", False), ("soft_kd", True), ("plain", True), ("guided", True)):
        assert trims_logits(dataclasses.replace(SolverConfig(), replay=replay)) is want
        assert trims_logits(dataclasses.replace(SolverConfig(), replay=replay, trim_logits=False)) is False
    cfg = Config()
    cfg.model.class_cond = True
    cfg.solver = dataclasses.replace(SolverConfig(), replay="soft", trim_logits=True)
    with pytest.raises(ConfigError, match="soft_kd"):
        Solver(cfg, None, None, None, None, None, None, "cpu", "", None)


# ------------------------------------------------------------------ solver.arch


def test_mlp_solver_is_avalanches_simple_mlp():
    """Masip's --solver_type mlp: Avalanche's SimpleMLP defaults (one hidden layer of 512, ReLU, dropout
    0.5) on the flattened image; it takes the time conditioning like the conv nets."""
    net = create_classifier_net("mlp", 10, 1)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 512), (512, 10)]
    assert sum(p.numel() for p in net.parameters()) == 784 * 512 + 512 + 512 * 10 + 10
    assert [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)] == [0.5]
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    net.eval()
    h = torch.relu(x.flatten(1) @ linears[0].weight.T + linears[0].bias)
    torch.testing.assert_close(net(x), h @ linears[1].weight.T + linears[1].bias)
    rgb = create_classifier_net("mlp", 100, 3, image_size=16)
    assert rgb(torch.zeros(2, 3, 16, 16)).shape == (2, 100)
    timed = create_classifier_net("mlp", 10, 1, time_conditioned=True).eval()
    timed.net.load_state_dict(net.state_dict())
    torch.testing.assert_close(timed(x, torch.tensor([0, 10, 500, 999])), net(x))  # the wrapper starts as its net


def test_solver_arch_is_checked_and_an_mlp_solver_trains_task_after_task(tmp_path):
    from guided_diffusion.continual.solver import check_solver, run_solver
    from guided_diffusion.runtime.config import Config, load_config

    cfg = Config()
    cfg.model.class_cond = True
    with pytest.raises(ConfigError, match="solver.arch 'vgg' is not one of resnet18, cnn, masip_cnn, mlp"):
        check_solver(dataclasses.replace(SolverConfig(), arch="vgg"), cfg)
    root = os.path.dirname(os.path.dirname(__file__))
    cfg = load_config(f"{root}/yaml/mnist/solver.yaml", [
        f"out_dir={tmp_path}", "continual.limit_tasks=2", "solver.arch=mlp", "solver.replay=joint",
        "solver.init_num_steps=30", "solver.num_steps=30", "solver.batch_size=32", "solver.augment=",
        "solver.log_interval=10", "train.num_threads=1"])
    solver = run_solver(cfg)
    assert sorted(solver.acc) == [0, 1] and sorted(solver.acc[1]) == [0, 1]
    assert isinstance(solver.clf, torch.nn.Module) and solver.clf.fc.in_features == 512
    assert solver.acc[1][1] > 0.8  # 30 steps of joint training learn the second pair of digits


# ------------------------------------------------------------------ Masip et al.'s solver protocol


def test_masip_cnn_is_their_simple_cnn():
    """Their SimpleCNN's layers and shapes: the 2nd and 4th convs unpadded, a dropout after the global max-pool
    (28 px: 28 -> 26 -> 13 -> 11 -> 5 before the pool; 16 px: 16 -> 14 -> 7 -> 5 -> 2)."""
    net = create_classifier_net("masip_cnn", 10, 1)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size[0], m.padding[0]) for m in convs] == [
        (1, 32, 3, 1), (32, 32, 3, 0), (32, 64, 3, 1), (64, 128, 3, 0), (128, 128, 1, 0)]
    assert [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)] == [0.25, 0.25, 0.25]
    assert net.body(torch.zeros(2, 1, 28, 28)).shape == (2, 128, 5, 5)
    assert net.body(torch.zeros(2, 1, 16, 16)).shape == (2, 128, 2, 2)
    assert net(torch.zeros(2, 1, 16, 16)).shape == (2, 10)
    assert sum(p.numel() for p in net.parameters()) == (
        (9 * 32 + 32) + (9 * 32 * 32 + 32) + (9 * 32 * 64 + 64) + (9 * 64 * 128 + 128) + (128 * 128 + 128) + (128 * 10 + 10))


def test_argmax_replay_by_hand_and_the_batch_splits():
    """van de Ven et al.'s hard targets: the previous classifier's argmax over the old classes; loss
    (1/(i+1)) CE_real + (i/(i+1)) CE_replay. Masip's mixing: B real + B replayed; GUIDE's: B/(i+1) + B i/(i+1)."""
    from guided_diffusion.continual.solver.replays import REPLAY_MODES, batch_split

    task = type("T", (), {"index": 2, "old_classes": (0, 1, 2, 3)})()
    replay = REPLAY_MODES["argmax"](SolverConfig())
    logits = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([4, 5, 0, 0, 0])  # two real rows; the replayed rows' own labels are not used
    prev = torch.tensor([[0.1, 2.0, 0.3, 0.0, 9.0, 0.0], [1.0, 0.0, 0.0, 3.0, 0.0, 7.0], [0.5, 0.4, 0.3, 0.2, 0.0, 0.0]])
    # argmax over the old classes 0-3 only (the previous classifier's 9.0 on class 4 is not an old class)
    hard = torch.tensor([1, 3, 0])
    ce = torch.nn.functional.cross_entropy
    want = ce(logits[:2], labels[:2]) / 3 + ce(logits[2:], hard) * 2 / 3
    torch.testing.assert_close(replay.loss(logits, labels, 2, prev, task), want)
    assert batch_split("masip", 64, 3) == (64, 64) and batch_split("guide", 64, 3) == (16, 48)


def test_masip_solver_protocol_runs_on_an_unconditional_generator(tmp_path):
    """Masip et al.'s protocol end to end, tiny: an unconditional diffusion run, then their solver (their CNN,
    B real + B replayed, constant learning rate, fresh replay every step) with reversed soft targets,
    standard distillation and argmax labels; plain replay (labels from the conditioning) is refused."""
    import csv
    import os

    from guided_diffusion.continual.loop import run_continual
    from guided_diffusion.continual.solver import run_solver
    from guided_diffusion.runtime.config import load_config

    root = os.path.dirname(os.path.dirname(__file__))
    common = [f"out_dir={tmp_path}", "name=u", "model.class_cond=false", "continual.limit_tasks=2",
              "continual.num_steps=3", "continual.first_task_num_steps=3", "evaluation.enabled=false",
              "continual.grid_per_class=0", "train.num_threads=1", "data.image_size=16", "model.channel_mult=1,2",
              "model.attention_resolutions=8"]
    run_continual(load_config(f"{root}/yaml/mnist/generative_distillation.yaml", common))
    solver_keys = ["solver.arch=masip_cnn", "solver.mixing=masip", "solver.lr_schedule=constant",
                   "solver.optimizer=adam", "solver.init_lr=0.001", "solver.lr=0.001", "solver.generation_interval=1",
                   "solver.sampler=ddim2t", "solver.init_num_steps=4", "solver.num_steps=3", "solver.batch_size=8",
                   "solver.augment=", "solver.log_interval=1"]
    for replay in ("soft", "soft_kd", "argmax"):
        cfg = load_config(f"{root}/yaml/mnist/solver.yaml", common + solver_keys + [f"solver.replay={replay}"])
        run_solver(cfg)
        with open(f"{tmp_path}/u/solver_{replay}/metrics.csv") as f:
            rows = list(csv.DictReader(f))
        assert [r["real_per_batch"] for r in rows] == ["8", "8"] and rows[1]["replay_per_batch"] == "8"
    cfg = load_config(f"{root}/yaml/mnist/solver.yaml", common + solver_keys + ["solver.replay=plain"])
    with pytest.raises(ConfigError, match="soft, soft_kd or argmax"):
        run_solver(cfg)


def test_each_replay_modes_options_are_its_own_and_the_flat_keys_say_where_they_went(tmp_path):
    """solver.guided / solver.soft / solver.soft_kd hold their mode's options, typed; the flat keys they
    replaced are refused naming the key to write, and a run's saved config is read with them moved."""
    from guided_diffusion.runtime.config import load_config

    cfg = load_config(None, ["solver.replay=soft_kd", "solver.soft_kd.temperature=3",
                             "solver.guided.scale_max=2.5"])
    assert cfg.solver.soft_kd.temperature == 3.0 and cfg.solver.soft.temperature == 2.0
    assert cfg.solver.guided == GuidedOptions(scale_max=2.5)
    with pytest.raises(ConfigError, match="solver.guided.scale_min: expected a number"):
        load_config(None, ["solver.guided.scale_min=abc"])
    with pytest.raises(ConfigError, match=r"write solver\.soft_kd\.temperature=3"):
        load_config(None, ["solver.replay=soft_kd", "solver.temperature=3"])
    old = tmp_path / "config.yaml"
    old.write_text("solver:\n  replay: soft\n  temperature: 4.0\n  scale_min: 0.3\n  noised_classifier: true\n")
    with pytest.raises(ConfigError, match=r"config.yaml: solver.temperature is an option of the soft replay now: "
                                          r"write solver.soft.temperature=4.0"):
        load_config(str(old))
    saved = load_config(str(old), record=True)
    assert saved.solver.soft.temperature == 4.0 and saved.solver.soft_kd.temperature == 2.0
    assert saved.solver.guided == GuidedOptions(scale_min=0.3, noised_classifier=True)
    # the modes read their own options: soft's temperature, soft_kd's
    s = dataclasses.replace(SolverConfig(), soft=SoftOptions(temperature=1.0), soft_kd=SoftOptions(temperature=5.0))
    student, teacher = torch.randn(4, 6), torch.randn(4, 6)
    task = type("T", (), {"old_classes": (0, 1, 2)})()
    assert torch.equal(REPLAY_MODES["soft"](s).soft_loss(student, teacher, task), masip_soft_loss(student, teacher, 1.0))
    assert torch.equal(REPLAY_MODES["soft_kd"](s).soft_loss(student, teacher, task),
                       soft_target_kd(student, teacher, [0, 1, 2], 5.0))
