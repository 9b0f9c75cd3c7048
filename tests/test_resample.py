"""Timestep samplers: uniform, loss-second-moment importance sampling, state round trip."""

import types

import numpy as np
import pytest
import torch

from guided_diffusion.diffusion.resample import (
    LossSecondMomentResampler,
    UniformSampler,
    create_named_schedule_sampler,
)

DIFF = types.SimpleNamespace(num_timesteps=20)


def test_named_samplers():
    assert isinstance(create_named_schedule_sampler("uniform", DIFF), UniformSampler)
    assert isinstance(create_named_schedule_sampler("loss-second-moment", DIFF), LossSecondMomentResampler)
    with pytest.raises(ValueError, match="'beta'"):
        create_named_schedule_sampler("beta", DIFF)


def test_uniform_sample_generators():
    s = UniformSampler(DIFF)
    t, w = s.sample(64, "cpu", generator=torch.Generator().manual_seed(0))
    t2, _ = s.sample(64, "cpu", generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, t2) and t.dtype == torch.int64 and w.dtype == torch.float32
    assert t.min() >= 0 and t.max() < 20 and torch.all(w == 1)
    t3, _ = s.sample(64, "cpu", generator=np.random.default_rng(1))
    t4, _ = s.sample(64, "cpu", generator=np.random.default_rng(1))
    assert torch.equal(t3, t4)
    np.random.seed(2)
    t5, _ = s.sample(8, "cpu")
    np.random.seed(2)
    assert torch.equal(t5, s.sample(8, "cpu")[0])


def _warm(sampler, rng):
    ts = np.repeat(np.arange(20), 10)
    losses = (ts + 1.0) * (1 + 0.1 * rng.standard_normal(len(ts)))
    sampler.update_with_local_losses(torch.from_numpy(ts), torch.from_numpy(losses))
    return ts, losses


def test_loss_second_moment_weights():
    s = LossSecondMomentResampler(DIFF)
    assert np.all(s.weights() == 1)
    s.update_with_local_losses(torch.arange(19), torch.ones(19))
    assert np.all(s.weights() == 1)  # not warmed up until every t has 10 losses
    s = LossSecondMomentResampler(DIFF)
    ts, losses = _warm(s, np.random.default_rng(0))
    hist = np.zeros((20, 10))
    for t in range(20):
        hist[t] = losses[ts == t]
    ref = np.sqrt(np.mean(hist**2, axis=1))
    ref = ref / ref.sum() * (1 - 0.001) + 0.001 / 20
    np.testing.assert_allclose(s.weights(), ref, rtol=1e-12)
    # importance weights 1 / (T p_t)
    t, w = s.sample(32, "cpu", generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(w.numpy(), 1 / (20 * ref[t.numpy()]), rtol=1e-6)
    # a full history shifts out the oldest loss
    s.update_with_local_losses(torch.tensor([3]), torch.tensor([100.0]))
    assert s._loss_history[3, -1] == 100.0 and s._loss_history[3, 0] == hist[3, 1]


def test_state_round_trip_is_bit_identical():
    a = LossSecondMomentResampler(DIFF)
    _warm(a, np.random.default_rng(1))
    a.update_with_local_losses(torch.tensor([0, 5, 5]), torch.tensor([1.0, 2.0, 3.0]))
    state = a.state_dict()
    assert all(torch.is_tensor(v) for v in state.values())  # loadable with weights_only=True
    b = LossSecondMomentResampler(DIFF)
    b.load_state_dict(state)
    np.testing.assert_array_equal(a.weights(), b.weights())
    for s in (a, b):
        s.update_with_local_losses(torch.tensor([7]), torch.tensor([9.0]))
    ta, wa = a.sample(16, "cpu", generator=torch.Generator().manual_seed(3))
    tb, wb = b.sample(16, "cpu", generator=torch.Generator().manual_seed(3))
    assert torch.equal(ta, tb) and torch.equal(wa, wb)
    with pytest.raises(ValueError):
        LossSecondMomentResampler(types.SimpleNamespace(num_timesteps=5)).load_state_dict(state)
