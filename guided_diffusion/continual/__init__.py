"""Continual learning of diffusion models: scenarios, methods as plug-ins, and the task loop."""

from .base import METHODS, ContinualContext, ContinualMethod, register_method  # noqa: F401
from .methods import build_method  # noqa: F401
from .scenario import PRESETS, Scenario, Task, build_scenario  # noqa: F401
