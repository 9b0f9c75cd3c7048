"""Command-line plumbing shared by the scripts: ``--config``, overrides, ``--dry-run``, clean errors.

Overrides are ``key.sub=value`` words. Scripts also accept flags that are aliases of config keys:
their own (``--model_path P``) and ADM's (``adm_flags``: ``--num_channels 128``); an unknown flag
fails with the closest valid one. ``--help`` prints the script's docstring (its manual) and every
flag with its key, type and default.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import traceback
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from ..runtime.config import (
    Config,
    ConfigError,
    check_used_sections,
    config_from_tree,
    dump_config,
    given_sections,
    import_section_owners,
    key_doc,
    parse_bool,
    read_config_tree,
)

# Which scripts read the sections that a training config may carry for a companion script.
READERS = {
    "solver": "scripts/classifier_cl_train.py",
    "classifier": "scripts/classifier_train.py and image_sample.py",
    "dkdm": "scripts/dynamic_prepare.py, dynamic_train.py, dkdm_ablation.py",
    "evaluation": "continual runs and scripts/evaluate.py --config",
    "sample": "scripts/image_sample.py",
    "continual": "continual runs",
    "method": "continual runs",
}


# The training scripts' --force: continue a run folder whose config.yaml differs (experiment.check_run_dir).
FORCE = (("--force",), dict(action="store_true", help="continue the run folder (experiments/<name>) although its "
                            "config.yaml differs from this command's (another method or setting); without it such "
                            "a command is refused: choose a new name=..."))


def parse(doc: str, argv: Optional[List[str]] = None, aliases: Optional[Dict[str, str]] = None,
          default_config: Optional[str] = None, adm: Optional[str] = None,
          options: Sequence[Tuple[Sequence[str], Dict]] = (),
          uses: Union[None, Sequence[str], Callable[[Config, List[str]], Sequence[str]]] = None,
          program: str = "") -> Tuple[Config, argparse.Namespace]:
    """Parse ``--config PATH [--dry-run] [key.sub=value ...] [--flag value ...]`` into a Config.

    ``doc``: the script's docstring, printed whole by ``--help`` (its manual). ``aliases``: the
    script's own flags (name -> config key); ``adm``: a script kind whose ADM flags are accepted
    too (``adm_flags.flags_for``); ``options``: the script's plain options, as argparse
    ``(names, kwargs)`` pairs, listed by ``--help``. ``uses``: the config sections the script
    reads (or a function of the config and the sections it sets that gives them); a section the
    config sets that is not among them is named in a warning (``args.given_sections``: the set ones),
    and the checks registered for the sections among them (``config.register_section_check``) run
    here, before any work. Every flag's translation is kept in ``args.translations`` and printed by
    ``--dry-run``."""
    from . import adm_flags

    table: Dict[str, Union[str, Callable]] = dict(adm_flags.flags_for(adm)) if adm else {}
    table.update(aliases or {})
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=_flags_help(table, adm), allow_abbrev=False)  # --class is not --classes
    p.add_argument("--config", default=default_config, help="YAML experiment file (see yaml/)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config (and the flags' keys) and exit")
    for names, kwargs in options:
        p.add_argument(*names, **kwargs)
    args, rest = p.parse_known_args(argv)
    overrides: List[str] = []
    translations: List[Tuple[str, List[str]]] = []
    samplers: Dict[str, Dict[str, Tuple[str, str]]] = {}  # ADM's sampler flags: key -> part -> (flag, value)
    world = None
    i = 0
    while i < len(rest):
        word = rest[i]
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            name_u = name.replace("-", "_")
            target = table.get(name) or table.get(name_u)
            if target is None:
                if "." in name:
                    target = name
                elif name_u in adm_flags.NO_EQUIVALENT:
                    raise ConfigError(f"ADM's flag --{name} has no equivalent here: {adm_flags.NO_EQUIVALENT[name_u]}")
                elif adm == "train" and name_u in adm_flags.GUIDE_REFUSED:
                    raise ConfigError(f"GUIDE's flag --{name} is not one key here: {adm_flags.GUIDE_REFUSED[name_u]}")
                else:
                    match = difflib.get_close_matches(name, list(table) + ["config", "dry-run"], n=1)
                    hint = f" (did you mean --{match[0]}?)" if match else ""
                    raise ConfigError(f"unknown flag --{name}{hint}; config keys are set as key.sub=value")
            if not eq:
                if i + 1 >= len(rest):
                    raise ConfigError(f"flag --{name} needs a value")
                value = rest[i + 1]
                i += 1
            if isinstance(target, adm_flags.SamplerFlag):  # with its partner, once every flag is read
                samplers.setdefault(target.key, {})[target.part] = (f"--{name} {value if value else chr(34) * 2}", value)
                i += 1
                continue
            if not isinstance(target, str) and world is None:
                from ..runtime.dist_util import detect

                world = max(1, detect().world_size)
            words = adm_flags.translate(value, target, world or 1)
            translations.append((f"--{name} {value}", words))
            overrides.extend(words)
        elif "=" in word:
            overrides.append(word)
        else:
            raise ConfigError(f"unexpected argument '{word}': overrides look like key.sub=value")
        i += 1
    args.adm_defaults = []
    # Typed as in guided-diffusion (ADM's flags, or nothing at all: the bare script), without a config.
    if adm in adm_flags.ADM_SCRIPTS and args.config is None and (translations or samplers or not rest):
        args.adm_defaults = adm_flags.adm_defaults(adm)  # ADM's defaults under the flags
        overrides = args.adm_defaults + overrides
        _say_where_adms_script_differs(adm, overrides)
    _register_section_schemas()
    record = bool(args.config) and saved_by_a_run(args.config)  # a run's saved config: read as it ran
    tree = _read_tree(args.config, overrides, translations, record)
    if samplers:  # ADM's --timestep_respacing / --use_ddim: one sampler value over the settings read so far
        for key, parts in samplers.items():
            flags = " ".join(flag for flag, _ in parts.values())
            try:
                value = adm_flags.sampler_value(key, {p: v for p, (_, v) in parts.items()}, tree,
                                                _diffusion_steps(tree), key_doc(key)[1])
            except ConfigError as e:
                raise ConfigError(f"{flags}: {e}") from None
            translations.append((flags, [f"{key}={value}"]))
            overrides.append(f"{key}={value}")
        tree = _read_tree(args.config, overrides, translations, record)
    _data_dir_selects_data(tree, translations, overrides)
    args.given_sections = given_sections(tree)  # before validation, which fills in the defaults
    cfg = config_from_tree(tree, args.config or "defaults")
    args.overrides = overrides
    args.translations = translations
    if callable(uses):
        uses = uses(cfg, args.given_sections)
    if uses is not None:
        unused = [sec for sec in args.given_sections if sec not in uses]
        if unused and args.config and saved_by_a_run(args.config):
            unused = []  # a run's config.yaml records every section: the ones another script reads are no news
        if unused:
            from ..runtime.dist_util import detect

            if detect().rank == 0:
                where = args.config or "the overrides"
                named = ", ".join(f"{sec} (read by {READERS[sec]})" if sec in READERS else sec for sec in unused)
                print(f"warning: {program or 'this script'} does not read the section(s) {named} of {where}: "
                      f"they have no effect here", file=sys.stderr, flush=True)
        check_used_sections(cfg, uses, args.config or "defaults")
    return cfg, args


def _say_where_adms_script_differs(adm: str, overrides: List[str]) -> None:
    """One line (rank 0, stderr) naming the defaults of ADM's image_train script that a run without
    --config cannot take, and what it does instead: ADM trains until stopped and needs --data_dir."""
    if adm != "train":
        return
    from ..runtime.dist_util import detect
    from ..data.config import DataConfig
    from ..train_util import TrainConfig

    keys = {w.split("=", 1)[0] for w in overrides}
    notes = []
    if "train.total_steps" not in keys:
        notes.append(f"train.total_steps={TrainConfig.total_steps} (ADM's trains until stopped: "
                     f"--lr_anneal_steps N or train.total_steps=N)")
    if not keys & {"data.dataset", "data.data_dir"}:
        notes.append(f"data.dataset={DataConfig.dataset} (ADM's needs --data_dir DIR)")
    if notes and detect().rank == 0:
        print("note: without --config, ADM's defaults apply except " + "; ".join(notes), file=sys.stderr,
              flush=True)


def _read_tree(path: Optional[str], overrides: List[str], translations: List[Tuple[str, List[str]]],
               record: bool) -> Dict:
    """``read_config_tree``, an override's error naming the flag it came from, as the user typed it."""
    try:
        return read_config_tree(path, overrides, record)
    except ConfigError as e:
        text = str(e)
        flag = next((f for f, words in translations
                     if any(text.startswith(f"the command line: {w.split('=', 1)[0]} ") for w in words)), None)
        raise ConfigError(f"{text} ({flag})" if flag else text) from None


def _diffusion_steps(tree: Dict) -> int:
    """The settings' ``diffusion.diffusion_steps`` (its default where they do not set it)."""
    d = tree.get("diffusion") if isinstance(tree.get("diffusion"), dict) else {}
    return int(d.get("diffusion_steps", key_doc("diffusion.diffusion_steps")[1]))


def _data_dir_selects_data(tree: Dict, translations: List[Tuple[str, List[str]]], overrides: List[str]) -> None:
    """ADM's ``--data_dir D`` *is* the data set: where the config's data set reads no folder (mnist5k, the
    default), the flag selects ``image_folder`` (ADM's rule: class from the file name, ``cat_0.png`` ->
    'cat'), or ``npz`` for an .npz file; a data set that reads a folder (cifar10 ...) keeps it. In place."""
    from ..data.datasets import DATASETS
    from ..data.config import DataConfig

    flag = next((words for name, words in translations if name.split(" ")[0].lstrip("-").replace("-", "_")
                 == "data_dir"), None)
    data = tree.get("data") if isinstance(tree.get("data"), dict) else {}
    if flag is None or any(w.startswith("data.dataset=") for w in overrides):
        return
    dataset = data.get("dataset", DataConfig.dataset)
    spec = DATASETS.get(dataset)
    if spec is None or spec.needs_dir:
        return
    path = str(data.get("data_dir", ""))
    kind = "npz" if path.endswith(".npz") else "image_folder"
    tree.setdefault("data", {})["dataset"] = kind
    flag.append(f"data.dataset={kind}")  # --dry-run shows it
    overrides.append(f"data.dataset={kind}")


def saved_by_a_run(path: str) -> bool:
    """``path`` is the config.yaml a run saved in its folder (beside its log.txt, or its archive's record
    ``archived.json``): a record of what ran, read with the keys that replaced old ones (``load_config(record=)``)."""
    folder = os.path.dirname(path)
    return os.path.basename(path) == "config.yaml" and any(os.path.isfile(os.path.join(folder, f))
                                                           for f in ("log.txt", "archived.json"))


def bool_type(flag: str) -> Callable[[str], bool]:
    """An argparse ``type`` for a script's true/false option, spelled as in configs (``config.parse_bool``)."""
    def parse_flag(value: str) -> bool:
        return parse_bool(value, flag)

    parse_flag.__name__ = "true/false"  # argparse's message: invalid true/false value
    return parse_flag


def _flags_help(table: Dict, adm: Optional[str]) -> str:
    """--help's list of flags: what each sets, its type and default (from the config's fields)."""
    from . import adm_flags

    if not table:
        return "Any config key: key.sub=value (e.g. train.lr=2e-4). --dry-run prints every key's value."
    adm_values = dict(w.split("=", 1) for w in adm_flags.adm_defaults(adm)) if adm in adm_flags.ADM_SCRIPTS else {}
    lines = ["flags (each sets config keys; ADM's names where ADM has the flag):"]
    for name in sorted(table):
        target = table[name]
        doc = key_doc(target) if isinstance(target, str) else None
        if doc is not None:
            tname, default, comment = doc
            applied = f"; without --config ADM's {adm_values[target] or chr(34) * 2}" if target in adm_values else ""
            text = f"{target} ({tname}, default {default!r}{applied})" + (f": {comment}" if comment else "")
        else:
            text = adm_flags.describe(target)
        lines.append(f"  --{name:<26} {text}")
    lines += ["", "Any config key: key.sub=value (e.g. train.lr=2e-4). --dry-run prints every key's value."]
    if adm:
        lines.append("ADM flags without an equivalent are refused: " + ", ".join(f"--{k}" for k in adm_flags.NO_EQUIVALENT))
    if adm_values:
        lines.append("Without --config (ADM's flags alone, or none), ADM's defaults apply: "
                     + " ".join(f"{k}={v}" for k, v in adm_values.items()))
    return "\n".join(lines)


def _register_section_schemas() -> None:
    """Every section's schema and checks registered (``config.SECTION_OWNERS``), so that every script
    validates every section of a config the same way, before any work."""
    import_section_owners()


def run_main(fn: Callable[[], int]) -> None:
    """Run a script's main; turn expected failures into one clear line and a non-zero exit."""
    from ..runtime.checkpoint import CheckpointError
    from ..runtime.preemption import Preempted
    from ..train_util import NonFiniteError

    try:
        code = fn() or 0
    except Preempted as e:
        print(f"preempted: {e}", file=sys.stderr, flush=True)
        code = 0
    except (ConfigError, FileNotFoundError, CheckpointError, NonFiniteError, ValueError) as e:
        if "GD_TRACEBACK" in os.environ:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr, flush=True)
        code = 2
    except KeyboardInterrupt:
        print("interrupted: the last complete checkpoint is kept; rerun the same command to resume",
              file=sys.stderr, flush=True)
        code = 130
    except RuntimeError as e:  # a lost rank, as the other ranks see it: one line (dist.timeout_s bounds the wait)
        from ..runtime.dist_util import describe_failure

        line = describe_failure(e)
        if line is None:
            raise
        if "GD_TRACEBACK" in os.environ:
            traceback.print_exc()
        print(f"error: {line}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # No normal exit: tearing down a process group with a lost peer can block for good (gloo).
        os._exit(3)
    sys.exit(code)


def maybe_dry_run(cfg: Config, args) -> bool:
    if args.dry_run:
        if getattr(args, "adm_defaults", None):
            print(f"# (ADM's flags without --config: ADM's defaults) -> {' '.join(args.adm_defaults)}")
        for flag, words in getattr(args, "translations", []):
            print(f"# {flag} -> {' '.join(words)}")
        print(dump_config(cfg), end="")
        return True
    return False
