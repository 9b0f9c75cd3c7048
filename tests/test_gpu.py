"""The CUDA paths (``-m gpu``; skipped without a GPU): the device check ``scripts/gpu_check.sh`` runs them.

Each test runs real code on the GPU and compares it with the CPU result or with itself resumed:
the UNet forward, bf16/fp16 training, classifier guidance and the few-step solvers, the DKDM
cache on device, a 2-task continual run, and resume bit-identity under deterministic kernels.
"""

import csv
import os

import pytest
import torch

from guided_diffusion.runtime.config import load_config

# GD_TEST_DEVICE=cpu runs the same tests on the CPU (``pytest -m gpu``): how they are checked on a
# machine without a GPU (every comparison then holds trivially; the code paths run).
DEV = os.environ.get("GD_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(DEV == "cuda" and not torch.cuda.is_available(),
                                                  reason="needs CUDA (or GD_TEST_DEVICE=cpu)")]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA = [f"device={DEV}"] + (["train.num_threads=0"] if DEV == "cuda" else [])


@pytest.fixture(autouse=True)
def deterministic():
    """fp32 matmuls without TF32 and deterministic cuDNN, so that CPU/GPU and resumed runs compare."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
     torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) = saved


def _demo_unet():
    from guided_diffusion.script_util import create_model

    torch.manual_seed(0)
    return create_model(image_size=28, in_channels=1, num_channels=32, num_res_blocks=1, channel_mult="1,2,2",
                        attention_resolutions="7", num_head_channels=32, class_cond=True, num_classes=10)


def test_unet_forward_on_cuda_matches_cpu():
    model = _demo_unet()
    x, t, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 10, 500, 999]), torch.tensor([0, 3, 5, 9])
    with torch.no_grad():
        want = model(x, t, y)
        got = model.to(DEV)(x.to(DEV), t.to(DEV), y.to(DEV)).cpu()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_continual_run(tmp_path, precision, tiny_eval_classifier):
    """Two tasks of generative distillation under autocast: finite losses and weights, close to fp32."""
    from test_continual import TINY, _final_model

    from guided_diffusion.continual.loop import run_continual

    runs = {}
    for p in ("fp32", precision):
        cfg = load_config(os.path.join(ROOT, "yaml/mnist/generative_distillation.yaml"),
                          TINY + tiny_eval_classifier + CUDA + [f"out_dir={tmp_path}/{p}", f"train.precision={p}"])
        ctx = run_continual(cfg)
        with open(f"{ctx.run_dir}/metrics.csv") as f:
            rows = list(csv.DictReader(f))
        assert [r["task"] for r in rows] == ["0", "1"]
        assert all(float(r["final_loss"]) == float(r["final_loss"]) for r in rows)  # not NaN
        runs[p] = _final_model(ctx.run_dir, 1)
    for k, v in runs[precision].items():
        assert torch.isfinite(v.float()).all(), k
    # A few steps of lr 1e-4 from the same start: mixed precision stays near the fp32 weights.
    drift = max(float((runs[precision][k].float() - runs["fp32"][k].float()).abs().max()) for k in runs["fp32"])
    assert drift < 1e-2


def test_resume_on_cuda_is_bit_identical(tmp_path, tiny_eval_classifier):
    """A run stopped between the tasks ends as the uninterrupted one, on the GPU (deterministic kernels)."""
    from test_continual import TINY, _final_model

    from guided_diffusion.continual.loop import run_continual

    yaml = os.path.join(ROOT, "yaml/mnist/generative_distillation.yaml")
    a = load_config(yaml, TINY + tiny_eval_classifier + CUDA + [f"out_dir={tmp_path}/a"])
    run_continual(a)
    run_continual(load_config(yaml, TINY + tiny_eval_classifier + CUDA + [f"out_dir={tmp_path}/b", "continual.limit_tasks=1"]))
    b = load_config(yaml, TINY + tiny_eval_classifier + CUDA + [f"out_dir={tmp_path}/b"])
    run_continual(b)
    wa, wb = _final_model(f"{tmp_path}/a/{a.name}", 1), _final_model(f"{tmp_path}/b/{b.name}", 1)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_dkdm_cache_on_device(tmp_path):
    """DKDM's dynamic cache built and replayed by a teacher on the GPU, two tasks."""
    from test_dkdm import TINY

    import guided_diffusion.continual.methods  # noqa: F401
    from guided_diffusion.continual.loop import run_continual

    cfg = load_config(os.path.join(ROOT, "yaml/mnist/gd_dynamic_cache.yaml"), TINY + CUDA + [f"out_dir={tmp_path}"])
    ctx = run_continual(cfg)
    with open(f"{ctx.run_dir}/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["task"] for r in rows] == ["0", "1"] and float(rows[1]["final_replay_loss"]) > 0


@pytest.mark.parametrize("spec", ["ddim10", "dpmpp_2m10", "unipc8l"])
def test_guided_sampling_on_cuda_matches_cpu(spec):
    """Classifier guidance through ADM's loop and through the solvers: the GPU draws what the CPU draws."""
    from guided_diffusion.sampling.classifier_guidance import classifier_cond_fn
    from guided_diffusion.sampling.sample_sets import sample_batch
    from guided_diffusion.script_util import create_gaussian_diffusion

    class NoisyClassifier(torch.nn.Module):  # logits from the image and the timestep
        def __init__(self):
            super().__init__()
            self.conv, self.head = torch.nn.Conv2d(1, 8, 3, stride=2), torch.nn.Linear(8 + 1, 10)

        def forward(self, x, t):
            h = torch.relu(self.conv(x)).mean(dim=(2, 3))
            return self.head(torch.cat([h, t.float().view(-1, 1) / 1000], 1))

    model = _demo_unet().eval()
    torch.manual_seed(1)
    clf = NoisyClassifier().eval()
    diffusion = create_gaussian_diffusion(steps=1000, noise_schedule="cosine", timestep_respacing=spec)
    noise, y = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(2)), torch.tensor([1, 2, 3, 4])
    out = {}
    for dev in ("cpu", DEV):
        m, c = model.to(dev), clf.to(dev)
        out[dev] = sample_batch(m, diffusion, (4, 1, 28, 28), y=y.to(dev), noise=noise,
                                cond_fn=classifier_cond_fn(c, 1.0), device=torch.device(dev)).cpu()
    torch.testing.assert_close(out[DEV], out["cpu"], rtol=1e-3, atol=1e-3)


def test_train_step_reads_the_device_once(tmp_path):
    """A training step (DiffusionObjective, fp32, one process) makes exactly one device-to-host read:
    the loss terms and the gradient norm together (train_util._read_scalars), for the non-finite
    policy and the log. CUDA's sync debug mode counts every synchronising call."""
    import warnings

    from test_train_util import make_loop

    if DEV != "cuda":
        pytest.skip("counts CUDA synchronisations")
    loop = make_loop(tmp_path, steps=4)  # TrainLoop's default device: cuda when there is one
    assert torch.device(loop.device).type == "cuda"
    loop.run_step(*[t.to(DEV) for t in next(loop.data)])  # warm-up (lazy inits may sync)
    x, y = [t.to(DEV) for t in next(loop.data)]
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loop.run_step(x, y)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) == 1, syncs


def test_compiled_training_on_cuda(tmp_path):
    """train.compile: inductor on the GPU: three steps end near the eager run's weights."""
    from test_train_util import make_loop

    if DEV != "cuda":
        pytest.skip("inductor on CUDA")
    out = {}
    for name, extra in (("eager", {}), ("inductor", {"compile": "inductor"})):
        loop = make_loop(tmp_path / name, steps=3, **extra)  # on cuda (TrainLoop's default device)
        assert torch.device(loop.device).type == "cuda"
        for _ in range(3):
            loop.run_step(*[t.to(DEV) for t in next(loop.data)])
        out[name] = {k: v.float().cpu() for k, v in loop.model.state_dict().items()}
    assert all(torch.allclose(out["eager"][k], out["inductor"][k], atol=1e-4) for k in out["eager"])
