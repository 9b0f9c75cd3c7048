"""The ``sample`` section of a config (``image_sample.py``, the end-of-run grid) and every sampler's rule
of DDIM or not (``resolve_use_ddim``), both registered on import: the section's schema and checks
(classifier-free guidance, compositions, the MCMC correctors), and the rule applied to every sampler of a
config when it is loaded (``resolve_samplers``), undone in a dumped config where the user left it unset."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..respace import sampler_of
from ..runtime.config import ConfigError, register_derived, register_section_schema


@dataclass
class SampleConfig:
    model_path: str = ""
    num_samples: int = 64
    batch_size: int = 16
    use_ddim: Optional[bool] = None  # unset: DDIM iff timestep_respacing starts with "ddim" (ADM; resolve_use_ddim)
    timestep_respacing: str = "ddim50"
    eta: float = 0.0
    clip_denoised: bool = True
    class_label: int = -1  # -1: classes drawn uniformly (class-conditional models)
    classifier_path: str = ""
    classifier_scale: float = 1.0
    out_dir: str = ""  # "" -> the run folder
    guidance_scale: float = 1.0  # classifier-free: eps_u + s (eps_c - eps_u); 1 = conditional (needs train.uncond_p > 0)
    compose: List[int] = field(default_factory=list)  # sample a product of these classes' conditionals
    compose_weights: List[float] = field(default_factory=list)  # one per compose label (default 1 each)
    mcmc: str = "none"  # none | ula | uha (score or energy) | mala | cha (energy models): corrections per step
    mcmc_steps: int = 1  # MCMC steps after each reverse step
    mcmc_step_size: float = 0.1  # step size = this * beta_t of the training schedule
    mcmc_start_t: int = 50  # correct after the reverse steps from original timesteps >= this (Continual-Diffusers' mcmc_sampler_start_timestep; 0: every step)
    mcmc_damping: float = 0.9  # uha/cha: momentum kept at each refresh
    mcmc_leapfrog_steps: int = 3  # uha/cha
    mcmc_mass: str = "beta"  # uha/cha: beta (mass beta_t, leapfrog step mcmc_step_size * beta_t: Continual-Diffusers) | unit (unit mass, step sqrt(2 mcmc_step_size beta_t))


def check_sample(s: SampleConfig, cfg) -> None:
    """Classifier-free guidance, compositions and MCMC samplers (the choices are the registered rules)."""
    m = cfg.model

    def bad(msg: str) -> None:
        raise ConfigError(msg)

    if s.guidance_scale != 1.0:
        if not m.class_cond:
            bad(f"sample.guidance_scale = {s.guidance_scale} needs a class-conditional model (model.class_cond true); "
                "an unconditional model samples with guidance_scale 1")
        if cfg.train.uncond_p <= 0:
            bad(f"sample.guidance_scale = {s.guidance_scale} needs a model trained with label dropout "
                "(train.uncond_p > 0, e.g. 0.1): without the null class there is no unconditional prediction")
    if s.compose:
        if not m.class_cond:
            bad("sample.compose needs a class-conditional model (model.class_cond true)")
        if s.compose_weights and len(s.compose_weights) != len(s.compose):
            bad(f"sample.compose_weights has {len(s.compose_weights)} values for {len(s.compose)} labels")
        if s.guidance_scale != 1.0:
            bad("sample.compose with sample.guidance_scale: give the guidance as sample.compose_weights")
        if any(c < 0 or (m.num_classes and c >= m.num_classes) for c in s.compose):
            bad(f"sample.compose labels must be classes of the model, got {list(s.compose)}")
    elif s.compose_weights:
        bad("sample.compose_weights without sample.compose")
    if s.mcmc in ("mala", "cha") and m.parameterization != "energy":
        bad(f"sample.mcmc = {s.mcmc!r} accepts or rejects with the model's energy: it needs "
            "model.parameterization energy (a score model can use ula or uha)")
    if s.mcmc != "none":
        if s.mcmc_steps < 1 or s.mcmc_leapfrog_steps < 1:
            bad(f"sample.mcmc_steps and sample.mcmc_leapfrog_steps must be >= 1, got {s.mcmc_steps}, "
                f"{s.mcmc_leapfrog_steps}")
        if not s.mcmc_step_size > 0:
            bad(f"sample.mcmc_step_size must be > 0, got {s.mcmc_step_size}")
        if not 0.0 <= s.mcmc_damping < 1.0:
            bad(f"sample.mcmc_damping must be in [0, 1), got {s.mcmc_damping}")
        if s.mcmc_start_t >= cfg.diffusion.diffusion_steps:
            bad(f"sample.mcmc_start_t = {s.mcmc_start_t} is past the last timestep ({cfg.diffusion.diffusion_steps - 1})")


register_section_schema("sample", None, SampleConfig, check_sample,
                        choices={"mcmc": ("none", "ula", "uha", "mala", "cha"), "mcmc_mass": ("beta", "unit")},
                        positive=("batch_size",))


# ----------------------------------------------------------------------------------------------
# DDIM or not: one rule for every sampler of a config


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
