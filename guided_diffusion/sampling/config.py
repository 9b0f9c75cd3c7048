"""Every sampler's rule of DDIM or not (``resolve_use_ddim``), registered on import: applied to every
sampler of a config when it is loaded (``resolve_samplers``), undone in a dumped config where the user
left it unset."""

from __future__ import annotations

import weakref
from typing import Dict, Optional, Tuple

from ..respace import sampler_of
from ..runtime.config import ConfigError, register_derived


def resolve_use_ddim(use_ddim: Optional[bool], respacing: str) -> bool:
    """The one rule of every sampler's ``use_ddim`` (ADM's): DDIM when it is set true; when it is
    not set, DDIM exactly when the respacing names it (``ddim50``); otherwise ancestral steps
    (``"250"``: 250 ancestral steps, as ADM's ``--timestep_respacing 250``; ``""``: the full chain).
    The pairs: ``sample.{use_ddim, timestep_respacing}``, ``continual.{eval_use_ddim, eval_respacing}``,
    ``evaluation.{use_ddim, respacing}`` (respacing "" follows the continual pair), ``solver.{use_ddim,
    respacing}`` and a method's ``{use_ddim, timestep_respacing}``. A loaded config holds the result.
    A respacing that names a solver (``"dpmpp_2m10"``, ``respace.sampler_of``) is that solver: not DDIM,
    and use_ddim set true beside it is refused."""
    try:
        solver = sampler_of(respacing)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if solver:
        if use_ddim:
            raise ConfigError(f"use_ddim: true beside respacing {respacing!r}, which names the {solver} solver: "
                              "leave use_ddim unset (or use a 'ddimN' respacing for DDIM)")
        return False
    if use_ddim is not None:
        return bool(use_ddim)
    return str(respacing or "").strip().lower().startswith("ddim")


def resolve_evaluation_use_ddim(use_ddim: Optional[bool], respacing: str, cfg) -> bool:
    """``evaluation.use_ddim``: the rule on its own respacing; with respacing "" (the evaluation
    samples with the continual grids' sampler) an unset value follows ``continual.eval_use_ddim``."""
    if use_ddim is None and not respacing:
        return resolve_use_ddim(cfg.continual.eval_use_ddim, cfg.continual.eval_respacing)
    return resolve_use_ddim(use_ddim, respacing)


# The use_ddim keys whose rule follows their respacing when unset (resolve_samplers).
_USE_DDIM_KEYS = (("sample", "use_ddim"), ("continual", "eval_use_ddim"), ("solver", "use_ddim"),
                  ("evaluation", "use_ddim"), ("method", "use_ddim"))
# A resolved Config's use_ddim keys that the user left unset (dump_config keeps them so), by the Config's id:
# kept outside the instance, whose __dict__ stays its fields (``Config(**cfg.__dict__)`` works); a copy
# has none, and dumps the resolved values as before.
_UNSET_BY_ID: Dict[int, Tuple[str, ...]] = {}


def _unset_of(cfg) -> Tuple[str, ...]:
    return _UNSET_BY_ID.get(id(cfg), ())


def _remember_unset(cfg, paths: Tuple[str, ...]) -> None:
    if id(cfg) not in _UNSET_BY_ID:
        weakref.finalize(cfg, _UNSET_BY_ID.pop, id(cfg), None)
    _UNSET_BY_ID[id(cfg)] = paths


def resolve_samplers(cfg) -> None:
    """Apply ``resolve_use_ddim`` to every sampler of ``cfg`` (in place). The keys left unset are
    remembered, so that ``dump_config`` (a run's config.yaml) writes them unset: ADM's rule then holds
    again when the saved config is given a new respacing (``image_sample.py --timestep_respacing 25``)."""
    unset = [f"{sec}.{key}" for sec, key in _USE_DDIM_KEYS
             if not isinstance(getattr(cfg, sec), dict) and hasattr(getattr(cfg, sec), key)
             and getattr(getattr(cfg, sec), key) is None]
    _remember_unset(cfg, tuple(unset) + _unset_of(cfg))
    cfg.sample.use_ddim = resolve_use_ddim(cfg.sample.use_ddim, cfg.sample.timestep_respacing)
    cfg.continual.eval_use_ddim = resolve_use_ddim(cfg.continual.eval_use_ddim, cfg.continual.eval_respacing)
    cfg.solver.use_ddim = resolve_use_ddim(cfg.solver.use_ddim, cfg.solver.respacing)
    ev = cfg.evaluation
    if not isinstance(ev, dict) and hasattr(ev, "use_ddim"):
        ev.use_ddim = resolve_evaluation_use_ddim(ev.use_ddim, ev.respacing, cfg)
    for m in cfg.method if isinstance(cfg.method, list) else [cfg.method]:
        if not isinstance(m, dict) and hasattr(m, "use_ddim") and hasattr(m, "timestep_respacing"):
            m.use_ddim = resolve_use_ddim(m.use_ddim, m.timestep_respacing)


def unresolve_samplers(cfg, tree: dict) -> None:
    """In ``tree`` (``dump_config``'s), a derived ``use_ddim`` the user left unset back to unset."""
    respacing = {"sample": "timestep_respacing", "continual": "eval_respacing", "solver": "respacing",
                 "evaluation": "respacing", "method": "timestep_respacing"}
    for path in _unset_of(cfg):
        sec, key = path.split(".")
        part = tree.get(sec)
        if not isinstance(part, dict) or key not in part:
            continue
        try:  # still what the rule gives (a script may have set it since, e.g. image_sample's --sampler)
            rule = (resolve_evaluation_use_ddim(None, part.get("respacing", ""), cfg) if sec == "evaluation"
                    else resolve_use_ddim(None, part.get(respacing[sec], "")))
        except ConfigError:
            continue
        if part[key] == rule:
            part[key] = None


register_derived(resolve_samplers, unresolve_samplers)
