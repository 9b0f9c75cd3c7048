"""The compute precision (runtime.precision): what ``auto`` chooses on each kind of device, what each
choice does to a forward (autocast, layout, the attention core, GroupNorm's statistics), and that the
training and sampling paths use it."""

import pytest
import torch
import torch.nn.functional as F

from guided_diffusion.models.nn import GroupNorm32
from guided_diffusion.runtime import precision as P
from guided_diffusion.script_util import create_model


def _cpu(monkeypatch, avx512_bf16, amx):
    monkeypatch.setattr(P, "cpu_features", lambda: {"capability": "AVX512", "avx512_bf16": avx512_bf16, "amx": amx})


def test_auto_on_each_kind_of_cpu(monkeypatch):
    _cpu(monkeypatch, avx512_bf16=True, amx=True)
    r = P.resolve("auto", "auto", "cpu")
    assert (r.name, r.channels_last, r.attention_fp32) == ("bf16", True, False)
    assert "AMX" in r.reason
    _cpu(monkeypatch, avx512_bf16=True, amx=False)
    r = P.resolve("auto", "auto", "cpu")
    assert (r.name, r.channels_last, r.attention_fp32) == ("bf16", False, True)
    _cpu(monkeypatch, avx512_bf16=False, amx=False)
    r = P.resolve("auto", "auto", "cpu")
    assert (r.name, r.channels_last, r.attention_fp32) == ("fp32", False, False)
    assert "emulated" in r.reason
    # Explicit choices are kept whatever the CPU; the layout can be asked for on its own.
    assert P.resolve("bf16", "auto", "cpu").name == "bf16"
    assert P.resolve("fp32", "channels_last", "cpu").channels_last
    assert not P.resolve("bf16", "contiguous", "cpu").channels_last


def test_cpu_features_come_from_torch():
    f = P.cpu_features()
    assert set(f) == {"capability", "avx512_bf16", "amx"}
    assert f["capability"] == torch.backends.cpu.get_cpu_capability()
    assert P.describe_cpu().split()[0] == f["capability"]


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="precision 'fp8'"):
        P.resolve("fp8")
    with pytest.raises(ValueError, match="memory_format 'nhwc'"):
        P.resolve("auto", "nhwc")


def test_autocast_per_choice():
    with P.Precision("bf16").autocast("cpu"):
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.bfloat16
    with P.FP32.autocast(torch.device("cpu")):
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.float32
    out = P.Precision("bf16", channels_last=True).output(torch.ones(2, 3, 4, 4, dtype=torch.bfloat16)
                                                        .contiguous(memory_format=torch.channels_last))
    assert out.dtype == torch.float32 and out.is_contiguous()
    assert P.FP32.output(torch.ones(2, dtype=torch.float64)).dtype == torch.float64  # float64 is kept


def test_groupnorm_on_bf16_keeps_fp32_statistics():
    """A bf16 input (CPU) is normalised by the mixed-type kernel: the same as computing in fp32 and
    rounding the result to bf16 (to one bf16 step), also for a mean far from zero, where bf16 statistics
    would lose the variance."""
    torch.manual_seed(0)
    gn = GroupNorm32(8, 64)
    gn.weight.data.normal_()
    gn.bias.data.normal_()
    x = (torch.randn(4, 64, 14, 14) * 0.5 + 300).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = gn(x)
    assert y.dtype == torch.bfloat16
    ref = F.group_norm(x.detach().float(), 8, gn.weight, gn.bias, gn.eps)
    step = ref.abs().clamp_min(1e-3) * 2**-7  # one bf16 step of each value
    assert bool(((y.float() - ref).abs() <= step).all())
    y.float().sum().backward()  # gradients reach the input and the fp32 weights
    assert x.grad.dtype == torch.bfloat16 and gn.weight.grad.dtype == torch.float32


_FROZEN_INPUT = """
import torch
from guided_diffusion.models.nn import GroupNorm32
torch.manual_seed(0)
gn = GroupNorm32(8, 32)
gn.weight.data.normal_()
x = torch.randn(4, 32, 14, 14)  # behind frozen layers: no gradient wanted for the input
grads = []
for layout in (torch.contiguous_format, torch.channels_last):
    gn.zero_grad()
    gn(x.contiguous(memory_format=layout)).pow(2).sum().backward()
    grads.append((gn.weight.grad.clone(), gn.bias.grad.clone()))
print(all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*grads)))
"""


def test_groupnorm_behind_frozen_layers_trains_in_channels_last():
    """torch's CPU channels-last GroupNorm backward crashes the process (SIGSEGV) when the input wants no
    gradient and the weights do (a method that trains only the decoder, on a CPU where ``auto`` picks
    channels_last); GroupNorm32 takes the contiguous kernel there, with the same weight gradients. In a
    subprocess, so that a crash fails this test instead of ending the test session."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _FROZEN_INPUT], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "True", (r.returncode, r.stderr[-500:])


def _unet(in_channels=1):
    torch.manual_seed(0)
    m = create_model(16, 32, 1, channel_mult="1,2", attention_resolutions="8", num_head_channels=16,
                     class_cond=True, num_classes=3, in_channels=in_channels, norm_groups=8)
    for p in m.parameters():  # the zero-initialised output layers would hide every difference
        p.data.normal_(0, 0.2)
    return m.eval()


def test_channels_last_and_bf16_forwards_match_fp32():
    m = _unet()
    x, t, y = torch.randn(4, 1, 16, 16), torch.tensor([1, 200, 500, 900]), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        ref = m(x, t, y)
        cl = P.Precision("fp32", channels_last=True)
        out = cl.output(m.to(memory_format=torch.channels_last)(cl.input(x), t, y))
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        for choice in (P.Precision("bf16"), P.Precision("bf16", attention_fp32=True),
                       P.Precision("bf16", channels_last=True)):
            choice.to_layout(m)
            with choice.autocast("cpu"):
                low = choice.output(m(choice.input(x), t, y))
            assert low.dtype == torch.float32
            err = (low - ref).norm() / ref.norm()
            assert err < 0.05, (choice, float(err))


def test_attention_core_in_fp32_when_asked():
    from guided_diffusion.models.unet import QKVAttention

    att = QKVAttention(2, backend="sdpa")
    qkv = torch.randn(2, 3 * 2 * 8, 10).bfloat16()
    seen = []
    orig = F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        seen.append(q.dtype)
        return orig(q, k, v, *a, **kw)

    try:
        F.scaled_dot_product_attention = spy
        with torch.autocast("cpu", dtype=torch.bfloat16):
            a = att(qkv, upcast=True)
            b = att(qkv)
    finally:
        F.scaled_dot_product_attention = orig
    assert seen == [torch.float32, torch.bfloat16]
    assert a.dtype == b.dtype == torch.bfloat16
    torch.testing.assert_close(a.float(), b.float(), rtol=0.05, atol=0.05)


def test_the_attention_switch_reaches_every_block():
    """``Precision.autocast`` with ``attention_fp32`` makes every attention block of a UNet compute its core
    in fp32 (also with gradient checkpointing, whose recomputation must see the same choice)."""
    from guided_diffusion.models import unet

    m = create_model(16, 32, 1, channel_mult="1,2", attention_resolutions="8,16", num_head_channels=16,
                     class_cond=False, in_channels=1, norm_groups=8, use_checkpoint=True)
    seen = []
    orig = F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        seen.append(q.dtype)
        return orig(q, k, v, *a, **kw)

    x = torch.randn(2, 1, 16, 16)
    try:
        unet.F.scaled_dot_product_attention = spy
        with P.Precision("bf16", attention_fp32=True).autocast("cpu"):
            out = m(x, torch.tensor([3, 500]))
        out.float().sum().backward()  # recomputes the checkpointed blocks
    finally:
        unet.F.scaled_dot_product_attention = orig
    assert len(seen) >= 4 and set(seen) == {torch.float32}


def test_sample_batch_runs_the_network_in_the_spec_precision():
    from guided_diffusion.sampling.sample_sets import sample_batch
    from guided_diffusion.script_util import create_gaussian_diffusion

    m = _unet(in_channels=3)
    seen = []
    m.register_forward_hook(lambda mod, args, out: seen.append((out.dtype, args[0].is_contiguous())))
    diffusion = create_gaussian_diffusion(steps=100, timestep_respacing="ddim4")
    noise = torch.randn(2, 3, 16, 16)
    kw = dict(y=torch.tensor([0, 1]), noise=noise, ddim=True)
    ref = sample_batch(m, diffusion, (2, 3, 16, 16), **kw)
    assert set(seen) == {(torch.float32, True)}
    seen.clear()
    low = sample_batch(m, diffusion, (2, 3, 16, 16), precision=P.Precision("bf16", channels_last=True), **kw)
    assert set(seen) == {(torch.bfloat16, False)}  # bf16 forwards on channels_last inputs
    assert low.dtype == torch.float32
    assert (low - ref).abs().max() < 0.2


def test_train_loop_uses_the_configured_precision(tmp_path):
    from tests.test_train_util import make_loop

    loop = make_loop(tmp_path / "bf16", steps=1, precision="bf16", memory_format="channels_last")
    assert (loop.precision.name, loop.precision.channels_last) == ("bf16", True)
    assert loop.model.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    loop.run()
    # The master weights, the EMA and the optimizer state stay fp32.
    assert all(p.dtype == torch.float32 for p in loop.model.parameters())
    assert all(e.dtype == torch.float32 for ema in loop.ema for e in ema)
    assert all(v.dtype == torch.float32 for s in loop.opt.state.values() for k, v in s.items() if k != "step")
