"""Masip et al.'s VAE generator baseline (``generator: vae``): the network and loss against hand
computations, the generative-replay objective, the config's checks, and a continual run that
trains, evaluates and resumes bit-identically."""

import os

import numpy as np
import pytest
import torch

import guided_diffusion.continual.methods  # noqa: F401  (registers the methods' config schemas)
import guided_diffusion.evaluation.settings  # noqa: F401  (and the evaluation section's)
from guided_diffusion.models.vae import MlpVAE, VAEObjective, vae_loss, vae_samples
from guided_diffusion.runtime.config import ConfigError, load_config
from guided_diffusion.train_util import StepContext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET = os.path.join(ROOT, "yaml/mnist/vae_generative_replay.yaml")


def _ctx(seed):
    return StepContext(step=0, microbatch=0, num_microbatches=1, generator=torch.Generator().manual_seed(seed),
                       rank=0, world_size=1)


def test_mlp_vae_is_masips_and_its_loss_is_theirs_by_hand():
    vae = MlpVAE((1, 28, 28))  # their configs/model/vae.json
    linears = [m for m in vae.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 400), (400, 400), (400, 100), (400, 100),
                                                                  (100, 400), (400, 400), (400, 784)]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 28, 28, generator=g) * 2 - 1
    eps = torch.randn(3, 100, generator=g)
    probs, mean, logvar = vae(x, eps)
    # by hand: the encoder sees [0, 1] pixels; z = mean + eps * 0.5 exp(logvar) (their reparametrisation)
    h = (x + 1).flatten(1) / 2
    for lin in linears[:2]:
        h = torch.relu(h @ lin.weight.T + lin.bias)
    m_hand, lv_hand = h @ linears[2].weight.T + linears[2].bias, h @ linears[3].weight.T + linears[3].bias
    torch.testing.assert_close((mean, logvar), (m_hand, lv_hand))
    z = m_hand + eps * 0.5 * torch.exp(lv_hand)
    for lin in linears[4:6]:
        z = torch.relu(z @ lin.weight.T + lin.bias)
    torch.testing.assert_close(probs, torch.sigmoid(z @ linears[6].weight.T + linears[6].bias).view(3, 1, 28, 28))
    # their VAE_loss: mean per-pixel BCE + batch mean of the KL, divided by the pixels
    p, t = probs.detach().double().flatten(1).numpy(), ((x + 1) / 2).double().flatten(1).numpy()
    bce = np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p)))
    mu, lv = mean.detach().double().numpy(), logvar.detach().double().numpy()
    kl = np.mean(0.5 * np.sum(-1 - lv + np.exp(lv) + mu ** 2, axis=1)) / 784
    got = vae_loss(x, probs, mean, logvar)
    np.testing.assert_allclose([got["bce"].item(), got["kl"].item(), got["loss"].item()], [bce, kl, bce + kl],
                               rtol=1e-5)


def test_samples_decode_the_noise_and_the_replay_joins_the_batch():
    vae = MlpVAE((1, 8, 8), (16,), (16,), latent_dim=4).eval()
    noise = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(vae.sample_from_noise(noise), vae.decode(noise.flatten(1)[:, :4]) * 2 - 1)
    with pytest.raises(ValueError, match="latent_dim must be in 1..64"):
        MlpVAE((1, 8, 8), latent_dim=65)
    teacher = MlpVAE((1, 8, 8), (16,), (16,), latent_dim=4).eval()
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    loss, terms = VAEObjective().with_replay(teacher)(vae, x, None, _ctx(3))
    g = torch.Generator().manual_seed(3)  # the replay's z first, then the batch's eps
    both = torch.cat([x, vae_samples(teacher, 6, g)])
    want = vae_loss(both, *vae(both, torch.randn(12, 4, generator=g)))
    torch.testing.assert_close(loss, want["loss"])
    assert set(terms) == {"loss", "bce", "kl"}
    plain, _ = VAEObjective()(vae, x, None, _ctx(3))
    assert not torch.equal(plain, loss)


@pytest.mark.parametrize("override, message", [
    (["model.class_cond=true"], "unconditional VAE: set model.class_cond false"),
    (["base=", "method.name=ewc"], "method ewc trains a diffusion generator, not generator: vae \\(methods for it: "
                                   "buffer_replay, generative_replay, naive, joint\\)"),
    (["method.style=guide"], "method.style must be masip"),
    (["vae.encoder_dims=400,x"], "vae.encoder_dims must be a comma-separated list"),
    (["generator=gan"], "generator = 'gan' is not one of diffusion, vae"),
])
def test_the_config_refuses_what_the_vae_cannot_do(override, message):
    if override[0] == "base=":  # a method section of another method: the scenario preset under the VAE's keys
        path, override = os.path.join(ROOT, "yaml/mnist/split.yaml"), ["generator=vae", "model.class_cond=false",
                                                                        *override[1:]]
    else:
        path = PRESET
    with pytest.raises(ConfigError, match=message):
        load_config(path, override)


def _final(run_dir, task):
    from guided_diffusion.continual.loop import final_weights

    return final_weights(f"{run_dir}/task_{task}")[0]


def test_a_vae_continual_run_learns_with_replay_and_resumes_bit_identically(tmp_path, tiny_eval_classifier):
    import csv

    from guided_diffusion.continual.loop import run_continual

    tiny = ["continual.num_steps=40", "continual.first_task_num_steps=60", "continual.limit_tasks=2",
            "train.batch_size=32", "train.save_interval=20", "train.log_interval=20", "train.num_threads=1",
            "evaluation.num_samples=40", "evaluation.batch_size=40", "continual.grid_per_class=2",
            "vae.encoder_dims=64", "vae.decoder_dims=64", "vae.latent_dim=8", *tiny_eval_classifier]
    whole = run_continual(load_config(PRESET, tiny + [f"out_dir={tmp_path}/whole"]))
    rows = list(csv.DictReader(open(f"{whole.run_dir}/metrics.csv")))
    assert [r["task"] for r in rows] == ["0", "1"] and all(float(r["eval_fid"]) > 0 for r in rows)
    assert float(rows[0]["final_bce"]) < 0.45  # learned something: an untrained decoder's BCE is ~0.69
    assert os.path.exists(f"{whole.run_dir}/task_1/samples.png")
    # the same run stopped after task 0 and resumed: the same weights
    first = tiny[:2] + ["continual.limit_tasks=1"] + tiny[3:]
    run_continual(load_config(PRESET, first + [f"out_dir={tmp_path}/parts"]))
    parts = run_continual(load_config(PRESET, tiny + [f"out_dir={tmp_path}/parts"]))
    a, b = _final(whole.run_dir, 1), _final(parts.run_dir, 1)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # task 1 trained on replayed samples too: without replay (naive) its weights differ
    cfg = load_config(PRESET, tiny + [f"out_dir={tmp_path}/naive"])
    cfg.method = {}  # naive fine-tuning
    naive = run_continual(cfg)
    c = _final(naive.run_dir, 1)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_the_classifier_replays_from_the_vae_with_soft_targets(tmp_path):
    """Masip's VAE baseline pairs the VAE with soft replay (their WeightedSoftGenerativeReplay) and an MLP
    solver: the previous classifier's logits are the targets, so unlabelled samples do; plain replay,
    which labels by the conditioning class, is refused for an unconditional generator."""
    import csv
    import dataclasses

    from guided_diffusion.continual.loop import run_continual
    from guided_diffusion.continual.solver import check_solver, run_solver

    cfg = load_config(PRESET, ["continual.num_steps=20", "continual.first_task_num_steps=20", "continual.limit_tasks=2",
                               "train.batch_size=32", "train.save_interval=20", "train.num_threads=1",
                               "evaluation.enabled=false", "continual.grid_per_class=0", f"out_dir={tmp_path}",
                               "solver.arch=mlp", "solver.replay=soft", "solver.init_num_steps=10",
                               "solver.num_steps=10", "solver.batch_size=16", "solver.augment=",
                               "solver.generation_interval=5"])
    run_continual(cfg)
    solver = run_solver(cfg)
    rows = list(csv.DictReader(open(f"{solver.run_dir}/metrics.csv")))
    assert [int(r["replay_per_batch"]) for r in rows] == [0, 8] and int(rows[1]["gen_images"]) == 2 * 8
    assert "replay_label_agree" not in rows[1] and float(rows[1]["replay_old_entropy"]) >= 0
    with pytest.raises(ConfigError, match="an unconditional generator .* replays with soft, soft_kd or argmax"):
        check_solver(dataclasses.replace(cfg.solver, replay="plain"), cfg)
