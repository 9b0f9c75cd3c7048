"""The ``sample`` section of a config (``image_sample.py``, the end-of-run grid) and what every sampler
value of a config means, both registered on import.

Every section that samples names its sampler with one value of the respacing grammar (``respace``):
``sample.sampler``, ``continual.eval_sampler`` (the grids), ``evaluation.sampler`` ("": the grids'),
``solver.sampler``, a GUIDE-style ``method.sampler`` and ``dynamic_distillation``'s ``method.cache_sampler``.
A value that starts with ``ddim`` is DDIM (``ddim50``, ``ddim10t``; ``eta`` where the section has one),
a plain count is ADM's ancestral sampler (``250``, ``""``: every step, ``20t``, ``10,10,10``), and a
solver's name is that solver (``dpmpp_2m10``, ``unipc10l``): ``sampler_kind``. The pairs of keys that
said the same before (``timestep_respacing`` + ``use_ddim``, ...) are refused with the value to write,
computed by ADM's rule (``adm_sampler``); ADM's ``--timestep_respacing``/``--use_ddim`` flags are
translated by the same rule (``launch.adm_flags``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..diffusion.respace import sampler_of, space_timesteps, spells_ddim
from ..runtime.config import ConfigError, register_retired, register_section_schema


@dataclass
class SampleConfig:
    model_path: str = ""
    num_samples: int = 64
    batch_size: int = 16
    sampler: str = "ddim50"  # ddimN: DDIM | N: N ancestral steps ("": every step) | dpmpp_2mN, unipcN (sampling.config)
    eta: float = 0.0  # DDIM's eta (0: deterministic); a sampler that is not DDIM takes none
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

    check_sampler("sample.sampler", s.sampler, eta=s.eta, eta_key="sample.eta")
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
                        positive=("batch_size",), key_checks={"sampler": lambda v: check_sampler("sample.sampler", v)})


# ----------------------------------------------------------------------------------------------
# What a sampler value means


def sampler_kind(value: str) -> str:
    """``ddim`` for a value that starts with "ddim" (``ddim50``, ``ddim10t``), the solver's name for a
    value that names one (``dpmpp_2m10`` -> ``dpmpp_2m``), else ``ancestral`` (``250``, ``20t``, ``""``:
    every step); ConfigError for a solver's name with a malformed count."""
    try:
        solver = sampler_of(value)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if solver:
        return solver
    return "ddim" if spells_ddim(value) else "ancestral"


def is_ddim(value: str) -> bool:
    """Whether the sampler ``value`` is DDIM (ADM's ``ddim_sample_loop``)."""
    return sampler_kind(value) == "ddim"


def check_sampler(key: str, value: str, eta: float = 0.0, eta_key: str = "", kinds: Optional[Tuple[str, ...]] = None,
                  why: str = "") -> None:
    """``key`` = ``value`` names a sampler (of ``kinds`` when given: ``why`` says why), and ``eta_key`` =
    ``eta`` (DDIM's) applies to it: a sampler that is not DDIM takes none (ADM's ancestral steps ignore
    it, the solvers are deterministic), so an eta beside one is refused rather than dropped."""
    try:
        kind = sampler_kind(value)
    except ConfigError as e:
        raise ConfigError(f"{key} = {value!r}: {e}") from None
    if kinds is not None and kind not in kinds:
        write = " or ".join(f"{key}={'ddim' if k == 'ddim' else ''}{_count(value) or 50}" for k in kinds
                            if k in ("ddim", "ancestral"))
        raise ConfigError(f"{key} = {value!r} is {_described(kind)}, but {why or key + ' takes ' + ' or '.join(kinds)}"
                          f": write {write}")
    if eta and kind != "ddim":
        raise ConfigError(f"{eta_key} = {eta} is DDIM's, but {key} = {value!r} is {_described(kind)}: set {eta_key} "
                          f"0, or sample with DDIM ({key}=ddim{_count(value) or 50})")


def _described(kind: str) -> str:
    return {"ddim": "DDIM", "ancestral": "ADM's ancestral sampler"}.get(kind, f"the {kind} solver (deterministic)")


def _count(value: str) -> str:
    """The step count that ends a sampler value (``dpmpp_2m10l`` -> ``10``), "" for none."""
    m = re.search(r"(\d+)[tl]?$", str(value).strip().lower())
    return m.group(1) if m else ""


# ----------------------------------------------------------------------------------------------
# ADM's rule: a respacing and use_ddim as one sampler value


class NoSamplerValue(ConfigError):
    """ADM's respacing and use_ddim that no sampler value stands for: ``what`` they ask, and the two
    nearest values, ``choices`` [(value, what it is)]."""

    def __init__(self, what: str, choices: List[Tuple[str, str]]):
        self.what, self.choices = what, choices
        super().__init__(f"{what} have no sampler value here: use " + " or ".join(f"{v} ({n})" for v, n in choices))


def adm_sampler(respacing: str, use_ddim: Optional[bool], diffusion_steps: int = 1000) -> str:
    """The sampler value of ADM's ``--timestep_respacing respacing --use_ddim use_ddim``: with use_ddim
    unset, the respacing itself (DDIM iff it starts with "ddim"); set, the value of that kind over the
    same timesteps (``("", True)`` -> ``ddim1000``: DDIM over every step; ``("50t", True)`` -> ``ddim50t``).
    ConfigError where no value gives those timesteps (``("250", True)``: DDIM on ADM's evenly spaced
    250 steps, which ``ddim250``'s integer stride does not keep) and for use_ddim true beside a solver."""
    spec = str(respacing if respacing is not None else "").strip()
    kind = sampler_kind(spec)
    if use_ddim is None or kind == ("ddim" if use_ddim else "ancestral"):
        return spec
    if kind not in ("ddim", "ancestral"):
        if use_ddim:
            raise NoSamplerValue(f"DDIM steps with the {kind} solver's {spec!r}",
                                 [(spec, f"the {kind} solver"), (f"ddim{_count(spec)}", "DDIM")])
        return spec
    low = spec.lower()
    if use_ddim:  # an ancestral spelling, DDIM asked
        if not low:
            return f"ddim{int(diffusion_steps)}"
        if low[-1] in "tl":  # trailing and log-SNR spacings do not depend on the prefix
            return "ddim" + low
        want, other = low, "ddim" + low
        what = f"DDIM steps on ADM's even spacing {spec!r}"
        choices = [(other, "DDIM, ADM's integer stride"), (spec, "ancestral")]
    else:  # a DDIM spelling, ancestral asked
        rest = low[len("ddim"):]
        if rest[-1:] in ("t", "l"):
            return rest
        want, other = low, rest
        what = f"ancestral steps on DDIM's striding {spec!r}"
        choices = [(rest, "ancestral, ADM's even spacing"), (spec, "DDIM")]
    try:
        same = "," not in want and space_timesteps(diffusion_steps, want) == space_timesteps(diffusion_steps, other)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if same:
        return other
    raise NoSamplerValue(what, choices)


# ----------------------------------------------------------------------------------------------
# The keys they replaced: refused with the value to write (a run's saved config: translated)

# section -> [(new key, the respacing key it replaced, the use_ddim key beside it)]; in ``method``, the first
# pair was generative_replay's (style guide), the second dynamic_distillation's (an ancestral chain).
RETIRED = {
    "sample": [("sampler", "timestep_respacing", "use_ddim")],
    "continual": [("eval_sampler", "eval_respacing", "eval_use_ddim")],
    "evaluation": [("sampler", "respacing", "use_ddim")],
    "solver": [("sampler", "respacing", "use_ddim")],
    "method": [("sampler", "timestep_respacing", "use_ddim"), ("cache_sampler", "cache_respacing", None)],
}
# The defaults of the replaced respacing keys (the new keys' defaults are the same values).
_OLD_DEFAULTS = {("sample", "sampler"): "ddim50", ("continual", "eval_sampler"): "ddim25", ("evaluation", "sampler"): "",
                 ("solver", "sampler"): "ddim25", ("method", "sampler"): "ddim50", ("method", "cache_sampler"): ""}


def _entries(section: str, part: Any, where: str) -> List[Tuple[str, Dict[str, Any]]]:
    if isinstance(part, dict):
        return [(where, part)]
    if section == "method" and isinstance(part, list):
        return [(f"{where}[{i}]", e) for i, e in enumerate(part) if isinstance(e, dict)]
    return []


def _retired_value(section: str, entry: Dict, context: Dict, keys, steps: int) -> str:
    """The sampler value that an entry's retired keys (and what ``context`` gives for the missing half) mean."""
    new, resp, ddim = keys
    ctx_part = context.get(section) if isinstance(context.get(section), dict) else {}
    if section == "method":  # a list's entries have no one context: the entry alone
        ctx_part = entry
    respacing = entry.get(resp, ctx_part.get(resp, ctx_part.get(new, _OLD_DEFAULTS[(section, new)])))
    use_ddim = entry.get(ddim, ctx_part.get(ddim)) if ddim else False
    if use_ddim is not None and not isinstance(use_ddim, bool):
        from ..runtime.typed import coerce

        use_ddim = coerce(use_ddim, bool, f"{section}.{ddim}")
    if section == "evaluation" and not str(respacing or "").strip():  # "": the grids' sampler
        if use_ddim is None:
            return ""
        grids = _retired_value("continual", context.get("continual") or {}, context, RETIRED["continual"][0], steps) \
            if isinstance(context.get("continual"), dict) else ""
        respacing = grids or _OLD_DEFAULTS[("continual", "eval_sampler")]
    return adm_sampler(respacing, use_ddim, steps)


def retire_sampler_keys(tree: Dict[str, Any], context: Dict[str, Any]) -> List[str]:
    """Replace in ``tree`` (one file's keys, or the command line's) the sampler keys that ``sampler`` keys
    replaced, by the value they meant (``adm_sampler``; the missing half of a pair from ``context``, the
    merged settings, else the old default), and return one line per replaced pair saying what to write."""
    dd = context.get("diffusion") if isinstance(context.get("diffusion"), dict) else {}
    steps = int(dd.get("diffusion_steps", 1000) or 1000)
    notes = []
    for section, keysets in RETIRED.items():
        for where, entry in _entries(section, tree.get(section), section):
            for keys in keysets:
                new, resp, ddim = keys
                old = [k for k in (ddim, resp) if k and k in entry]
                if not old:
                    continue
                named = " and ".join(f"{where}.{k}" for k in old)
                verb = "was" if len(old) == 1 else "were"
                try:
                    value = _retired_value(section, entry, context, keys, steps)
                except NoSamplerValue as e:
                    raise ConfigError(f"{named} {verb} replaced by {where}.{new}, which has no value for {e.what}: write "
                                      + " or ".join(f"{where}.{new}={v} ({n})" for v, n in e.choices)) from None
                except ConfigError as e:
                    raise ConfigError(f"{named} {verb} replaced by {where}.{new}: {e}") from None
                for k in old:
                    del entry[k]
                entry[new] = value
                notes.append(f"{named} {verb} replaced by {where}.{new}: write {where}.{new}={value or chr(34) * 2}")
    return notes


register_retired(retire_sampler_keys)
