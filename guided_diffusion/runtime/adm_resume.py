"""ADM's ``--resume_checkpoint``: continue a guided-diffusion run from its files.

ADM saves ``model{step:06d}.pt`` and, beside it, ``opt{step:06d}.pt`` (the optimizer's state_dict) and
``ema_{rate}_{step:06d}.pt`` (one per EMA rate), and resumes from all three: the step parsed from the
file name, the optimizer, the EMA (``TrainLoop._load_and_sync_parameters``, ``_load_optimizer_state``,
``_load_ema_parameters``). ``resume_beside`` does the same for a freshly built ``TrainLoop`` whose
weights came from that file (``model.init_path``); what it found is one log line.
"""

from __future__ import annotations

import os
import re
from typing import Callable, List, Optional

from .checkpoint import CheckpointError, load_state_dict_file, load_torch


def parse_step(path: str) -> Optional[int]:
    """ADM's ``parse_resume_step_from_filename``: ``.../model001200.pt`` -> 1200; None for another name."""
    m = re.fullmatch(r"model(\d+)\.pt", os.path.basename(path))
    return int(m.group(1)) if m else None


def resume_beside(loop, path: str, log: Callable[[str], None]) -> str:
    """Resume ``loop`` (built with the weights of ``path``) from ADM's files beside ``path``: the step
    from its name, ``opt{step}.pt`` into the optimizer, ``ema_{rate}_{step}.pt`` into each EMA. A loop
    that resumed from its own run folder keeps that. Returns (and logs) what was resumed."""
    if loop.step > 0:
        line = (f"--resume_checkpoint {path}: not read; the run folder's own checkpoint (step {loop.step}) "
                "resumes this run")
        log(line)
        return line
    step = parse_step(path)
    if step is None:
        line = (f"--resume_checkpoint {path}: weights only (not named model<step>.pt as ADM saves it: "
                "step 0, fresh optimizer and EMA)")
        log(line)
        return line
    folder = os.path.dirname(path) or "."
    opt_path = os.path.join(folder, f"opt{step:06d}.pt")
    ema_paths = [(rate, ema, os.path.join(folder, f"ema_{rate}_{step:06d}.pt")) for rate, ema in
                 zip(loop.ema_rates, loop.ema)]
    beside = [p for p in [opt_path] + [e for _, _, e in ema_paths] if os.path.isfile(p)]
    if not beside:
        line = (f"--resume_checkpoint {path}: weights only (no {os.path.basename(opt_path)} or ema_<rate>_{step:06d}.pt "
                "beside it): step 0, fresh optimizer and EMA")
        log(line)
        return line
    found: List[str] = []
    fresh: List[str] = []
    if os.path.isfile(opt_path):
        state = load_torch(opt_path)
        if isinstance(state, dict) and "opt" in state and "state" not in state:  # this project's opt file
            state = state["opt"]
        _check_opt(loop, state, opt_path)
        loop.opt.load_state_dict(state)
        found.append(f"optimizer ({os.path.basename(opt_path)})")
    else:
        fresh.append(f"optimizer (no {os.path.basename(opt_path)})")
    shapes = {n: p.shape for n, p in loop.model.named_parameters()}
    for rate, ema, ema_path in ema_paths:
        if not os.path.isfile(ema_path):
            fresh.append(f"EMA {rate} from the weights (no {os.path.basename(ema_path)})")
            continue
        sd = load_state_dict_file(ema_path)
        bad = [n for n in loop.param_names if n not in sd or sd[n].shape != shapes[n]]
        if bad:
            raise CheckpointError(f"{ema_path} does not fit the model (e.g. {bad[0]})")
        for n, p in zip(loop.param_names, ema):
            p.copy_(sd[n])
        found.append(f"EMA {rate} ({os.path.basename(ema_path)})")
    loop.step = step
    line = f"--resume_checkpoint {path}: resumed step {step}, weights, {', '.join(found)}"
    if fresh:
        line += "; fresh: " + ", ".join(fresh)
    log(line)
    return line


def _check_opt(loop, state: dict, path: str) -> None:
    """ADM's optimizer state fits this model: one group of as many parameters, each moment of its shape."""
    groups = state.get("param_groups") if isinstance(state, dict) else None
    if not groups:
        raise CheckpointError(f"{path} holds no optimizer state_dict")
    n = sum(len(g["params"]) for g in groups)
    if n != len(loop.params):
        raise CheckpointError(f"{path} is the optimizer of {n} parameter tensors, this model has {len(loop.params)} "
                              "(an fp16 ADM run keeps flat master parameters: resume it with weights only, "
                              "by renaming the model file)")
    ids = [i for g in groups for i in g["params"]]
    for i, p in zip(ids, loop.params):
        moment = state.get("state", {}).get(i, {}).get("exp_avg")
        if moment is not None and tuple(moment.shape) != tuple(p.shape):
            raise CheckpointError(f"{path}: parameter {i}'s optimizer state has shape {tuple(moment.shape)}, "
                                  f"the model's {tuple(p.shape)}")
