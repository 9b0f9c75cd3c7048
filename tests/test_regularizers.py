"""The baselines' math (continual/regularizers.py) against hand computations: L2, SI's path integral on a
quadratic, MAS on a linear model, A-GEM's projection and memory, the rehearsal coefficient."""

import pytest
import torch

from guided_diffusion.continual.regularizers import (
    EpisodicMemory,
    L2Anchor,
    MemoryAwareSynapses,
    SynapticIntelligence,
    agem_project_,
    diffusion_outputs,
    mas_importance,
    quadratic_penalty,
    rehearsal_loss,
)
from guided_diffusion.script_util import create_gaussian_diffusion


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread beats two contending ones on a shared, loaded CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------
# L2


def test_l2_penalty_by_hand_and_clog_reduction():
    p0, p1 = torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([[3.0]], requires_grad=True)
    l2 = L2Anchor([p0, p1], lambd=2.0)
    clog = L2Anchor([p0, p1], lambd=2.0, reduction="clog")
    assert l2.penalty().item() == 0.0 and clog.penalty().item() == 0.0  # no previous task yet
    l2.consolidate()
    clog.consolidate()
    with torch.no_grad():
        p0.add_(torch.tensor([0.5, -1.0]))
        p1.add_(2.0)
    # sum: 2 * (0.25 + 1 + 4) = 10.5; CLoG's per-tensor means: 2 * ((0.25 + 1) / 2 + 4) = 9.25
    assert l2.penalty().item() == 10.5
    assert clog.penalty().item() == 9.25
    l2.penalty().backward()
    assert p0.grad.tolist() == [2.0, -4.0] and p1.grad.tolist() == [[8.0]]  # 2 lambd (theta - theta*)
    fresh = L2Anchor([p0, p1], lambd=2.0)
    fresh.load_state_dict(l2.state_dict())
    assert fresh.penalty().item() == 10.5
    with pytest.raises(ValueError, match="reduction"):
        L2Anchor([p0], 1.0, reduction="mean")


# ---------------------------------------------------------------------------------------------
# SI


def sgd_on_quadratic(si, theta, a, b, lr, steps):
    """Plain gradient descent on L = 0.5 a (theta - b)^2, SI bracketing every step."""
    opt = torch.optim.SGD([theta], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * a * (theta - b) ** 2).sum().backward()
        si.before_step([theta.grad], includes_penalty=False)
        opt.step()
        si.after_step()


def test_si_path_integral_on_a_quadratic_by_hand():
    # a = 2, b = 1, theta0 = 3, lr 0.25: theta 3 -> 2 -> 1.5 -> 1.25, g = 4, 2, 1, steps -1, -0.5, -0.25.
    # omega = -(4 * -1) - (2 * -0.5) - (1 * -0.25) = 5.25.
    theta = torch.tensor([3.0], requires_grad=True)
    si = SynapticIntelligence([theta], c=0.5, xi=0.4375)
    sgd_on_quadratic(si, theta, 2.0, 1.0, 0.25, 3)
    assert theta.item() == 1.25
    assert si.omega[0].item() == 5.25
    si.consolidate()
    # Delta = 1.25 - 3 = -1.75, Delta^2 + xi = 3.0625 + 0.4375 = 3.5, Omega = relu(0 + 5.25 / 3.5) = 1.5
    assert si.importance[0].item() == 1.5
    assert si.omega[0].item() == 0.0 and si.anchor[0].item() == 1.25
    with torch.no_grad():
        theta.fill_(2.25)
    assert si.penalty().item() == 0.5 * 1.5 * 1.0  # c Omega (theta - theta*)^2, no 1/2


def test_si_path_integral_equals_the_closed_form():
    # GD on 0.5 a (theta - b)^2: theta_k - b = r^k (theta0 - b), r = 1 - lr a, and -g_k * delta_k = lr g_k^2,
    # so omega = lr a^2 (theta0 - b)^2 (1 - r^(2K)) / (1 - r^2).
    a, b, theta0, lr, K = torch.tensor([2.0, 1.0]), torch.tensor([1.0, -1.0]), torch.tensor([3.0, 1.0]), 0.25, 10
    theta = theta0.clone().requires_grad_(True)
    si = SynapticIntelligence([theta], c=1.0, xi=0.1)
    sgd_on_quadratic(si, theta, a, b, lr, K)
    r = 1 - lr * a.double()
    expect = lr * a.double() ** 2 * (theta0.double() - b) ** 2 * (1 - r ** (2 * K)) / (1 - r ** 2)
    torch.testing.assert_close(si.omega[0].double(), expect, rtol=1e-6, atol=0)


def test_si_relu_and_accumulation_by_hand():
    theta = torch.tensor([0.0, 0.0], requires_grad=True)
    si = SynapticIntelligence([theta], c=1.0, xi=0.25)
    si.importance[0].copy_(torch.tensor([0.0, 1.5]))
    # An uphill step (g = +1, delta = +0.5): omega = -0.5 on both entries.
    si.before_step([torch.tensor([1.0, 1.0])], includes_penalty=False)
    with torch.no_grad():
        theta.add_(0.5)
    si.after_step()
    assert si.omega[0].tolist() == [-0.5, -0.5]
    si.consolidate()
    # Omega = relu(Omega - 0.5 / (0.25 + 0.25)) = relu([-1, 0.5]) = [0, 0.5]
    assert si.importance[0].tolist() == [0.0, 0.5]


def test_si_takes_the_unregularised_gradient():
    """With the penalty in the loss, before_step subtracts its gradient: omega integrates dL/dtheta only."""
    theta = torch.tensor([3.0, -1.0], requires_grad=True)
    si = SynapticIntelligence([theta], c=0.7, xi=0.1)
    sgd_on_quadratic(si, theta, 2.0, 1.0, 0.1, 4)
    si.consolidate()
    with torch.no_grad():
        theta.add_(torch.tensor([0.3, -0.2]))  # away from theta*, where the penalty has a gradient
    opt = torch.optim.SGD([theta], lr=0.1)
    loss_fn = lambda: (0.5 * 3.0 * (theta - 0.5) ** 2).sum()  # noqa: E731  task 2's loss
    unreg = torch.autograd.grad(loss_fn(), [theta])[0]
    opt.zero_grad()
    (loss_fn() + si.penalty()).backward()
    assert not torch.allclose(theta.grad, unreg)  # the penalty does push
    before = theta.detach().clone()
    si.before_step([theta.grad], includes_penalty=True)
    opt.step()
    si.after_step()
    torch.testing.assert_close(si.omega[0], -unreg * (theta.detach() - before), rtol=1e-6, atol=1e-7)
    state = si.state_dict()
    other = SynapticIntelligence([theta], c=0.7, xi=0.1)
    other.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(other.omega + other.importance + other.anchor,
                                                   si.omega + si.importance + si.anchor))


# ---------------------------------------------------------------------------------------------
# MAS

W = [[1.0, 2.0, 0.0], [0.0, -1.0, 1.0]]
X = [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
# d ||W x||^2 / dW = 2 (W x) x^T:  x1: W x = [1, 1] -> [[2, 0, 2], [2, 0, 2]]
#                                  x2: W x = [2, 0] -> [[0, 4, 4], [0, 0, 0]]
#                                  x3: W x = [3, -1] -> [[6, 6, 0], [-2, -2, 0]]
PER_SAMPLE = [[8 / 3, 10 / 3, 6 / 3], [4 / 3, 2 / 3, 2 / 3]]  # mean of |.| over the three samples
ONE_BATCH = [[8 / 3, 10 / 3, 6 / 3], [0.0, 2 / 3, 2 / 3]]  # |sum| / 3: the official code with a batch of 3


def linear():
    net = torch.nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor(W))
    return net


def test_mas_importance_on_a_linear_model_by_hand():
    net, x = linear(), torch.tensor(X)
    per_sample = mas_importance(list(net.parameters()), (net(x[i:i + 1]) for i in range(3)))
    torch.testing.assert_close(per_sample[0], torch.tensor(PER_SAMPLE))
    batched = mas_importance(list(net.parameters()), [net(x)])
    torch.testing.assert_close(batched[0], torch.tensor(ONE_BATCH))


def test_mas_importances_add_over_tasks_and_penalty_by_hand():
    net = linear()
    params = list(net.parameters())
    mas = MemoryAwareSynapses(params, lambd=0.5)
    assert mas.penalty().item() == 0.0
    mas.consolidate([torch.ones(2, 3)])
    with torch.no_grad():
        net.weight.add_(1.0)
    mas.consolidate([torch.full((2, 3), 2.0)])  # Omega = 1 + 2; theta* = the weights now
    assert mas.importance[0].tolist() == [[3.0] * 3] * 2
    with torch.no_grad():
        net.weight[0, 0] += 2.0
    assert mas.penalty().item() == 0.5 * 3.0 * 4.0  # lambd Omega (theta - theta*)^2
    other = MemoryAwareSynapses(params, lambd=0.5)
    other.load_state_dict(mas.state_dict())
    assert other.penalty().item() == 6.0


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.emb = torch.nn.Embedding(3, 1)

    def forward(self, x, t, y=None):
        return self.conv(x) * (1 + t.float()[:, None, None, None] / 50) + self.emb(y)[:, :, None, None]


def test_mas_diffusion_outputs_draw_t_and_noise_per_sample():
    torch.manual_seed(0)
    diffusion = create_gaussian_diffusion(steps=50)
    model = Toy().train()
    params = list(model.parameters())
    x, y = torch.randn(3, 1, 5, 5), torch.tensor([0, 1, 2])
    got = mas_importance(params, diffusion_outputs(model, diffusion, x, y, seed=4))
    assert model.training  # put back
    g = torch.Generator().manual_seed(4)
    manual = [torch.zeros_like(p) for p in params]
    for i in range(3):
        t = torch.randint(0, 50, (1,), generator=g)
        n = torch.randn((1, 1, 5, 5), generator=g)
        out = model(diffusion.q_sample(x[i:i + 1], t, noise=n), t, y=y[i:i + 1])
        for m, gr in zip(manual, torch.autograd.grad((out ** 2).sum(), params)):
            m += gr.abs() / 3
    for a, b in zip(got, manual):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_quadratic_penalty_by_hand():
    p = [torch.tensor([1.0, 2.0])]
    assert quadratic_penalty(p, [torch.tensor([0.0, 0.0])], [torch.tensor([3.0, 0.5])]).item() == 3.0 + 2.0


# ---------------------------------------------------------------------------------------------
# A-GEM


def flat_dot(a, b):
    return sum((x * y).sum() for x, y in zip(a, b))


def test_agem_projects_by_hand():
    g = [torch.tensor([1.0, 0.0]), torch.tensor([-1.0])]
    ref = [torch.tensor([0.0, 1.0]), torch.tensor([1.0])]
    # g.ref = -1 < 0, ref.ref = 2: g - (-1 / 2) ref = [1, 0.5], [-0.5]
    assert agem_project_(g, ref).item() is True
    assert g[0].tolist() == [1.0, 0.5] and g[1].tolist() == [-0.5]
    assert flat_dot(g, ref).item() == 0.0


def test_agem_leaves_a_compatible_gradient_unchanged():
    g = [torch.tensor([1.0, 1.0]), torch.tensor([1.0]), None]
    ref = [torch.tensor([0.0, 1.0]), torch.tensor([-0.5]), torch.tensor([3.0])]
    keep = [t.clone() for t in g[:2]]
    assert agem_project_(g, ref).item() is False
    assert all(torch.equal(a, b) for a, b in zip(g[:2], keep)) and g[2] is None
    # a zero reference gradient: nothing to project onto, no NaN
    assert agem_project_(g, [torch.zeros(2), torch.zeros(1), None]).item() is False
    assert all(torch.equal(a, b) for a, b in zip(g[:2], keep))


def test_agem_after_projection_the_dot_product_is_non_negative():
    gen = torch.Generator().manual_seed(0)
    projected = 0
    for _ in range(50):
        g = [torch.randn(7, 3, generator=gen), torch.randn(5, generator=gen)]
        ref = [torch.randn(7, 3, generator=gen), torch.randn(5, generator=gen)]
        before = flat_dot(g, ref).item()
        did = agem_project_(g, ref).item()
        after = flat_dot(g, ref).item()
        assert did == (before < 0)
        if did:
            projected += 1
            assert abs(after) < 1e-5
        else:
            assert after == pytest.approx(before)
    assert 10 < projected < 40  # both branches ran


def stream(n, offset=0):
    x = torch.arange(offset, offset + n, dtype=torch.float32)[:, None].repeat(1, 2)
    return x, torch.arange(offset, offset + n)


def feed(mem, x, y, batch=37):
    for s in range(0, len(x), batch):
        mem.add(x[s:s + batch], y[s:s + batch])


def test_episodic_memory_is_seeded_and_resumable():
    x, y = stream(1000)
    a, b, c = EpisodicMemory(200, seed=3), EpisodicMemory(200, seed=3), EpisodicMemory(200, seed=4)
    for m in (a, b, c):
        feed(m, x[:500], y[:500])
    assert len(a) == 200 and a.seen == 500
    assert torch.equal(a.y, b.y) and not torch.equal(a.y, c.y)
    assert torch.equal(a.x[:, 0].long(), a.y) and torch.equal(a.x[:, 1].long(), a.y)  # pairs stay together
    assert len(set(a.y.tolist())) == 200
    resumed = EpisodicMemory(200, seed=99)
    resumed.load_state_dict(a.state_dict())
    for m in (a, resumed):
        feed(m, x[500:], y[500:])
    assert torch.equal(a.y, resumed.y) and torch.equal(a.x, resumed.x)
    xa, ya = a.sample(64)
    xr, yr = resumed.sample(64)
    assert torch.equal(ya, yr) and torch.equal(xa, xr) and len(set(ya.tolist())) == 64
    assert len(a.sample(256)[1]) == 200  # CLoG: 256 asked of 200 gives the whole memory


def test_episodic_memory_fills_then_keeps_each_image_with_equal_chance():
    mem = EpisodicMemory(4, seed=0)
    mem.add(*stream(3))
    assert mem.y.tolist() == [0, 1, 2]  # free slots fill in order
    # Algorithm R: each of 12 streamed images is kept with probability 4 / 12.
    counts = torch.zeros(12)
    trials = 3000
    for s in range(trials):
        m = EpisodicMemory(4, seed=s)
        feed(m, *stream(12), batch=5)
        counts[m.y] += 1
    assert ((counts / trials - 1 / 3).abs() < 0.04).all(), counts / trials


# ---------------------------------------------------------------------------------------------
# rehearsal coefficient


def test_rehearsal_loss_by_hand():
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mask = torch.tensor([False, True, False, True])
    assert rehearsal_loss(losses, mask, 0.5).item() == 2.0 + 0.5 * 3.0
    assert rehearsal_loss(losses, torch.zeros(4, dtype=torch.bool), 0.5).item() == 2.5
    assert rehearsal_loss(losses, torch.ones(4, dtype=torch.bool), 0.5).item() == 0.5 * 2.5
    with pytest.raises(ValueError):
        rehearsal_loss(losses, mask[:3], 0.5)
