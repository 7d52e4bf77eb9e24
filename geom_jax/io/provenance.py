"""Where a result came from: the git commit of the code and the package versions."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata

PACKAGES = ("geom_jax", "jax", "jaxlib", "flax", "numpy", "transformers", "orbax-checkpoint")


def git_commit() -> str | None:
    """HEAD of the checkout geom_jax runs from, ``+dirty`` with uncommitted changes; None
    outside a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=here,
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return versions
