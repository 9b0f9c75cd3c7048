"""Latent diffusion: the autoencoder stage (diffusers' AutoencoderKL) trained, rescaled, saved and read
back, latents encoded once and cached, continual runs on latents whose samples are decoded, and the
refusals of what cannot run on latents."""

import csv
import os

import numpy as np
import pytest
import torch

import guided_diffusion.continual.methods  # noqa: F401  (the methods' config schemas)
import guided_diffusion.evaluation.settings  # noqa: F401
from guided_diffusion.pretrained.latent import LatentCodec, build_autoencoder, train_autoencoder
from guided_diffusion.runtime.config import ConfigError, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET = os.path.join(ROOT, "yaml/mnist/ldm_buffer_replay.yaml")


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory):
    """A small autoencoder trained briefly on real digits and saved in the diffusers layout."""
    from guided_diffusion import experiment

    cfg = load_config(PRESET, [])
    x, _, info = experiment.load_split(cfg, "train")
    ae = build_autoencoder(["16", "32"], 4, 1, info.channels, info.image_size, seed=0)

    def mse():
        with torch.no_grad():
            return float(torch.mean((ae.decode(ae.encode(x[:64]).latent_dist.mean).sample - x[:64]) ** 2))

    before = mse()
    train_autoencoder(ae, x[:512], steps=60, batch_size=16, lr=2e-3, kl_weight=1e-6, log=lambda m: None)
    path = str(tmp_path_factory.mktemp("ae") / "mnist_f2")
    ae.save_pretrained(path)
    return path, ae, x[:64], (before, mse())


def test_the_autoencoder_learns_is_rescaled_and_reads_back(autoencoder, tmp_path):
    path, ae, x, (before, after) = autoencoder
    assert after < 0.5 * before  # it learned to reconstruct
    with torch.no_grad():
        means = ae.encode(x).latent_dist.mean
    codec = LatentCodec(path)
    assert codec.channels == 4 and codec.factor == 2 and codec.latent_shape(1, 28) == (4, 14, 14)
    z = codec.encode(x)
    torch.testing.assert_close(z, means * codec.scale, atol=1e-5, rtol=1e-5)
    # the scale was 1 / std of the training set's latent means: close to unit std on other digits too
    assert 0.5 < float(z.std()) < 2.0
    back = codec.decode(z)
    assert back.shape == x.shape and back.abs().max() <= 1
    assert torch.mean((back - x) ** 2) < torch.mean(x ** 2)  # better than predicting zeros
    cached = codec.encode_cached(x, "test digits", root=str(tmp_path))
    files = os.listdir(tmp_path / "latent_cache")
    assert len(files) == 1 and torch.equal(cached, codec.encode_cached(x, "test digits", root=str(tmp_path)))
    with pytest.raises(ValueError, match="not divisible by the autoencoder's downsampling 2"):
        codec.latent_shape(1, 27)


def _tiny(ae_path, tmp_path, *extra):
    return [f"latent.autoencoder={ae_path}", "model.num_channels=16", "model.num_head_channels=16",
            "continual.num_steps=2", "continual.first_task_num_steps=2", "continual.limit_tasks=2",
            "train.batch_size=8", "train.save_interval=2", "train.num_threads=1", "continual.grid_per_class=2",
            "continual.eval_sampler=ddim2", f"out_dir={tmp_path}", *extra]


@pytest.mark.parametrize("method", ["buffer_replay", "generative_distillation"])
def test_a_continual_run_on_latents_decodes_its_samples(autoencoder, tmp_path, method):
    from PIL import Image

    from guided_diffusion import experiment
    from guided_diffusion.continual.loop import run_continual
    from guided_diffusion.sampling.sample_sets import sample_set

    cfg = load_config(PRESET, _tiny(autoencoder[0], tmp_path))
    if method == "generative_distillation":  # the preset's method section replaced: teacher-made latents
        cfg.method = load_config(os.path.join(ROOT, "yaml/mnist/generative_distillation.yaml"),
                                 ["method.replay_batch=4"]).method
    ctx = run_continual(cfg)
    assert ctx.info.shape == (4, 14, 14) and tuple(ctx.x.shape[1:]) == (4, 14, 14)
    assert len(list(csv.DictReader(open(f"{ctx.run_dir}/metrics.csv")))) == 2
    assert Image.open(f"{ctx.run_dir}/task_1/samples.png").size[0] >= 2 * 28  # a grid of decoded digits
    spec = experiment.grid_spec(cfg, ctx.info, ctx.device)
    assert spec.decode is not None and spec.clip_denoised is False  # latents are not clipped to [-1, 1]
    images, _ = sample_set(ctx.model, spec, num_samples=2, batch_size=2, seed=0, labels=[0, 1])
    assert images.shape == (2, 28, 28, 1) and images.dtype == np.uint8


def test_what_cannot_run_on_latents_is_refused():
    from guided_diffusion.continual.base import METHODS, check_method
    from guided_diffusion.continual.solver import check_solver

    cfg = load_config(PRESET, ["latent.autoencoder=somewhere", "solver.replay=guided"])
    with pytest.raises(ConfigError, match="sees images, not a latent diffusion's latents"):
        check_solver(cfg.solver, cfg)
    gr = METHODS["generative_replay"]
    with pytest.raises(ConfigError, match="style guide stores its replay set as images"):
        check_method(gr, gr.Config(style="guide"), cfg, 1)
    with pytest.raises(ConfigError, match="runs on images, not latents"):
        check_method(METHODS["dynamic_distillation"], METHODS["dynamic_distillation"].Config(), cfg, 1)
    # unclipped latents on the cosine schedule diverge at its last steps: refused at load, naming the fix
    with pytest.raises(ConfigError, match="noise_schedule cosine.*use scaled_linear"):
        load_config(PRESET, ["diffusion.noise_schedule=cosine"])
    load_config(PRESET, ["diffusion.noise_schedule=cosine", "diffusion.predict_xstart=true"])  # x0 directly: no 1/sqrt(alpha)


def test_a_missing_autoencoder_is_named(tmp_path):
    from guided_diffusion import experiment

    cfg = load_config(PRESET, [f"latent.autoencoder={tmp_path}/nowhere"])
    with pytest.raises(ConfigError, match="no autoencoder there .* scripts/autoencoder_train.py"):
        experiment.latent_codec(cfg)


def test_a_pretrained_diffusers_unet_is_fine_tuned_task_after_task(tmp_path):
    """model.arch diffusers: a (tiny, random) UNet2DConditionModel saved in the diffusers layout, as Stable
    Diffusion's unet/, is loaded with its weights, conditioned on each class's prompt through its
    cross-attention, and fine-tuned by a continual run; a text encoder of another width is refused."""
    from diffusers import UNet2DConditionModel

    from guided_diffusion import experiment
    from guided_diffusion.continual.loop import final_weights, run_continual

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=384,
                                attention_head_dim=8, norm_num_groups=8)
    root = tmp_path / "sd"
    unet.save_pretrained(root / "unet")  # found under an SD root
    preset = os.path.join(ROOT, "yaml/mnist/text_buffer_replay.yaml")
    over = ["model.arch=diffusers", f"model.diffusers_path={root}", "data.image_size=16", "continual.num_steps=2",
            "continual.first_task_num_steps=2", "continual.limit_tasks=2", "train.batch_size=4",
            "train.save_interval=2", "train.num_threads=1", "continual.grid_per_class=1",
            "continual.eval_sampler=ddim2", f"out_dir={tmp_path}/runs"]
    cfg = load_config(preset, over)
    _, _, info = experiment.load_split(cfg, "train")
    model = experiment.build_model(cfg, info)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(start[f"net.unet.{k}"], v) for k, v in unet.state_dict().items())  # its weights
    ctx = run_continual(cfg)
    trained = final_weights(f"{ctx.run_dir}/task_1")[0]
    assert trained.keys() == start.keys() and not all(torch.equal(trained[k], start[k]) for k in start)
    assert os.path.exists(f"{ctx.run_dir}/task_1/samples.png")
    UNet2DConditionModel(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64,
                         attention_head_dim=8, norm_num_groups=8).save_pretrained(tmp_path / "narrow")
    with pytest.raises(ConfigError, match="cross-attention takes 64-wide tokens"):
        experiment.build_model(load_config(preset, over[:1] + [f"model.diffusers_path={tmp_path}/narrow"] + over[2:]),
                               info)


def test_the_stable_diffusion_preset_runs_on_a_tiny_sd_folder(tmp_path, text_task_dict):
    """yaml/sd/text_buffer_replay.yaml, as a user with Stable Diffusion on disk runs it, on a tiny random
    SD folder in the diffusers layout (unet/, vae/, text_encoder/ a CLIP text model, tokenizer/) and a
    task dict with text labels: its UNet is fine-tuned on the VAE's latents, task after task in the
    file's order, on SD's noise schedule."""
    import csv

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import BertTokenizerFast, CLIPTextConfig, CLIPTextModel

    from guided_diffusion.continual.loop import final_weights, run_continual

    torch.manual_seed(0)
    sd = tmp_path / "sd"
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
                         attention_head_dim=8, norm_num_groups=8).save_pretrained(sd / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                  layers_per_block=1, norm_num_groups=8, sample_size=16).save_pretrained(sd / "vae")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "circle", "square", "green", "star"]
    (tmp_path / "vocab.txt").write_text("\n".join(words))
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(sd / "tokenizer")
    CLIPTextModel(CLIPTextConfig(vocab_size=len(words), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=77)).save_pretrained(sd / "text_encoder")
    data = text_task_dict(16, 3)
    cfg = load_config(os.path.join(ROOT, "yaml/sd/text_buffer_replay.yaml"), [
        f"model.diffusers_path={sd}", f"latent.autoencoder={sd}/vae", f"text.encoder={sd}", f"data.data_dir={data}",
        f"data.test_dir={data}", "data.image_size=16", "train.precision=fp32", "train.batch_size=4",
        "continual.num_steps=2", "train.save_interval=2", "train.warmup_steps=0", "train.num_threads=1",
        "continual.grid_per_class=1", "continual.eval_sampler=ddim2", "method.buffer_size=4",
        f"out_dir={tmp_path}/runs"])
    ctx = run_continual(cfg)
    rows = list(csv.DictReader(open(f"{ctx.run_dir}/metrics.csv")))
    assert [r["classes"] for r in rows] == ["0 2", "1"]  # the file's tasks; classes by sorted text
    sd_unet = UNet2DConditionModel.from_pretrained(sd / "unet").state_dict()
    trained = final_weights(f"{ctx.run_dir}/task_1")[0]
    assert not all(torch.equal(trained[f"net.unet.{k}"], v) for k, v in sd_unet.items())  # fine-tuned
    assert ctx.diffusion.betas[0] == pytest.approx(0.00085) and ctx.diffusion.betas[-1] == pytest.approx(0.012)
    assert os.path.exists(f"{ctx.run_dir}/task_1/samples.png")
