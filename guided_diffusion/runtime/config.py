"""Typed experiment configuration: YAML file, then ``key.sub=value`` overrides, validated once.

A config is a tree of dataclasses (``Config`` below): a few top-level keys and one section per concern,
each section the dataclass that the module owning it registers, with its checks (``runtime.sections``;
loading imports those modules, so ``load_config(path)`` works on its own). ``load_config(path,
overrides)`` reads the YAML file (and its ``base:`` files), applies command-line overrides and checks
every key and type against the schema (``runtime.typed``). An unknown key, a wrong type or an impossible
combination raises ``ConfigError`` with one message naming the key, the file and, where possible, the
closest valid key.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import yaml

from . import sections
from .sections import (  # noqa: F401  (the registry's functions, re-exported)
    SECTION_OWNERS, check_used_sections, import_section_owners, register_retired, register_section_check,
    register_section_list, register_section_schema, section_field,
)
from .typed import ConfigError, closest, field_types, from_dict, parse_bool, parse_list, to_dict  # noqa: F401

GENERATORS = ("diffusion", "vae")


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    out_dir: str = "experiments"
    device: str = ""  # "" -> cuda (local rank) if available, else cpu
    generator: str = "diffusion"  # diffusion (the model and diffusion sections) | vae (Masip's VAE baseline: the vae section)
    # The sections, each typed as the dataclass its owner registers (sections.SECTION_OWNERS).
    data: DataConfig = section_field("data")
    model: ModelConfig = section_field("model")
    diffusion: DiffusionConfig = section_field("diffusion")
    train: TrainConfig = section_field("train")
    sample: SampleConfig = section_field("sample")
    classifier: ClassifierConfig = section_field("classifier")
    dist: DistConfig = section_field("dist")
    vae: VAEConfig = section_field("vae")
    text: TextConfig = section_field("text")
    latent: LatentConfig = section_field("latent")
    solver: SolverConfig = section_field("solver")
    continual: ContinualConfig = section_field("continual")
    # The free-form section, checked once merged: validated by the schema of its ``name`` key (one per
    # continual method); it may also be a name, or a list of names and mappings applied together
    # (register_section_list).
    method: Any = field(default_factory=dict)
    evaluation: EvaluationConfig = section_field("evaluation")
    dkdm: DKDMConfig = section_field("dkdm")


# ----------------------------------------------------------------------------------------------
# The free-form sections


def _free_sections() -> List[str]:
    """The sections of ``Config`` typed Any (``method``), checked once merged."""
    import_section_owners()  # Config's field types are theirs
    hints = field_types(Config)
    return [f.name for f in dataclasses.fields(Config) if hints[f.name] is Any]


def _section_entries(section: str, raw: Any, where: str) -> List[Dict[str, Any]]:
    """A named section's entries as mappings: a mapping is one, a name is ``{name: <it>}``, a list (where
    ``register_section_list`` allows one) holds names and mappings."""
    if isinstance(raw, dict):
        return [raw]
    if isinstance(raw, str):
        return [{sections.SELECTOR: raw}]
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: {section} must be a mapping, a name or a list, got {raw!r}")
    if section not in sections.LISTS:
        raise ConfigError(f"{where}: {section} takes one entry (a mapping), not a list")
    out = []
    for i, entry in enumerate(raw):
        if isinstance(entry, str):
            entry = {sections.SELECTOR: entry}
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: {section}[{i}] must be a name or a mapping, got {entry!r}")
        out.append(entry)
    return out


def _validate_sections(cfg: Config, where: str) -> None:
    """Validate the free-form sections against the schemas their ``name`` selects (strict keys, types)."""
    for section in _free_sections():
        raw = getattr(cfg, section)
        if raw:
            entries = _section_entries(section, raw, where)
            parsed = [_parse_named(section, e, f"{section}[{i}]" if len(entries) > 1 else section, where)
                      for i, e in enumerate(entries)]
            setattr(cfg, section, parsed[0] if len(parsed) == 1 else parsed)


def _parse_named(section: str, raw: Dict[str, Any], path: str, where: str) -> Any:
    """One entry of a named section, parsed by the schema its ``name`` selects."""
    name = raw.get(sections.SELECTOR)
    options = sections.SCHEMAS[section]
    if name not in options:
        hint = closest(str(name), options) if name else ""
        valid = ", ".join(sorted(options))
        raise ConfigError(f"{where}: {path}.{sections.SELECTOR} = {name!r} is not a known {section}{hint}; valid: {valid}")
    try:
        return from_dict(options[name], raw, path)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


# ----------------------------------------------------------------------------------------------
# Validation


def _check_choice(key: str, value: Any, options) -> None:
    if value not in options:
        raise ConfigError(f"{key} = {value!r} is not one of {', '.join(options)}{closest(str(value), options)}")


def validate(cfg: Config, where: str = "config") -> None:
    """Every check of a loaded config that needs neither the data nor the world size, in one order: the
    choices, then the keys that must be > 0 (each section in turn), the counts, then each section's key
    checks and its owner's checks across keys, and the checks of a section's list (``method: [a, b]``)."""
    names = [f.name for f in dataclasses.fields(Config)]
    try:
        _check_choice("generator", cfg.generator, GENERATORS)
        rules = [(s, getattr(cfg, s), sections.RULES[s]) for s in names if s in sections.RULES]
        for section, part, (choices, _, _) in rules:
            for key, options in choices.items():
                _check_choice(f"{section}.{key}", getattr(part, key), options)
        for section, part, (_, positive, _) in rules:
            for key in positive:
                if not getattr(part, key) > 0:
                    raise ConfigError(f"{section}.{key} must be > 0, got {getattr(part, key)}")
        _check_counts(cfg, "")  # every section, the free ones parsed by now (_validate_sections)
        for section in names:
            value = getattr(cfg, section)
            for key, check in sections.RULES.get(section, sections.NO_RULES)[2].items():
                check(getattr(value, key))
            entries = value if isinstance(value, list) else [value]
            for (sec, name), check in sections.CHECKS.items():
                for entry in entries if sec == section else ():
                    if name is None or getattr(entry, sections.SELECTOR, None) == name:
                        check(entry, cfg)
        for section, check in sections.LISTS.items():
            if isinstance(getattr(cfg, section), list):
                check(getattr(cfg, section), cfg)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


# Counts: one rule for every int key named as a count of steps, samples, images, batches or tasks
# (and the sizes and intervals): >= 0, with -1 accepted only where -1 is the key's default ("unset").
# Keys registered as ``positive`` must be > 0 besides.
_COUNT_NAME = re.compile(r"(steps|samples|batch|_size|iterations|interval|epochs|tasks|per_task|per_class|"
                         r"keep_checkpoints|sample_at_end)$")


def _check_counts(obj: Any, prefix: str) -> None:
    """Raise ConfigError for the first count of dataclass ``obj`` (sections recursively) below 0."""
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_counts(value, f"{prefix}{f.name}.")
            continue
        if not (isinstance(value, int) and not isinstance(value, bool) and _COUNT_NAME.search(f.name)):
            continue
        if f.name in sections.RULES.get(prefix[:-1], sections.NO_RULES)[1] and value <= 0:
            raise ConfigError(f"{prefix}{f.name} must be > 0, got {value}")
        if value < 0 and not (value == -1 and f.default == -1):
            unset = " (or -1: unset)" if f.default == -1 else ""
            raise ConfigError(f"{prefix}{f.name} must be >= 0{unset}, got {value}: a count of steps, samples "
                              "or a batch is never negative")


# ----------------------------------------------------------------------------------------------
# Files, ``base:`` and overrides


def merge_trees(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    """``over`` on top of ``base``: mappings merge key by key (recursively), anything else replaces.
    The one merge of configs: ``base:`` files, the benchmark suites' ``settings``."""
    out = dict(base)
    for k, v in (over or {}).items():
        out[k] = merge_trees(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_tree(path: str, _chain: tuple = (), record: bool = False) -> Dict[str, Any]:
    """A YAML config file as a dict, with its ``base`` (a path or a list of paths, relative to the
    file; later ones win, the file itself last) merged under it. Each file's own keys are checked
    against the schema here, so an error names the file that holds the bad key; a key that others
    replaced (``register_retired``) is refused with the key and value to write, unless the file is
    a ``record``, a config a run saved: there it is read as the keys that replaced it."""
    if path in _chain:
        raise ConfigError(f"{path}: 'base' includes itself ({' -> '.join(_chain + (path,))})")
    try:
        with open(path) as f:
            tree = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}" + (f" (base of {_chain[-1]})" if _chain else "")) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    bases = tree.pop("base", None)
    if isinstance(bases, str):
        bases = [bases]
    if bases is not None and (not isinstance(bases, list) or not all(isinstance(b, str) for b in bases)):
        raise ConfigError(f"{path}: base must be a path or a list of paths, got {bases!r}")
    merged: Dict[str, Any] = {}
    for b in bases or []:
        merged = merge_trees(merged, read_tree(os.path.normpath(os.path.join(os.path.dirname(path), b)),
                                               _chain + (path,), record))
    free = _free_sections()  # checked once merged: one file may hold part of such a section
    retire_keys(tree, merge_trees(merged, tree), path, record)
    try:
        from_dict(Config, {k: v for k, v in tree.items() if k not in free})
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return merge_trees(merged, tree) if bases is not None else tree


def retire_keys(tree: Dict[str, Any], context: Dict[str, Any], where: str, record: bool = False) -> None:
    """Keys of ``tree`` that others replaced (``register_retired``): refused, naming the key and the value
    to write (``context``: the merged settings, for a value that two keys made), or, in a ``record``
    (a config a run saved), replaced in place."""
    import_section_owners()
    if not record:
        tree, context = copy.deepcopy(tree), copy.deepcopy(context)
    for retire in sections.RETIRED:
        try:
            notes = retire(tree, context)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        if notes and not record:
            raise ConfigError(f"{where}: {notes[0]}")


def _parse_override(text: str):
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-")
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    # YAML parses numbers, booleans, lists ([1,2]) and null; fall back to the raw string.
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _set_path(tree: Dict[str, Any], path: List[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override '{'.'.join(path)}': '{part}' is not a section")
        node = nxt
    node[path[-1]] = value


def read_config_tree(path: Optional[str], overrides: Optional[List[str]] = None,
                     record: bool = False) -> Dict[str, Any]:
    """The raw settings of a config: ``path`` (YAML, with its ``base`` files; ``record``: a config a run
    saved, ``read_tree``) and ``overrides`` (``key.sub=value``) applied on top; nothing validated beyond
    each file's own keys and the overrides' own keys, types and counts (an error there is the command
    line's, not the file's)."""
    tree: Dict[str, Any] = read_tree(path, record=record) if path else {}
    given: Dict[str, Any] = {}
    for text in overrides or []:
        keys, value = _parse_override(text)
        _set_path(tree, keys, value)
        _set_path(given, keys, value)
    if given:
        retire_keys(given, tree, "the command line")
        try:
            _check_given(given, tree)
        except ConfigError as e:
            raise ConfigError(f"the command line: {e}") from None
    return tree


def _check_given(given: Dict[str, Any], tree: Dict[str, Any]) -> None:
    """The overrides alone: known keys, right types, counts >= 0, the key checks (free sections against
    the schema that the merged ``tree`` selects; a section without a known schema is left to the full check)."""
    free = _free_sections()
    cfg = from_dict(Config, {k: v for k, v in given.items() if k not in free})
    _check_counts(cfg, "")
    for section, (_, _, key_checks) in sections.RULES.items():
        for key, check in key_checks.items():
            if section not in free and key in (given.get(section) or {}):
                check(getattr(getattr(cfg, section), key))
    for section in free:
        part = given.get(section)
        if not isinstance(part, dict):
            continue
        merged = tree.get(section)
        schema = sections.SCHEMAS[section].get(merged.get(sections.SELECTOR)) if isinstance(merged, dict) else None
        if schema is not None:
            _check_counts(from_dict(schema, {k: v for k, v in part.items() if k != sections.SELECTOR}, section), section + ".")


def config_from_tree(tree: Dict[str, Any], where: str = "config") -> Config:
    """Validate raw settings (``read_config_tree``) into a Config; raise ConfigError naming ``where``."""
    import_section_owners()
    try:
        cfg = from_dict(Config, tree)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    _validate_sections(cfg, where)
    validate(cfg, where)
    return cfg


def load_config(path: Optional[str], overrides: Optional[List[str]] = None, record: bool = False) -> Config:
    """Read ``path`` (YAML, with its ``base`` files), apply ``overrides`` (``key.sub=value``),
    validate; raise ConfigError. ``record``: ``path`` is the config.yaml a run saved (``read_tree``)."""
    return config_from_tree(read_config_tree(path, overrides, record), path or "defaults")


def dump_config(cfg: Config) -> str:
    """The config as YAML: every key's value."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def given_sections(tree: Dict[str, Any]) -> List[str]:
    """The top-level sections that raw settings (``read_config_tree``) set, as opposed to the defaults."""
    free = _free_sections()  # ``method`` may be a name or a list
    return [k for k, v in tree.items() if v and (isinstance(v, dict) or (isinstance(v, (list, str)) and k in free))]


# ----------------------------------------------------------------------------------------------
# Documentation of the keys (for --help): type, default and the comment beside each field.

def _field_comments(cls: type) -> Dict[str, str]:
    import inspect

    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out: Dict[str, str] = {}
    for line in src.splitlines():
        m = re.match(r"\s+(\w+)\s*:\s*[^=]+=.*?#\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def key_doc(key: str) -> Optional[Tuple[str, Any, str]]:
    """(type name, default, comment) of ``section.key`` (registered section schemas included) or of a
    top-level ``key``; None for an unknown key."""
    import_section_owners()
    section, _, name = key.partition(".")
    top = {f.name: f for f in dataclasses.fields(Config)}.get(section)
    if top is None:
        return None
    if not name:
        return None if top.default_factory is not dataclasses.MISSING else _describe_field(Config, top)
    cls = sections.DEFAULTS.get(section)
    if cls is None:
        return None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return _describe_field(cls, fields[name]) if name in fields else None


def _describe_field(cls: type, f: "dataclasses.Field") -> Tuple[str, Any, str]:
    typ = field_types(cls).get(f.name, f.type)
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    if typing.get_origin(typ) is typing.Union and args:
        typ = args[0]
    tname = getattr(typ, "__name__", str(typ))
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        default = None
    return tname, default, _field_comments(cls).get(f.name, "")
