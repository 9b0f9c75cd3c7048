"""The architecture of a checkpoint from the files beside it, for ``image_sample.py`` without ``--config``.

Every export of this project is a weights file with a JSON beside it (``ema_{rate}_{step}.json``:
``experiment.export_config``: the network's ``create_model`` arguments, the diffusion, the data's size
and channels). A run folder's checkpoints (``model{step}.pt``, ``ema_{rate}_{step}.pt``) have that JSON
beside their export of the same step, and the run's ``config.yaml`` above them. ``config_beside`` finds
the first of these, so that sampling a checkpoint needs no config, as ADM's flags alone would not say
this project's options (``norm_groups``, the embedding, classifier-free guidance's null class).
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import List, Optional, Tuple

from ..runtime.config import ConfigError

# create_model's arguments that are config keys of the model section under the same name.
_MODEL_KEYS = ("num_channels", "num_res_blocks", "channel_mult", "class_cond", "use_checkpoint", "attention_resolutions",
               "num_heads", "num_head_channels", "num_heads_upsample", "use_scale_shift_norm", "dropout",
               "resblock_updown", "use_new_attention_order", "embedding_kind", "attention_backend", "norm_groups",
               "arch", "dit_patch_size", "dit_hidden_size", "dit_depth", "dit_num_heads", "dit_mlp_ratio")


def export_json_of(model_path: str) -> Optional[str]:
    """The export JSON that describes the network of ``model_path``: its own (``X.json`` beside ``X.pt`` or
    ``X.safetensors``), else an EMA export of the same step in the same folder; None if there is none."""
    stem = os.path.splitext(model_path)[0]
    if os.path.isfile(stem + ".json") and _is_export(stem + ".json"):
        return stem + ".json"
    m = re.search(r"(\d{6})$", stem)
    if m:
        for path in sorted(glob.glob(os.path.join(os.path.dirname(model_path) or ".", f"ema_*_{m.group(1)}.json"))):
            if _is_export(path):
                return path
    return None


def _is_export(path: str) -> bool:
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and isinstance(meta.get("model"), dict)


def words_from_export(path: str) -> List[str]:
    """``key=value`` overrides that rebuild the network and diffusion recorded in the export JSON ``path``."""
    with open(path) as f:
        meta = json.load(f)
    if meta.get("generator") == "vae" or "text" in meta or meta["model"].get("arch") == "diffusers":
        raise ConfigError(f"{path} describes a VAE, text-conditional or diffusers model: sample it with its run's "
                          "config (--config <run folder>/config.yaml)")
    kw = meta["model"]
    words = [f"model.{k}={_value(kw[k])}" for k in _MODEL_KEYS if k in kw]
    data = meta.get("data", {})
    if "image_size" in data:
        words.append(f"data.image_size={data['image_size']}")
    if "channels" in data:
        words.append(f"data.channels={data['channels']}")
    null = (meta.get("parameterization") or {}).get("null_class")
    classes = int(kw.get("num_classes", 0) or 0)
    if kw.get("class_cond"):
        if null is not None:  # classifier-free guidance: the label table holds the null class too
            classes -= 1
            words.append("train.uncond_p=0.1")
        words.append(f"model.num_classes={classes}")
    for key, value in (meta.get("diffusion") or {}).items():
        if key != "timestep_respacing":  # the training chain's; the sampler is sample.sampler
            words.append(f"diffusion.{key}={_value(value)}")
    par = meta.get("parameterization") or {}
    if par.get("kind"):
        words.append(f"model.parameterization={par['kind']}")
    if par.get("energy_form"):
        words.append(f"model.energy_form={par['energy_form']}")
    if (meta.get("latent") or {}).get("autoencoder"):
        words.append(f"latent.autoencoder={meta['latent']['autoencoder']}")
    return words


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return str(v)


def config_beside(model_path: str) -> Tuple[Optional[str], List[str], str]:
    """(a config file, override words, a note) describing the checkpoint ``model_path``: the export JSON beside
    it (words), else the run's ``config.yaml`` in its folder or the one above (a continual run's task_k/);
    (None, [], "") when neither is there."""
    meta = export_json_of(model_path)
    problem = None
    if meta is not None:
        try:
            return None, words_from_export(meta), f"the architecture from {meta}"
        except ConfigError as e:
            problem = e
    folder = os.path.dirname(os.path.abspath(model_path))
    for cand in (os.path.join(folder, "config.yaml"), os.path.join(os.path.dirname(folder), "config.yaml")):
        if os.path.isfile(cand):
            return cand, [], f"the config of the run, {cand}"
    if problem is not None:
        raise problem
    return None, [], ""
