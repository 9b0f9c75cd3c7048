"""TrainLoop: bit-identical resume, microbatches, NaN policies, preemption, corrupt checkpoints."""

import dataclasses
import os
import signal

import pytest
import torch

from guided_diffusion.data import InfiniteLoader
from guided_diffusion.diffusion.resample import UniformSampler
from guided_diffusion.runtime import checkpoint as ckpt
from guided_diffusion.runtime.preemption import Preempted
from guided_diffusion.runtime.seeding import step_seed
from guided_diffusion.script_util import create_gaussian_diffusion, create_model
from guided_diffusion.train_util import TrainConfig
from guided_diffusion.train_util import (
    DiffusionObjective,
    NonFiniteError,
    TrainHook,
    TrainLoop,
    lr_at,
)


def tiny_model():
    torch.manual_seed(0)
    return create_model(8, 32, 1, channel_mult="1,2", attention_resolutions="4", num_head_channels=32,
                        class_cond=True, num_classes=4, in_channels=1, dropout=0.1)


def make_loop(run_dir, steps=6, objective=None, hooks=(), **cfg):
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(40, 1, 8, 8, generator=g) * 2 - 1
    y = torch.randint(0, 4, (40,), generator=g)
    diffusion = create_gaussian_diffusion(steps=50)
    base = dict(total_steps=steps, batch_size=8, lr=1e-3, ema_rate="0.9,0.99", save_interval=3, log_interval=100,
                warmup_steps=2, lr_schedule="cosine")
    base.update(cfg)
    tc = TrainConfig(**base)
    objective = objective or DiffusionObjective(diffusion, UniformSampler(diffusion), class_cond=True)
    return TrainLoop(model=tiny_model(), data=InfiniteLoader(x, y, tc.batch_size, seed=3, random_flip=True), cfg=tc,
                     run_dir=str(run_dir), objective=objective, seed=5, hooks=hooks)


def state(loop):
    return ({k: v.clone() for k, v in loop.model.state_dict().items()},
            {r: {k: v.clone() for k, v in sd.items()} for r, sd in loop.ema_state_dicts().items()},
            loop.opt.state_dict())


def assert_same(a, b):
    (ma, ea, oa), (mb, eb, ob) = a, b
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    for r in ea:
        assert all(torch.equal(ea[r][k], eb[r][k]) for k in ea[r])
    for k in oa["state"]:
        for name, v in oa["state"][k].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(ob["state"][k][name]))


@pytest.mark.parametrize("precision", [("fp32", "contiguous"), ("bf16", "contiguous"), ("bf16", "channels_last")])
def test_resume_is_bit_identical(tmp_path, precision):
    """In every precision and layout: bf16 autocast is as deterministic on one machine as fp32."""
    kw = dict(precision=precision[0], memory_format=precision[1])
    full = make_loop(tmp_path / "full", **kw)
    full.run()
    part = make_loop(tmp_path / "part", steps=3, **kw)
    part.run()
    resumed = make_loop(tmp_path / "part", steps=6, **kw)
    assert resumed.step == 3
    resumed.run()
    assert resumed.step == 6
    assert_same(state(full), state(resumed))
    # The exported EMA weights exist next to the checkpoint, with the model config.
    assert os.path.exists(tmp_path / "full" / "ema_0.9_000006.safetensors")
    assert os.path.exists(tmp_path / "full" / "ema_0.9_000006.json")


def test_training_changes_weights_and_steps_differ(tmp_path):
    loop = make_loop(tmp_path, steps=2)
    before = {k: v.clone() for k, v in loop.model.state_dict().items()}
    loop.run()
    assert any(not torch.equal(before[k], v) for k, v in loop.model.state_dict().items())
    assert step_seed(5, 0, 0) != step_seed(5, 1, 0) != step_seed(5, 0, 1)


def det_objective(model, x, y, ctx):
    """A loss without randomness, a mean over samples: microbatching must not change its gradient."""
    out = model(x, torch.full((x.shape[0],), 7), y=y)
    loss = ((out - 1) ** 2).mean()  # nonzero: the output layer starts at zero
    return loss, {"loss": loss.detach()}


def test_microbatches_match_full_batch(tmp_path):
    # No clipping, and gradients compared directly: AdamW alone would hide a wrong scale.
    a = make_loop(tmp_path / "a", steps=1, microbatch=-1, objective=det_objective, grad_clip=0, precision="fp32")
    b = make_loop(tmp_path / "b", steps=1, microbatch=2, objective=det_objective, grad_clip=0, precision="fp32")
    for loop in (a, b):
        loop.model.eval()  # no dropout
    a.run_step(*next(a.data))
    b.run_step(*next(b.data))
    for (name, pa), pb in zip(a.model.named_parameters(), b.model.parameters()):
        if pa.grad is not None:
            torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-7, msg=name)
    with pytest.raises(ValueError, match="microbatch 3 does not divide"):
        make_loop(tmp_path / "c", microbatch=3)


class NaNObjective:
    def __init__(self, base, at_step):
        self.base, self.at_step = base, at_step

    def __call__(self, model, x, y, ctx):
        loss, terms = self.base(model, x, y, ctx)
        if ctx.step == self.at_step:
            terms = dict(terms, replay_loss=torch.tensor(float("nan")))
            loss = loss + float("nan")
        return loss, terms


def test_nan_stop_names_step_and_term_and_keeps_checkpoints(tmp_path):
    diffusion = create_gaussian_diffusion(steps=50)
    obj = NaNObjective(DiffusionObjective(diffusion, UniformSampler(diffusion), True), at_step=4)
    loop = make_loop(tmp_path, objective=obj)
    with pytest.raises(NonFiniteError, match=r"non-finite replay_loss at step 4"):
        loop.run()
    assert ckpt.latest_checkpoint(str(tmp_path)) == 3  # written before the failure, intact


def test_nan_skip_leaves_weights_unchanged(tmp_path):
    diffusion = create_gaussian_diffusion(steps=50)
    obj = NaNObjective(DiffusionObjective(diffusion, UniformSampler(diffusion), True), at_step=1)
    loop = make_loop(tmp_path, objective=obj, nan_policy="skip", steps=3)
    loop.run_step(*next(loop.data))
    before = {k: v.clone() for k, v in loop.model.state_dict().items()}
    terms = loop.run_step(*next(loop.data))
    assert terms["skipped"] == 1.0
    assert all(torch.equal(before[k], v) for k, v in loop.model.state_dict().items())


class KillAt(TrainHook):
    def __init__(self, step, sig):
        self.step, self.sig = step, sig

    def after_step(self, loop, step, terms):
        if step == self.step:
            os.kill(os.getpid(), self.sig)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_preemption_signal_checkpoints_then_stops(tmp_path, sig):
    """SIGINT (Ctrl-C) too: a checkpoint at the next step boundary, then Preempted (exit 0 in scripts)."""
    loop = make_loop(tmp_path, steps=6, hooks=[KillAt(1, sig)], save_interval=0)
    with pytest.raises(Preempted, match="rerun the same command to resume"):
        loop.run()
    assert ckpt.latest_checkpoint(str(tmp_path)) == 2
    again = make_loop(tmp_path, steps=6, save_interval=0)
    assert again.step == 2
    again.run()
    full = make_loop(tmp_path / "full", steps=6, save_interval=0)
    full.run()
    assert_same(state(full), state(again))


def test_a_second_ctrl_c_stops_at_once(tmp_path, capsys):
    """Two Ctrl-Cs before the step boundary: the second raises KeyboardInterrupt (exit 130 in scripts)
    without a new checkpoint; the last one written stays and the rerun resumes from it."""
    class TwoInts(TrainHook):
        def after_step(self, loop, step, terms):
            if step == 3:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)  # whatever the process had (another test may have set one)
    loop = make_loop(tmp_path, steps=6, hooks=[TwoInts()], save_interval=2)
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    assert "SIGINT: writing a checkpoint at the next step boundary" in capsys.readouterr().err
    assert ckpt.latest_checkpoint(str(tmp_path)) == 2
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are restored
    assert make_loop(tmp_path, steps=6).step == 2


def test_corrupt_newest_checkpoint_falls_back(tmp_path):
    make_loop(tmp_path, steps=6).run()  # checkpoints at 3 and 6
    path = tmp_path / "opt000006.pt"
    path.write_bytes(path.read_bytes()[:100])
    loop = make_loop(tmp_path, steps=6)
    assert loop.step == 3


def test_lr_schedule_and_ema_warmup(tmp_path):
    cfg = TrainConfig(lr=1.0, total_steps=10, warmup_steps=2, lr_schedule="linear")
    assert [lr_at(s, cfg) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    cfg = dataclasses.replace(cfg, lr_schedule="cosine")
    assert lr_at(6, cfg) == pytest.approx(0.5)
    loop = make_loop(tmp_path, steps=1, ema_rate="0.999", warmup_steps=0)
    x, y = next(loop.data)
    loop.run_step(x, y)  # step 0: effective rate min(0.999, 1/10) = 0.1
    init = tiny_model().state_dict()
    name = loop.param_names[0]
    expect = 0.1 * init[name] + 0.9 * loop.model.state_dict()[name]
    torch.testing.assert_close(loop.ema_state_dicts()[0.999][name], expect)


def test_batch_not_divisible_by_world(tmp_path, monkeypatch):
    from guided_diffusion.runtime import dist_util

    monkeypatch.setattr(dist_util, "get_world_size", lambda: 3)
    with pytest.raises(ValueError, match="batch_size 8 is not divisible by the world size 3"):
        make_loop(tmp_path)


def test_step_terms_are_read_once_and_match_the_objective(tmp_path):
    """run_step returns Python floats: the objective's terms averaged over the microbatches (read
    from the device together with the gradient norm), the norm and the learning rate."""
    from guided_diffusion.train_util import _read_scalars

    vals = {"a": torch.tensor(1.5, dtype=torch.float64), "b": torch.tensor([2.0]), "c": torch.tensor(float("nan"))}
    out = _read_scalars(vals)
    assert list(out) == ["a", "b", "c"] and out["a"] == 1.5 and out["b"] == 2.0 and out["c"] != out["c"]
    loop = make_loop(tmp_path, steps=2, microbatch=4)
    terms = loop.run_step(*next(loop.data))
    assert {"loss", "mse", "grad_norm", "lr"} <= set(terms) and all(type(v) is float for v in terms.values())
    assert terms["grad_norm"] > 0 and terms["loss"] > 0



def test_compiled_forward_trains_as_the_plain_one(tmp_path):
    """train.compile: the training forward goes through torch.compile (here its eager backend: the
    graph capture without code generation), weights and checkpoints stay the plain module's."""
    a = make_loop(tmp_path / "a", steps=3, microbatch=4)
    a.run()
    b = make_loop(tmp_path / "b", steps=3, microbatch=4, compile="eager")
    assert b.ddp_model is not b.model
    b.run()
    ma, mb = a.model.state_dict(), b.model.state_dict()
    assert ma.keys() == mb.keys() and all(torch.allclose(ma[k], mb[k], atol=1e-6) for k in ma)
    assert ckpt.latest_checkpoint(str(tmp_path / "b")) == 3
