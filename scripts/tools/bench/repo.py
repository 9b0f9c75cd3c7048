"""The repository the benchmark runs in: its root (a suite's paths are relative to it) and its commit."""

from __future__ import annotations

import os
import subprocess

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))  # scripts/tools/bench/../../..


def abs_path(path: str) -> str:
    """``path`` from the repository's root (absolute paths and URLs as they are)."""
    return path if os.path.isabs(path) or "://" in path else os.path.join(ROOT, path)


def git(*args) -> str:
    """``git args`` in the repository: its output, or "unknown" where git cannot answer."""
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def dirty() -> bool:
    """Whether tracked files have uncommitted changes."""
    return bool(git("status", "--porcelain", "--untracked-files=no"))


def commit_tag() -> str:
    """The short commit, with ``+`` when there are uncommitted changes (what each run records)."""
    return (git("rev-parse", "--short", "HEAD") or "unknown") + ("+" if dirty() else "")


__all__ = ["ROOT", "abs_path", "git", "dirty", "commit_tag"]
