"""The registry of config sections: the module that owns each section of ``config.Config`` registers the
section's dataclass and its checks on import (``register_section_schema``); ``SECTION_OWNERS`` names
those modules, and ``import_section_owners`` (which loading a config calls) imports them all.

Sections whose schema depends on a choice (the continual ``method`` section) are registered per choice:
``register_section_schema("method", name, dataclass)``. Checks that hold only for the programs that read
a section are ``register_section_check``'s.
"""

from __future__ import annotations

import importlib
from dataclasses import field
from typing import Any, Dict, List, Optional, Tuple

from .typed import SCHEMA_TYPES, ConfigError

# The module that owns each section (config as data handed to the code that reads it), in Config's order.
SECTION_OWNERS = {
    "data": "guided_diffusion.data.config",
    "model": "guided_diffusion.model_config",
    "diffusion": "guided_diffusion.model_config",
    "train": "guided_diffusion.train_util",
    "sample": "guided_diffusion.sampling.config",
    "classifier": "guided_diffusion.classifiers.config",
    "dist": "guided_diffusion.runtime.dist_util",
    "vae": "guided_diffusion.model_config",
    "text": "guided_diffusion.pretrained.text_encoder",
    "latent": "guided_diffusion.pretrained.latent",
    "solver": "guided_diffusion.continual.solver",
    "continual": "guided_diffusion.continual.config",
    "method": "guided_diffusion.continual.methods",
    "evaluation": "guided_diffusion.evaluation.settings",
    "dkdm": "guided_diffusion.dkdm.config",
}
# A section registered with names is selected by its key SELECTOR: SCHEMAS[section][name]; a section
# registered without has one: DEFAULTS[section].
SELECTOR = "name"
SCHEMAS: Dict[str, Dict[str, type]] = {}
DEFAULTS: Dict[str, type] = {}
# Checks across keys, (section, name) -> check(section, cfg), and the rules of one key each:
# section -> (choices {key: options}, positive keys, key checks {key: check(value)}).
CHECKS: Dict[Tuple[str, Optional[str]], Any] = {}
NO_RULES: Tuple[Dict[str, Tuple], Tuple[str, ...], Dict[str, Any]] = ({}, (), {})
RULES: Dict[str, Tuple[Dict[str, Tuple], Tuple[str, ...], Dict[str, Any]]] = {}
USED_CHECKS: Dict[str, List[Any]] = {}  # checks that hold only where a section is read: section -> [check]
LISTS: Dict[str, Any] = {}  # sections that may hold a list of entries, each selected by its name: section -> check
RETIRED: List[Any] = []  # retire(tree, context) -> notes: keys that others replaced (register_retired)


def register_section_schema(section: str, name: Optional[str], schema: type, check=None, *, choices=None,
                            positive: Tuple[str, ...] = (), key_checks=None) -> None:
    """Register the dataclass that validates ``section`` of ``Config``: with a ``name``, the section is
    selected by its ``name`` key and ``schema`` is the one for ``section.name == name`` (``method``: one
    per continual method); with ``name`` None, ``schema`` is the section's only one. Optionally
    ``check(parsed_section, cfg)``: the owning module's checks across keys, run when a config is loaded,
    before any work (raise ConfigError); and rules of one key each, run before the checks across keys:
    ``choices`` ({key: options}), ``positive`` (keys that must be > 0) and ``key_checks`` ({key:
    check(value)}, run on the command line's overrides alone too, so that an error there is the command line's)."""
    if name is None:
        DEFAULTS[section] = SCHEMA_TYPES[schema.__name__] = schema
        RULES[section] = (dict(choices or {}), tuple(positive), dict(key_checks or {}))
    else:
        SCHEMAS.setdefault(section, {})[name] = schema
    if check is not None:
        CHECKS[(section, name)] = check


def register_section_list(section: str, check) -> None:
    """Let the ``section`` registered with names hold a list (``method: [ewc, buffer_replay]``): each
    entry, a name or a mapping with a ``name``, is validated against its own schema and checked as a
    section of its own; then ``check(entries, cfg)``, the owner's rule of which entries go together
    (raise ConfigError). A one-entry list is that entry; a plain name is ``{name: <it>}``."""
    LISTS[section] = check


def register_section_check(section: str, check) -> None:
    """Register ``check(cfg.<section>, cfg)`` (raise ConfigError): checks of ``section`` that hold only
    for a program that reads it, because the section's defaults are not valid on their own (DKDM
    needs a teacher). They run when such a program loads its config, before any work: ``launch.cli.parse``
    runs them for the sections of its ``uses`` (``check_used_sections``). The checks that hold for
    every config are ``register_section_schema``'s ``check``."""
    checks = USED_CHECKS.setdefault(section, [])
    if check not in checks:
        checks.append(check)


def register_retired(retire) -> None:
    """Keys that a config no longer takes because others replaced them (``sampling.config``: the
    respacing + use_ddim pairs, now one ``sampler`` value). ``retire(tree, context)`` replaces them in
    ``tree`` (one file's keys, or the command line's) by the keys that mean the same, read with
    ``context`` (the merged settings), and returns one line per replacement naming the new key and the
    value to write. A config that someone writes is refused with the first line (``runtime.config.read_tree``);
    the config a run saved (a record of what ran) is read with the replacement."""
    RETIRED.append(retire)


def import_section_owners() -> None:
    """Import the modules of ``SECTION_OWNERS``: every section's schema and checks registered."""
    for module in SECTION_OWNERS.values():
        importlib.import_module(module)


def section_field(section: str):
    """A section of ``Config``: by default, its registered schema's defaults."""

    def default():
        if section not in DEFAULTS:
            import_section_owners()
        return DEFAULTS[section]()

    return field(default_factory=default)


def check_used_sections(cfg, sections, where: str) -> None:
    """Run the checks registered by ``register_section_check`` for ``sections`` (the ones a program
    reads); ConfigError naming ``where``."""
    for section in sections:
        for check in USED_CHECKS.get(section, ()):
            try:
                check(getattr(cfg, section), cfg)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
