"""A continual run's network rebuilt outside the run (sampling, the classifier's replay): as its method
adapted it (LoRA's adapters, the ensemble's members), so that the run's weights load into it.

A method that adapts the model (``ContinualMethod.adapts_model``) builds the same structure for any
task, whatever ran before (``adapt_model``'s contract), from the config alone: the method section, the
scenario (``continual``) and the seed. So the network is rebuilt by building the method on a bare context
and calling its ``adapt_model`` (``adapted_model``). An export (the EMA ``.safetensors``) records those
sections in its JSON beside it (``export_record``), so that ``image_sample.py`` rebuilds it from the
export alone (``with_export_record``); weights of an adapted network without that record are refused in
one line (``check_plain_weights``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from types import SimpleNamespace
from typing import Dict, Optional

import torch

from ..runtime.config import ConfigError, from_dict, to_dict
from .methods import adapts_model, build_method
from .scenario import build_scenario

RECORD_KEY = "adaptation"  # the export JSON's key: {"method": ..., "continual": ..., "task_classes": ...}


def export_record(cfg, info) -> Dict:
    """The export JSON's entry for a run whose method adapts the network ({} otherwise)."""
    if not adapts_model(cfg.method):
        return {}
    return {RECORD_KEY: {"method": to_dict(cfg.method), "continual": to_dict(cfg.continual),
                         "task_classes": [list(c) for c in info.task_classes]}}


def adapted_model(cfg, info, model: torch.nn.Module, log=None) -> torch.nn.Module:
    """``model`` (built from ``cfg``) as ``cfg.method`` adapts it; ``model`` itself when the method does not."""
    if not adapts_model(cfg.method):
        return model
    from .base import ContinualContext

    scenario = build_scenario(cfg.continual, info.num_classes, info.task_classes)
    device = next(model.parameters()).device
    ctx = ContinualContext(cfg, scenario, None, None, info, model, None, device, "",
                           SimpleNamespace(log=log or (lambda *_: None)))
    return build_method(cfg.method, ctx).adapt_model(scenario.tasks[0], model)


def read_record(weights_path: str) -> Optional[Dict]:
    """The adaptation recorded in the export JSON beside ``weights_path`` (None: no JSON, or no adaptation)."""
    side = os.path.splitext(weights_path)[0] + ".json"
    if not os.path.isfile(side):
        return None
    with open(side) as f:
        return json.load(f).get(RECORD_KEY)


def with_export_record(cfg, info, weights_path: str):
    """(cfg, info) with the method and scenario of the export beside ``weights_path`` when it records an
    adaptation and ``cfg`` names no method of its own (a config of the run, with its method, wins)."""
    record = read_record(weights_path)
    if record is None or cfg.method:
        return cfg, info
    from .config import ContinualConfig

    cfg = dataclasses.replace(cfg, method=record["method"],
                              continual=from_dict(ContinualConfig, record["continual"], "continual"))
    return cfg, dataclasses.replace(info, task_classes=tuple(tuple(c) for c in record.get("task_classes", [])))


def looks_adapted(state_dict: Dict[str, torch.Tensor]) -> Optional[str]:
    """What an adapted network's weights show (LoRA's adapter keys, an ensemble's members), or None."""
    from ..models.lora import is_adapter_name

    if any(is_adapter_name(k) for k in state_dict):
        return "LoRA adapters"
    if state_dict and all(k.startswith("nets.") for k in state_dict):
        return "an ensemble of networks"
    return None


def check_plain_weights(cfg, state_dict: Dict[str, torch.Tensor], path: str) -> None:
    """Weights of an adapted network need the method that adapted it: one line naming what is missing."""
    kind = looks_adapted(state_dict)
    if kind is not None and not adapts_model(cfg.method):
        raise ConfigError(f"{path} holds {kind} (a continual method's adapted network) but nothing says how to "
                          "rebuild it: give the run's config.yaml (its method section) or the task's .safetensors "
                          "export, whose .json beside it records the method")


__all__ = ["RECORD_KEY", "export_record", "adapted_model", "read_record", "with_export_record", "looks_adapted",
           "check_plain_weights"]
