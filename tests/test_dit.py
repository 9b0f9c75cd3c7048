"""The DiT student: shapes, adaLN-Zero initialisation, the fixed position embedding, training, the
config keys (model.arch: dit) and one DKDM distillation run from a UNet teacher into a DiT."""

import csv
import json
import math
import os

import numpy as np
import pytest
import torch
from test_dkdm import PIPE, _tiny_teacher, one_thread  # noqa: F401  (one_thread: autouse fixture)

from guided_diffusion.experiment import DataInfo, build_model, model_kwargs_from_config
from guided_diffusion.models.dit import DiTModel
from guided_diffusion.runtime import checkpoint as ckpt
from guided_diffusion.runtime.config import ConfigError, load_config
from guided_diffusion.script_util import create_model


def tiny(**kw):
    args = dict(image_size=8, in_channels=1, patch_size=2, hidden_size=32, depth=2, num_heads=4)
    args.update(kw)
    torch.manual_seed(0)
    return DiTModel(**args)


def inputs(n=3, c=1, size=8, classes=None):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, c, size, size, generator=g)
    t = torch.tensor([0, 17.5, 999.0][:n] + [5.0] * max(0, n - 3))
    y = None if classes is None else torch.randint(0, classes, (n,), generator=g)
    return x, t, y


def test_output_shapes_conditional_unconditional_and_learned_sigma():
    x, t, _ = inputs()
    assert tiny()(x, t).shape == (3, 1, 8, 8)
    x, t, y = inputs(classes=10)
    assert tiny(num_classes=10)(x, t, y).shape == (3, 1, 8, 8)
    x3, t3, y3 = inputs(c=3, size=28, classes=10)
    m = tiny(image_size=28, in_channels=3, patch_size=4, num_classes=10, learn_sigma=True)
    assert m.out_channels == 6 and m(x3, t3, y3).shape == (3, 6, 28, 28)
    with pytest.raises(ValueError, match="if and only if"):
        tiny()(x, t, y)
    with pytest.raises(ValueError, match="if and only if"):
        tiny(num_classes=10)(x, t)
    # Label dropout: one extra "null" row; labels are replaced in training mode only.
    d = tiny(num_classes=10, class_dropout_prob=0.5)
    assert d.label_emb.weight.shape == (11, 32) and tiny(num_classes=10).label_emb.weight.shape == (10, 32)
    torch.manual_seed(0)
    assert (d.train()._labels(torch.zeros(200, dtype=torch.long)) == 10).any()
    assert (d.eval()._labels(torch.zeros(200, dtype=torch.long)) == 0).all()


def test_adaln_zero_initial_output_is_zero_and_blocks_are_identities():
    x, t, y = inputs(classes=10)
    m = tiny(num_classes=10, learn_sigma=True)
    assert torch.equal(m(x, t, y), torch.zeros(3, 2, 8, 8))
    h = torch.randn(3, 16, 32)
    c = torch.randn(3, 32)
    for block in m.blocks:
        assert torch.equal(block(h, c), h)


def test_position_embedding_is_the_2d_sincos_of_row_and_column():
    D, grid = 16, 4
    m = tiny(image_size=8, patch_size=2, hidden_size=D)
    pos = m.pos_embed[0]
    assert pos.shape == (grid * grid, D) and "pos_embed" not in m.state_dict()  # fixed, not saved
    quarter = D // 4

    def by_hand(row, col):
        out = []
        for p in (row, col):  # first half: the row, second half: the column
            w = [10000 ** (-k / quarter) for k in range(quarter)]
            out += [math.sin(p * wk) for wk in w] + [math.cos(p * wk) for wk in w]
        return torch.tensor(out)

    for row, col in [(0, 0), (0, 3), (2, 1), (3, 3)]:
        torch.testing.assert_close(pos[row * grid + col], by_hand(row, col), rtol=0, atol=1e-6)


def test_a_gradient_step_changes_the_output_and_reaches_every_parameter():
    x, t, y = inputs(classes=10)
    m = tiny(num_classes=10)
    target = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    before = m(x, t, y).detach()
    # adaLN-Zero: step 1 trains the output projection only, step 2 the modulations (opening the
    # gates) and the embeddings, step 3 the attention and MLP weights behind the opened gates.
    for _ in range(3):
        opt.zero_grad()
        ((m(x, t, y) - target) ** 2).mean().backward()
        opt.step()
    after = m(x, t, y).detach()
    assert after.abs().max() > 1e-3 and not torch.equal(after, before)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    # Twice differentiable with respect to the input (as the UNet): gradients of gradients work.
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(m(xg, t, y).square().sum(), xg, create_graph=True)
    g.square().sum().backward()
    assert m.blocks[0].attn.qkv.weight.grad is not None


def test_patch_size_must_divide_the_image_size():
    with pytest.raises(ValueError, match="image_size 28 is not divisible by patch_size 3"):
        DiTModel(28, 1, 3, 32, 1, 4)
    with pytest.raises(ValueError, match="hidden_size 30 is not divisible by num_heads 4"):
        DiTModel(28, 1, 4, 30, 1, 4)
    with pytest.raises(ConfigError, match="model.dit_patch_size = 3 does not divide data.image_size = 28"):
        load_config(None, ["model.arch=dit", "model.dit_patch_size=3"])


DIT = ["data.image_size=28", "model.arch=dit", "model.dit_patch_size=4", "model.dit_hidden_size=64",
       "model.dit_depth=2", "model.dit_num_heads=4", "model.class_cond=true"]


def test_config_builds_a_dit_through_build_model_and_its_export_rebuilds_it():
    cfg = load_config(None, DIT)
    model = build_model(cfg, DataInfo(10, 1, 28))
    assert isinstance(model, DiTModel) and model.grid == 7 and len(model.blocks) == 2 and model.num_classes == 10
    x, t, y = inputs(size=28, classes=10)
    assert model(x, t, y).shape == (3, 1, 28, 28)
    # The exported kwargs (the JSON beside every EMA export) rebuild the same network.
    kwargs = model_kwargs_from_config(cfg, 10, 1)
    assert kwargs["arch"] == "dit" and kwargs["dit_patch_size"] == 4
    again = create_model(**kwargs)
    again.load_state_dict(model.state_dict(), strict=True)
    # A UNet's kwargs stay ADM's; an unknown architecture is one clear error.
    assert "arch" not in model_kwargs_from_config(load_config(None, []), 10, 1)
    with pytest.raises(ConfigError, match=r"model.arch = 'vit' is not one of unet, dit"):
        load_config(None, ["model.arch=vit"])
    with pytest.raises(ConfigError, match="must be divisible by 4 and by model.dit_num_heads"):
        load_config(None, DIT + ["model.dit_num_heads=3"])
    with pytest.raises(ConfigError, match="embedding_kind must be add_time_learned"):
        load_config(None, DIT + ["model.embedding_kind=concat_time_1hot"])


def test_dkdm_distils_a_unet_teacher_into_a_dit_student(tmp_path):
    from guided_diffusion.dkdm import pipeline
    from guided_diffusion.runtime.logger import Logger
    from guided_diffusion.models.unet import UNetModel

    tdir = _tiny_teacher(tmp_path)
    cfg = load_config(None, PIPE + [f"dkdm.teacher_path={tdir}", f"out_dir={tmp_path}", "model.arch=dit",
                                    "model.dit_patch_size=2", "model.dit_hidden_size=32", "model.dit_depth=2",
                                    "model.dit_num_heads=2", "train.total_steps=2"])
    with Logger(str(tmp_path / "dk")) as logger:
        loop, s = pipeline.train(cfg, torch.device("cpu"), logger)
    assert isinstance(s.teacher.net, UNetModel) and isinstance(loop.model, DiTModel)
    with open(tmp_path / "dk" / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["teacher_nfe"]) == 4 and np.isfinite(float(rows[-1]["loss"]))
    x, t, y = inputs(classes=3)
    assert loop.model(x, t, y).abs().max() > 0  # trained away from the zero initialisation
    # The EMA export names the architecture: its JSON rebuilds the DiT and the weights load strictly.
    run = tmp_path / "dk"
    export = sorted(p for p in os.listdir(run) if p.startswith("ema_") and p.endswith(".safetensors"))[-1]
    meta = json.load(open(run / export.replace(".safetensors", ".json")))
    assert meta["model"]["arch"] == "dit"
    net = create_model(**meta["model"])
    ckpt.load_weights(net, str(run / export), what="student")
    assert isinstance(net, DiTModel)
