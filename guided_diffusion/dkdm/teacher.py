"""The DKDM teacher: where its weights are, how its network is built, and one ancestral step.

The teacher may have another architecture than the student (DKDM's point): its UNet options come
from ``dkdm.teacher_model`` (ADM's model keys), or, when that is empty, from the JSON this
project's training loop writes beside every EMA export. Its weights load strictly. It must share
the student's noise schedule and number of steps; its variance may be learned or fixed
independently (read from the checkpoint's output channels).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from ..diffusion import diffusion_math as dm
from ..model_config import ModelConfig
from ..runtime import checkpoint as ckpt
from ..runtime.config import Config, ConfigError, from_dict


@dataclass
class Teacher:
    net: torch.nn.Module
    diffusion: object  # the teacher's chain: the student's schedule, the teacher's variance type
    path: str
    sha256: str
    class_cond: bool
    num_classes: int
    channels: int


def resolve_teacher_path(path: str) -> str:
    """A weights file, or a run folder: its newest EMA export (the largest rate at the latest step)."""
    path = os.path.expanduser(path)
    if not path:
        raise ConfigError("dkdm.teacher_path is empty: set it to the teacher's weights or its run folder")
    if os.path.isdir(path):
        found = []
        for f in glob.glob(os.path.join(path, "ema_*_*.safetensors")):
            m = re.match(r"^ema_([0-9.]+)_(\d+)\.safetensors$", os.path.basename(f))
            if m:
                found.append((int(m.group(2)), float(m.group(1)), f))
        if not found:
            raise FileNotFoundError(f"no EMA export (ema_<rate>_<step>.safetensors) in the teacher folder {path}")
        return max(found)[2]
    if not os.path.exists(path):
        raise FileNotFoundError(f"teacher weights not found: {path}")
    return path


def state_sha256(module: torch.nn.Module) -> str:
    """A hash of a network's weights (for teachers that exist only in memory)."""
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()


def _shape_facts(sd: Dict[str, torch.Tensor]) -> Tuple[int, int, int]:
    """(input channels, output channels, classes) read from an ADM UNet state_dict."""
    c_in, c_out, classes = ckpt.unet_shapes(sd)
    missing = [k for k, v in (("input_blocks.0.0.weight", c_in), ("out.2.weight", c_out)) if v is None]
    if missing:
        raise ckpt.CheckpointError(f"the teacher is not an ADM UNet state_dict (no '{missing[0]}')")
    return c_in, c_out, classes


def load_teacher(cfg: Config, device) -> Teacher:
    """Build and strictly load the teacher of ``cfg.dkdm``; check that its chain fits ``cfg.diffusion``."""
    from ..experiment import build_diffusion, model_kwargs_from_config
    from ..script_util import create_model

    d = cfg.dkdm
    path = resolve_teacher_path(d.teacher_path)
    sd = ckpt.load_state_dict_file(path)
    c_in, c_out, classes = _shape_facts(sd)
    learn_sigma = c_out == 2 * c_in
    if d.teacher_model:
        mcfg = from_dict(ModelConfig, d.teacher_model, "dkdm.teacher_model")
        tcfg = dataclasses.replace(cfg, model=mcfg, diffusion=_with_sigma(cfg, learn_sigma))
        kwargs = model_kwargs_from_config(tcfg, classes, c_in)
    else:
        meta_path = os.path.splitext(path)[0] + ".json"
        if not os.path.exists(meta_path):
            raise ConfigError(
                f"dkdm.teacher_model is empty and {meta_path} does not exist: give the teacher's UNet options "
                "in dkdm.teacher_model (ADM's model keys)"
            )
        with open(meta_path) as f:
            meta = json.load(f)
        kwargs = dict(meta["model"])
        _check_schedule(cfg, meta.get("diffusion", {}), meta_path)
        if meta.get("data", {}).get("image_size", cfg.data.image_size) != cfg.data.image_size:
            raise ConfigError(f"data.image_size {cfg.data.image_size} differs from the teacher's "
                              f"{meta['data']['image_size']} ({meta_path})")
        learn_sigma = bool(kwargs.get("learn_sigma", learn_sigma))
    torch.manual_seed(0)  # construction draws random init weights; they are all replaced below
    net = create_model(**kwargs)
    ckpt.load_weights(net, path, what="teacher")
    net.to(device).eval().requires_grad_(False)
    tdiff = build_diffusion(dataclasses.replace(cfg, diffusion=_with_sigma(cfg, learn_sigma)))
    return Teacher(net, tdiff, path, ckpt.file_sha256(path), classes > 0, classes, c_in)


def _with_sigma(cfg: Config, learn_sigma: bool):
    return dataclasses.replace(cfg.diffusion, learn_sigma=learn_sigma)


def _check_schedule(cfg: Config, theirs: Dict, where: str) -> None:
    """The student learns the teacher's chain: same T, schedule and parameterisation (DKDM forces this)."""
    for key in ("diffusion_steps", "noise_schedule", "predict_xstart", "rescale_timesteps"):
        if key in theirs and theirs[key] != getattr(cfg.diffusion, key):
            raise ConfigError(
                f"diffusion.{key} = {getattr(cfg.diffusion, key)!r} but the teacher was trained with {theirs[key]!r} "
                f"({where}); the student must use the teacher's diffusion"
            )


@torch.no_grad()
def teacher_step(teacher: torch.nn.Module, diffusion, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor],
                 noise: torch.Tensor, clip_denoised: bool = True):
    """One ancestral step of the teacher from x_t at chain index t: (x_{t-1}, p_mean_variance's dict).

    x_{t-1} = mu + [t != 0] sigma z (Ho et al. 2020, Algorithm 2), mu and sigma from the teacher's
    ``p_mean_variance(clip_denoised)``; one network evaluation per sample (one NFE).
    """
    kwargs = {"y": y} if y is not None else {}
    out = diffusion.p_mean_variance(teacher, x, t, clip_denoised=clip_denoised, model_kwargs=kwargs)
    x_prev = dm.ancestral_step(out["mean"], out["log_variance"], noise, dm.nonzero_mask(t, x.dim()))
    return x_prev, out
