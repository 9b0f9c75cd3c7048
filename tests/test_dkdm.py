"""DKDM: cache format and safety, world-size-independent preparation, the closed form of a stopped
trajectory, the objective's target / restarts / write-back, bit-identical resume of preparation and
training, the scripts' pipeline, and the continual ``dynamic_distillation`` method on mnist5k."""

import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import guided_diffusion.dkdm.config  # noqa: F401  (registers the dkdm section)
from guided_diffusion.diffusion.diffusion_math import get_named_beta_schedule
from guided_diffusion.dkdm.cache import DynamicCache
from guided_diffusion.dkdm.format import (
    CacheError,
    check_key,
    rank_slice,
    read_entries,
    read_header,
    shard_name,
    write_header,
    write_shard,
)
from guided_diffusion.dkdm.objective import DKDMObjective, student_losses
from guided_diffusion.dkdm.prepare import (
    CacheSpec,
    cache_size,
    prepare_cache,
    shard_draws,
)
from guided_diffusion.diffusion.gaussian_diffusion import (
    GaussianDiffusion,
    LossType,
    ModelMeanType,
    ModelVarType,
    step_kl,
)
from guided_diffusion.runtime import checkpoint as ckpt
from guided_diffusion.runtime.config import (
    ConfigError,
    load_config,
    to_dict,
)
from guided_diffusion.script_util import create_gaussian_diffusion
from guided_diffusion.train_util import StepContext, TrainConfig, TrainLoop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (1, 6, 6)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread (as the scripts' train.num_threads=1): tiny ops on a busy CPU crawl with more."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Toy(torch.nn.Module):
    """A tiny conditional network: conv + per-class and per-time biases; ``var`` adds C channels."""

    def __init__(self, c=1, classes=10, var=None, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(c, c, 3, padding=1)
        self.emb = torch.nn.Embedding(classes, c)
        self.var = var  # None: C outputs; a float: C more channels of that constant; "learn": learned channels
        if var == "learn":
            self.vconv = torch.nn.Conv2d(c, c, 1)

    def forward(self, x, t, y=None):
        h = self.conv(x) + t.float().view(-1, 1, 1, 1) / 100
        if y is not None:
            h = h + self.emb(y).view(-1, x.shape[1], 1, 1)
        if self.var == "learn":
            return torch.cat([h, torch.tanh(self.vconv(x))], 1)
        if self.var is not None:
            return torch.cat([h, torch.full_like(h, self.var)], 1)
        return h


class ZeroEps(torch.nn.Module):
    """eps == 0 and log sigma^2 = -1e4 (a noiseless step) for a LEARNED-variance diffusion."""

    def forward(self, x, t, y=None):
        return torch.cat([torch.zeros_like(x), torch.full_like(x, -1e4)], 1)


def learned_diffusion(T):
    """A diffusion whose variance is the network's own log sigma^2 (ModelVarType.LEARNED)."""
    return GaussianDiffusion(betas=get_named_beta_schedule("cosine", T), model_mean_type=ModelMeanType.EPSILON,
                             model_var_type=ModelVarType.LEARNED, loss_type=LossType.MSE)


def spec(n=24, T=20, mode="dynamic", classes=(0, 1, 2), seed=3, shard=7, clip=True):
    return CacheSpec(n, T, SHAPE, mode, classes, seed, shard, clip, identity={"teacher_sha256": "toy"})


def arrays(d):
    return read_entries(d, 0, read_header(d)["n_total"], verify=True)


# ------------------------------------------------------------------ format


def test_format_round_trip_checks_and_no_pickle(tmp_path):
    d = str(tmp_path)
    key = {"T": 5, "shape": list(SHAPE), "classes": [0, 1]}
    x, t, y = torch.randn(10, *SHAPE), torch.randint(0, 6, (10,)), torch.randint(0, 2, (10,))
    write_shard(d, 0, 0, x[:6], t[:6], y[:6], key)
    write_shard(d, 1, 6, x[6:], t[6:], y[6:], key)
    header = write_header(d, key, [(0, 6), (6, 10)], world_size=2, step=0, teacher_path="/t.pt")
    assert read_header(d) == header and header["world_size"] == 2 and header["teacher_path"] == "/t.pt"
    xr, tr, yr = read_entries(d, 3, 8)  # spans both shards
    assert torch.equal(xr, x[3:8]) and torch.equal(tr, t[3:8]) and torch.equal(yr, y[3:8])
    # Shards are safetensors: no pickle opcode protocol marker, and torch.load cannot read them as a pickle.
    raw = open(os.path.join(d, shard_name(0)), "rb").read()
    assert not raw.startswith(b"\x80") and b"PK\x03\x04" not in raw[:4]
    with pytest.raises(CacheError, match="another setting.*T: cache 5 vs configured 6"):
        check_key(header, {**key, "T": 6}, d)
    # A flipped byte in a shard is detected by its sha256.
    path = os.path.join(d, shard_name(1))
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 0xFF
    open(path, "wb").write(bytes(data))
    read_entries(d, 0, 6)  # the intact shard still reads
    with pytest.raises(CacheError, match="sha256"):
        read_entries(d, 0, 10)
    with pytest.raises(CacheError, match="cannot be split over 3 ranks"):
        rank_slice(10, 0, 3)


def test_cache_sizes():
    assert cache_size("dynamic", 0.4, 1000, 128) == 51200  # DKDM's CIFAR-10 cache per rank
    assert cache_size("shuffled", 0.4, 1000, 128) == cache_size("iterative", 0.4, 1000, 128) == 128
    with pytest.raises(ValueError, match=">= 1"):
        cache_size("dynamic", 0.001, 100, 8)


# ------------------------------------------------------------------ preparation


def test_preparation_stops_each_sample_at_its_own_step(tmp_path):
    # eps == 0, no clipping, noiseless steps: the ancestral mean is x_t / sqrt(alpha_t), so a
    # trajectory from x_T stopped at state s is sqrt(abar_{s-1} / abar_{T-1}) x_T.
    T = 30
    diffusion = learned_diffusion(T)
    sp = spec(n=16, T=T, shard=16, clip=False, classes=None)
    stats = prepare_cache(ZeroEps(), diffusion, sp, str(tmp_path), prepare_batch=5, device="cpu")
    x, t, y = arrays(str(tmp_path))
    _, stop, _, x_T = shard_draws(sp, 0, 16)
    assert torch.equal(t, stop) and y is None
    assert int(t.min()) >= 1 and int(t.max()) <= T - 1 and len(set(t.tolist())) > 5
    ab = torch.tensor(np.append(1.0, diffusion.alphas_cumprod))  # ab[s] = abar_{s-1}
    expect = (ab[t] / ab[T]).sqrt().float().view(-1, 1, 1, 1) * x_T
    torch.testing.assert_close(x, expect, rtol=1e-5, atol=1e-6)
    assert stats["nfe"] == int((T - t).sum()) == read_header(str(tmp_path))["teacher_nfe"]


def test_iterative_mode_is_pure_noise_in_lockstep(tmp_path):
    sp = spec(n=8, mode="iterative", shard=8)
    stats = prepare_cache(Toy(), create_gaussian_diffusion(steps=20, noise_schedule="cosine"), sp, str(tmp_path),
                          device="cpu")
    x, t, _ = arrays(str(tmp_path))
    assert stats["nfe"] == 0 and t.tolist() == [20] * 8 and torch.equal(x, shard_draws(sp, 0, 8)[3])


def test_world_size_1_and_2_prepare_and_slice_the_same_global_cache(tmp_path):
    diffusion = create_gaussian_diffusion(steps=20, noise_schedule="cosine")
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    prepare_cache(Toy(), diffusion, spec(), a, prepare_batch=4, device="cpu", rank=0, world_size=1)
    # Two ranks (run one after the other here): rank 1 makes shards 1, 3; rank 0 shards 0, 2 and the header.
    s1 = prepare_cache(Toy(), diffusion, spec(), b, prepare_batch=4, device="cpu", rank=1, world_size=2)
    assert read_header(b) is None and s1["shards_done"] == 2
    prepare_cache(Toy(), diffusion, spec(), b, prepare_batch=4, device="cpu", rank=0, world_size=2)
    for u, v in zip(arrays(a), arrays(b)):
        assert torch.equal(u, v)
    ha, hb = read_header(a), read_header(b)
    assert [s["sha256"] for s in ha["shards"]] == [s["sha256"] for s in hb["shards"]]
    assert (ha["world_size"], hb["world_size"]) == (1, 2)
    # Rank r of 2 reads the contiguous half r of the global order.
    whole = arrays(a)
    for r in range(2):
        c = DynamicCache.open(a, rank=r, world_size=2)
        c._ensure_loaded()
        lo, hi = c.lo, c.hi
        assert (lo, hi) == (12 * r, 12 * r + 12)
        got = (c.x, c.t, c.y) if r == 1 else (c.x[lo:hi], c.t[lo:hi], c.y[lo:hi])  # rank 0 holds all
        for u, v in zip(got, whole):
            assert torch.equal(u, v[lo:hi])


class Killed(Exception):
    pass


class DiesAfter(torch.nn.Module):
    """The teacher, but the process 'dies' after ``n`` calls (as if killed mid-preparation)."""

    def __init__(self, net, n):
        super().__init__()
        self.net, self.n = net, n

    def forward(self, *a, **kw):
        self.n -= 1
        if self.n < 0:
            raise Killed()
        return self.net(*a, **kw)


def test_killed_preparation_continues_bit_identically(tmp_path):
    diffusion = create_gaussian_diffusion(steps=20, noise_schedule="cosine")
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    prepare_cache(Toy(), diffusion, spec(), a, prepare_batch=4, device="cpu")
    with pytest.raises(Killed):
        prepare_cache(DiesAfter(Toy(), 40), diffusion, spec(), b, prepare_batch=4, device="cpu")
    left = sorted(os.listdir(b))
    assert "cache.json" not in left and shard_name(0) in left and not any(n.startswith(".tmp") for n in left)
    stats = prepare_cache(Toy(), diffusion, spec(), b, prepare_batch=4, device="cpu")
    assert stats["shards_skipped"] >= 1 and stats["shards_done"] >= 1
    for u, v in zip(arrays(a), arrays(b)):
        assert torch.equal(u, v)
    assert prepare_cache(Toy(), diffusion, spec(), b, device="cpu")["complete_before"]  # reused
    with pytest.raises(CacheError, match="seed: cache 3 vs configured 4"):
        prepare_cache(Toy(), diffusion, spec(seed=4), b, device="cpu")


# ------------------------------------------------------------------ the objective


def ctx(step=0, micro=0, n_micro=1, seed=0):
    return StepContext(step, micro, n_micro, torch.Generator().manual_seed(seed), 0, 1)


def test_objective_target_restarts_and_write_back(tmp_path):
    T = 20
    tdiff = learned_diffusion(T)
    teacher = Toy(var=-1e4)  # a noiseless teacher step: the written-back state is the teacher's mean
    prepare_cache(teacher, tdiff, spec(n=8, shard=8), str(tmp_path), device="cpu")
    cache = DynamicCache.open(str(tmp_path), 0, 1)
    cache._ensure_loaded()
    cache.t[[1, 4]] = 0  # two finished trajectories
    old_x, old_t = cache.x.clone(), cache.t.clone()
    student = Toy(seed=1)
    sdiff = create_gaussian_diffusion(steps=T, noise_schedule="cosine")
    obj = DKDMObjective(teacher, tdiff, sdiff, cache, class_cond=True)
    loss, terms = obj(student, torch.zeros(8, 1), torch.zeros(8), ctx())
    b = obj._batch
    idx = torch.randperm(8, generator=torch.Generator().manual_seed(0))  # the draw: all 8 entries
    assert b.restarts == 2 and terms["teacher_nfe"] == 8
    for j, i in enumerate(idx.tolist()):
        if old_t[i] == 0:  # restarted from fresh noise at T
            assert b.t[j] == T - 1 and not torch.equal(b.x_t[j], old_x[i])
        else:
            assert b.t[j] == old_t[i] - 1 and torch.equal(b.x_t[j], old_x[i])
    with torch.no_grad():
        expect_eps = teacher(b.x_t, b.t, y=b.y)[:, :1]
        mean = tdiff.p_mean_variance(teacher, b.x_t, b.t, clip_denoised=True, model_kwargs={"y": b.y})["mean"]
    torch.testing.assert_close(b.eps, expect_eps)  # the target is the teacher's eps
    assert torch.equal(cache.t[idx], b.t) and torch.equal(cache.x[idx], mean)  # states written back
    with torch.no_grad():
        hand = ((expect_eps - student(b.x_t, b.t, y=b.y)) ** 2).mean()
    torch.testing.assert_close(loss.detach(), hand)


def test_learned_sigma_student_adds_the_step_kl(tmp_path):
    T = 20
    tdiff = create_gaussian_diffusion(steps=T, noise_schedule="cosine", learn_sigma=True)
    teacher = Toy(var=0.3)
    prepare_cache(teacher, tdiff, spec(n=8, shard=8), str(tmp_path), device="cpu")
    cache = DynamicCache.open(str(tmp_path), 0, 1)
    b = cache.advance(teacher, tdiff, 8, torch.Generator().manual_seed(0), "cpu")
    student = Toy(var="learn", seed=2)
    losses = student_losses(student, tdiff, b, class_cond=True)
    with torch.no_grad():
        out = student(b.x_t, b.t, y=b.y)
        p = tdiff.p_mean_variance_from_output(out, b.x_t, b.t, clip_denoised=False)
        kl = step_kl(b.mean, b.log_variance, p["mean"], p["log_variance"])
    torch.testing.assert_close(losses["vb"].detach(), kl)
    torch.testing.assert_close(losses["mse"].detach(), ((b.eps - out[:, :1]) ** 2).mean(dim=(1, 2, 3)))


def _cache_replay(cache_dir, tdiff, teacher, uncond_p=0.0, **mcfg):
    """The continual dynamic_distillation objective of task 1 on the cache in ``cache_dir`` (fresh state)."""
    from guided_diffusion.continual.methods.dynamic_cache import (
        CacheReplayObjective,
        DynamicDistillation,
    )
    from guided_diffusion.continual.scenario import Task
    from guided_diffusion.diffusion.resample import UniformSampler
    from guided_diffusion.train_util import DiffusionObjective

    method = DynamicDistillation.__new__(DynamicDistillation)
    method.mcfg = DynamicDistillation.Config(**mcfg)
    method.teacher = teacher
    base = DiffusionObjective(tdiff, UniformSampler(tdiff), class_cond=True, uncond_p=uncond_p, null_class=9)
    return CacheReplayObjective(base, method, Task(1, (2,), (0, 1, 2), 5), DynamicCache.open(cache_dir, 0, 1), tdiff)


def test_continual_replay_term_is_the_dkdm_loss_with_the_step_kl(tmp_path):
    """dynamic_distillation's replay term on cache states is DKDMObjective's loss on the same states
    (one function): for a learn_sigma model it trains the variance channels too."""
    T, n = 20, 4
    tdiff = create_gaussian_diffusion(steps=T, noise_schedule="cosine", learn_sigma=True)
    teacher = Toy(var=0.3)
    prepare_cache(teacher, tdiff, spec(n=8, shard=8), str(tmp_path), device="cpu")
    x, y = torch.randn(3, *SHAPE), torch.tensor([2, 2, 2])

    def replay_loss(student):
        obj = _cache_replay(str(tmp_path), tdiff, teacher, replay_batch=n, weight_replay_loss=False)
        return obj(student, x, y, ctx())[1]["replay_loss"]

    student = Toy(var="learn", seed=2)
    got = replay_loss(student)
    # DKDMObjective on a fresh copy of the cache, its generator where the replay objective's was when
    # it advanced the cache (after the real batch's t and noise).
    from guided_diffusion.diffusion.resample import UniformSampler

    g = torch.Generator().manual_seed(0)
    UniformSampler(tdiff).sample(3, "cpu", generator=g)
    torch.randn(x.shape, generator=g)
    dk = DKDMObjective(teacher, tdiff, tdiff, DynamicCache.open(str(tmp_path), 0, 1), class_cond=True)
    want, terms = dk(student, torch.zeros(n, 1), None, StepContext(0, 0, 1, g, 0, 1))
    assert terms["vb"] > 0
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-7)
    # Only the variance channels differ: the replay term changes (the step KL sees them).
    other = Toy(var="learn", seed=2)
    with torch.no_grad():
        other.vconv.bias.add_(0.5)
    assert not torch.allclose(replay_loss(other), got)
    # Classifier-free guidance training: a dropped replay label's target is the teacher's whole
    # null-class step (output, mean and variance), not the labelled one the cache took.
    obj = _cache_replay(str(tmp_path), tdiff, teacher, uncond_p=1.0, replay_batch=n)
    obj(student, x, y, ctx())
    b = obj._part
    assert b.y.tolist() == [9] * n
    with torch.no_grad():
        null = tdiff.p_mean_variance(teacher, b.x_t, b.t, clip_denoised=True, model_kwargs={"y": b.y})
    for k in ("model_output", "mean", "log_variance"):
        torch.testing.assert_close(getattr(b, k), null[k])


def test_continual_dynamic_distillation_criteria():
    import types

    from guided_diffusion.continual.methods.dynamic_cache import DynamicDistillation

    with pytest.raises(ConfigError, match="method.criterion 'smooth_l1' is not one of mse, min_snr"):
        DynamicDistillation.check(DynamicDistillation.Config(criterion="smooth_l1"), types.SimpleNamespace(), 1)


def test_dkdm_refuses_a_loss_aware_sampler():
    """The DKDM student's t come from the cache: a loss-aware sampler would never be fed."""
    from guided_diffusion.dkdm.config import check

    cfg = load_config(None, ["dkdm.teacher_path=teacher.pt", "train.schedule_sampler=loss-second-moment"])
    with pytest.raises(ConfigError, match="train.schedule_sampler = 'loss-second-moment' with dkdm"):
        check(cfg)
    check(load_config(None, ["dkdm.teacher_path=teacher.pt"]))


def test_dkdm_checks_run_at_load_only_for_the_scripts_that_read_dkdm(tmp_path):
    """The dkdm section's checks (a teacher, a uniform sampler) are registered with
    ``register_section_check``: ``cli.parse`` runs them for a script whose ``uses`` has ``dkdm``,
    before any work, and not for one that does not read the section (its default has no teacher)."""
    from guided_diffusion.dkdm.config import USES
    from guided_diffusion.launch import cli

    path = tmp_path / "c.yaml"
    path.write_text("model: {num_channels: 32}\n")
    with pytest.raises(ConfigError, match=f"{path}: dkdm.teacher_path is empty"):
        cli.parse("doc", ["--config", str(path)], uses=USES)
    with pytest.raises(ConfigError, match="train.schedule_sampler = 'loss-second-moment' with dkdm"):
        cli.parse("doc", ["--config", str(path), "dkdm.teacher_path=t.pt", "train.schedule_sampler=loss-second-moment"],
                  uses=lambda cfg, given: USES)
    cfg, _ = cli.parse("doc", ["--config", str(path), "dkdm.teacher_path=t.pt"], uses=USES)
    assert cfg.dkdm.teacher_path == "t.pt"
    for uses in (("data", "model", "diffusion", "train"), None):  # an IID script; a script that declares nothing
        cfg, _ = cli.parse("doc", ["--config", str(path)], uses=uses)
        assert cfg.dkdm.teacher_path == ""
    # The scripts declare it: a DKDM script refuses the config before any work, --dry-run included.
    p = subprocess.run([sys.executable, "scripts/dynamic_prepare.py", "--config", "yaml/mnist/dkdm.yaml",
                        "dkdm.teacher_path=", "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "yaml/mnist/dkdm.yaml: dkdm.teacher_path is empty" in p.stderr, p.stderr[-2000:]


def _train(run_dir, cache_dir, steps, T=20):
    tdiff = create_gaussian_diffusion(steps=T, noise_schedule="cosine")
    cache = DynamicCache.open(cache_dir, 0, 1)
    obj = DKDMObjective(Toy(), tdiff, tdiff, cache, class_cond=True)
    from guided_diffusion.dkdm.pipeline import EmptyBatches

    cfg = TrainConfig(total_steps=steps, batch_size=4, save_interval=2, log_interval=100, ema_rate="0.9",
                      sample_at_end=0, lr=1e-2)
    student = Toy(seed=5)
    loop = TrainLoop(model=student, data=EmptyBatches(4), cfg=cfg, run_dir=run_dir, objective=obj, seed=1,
                     device=torch.device("cpu"))
    loop.run()
    return student, cache


def test_training_resume_is_bit_identical_cache_included(tmp_path):
    cdir = str(tmp_path / "cache")
    prepare_cache(Toy(), create_gaussian_diffusion(steps=20, noise_schedule="cosine"), spec(n=12, shard=12),
                  cdir, device="cpu")
    wa, ca = _train(str(tmp_path / "a"), cdir, 6)
    _train(str(tmp_path / "b"), cdir, 3)  # "killed" after step 3 (checkpoints at 2 and 3)
    os.remove(str(tmp_path / "b" / "checkpoint000003.json"))  # the newest is lost: resume from step 2
    wb, cb = _train(str(tmp_path / "b"), cdir, 6)
    assert all(torch.equal(u, v) for u, v in zip(wa.state_dict().values(), wb.state_dict().values()))
    assert torch.equal(ca.x, cb.x) and torch.equal(ca.t, cb.t) and torch.equal(ca.y, cb.y)
    assert not torch.equal(ca.t, arrays(cdir)[1])  # the cache did move
    state = ckpt.load_torch(str(tmp_path / "a" / "state000006.pt"))
    assert torch.equal(state["components"]["objective"]["cache"]["t"], ca.t)


# ------------------------------------------------------------------ the scripts' pipeline


def _tiny_teacher(tmp_path, **diff):
    """A 2-block UNet teacher on 8x8x1, exported as this project's TrainLoop does (safetensors + JSON)."""
    from guided_diffusion.experiment import model_kwargs_from_config
    from guided_diffusion.script_util import create_model

    cfg = load_config(None, ["data.image_size=8", "model.num_channels=32", "model.num_res_blocks=2",
                             "model.channel_mult=1", "model.attention_resolutions=", "model.class_cond=true",
                             "diffusion.diffusion_steps=20", "diffusion.noise_schedule=cosine",
                             *[f"diffusion.{k}={v}" for k, v in diff.items()]])
    kwargs = model_kwargs_from_config(cfg, 3, 1)
    torch.manual_seed(0)
    net = create_model(**kwargs)
    with torch.no_grad():  # ADM zero-initialises the output layer: give the teacher something to say
        net.out[2].weight.normal_(0, 0.05)
    path = str(tmp_path / "teacher" / "ema_0.9_000010.safetensors")
    os.makedirs(os.path.dirname(path))
    ckpt.save_safetensors(net.state_dict(), path, {"model": kwargs, "diffusion": to_dict(cfg.diffusion),
                                                   "data": {"image_size": 8, "channels": 1}})
    return os.path.dirname(path)


PIPE = ["data.image_size=8", "model.num_channels=32", "model.num_res_blocks=1", "model.channel_mult=1",
        "model.attention_resolutions=", "model.class_cond=true", "diffusion.diffusion_steps=20",
        "diffusion.noise_schedule=cosine", "diffusion.timestep_respacing=", "train.batch_size=4",
        "train.total_steps=3", "train.save_interval=2", "train.num_threads=1", "train.sample_at_end=0", "train.log_interval=1", "dkdm.rho=0.5",
        "dkdm.shard_size=16", "seed=0", "name=dk"]


def test_pipeline_distils_from_an_exported_teacher_of_another_architecture(tmp_path):
    from guided_diffusion.dkdm import pipeline
    from guided_diffusion.runtime.logger import Logger

    tdir = _tiny_teacher(tmp_path)
    cfg = load_config(None, PIPE + [f"dkdm.teacher_path={tdir}", f"out_dir={tmp_path}"])
    with Logger(str(tmp_path / "dk")) as logger:
        loop, s = pipeline.train(cfg, torch.device("cpu"), logger)
    header = read_header(s.cache_dir)
    assert header["n_total"] == 10 * 4 and header["key"]["T"] == 20 and header["key"]["classes"] == [0, 1, 2]
    assert header["teacher_path"].endswith("ema_0.9_000010.safetensors")
    assert header["key"]["teacher_sha256"] == s.teacher.sha256
    assert sum(p.numel() for p in loop.model.parameters()) < sum(p.numel() for p in s.teacher.net.parameters())
    with open(tmp_path / "dk" / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["teacher_nfe"]) == 4 and np.isfinite(float(rows[-1]["loss"]))
    # The teacher loads strictly, and must share the student's schedule.
    bad = load_config(None, PIPE + [f"dkdm.teacher_path={tdir}", "dkdm.teacher_model.num_channels=64",
                                    "dkdm.teacher_model.channel_mult=1", "dkdm.teacher_model.attention_resolutions=",
                                    "dkdm.teacher_model.class_cond=true", f"out_dir={tmp_path}/x"])
    with pytest.raises(ckpt.CheckpointError, match="does not fit the configured teacher"):
        pipeline.build_setup(bad, "cpu")
    other = load_config(None, PIPE + [f"dkdm.teacher_path={tdir}", "diffusion.diffusion_steps=40",
                                      f"out_dir={tmp_path}/y"])
    with pytest.raises(ConfigError, match="diffusion.diffusion_steps = 40 but the teacher was trained with 20"):
        pipeline.build_setup(other, "cpu")
    with pytest.raises(ConfigError, match="did you mean 'rho'"):
        load_config(None, ["dkdm.rh=0.1"])


# ------------------------------------------------------------------ continual


TINY = [
    "data.dataset=mnist5k", "data.image_size=28", "model.num_channels=32", "model.num_res_blocks=1",
    "model.channel_mult=1,2", "model.attention_resolutions=14", "model.num_head_channels=32",
    "model.class_cond=true", "diffusion.diffusion_steps=100", "train.batch_size=8", "train.log_interval=2",
    "train.save_interval=2", "train.num_threads=1", "continual.num_tasks=5", "continual.classes_per_task=2",
    "continual.limit_tasks=2", "continual.num_steps=3", "continual.first_task_num_steps=3",
    "continual.grid_per_class=1",
    "continual.eval_sampler=ddim5", "train.ema_rate=0.9", "method.cache_sampler=20", "method.rho=0.1",
    "method.replay_batch=4", "method.shard_size=4",
]


def _final_model(run_dir, task):
    d = f"{run_dir}/task_{task}"
    return ckpt.load_torch(f"{d}/model{ckpt.latest_checkpoint(d):06d}.pt")


def test_two_task_continual_run_and_mid_task_resume(tmp_path):
    import guided_diffusion.continual.methods  # noqa: F401
    from guided_diffusion.continual.loop import run_continual

    a = load_config(os.path.join(ROOT, "yaml/mnist/gd_dynamic_cache.yaml"), TINY + [f"out_dir={tmp_path}/a"])
    ctx = run_continual(a)
    with open(f"{ctx.run_dir}/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["task"] for r in rows] == ["0", "1"] and float(rows[1]["final_replay_loss"]) > 0
    header = read_header(f"{ctx.run_dir}/task_1/dkdm_cache")
    assert header["n_total"] == 2 * 4 and header["key"]["classes"] == [0, 1] and header["key"]["T"] == 20
    assert not os.path.exists(f"{ctx.run_dir}/task_0/dkdm_cache")
    with open(f"{ctx.run_dir}/task_1/progress.csv") as f:
        assert float(list(csv.DictReader(f))[-1]["teacher_nfe"]) == 4  # one teacher NFE per replayed sample
    # The cache's preparation is a column of the task's row (the NFEs the header counts), and the benchmark
    # computes the same count from the config for runs from before that column.
    assert int(rows[0]["prep_teacher_nfe"]) == 0 and int(rows[1]["prep_teacher_nfe"]) == header["teacher_nfe"] > 0
    from tools.bench.tables import prep_nfe

    old = f"{tmp_path}/old"
    os.makedirs(old)
    shutil.copy(f"{ctx.run_dir}/config.yaml", old)
    legacy = [{k: v for k, v in r.items() if k != "prep_teacher_nfe"} for r in rows]
    assert prep_nfe(old, legacy) == [0.0, float(header["teacher_nfe"])]
    # Killed mid task 1 (newest checkpoint lost): the rerun reuses the cache folder and resumes the
    # cache's state from the step-2 checkpoint, ending with the same weights.
    b = load_config(os.path.join(ROOT, "yaml/mnist/gd_dynamic_cache.yaml"), TINY + [f"out_dir={tmp_path}/b"])
    run_continual(b)
    rb = f"{tmp_path}/b/{b.name}"
    os.remove(f"{rb}/task_1/checkpoint000003.json")
    os.remove(f"{rb}/task_1/task_done.json")
    mtime = os.path.getmtime(f"{rb}/task_1/dkdm_cache/cache.json")
    run_continual(b)
    assert os.path.getmtime(f"{rb}/task_1/dkdm_cache/cache.json") == mtime
    wa, wb = _final_model(ctx.run_dir, 1), _final_model(rb, 1)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# ------------------------------------------------------------------ multi-process (slow)


HAVE_MPI = shutil.which("mpiexec") is not None


def _env():
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    e.pop("GD_PROGRESS", None)
    return e


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MPI, reason="mpiexec not installed (pip install -e .[mpi])")
def test_mpiexec_prepare_equals_one_process_and_train_survives_sigkill(tmp_path):
    tdir = _tiny_teacher(tmp_path)
    base = ["--config", "yaml/mnist/dkdm.yaml", *PIPE, f"dkdm.teacher_path={tdir}", "train.total_steps=12",
            "train.keep_checkpoints=0"]
    mpi = ["mpiexec", "-n", "2"]

    def run(args, launcher=()):
        p = subprocess.run([*launcher, sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]

    run(["scripts/dynamic_prepare.py", *base, f"out_dir={tmp_path}/one"])
    run(["scripts/dynamic_prepare.py", *base, f"out_dir={tmp_path}/two"], mpi)
    for u, v in zip(arrays(f"{tmp_path}/one/dk/cache"), arrays(f"{tmp_path}/two/dk/cache")):
        assert torch.equal(u, v)
    run(["scripts/dynamic_train.py", *base, f"out_dir={tmp_path}/two"], mpi)  # uninterrupted
    shutil.copytree(f"{tmp_path}/two/dk/cache", f"{tmp_path}/b/dk/cache")
    cmd = [*mpi, sys.executable, "scripts/dynamic_train.py", *base, f"out_dir={tmp_path}/b"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while not os.path.exists(f"{tmp_path}/b/dk/checkpoint000004.json"):
        assert proc.poll() is None and time.time() < deadline, "the run ended or stalled before step 4"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run(["scripts/dynamic_train.py", *base, f"out_dir={tmp_path}/b"], mpi)
    for name in ("model000012.pt", "state000012.pt"):
        u = ckpt.load_torch(f"{tmp_path}/two/dk/{name}")
        v = ckpt.load_torch(f"{tmp_path}/b/dk/{name}")
        if name.startswith("state"):
            u, v = u["components"]["objective"]["cache"], v["components"]["objective"]["cache"]
        assert all(torch.equal(u[k], v[k]) if torch.is_tensor(u[k]) else u[k] == v[k] for k in u)
    assert json.load(open(f"{tmp_path}/b/dk/cache/cache.json"))["world_size"] == 2
    # Rank 1's advanced entries reached rank 0, which saved them: both halves of the cache moved.
    t0 = arrays(f"{tmp_path}/two/dk/cache")[1]
    t12 = ckpt.load_torch(f"{tmp_path}/b/dk/state000012.pt")["components"]["objective"]["cache"]["t"]
    assert (t12[:20] != t0[:20]).any() and (t12[20:] != t0[20:]).any()


# ------------------------------------------------------------------ DKDM's claim: the ablation driver


def test_ablation_trains_baseline_and_cache_students_evaluates_and_resumes(tmp_path):
    import guided_diffusion.evaluation.settings  # noqa: F401
    from guided_diffusion.dkdm import ablation
    from guided_diffusion.evaluation.domain_classifier import (
        DomainClassifier,
        save_domain_classifier,
    )

    tdir = _tiny_teacher(tmp_path)
    torch.manual_seed(0)
    clf = str(tmp_path / "clf.safetensors")
    save_domain_classifier(DomainClassifier(1, 8, 10, width=4, feature_dim=8), clf,
                           {"dataset": "digits", "split": "train", "test_accuracy": 0.1})
    cfg = load_config(None, PIPE + [
        f"dkdm.teacher_path={tdir}", f"out_dir={tmp_path}", "data.dataset=digits", "sample.sampler=5",
        "continual.eval_sampler=5", "evaluation.num_samples=12", "evaluation.batch_size=6", "evaluation.sampler=5",
        "evaluation.metrics=fid,class_acc", f"evaluation.classifier_path={clf}", "evaluation.train_classifier=false"])
    out = str(tmp_path / "res")
    assert ablation.baseline_images(cfg) == 1621  # the real training set of digits (as DKDM's 50K for CIFAR-10)
    rows = ablation.run_ablation(cfg, out, ["baseline", "dynamic"], baseline_n=10, log=lambda m: None)
    assert list(rows) == [("teacher", 0), ("student_baseline", 0), ("student_dynamic", 0)]
    for name, r in rows.items():
        assert r["eval_fid"] > 0 and 0 <= r["eval_class_acc"] <= 1 and r["eval_samples"] == 12, name
    # the baseline's set: 10 images of the 5-step sampler; the cache student: one NFE a sample and step
    # plus the preparation of its cache (every entry from T = 20 down to its stop: the shards' t)
    _, t0, _ = arrays(str(tmp_path / "dk_dynamic_s0" / "cache"))
    prep = int((20 - t0).sum())
    assert len(t0) == 10 * 4 and prep > 0  # round(0.5 x 20) batches of 4
    assert rows[("student_baseline", 0)]["teacher_nfe"] == 10 * 5 and rows[("student_baseline", 0)]["prep_teacher_nfe"] == 0
    assert rows[("student_dynamic", 0)]["prep_teacher_nfe"] == prep
    assert rows[("student_dynamic", 0)]["teacher_nfe"] == 4 * 3 + prep
    assert rows[("student_baseline", 0)]["train_steps"] == rows[("student_dynamic", 0)]["train_steps"] == 3
    with np.load(tmp_path / "dk_baseline_s0" / "teacher_set.npz") as f:
        assert f["arr_0"].shape == (10, 8, 8, 1) and set(f["arr_1"]) <= {0, 1, 2}
    path = ablation.write_report(cfg, out, rows, "python scripts/dkdm_ablation.py")
    text = open(path).read()
    assert "| student_dynamic | 1 |" in text and "beats the data-free baseline" in text and "(one seed)" in text
    assert f"| {4 * 3 + prep} ({prep}) |" in text and "| 50 (0) |" in text
    assert "x fewer parameters than the teacher" in text
    only_baseline = {k: v for k, v in rows.items() if k[0] != "student_dynamic"}  # the ratio from either student
    assert "x fewer parameters than the teacher" in open(ablation.write_report(cfg, out, only_baseline, "x")).read()
    assert os.path.isfile(os.path.join(out, "grids", "student_baseline_s0.png"))
    # A rerun trains and evaluates nothing again: the rows are read back as they were.
    mtime = os.path.getmtime(tmp_path / "dk_dynamic_s0" / "log.txt")
    again = ablation.run_ablation(cfg, out, ["baseline", "dynamic"], baseline_n=10, log=lambda m: None)
    assert {k: str(v["eval_fid"]) for k, v in again.items()} == {k: str(v["eval_fid"]) for k, v in rows.items()}
    assert os.path.getmtime(tmp_path / "dk_dynamic_s0" / "log.txt") == mtime  # its run was not even opened
    assert all(r["teacher_sha256"] == rows[("teacher", 0)]["teacher_sha256"] for r in again.values())
    assert rows[("teacher", 0)]["eval_features"].endswith(f"sha256 {ckpt.file_sha256(clf)[:12]})")
    # Another evaluation classifier (as retrained on another machine): the rerun refuses to mix FIDs.
    clf2 = str(tmp_path / "clf2.safetensors")
    save_domain_classifier(DomainClassifier(1, 8, 10, width=4, feature_dim=8), clf2,
                           {"dataset": "digits", "split": "train", "test_accuracy": 0.1})
    cfg2 = dataclasses.replace(cfg, evaluation=dataclasses.replace(cfg.evaluation, classifier_path=clf2))
    with pytest.raises(ConfigError, match="other evaluation features"):
        ablation.run_ablation(cfg2, out, ["baseline", "dynamic"], baseline_n=10, log=lambda m: None)
    # Another seed (as another process would) adds its rows beside seed 0's, in its own run folders.
    one = ablation.run_ablation(cfg, out, ["dynamic"], baseline_n=10, log=lambda m: None, seeds=[1])
    assert set(one) == {("teacher", 0), ("student_baseline", 0), ("student_dynamic", 0), ("teacher", 1),
                        ("student_dynamic", 1)}
    assert os.path.isdir(tmp_path / "dk_dynamic_s1") and one[("student_dynamic", 1)]["eval_fid"] != \
        one[("student_dynamic", 0)]["eval_fid"]  # another initialisation, cache and evaluation sample
    assert set(ablation._read(os.path.join(out, "results.csv"))) == set(one)
    text = open(ablation.write_report(cfg, out, one, "x")).read()
    assert "| student_dynamic | 2 |" in text and "| teacher | 2 |" in text and " ± " in text
    # Other teacher weights under the same path: the rerun refuses instead of mixing two teachers.
    from safetensors.torch import load_file

    wpath = os.path.join(tdir, "ema_0.9_000010.safetensors")
    meta = json.load(open(os.path.join(tdir, "ema_0.9_000010.json")))
    sd = load_file(wpath)
    sd["out.2.bias"] = sd["out.2.bias"] + 0.1
    ckpt.save_safetensors(sd, wpath, meta)
    with pytest.raises(ConfigError, match="another teacher"):
        ablation.run_ablation(cfg, out, ["baseline", "dynamic"], baseline_n=10, log=lambda m: None)
    shutil.rmtree(out)  # a fresh table, but the students' folders still hold the old teacher's training
    with pytest.raises(ConfigError, match="dk_baseline_s0 holds results of another teacher"):
        ablation.run_ablation(cfg, out, ["baseline", "dynamic"], baseline_n=10, log=lambda m: None)


def test_ablation_counts_each_modes_cache_preparation(tmp_path):
    from guided_diffusion.dkdm import ablation
    from guided_diffusion.dkdm.prepare import cache_nfe

    # Without a header: the count from the spec. iterative: one batch of pure noise, nothing to prepare;
    # shuffled: one batch, each entry run from T to its own stop; dynamic: round(rho T) such batches.
    it, sh, dy = spec(n=8, T=20, mode="iterative"), spec(n=8, T=20, mode="shuffled"), spec(n=40, T=20)
    assert ablation.preparation_nfe(it, str(tmp_path / "none")) == 0
    stops = torch.cat([shard_draws(sh, i, min(7, 8 - 7 * i))[1] for i in range(2)])  # shards of 7
    assert ablation.preparation_nfe(sh, str(tmp_path / "none")) == int((20 - stops).sum()) == cache_nfe(sh)
    assert 8 <= cache_nfe(sh) <= 8 * 19
    # With a prepared cache: its header's count, the same number.
    d = str(tmp_path / "dyn")
    stats = prepare_cache(Toy(), create_gaussian_diffusion(steps=20, noise_schedule="cosine"), dy, d, device="cpu")
    assert ablation.preparation_nfe(dy, d) == stats["nfe"] == cache_nfe(dy) == read_header(d)["teacher_nfe"]
    # The table: total with its preparation part; an older row (no prep column) says it left preparation out.
    assert ablation._nfe_cell({"model": "student_dynamic", "teacher_nfe": 64000 + 16000, "prep_teacher_nfe": 16000}) \
        == "80000 (16000)"
    assert ablation._nfe_cell({"model": "student_dynamic", "teacher_nfe": "64000"}) == \
        "64000 (preparation not counted)"
    assert ablation._nfe_cell({"model": "student_baseline", "teacher_nfe": "225000"}) == "225000"
    assert ablation._nfe_cell({"model": "teacher", "teacher_nfe": ""}) == ""


def test_ablation_verdicts_follow_the_benchmark_rule_over_seeds():
    from guided_diffusion.dkdm import ablation

    def rows(**fids):
        return {(f"student_{m}", s): {"model": f"student_{m}", "seed": s, "eval_fid": v}
                for m, vals in fids.items() for s, v in enumerate(vals)}

    v = ablation.verdicts(rows(dynamic=[40, 41, 39], baseline=[60, 65, 63], shuffled=[46, 47, 45],
                               iterative=[800, 850, 900]))
    assert "**confirmed**" in v[0] and "**confirmed**" in v[1]
    v = ablation.verdicts(rows(dynamic=[40, 44, 39], baseline=[60, 65, 63], shuffled=[43, 47, 45],
                               iterative=[800, 850, 900]))
    assert "**confirmed**" in v[0] and "**not resolved**" in v[1]  # shuffled vs dynamic within the spread
    v = ablation.verdicts(rows(dynamic=[40, 41, 39], baseline=[60, 65, 63], shuffled=[46, 47, 45]))
    assert "iterative not measured yet" in v[1] and "**confirmed** for that pair" in v[1]
    assert v[1].endswith("the order: **not resolved**.")
    v = ablation.verdicts(rows(dynamic=[70, 71], baseline=[60, 61]))
    assert len(v) == 1 and "**not confirmed**" in v[0]
    v = ablation.verdicts(rows(dynamic=[40], baseline=[60]))
    assert "**not resolved** (one seed)" in v[0]
