"""Built-in continual methods; importing this package registers them, and ``build_method`` builds
the one a config selects (the registry itself, ``METHODS``, lives in ``continual.base``)."""

from ...runtime.config import ConfigError
from ..base import METHODS, ContinualContext, ContinualMethod, check_method
from . import buffer, dynamic_cache, ewc, generative, naive  # noqa: F401  (each registers its methods)


def build_method(method_cfg, ctx: ContinualContext) -> ContinualMethod:
    """The method selected by the (already validated) ``method`` section; naive if empty."""
    if not method_cfg:
        return METHODS["naive"](METHODS["naive"].Config(), ctx)
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
    return cls(method_cfg, ctx)
