"""Timestep respacing: the spec grammar and SpacedDiffusion."""

import numpy as np
import pytest
import torch

from guided_diffusion.diffusion import gaussian_diffusion as gd
from guided_diffusion.diffusion.respace import SpacedDiffusion, space_timesteps


def _by_rule(T, counts):
    """The section rule, written out: sizes T//n (+1 for the first T%n); in a section the index
    advances by (size-1)/(count-1) as an accumulated float and is rounded (ADM's arithmetic:
    the accumulation decides ties, e.g. 7 * 99/14 accumulates to just under 49.5 -> 49)."""
    n = len(counts)
    steps, start = set(), 0
    for i, c in enumerate(counts):
        size = T // n + (1 if i < T % n else 0)
        idx = 0.0
        for _ in range(c):
            steps.add(start + round(idx))
            idx += (size - 1) / (c - 1) if c > 1 else 1
        start += size
    return steps


# space_timesteps(1000, "10,15,20") from ADM's own function.
ADM_10_15_20 = [
    0, 37, 74, 111, 148, 185, 222, 259, 296, 333,
    334, 358, 381, 405, 429, 453, 476, 500, 524, 547, 571, 595, 619, 642, 666,
    667, 684, 702, 719, 737, 754, 772, 789, 807, 824, 842, 859, 877, 894, 912, 929, 947, 964, 982, 999,
]  # fmt: skip


def test_ddim_strides():
    assert space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim25") == set(range(0, 1000, 40))
    assert space_timesteps(1000, "ddim100") == set(range(0, 1000, 10))
    assert space_timesteps(1000, "ddim250") == set(range(0, 1000, 4))
    assert len(space_timesteps(1000, "ddim7")) == 7  # stride 143
    with pytest.raises(ValueError, match="ddim600"):  # ceil(1000 / i) never equals 600
        space_timesteps(1000, "ddim600")
    with pytest.raises(ValueError, match="ddimx"):
        space_timesteps(1000, "ddimx")


def test_sections_exact_sets():
    # 1000 = 334 + 333 + 333: strides 333/9, 332/14, 332/19
    got = space_timesteps(1000, "10,15,20")
    assert got == set(ADM_10_15_20) == _by_rule(1000, [10, 15, 20])
    assert min(got) == 0 and max(got) == 999
    assert {0, 37, 74, 296, 333} <= got  # first section: round(k * 333 / 9)
    assert {334, 358, 666} <= got and {667, 999} <= got
    # ADM's docstring example; the tie at 100 + 49.5 goes down, as in ADM
    got = space_timesteps(300, [10, 15, 20])
    assert got == _by_rule(300, [10, 15, 20]) and 149 in got and 150 not in got
    assert space_timesteps(1000, "10") == {round(k * 999 / 9) for k in range(10)}
    assert space_timesteps(1000, (250,)) == space_timesteps(1000, "250") == _by_rule(1000, [250])
    assert space_timesteps(1000, [1000]) == set(range(1000))
    assert space_timesteps(10, "1") == {0}


@pytest.mark.parametrize("spec", ["", "a,b", "10,,5", "ddim", [1.5], "2000", "-3", [0], object()])
def test_bad_specs_raise_value_error(spec):
    with pytest.raises(ValueError, match="respacing|steps|section"):
        space_timesteps(1000, spec)


def _kwargs(rescale=False, steps=1000):
    return dict(
        betas=gd.get_named_beta_schedule("linear", steps),
        model_mean_type=gd.ModelMeanType.EPSILON,
        model_var_type=gd.ModelVarType.FIXED_LARGE,
        loss_type=gd.LossType.MSE,
        rescale_timesteps=rescale,
    )


def test_spaced_diffusion_recomputes_betas():
    base = gd.GaussianDiffusion(**_kwargs())
    sp = SpacedDiffusion(space_timesteps(1000, "ddim10"), **_kwargs())
    assert sp.num_timesteps == 10 and sp.original_num_steps == 1000
    assert sp.timestep_map == list(range(0, 1000, 100))
    np.testing.assert_allclose(sp.alphas_cumprod, base.alphas_cumprod[sp.timestep_map], rtol=1e-12)
    assert sp.betas[0] == pytest.approx(base.betas[0], rel=1e-10)
    # the identity spacing is the base diffusion
    same = SpacedDiffusion(space_timesteps(1000, "1000"), **_kwargs())
    np.testing.assert_allclose(same.betas, base.betas, rtol=1e-12)
    with pytest.raises(ValueError):
        SpacedDiffusion([], **_kwargs())
    with pytest.raises(ValueError):
        SpacedDiffusion([0, 1000], **_kwargs())


@pytest.mark.parametrize("rescale", [False, True])
def test_model_sees_original_timesteps(rescale):
    seen = []

    def model(x, t, **kw):
        seen.append(t.clone())
        return torch.zeros_like(x)

    sp = SpacedDiffusion(space_timesteps(500, "ddim5"), **_kwargs(rescale, steps=500))
    x = torch.zeros(2, 1, 2, 2)
    sp.p_mean_variance(model, x, torch.tensor([0, 4]))
    sp.training_losses(model, x, torch.tensor([1, 3]))
    wrapped = sp._wrap_model(model)
    wrapped(x, torch.tensor([2, 2]))
    scale = 2.0 if rescale else 1.0
    expect = [[0, 400], [100, 300], [200, 200]]
    for got, exp in zip(seen, expect):
        assert got.tolist() == [v * scale for v in exp]
        assert got.is_floating_point() == rescale
