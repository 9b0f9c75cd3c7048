"""Command-line plumbing shared by the scripts: ``--config``, overrides, ``--dry-run``, clean errors.

Overrides are ``key.sub=value`` words. Scripts may also accept ADM-style flags (``--model_path P``)
that are aliases of config keys; an unknown flag fails with the closest valid one.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import traceback
from typing import Callable, Dict, List, Optional, Tuple

from .config import Config, ConfigError, dump_config, load_config


def parse(description: str, argv: Optional[List[str]] = None, aliases: Optional[Dict[str, str]] = None,
          default_config: Optional[str] = None) -> Tuple[Config, argparse.Namespace]:
    """Parse ``--config PATH [--dry-run] [key.sub=value ...] [--alias value ...]`` into a Config."""
    aliases = aliases or {}
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=default_config, help="YAML experiment file (see yaml/)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    if aliases:
        p.epilog = "flags (aliases of config keys):\n" + "\n".join(f"  --{a:<22} {k}" for a, k in aliases.items())
    args, rest = p.parse_known_args(argv)
    overrides = []
    i = 0
    while i < len(rest):
        word = rest[i]
        if word.startswith("--"):
            name, _, value = word[2:].partition("=")
            key = aliases.get(name) or aliases.get(name.replace("-", "_"))
            if key is None:
                if "." in name:
                    key = name
                else:
                    match = difflib.get_close_matches(name, list(aliases) + ["config", "dry-run"], n=1)
                    hint = f" (did you mean --{match[0]}?)" if match else ""
                    raise ConfigError(f"unknown flag --{name}{hint}; config keys are set as key.sub=value")
            if not _:
                if i + 1 >= len(rest):
                    raise ConfigError(f"flag --{name} needs a value")
                value = rest[i + 1]
                i += 1
            overrides.append(f"{key}={value}")
        elif "=" in word:
            overrides.append(word)
        else:
            raise ConfigError(f"unexpected argument '{word}': overrides look like key.sub=value")
        i += 1
    _register_section_schemas()
    cfg = load_config(args.config, overrides)
    args.overrides = overrides
    return cfg, args


def _register_section_schemas() -> None:
    """Import the modules whose config sections (method, evaluation, dkdm) register schemas, so
    that every script validates every section of a config the same way."""
    import importlib

    for name in ("guided_diffusion.continual.methods", "guided_diffusion.evaluation.settings",
                 "guided_diffusion.dkdm.config"):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # a missing dependency inside, not the module itself
                raise


def run_main(fn: Callable[[], int]) -> None:
    """Run a script's main; turn expected failures into one clear line and a non-zero exit."""
    from .checkpoint import CheckpointError
    from .train_util import NonFiniteError, Preempted

    try:
        code = fn() or 0
    except Preempted as e:
        print(f"preempted: {e}", file=sys.stderr, flush=True)
        code = 0
    except (ConfigError, FileNotFoundError, CheckpointError, NonFiniteError, ValueError) as e:
        if "GD_TRACEBACK" in __import__("os").environ:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr, flush=True)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        code = 130
    except RuntimeError as e:  # a lost rank, as the other ranks see it: one line (dist.timeout_s bounds the wait)
        from .dist_util import describe_failure

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
        print(dump_config(cfg), end="")
        return True
    return False
