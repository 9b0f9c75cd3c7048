"""Built-in continual methods; importing this package registers them, and ``build_method`` builds
the one a config selects, or the list of them applied together (the registry itself, ``METHODS``,
lives in ``continual.base``; the composition in ``continual.compose``)."""

from ...runtime.config import ConfigError
from ..base import METHODS, ContinualContext, ContinualMethod, check_method
from ..compose import Composite, check_composition
from . import (  # noqa: F401  (each registers its methods)
    agem, buffer, dynamic_cache, ensemble, ewc, generative, l2, lora, mas, naive, si,
)


def build_method(method_cfg, ctx: ContinualContext) -> ContinualMethod:
    """The method selected by the (already validated) ``method`` section, or a ``Composite`` of a list
    of them; naive if empty."""
    if not method_cfg:
        return METHODS["naive"](METHODS["naive"].Config(), ctx)
    if isinstance(method_cfg, list):
        entries = [_checked(m, ctx) for m in method_cfg]
        if len(entries) == 1:
            return METHODS[entries[0].name](entries[0], ctx)
        check_composition(entries, ctx.cfg)
        return Composite([METHODS[e.name](e, ctx) for e in entries], ctx)
    mcfg = _checked(method_cfg, ctx)
    return METHODS[mcfg.name](mcfg, ctx)


def method_names(method_cfg) -> list:
    """The names of the methods of a (validated) ``method`` section: one, a list, or none (naive)."""
    entries = method_cfg if isinstance(method_cfg, list) else [method_cfg] if method_cfg else []
    return [e if isinstance(e, str) else e["name"] if isinstance(e, dict) else e.name for e in entries] or ["naive"]


def adapts_model(method_cfg) -> bool:
    """Whether the section's methods change the network (LoRA's adapters, the ensemble's members): its
    checkpoints are not those of the network as built."""
    return any(METHODS[n].adapts_model for n in method_names(method_cfg) if n in METHODS)


def _checked(method_cfg, ctx: ContinualContext):
    """One method's config (a parsed section, a dict, or a name), checked with the process group's world size."""
    if isinstance(method_cfg, str):
        method_cfg = {"name": method_cfg}
    name = getattr(method_cfg, "name", None) if not isinstance(method_cfg, dict) else method_cfg.get("name")
    if name not in METHODS:
        raise ConfigError(f"unknown continual method {name!r}; known: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    if isinstance(method_cfg, dict):  # not loaded through a config
        from ...runtime.config import from_dict

        method_cfg = from_dict(cls.Config, method_cfg, "method")
    # The load ran this check with the launcher's world size (unknown to it under an mpiexec that
    # does not export one); here the process group's is known, and a dict was never checked.
    check_method(cls, method_cfg, ctx.cfg, ctx.world_size)
    return method_cfg
