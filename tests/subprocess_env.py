"""Environments for the suite's subprocesses: this process's XLA code generation
(tests/conftest.py's optimisation level and whatever the user set, such as
--xla_cpu_max_isa) with a test's own flags added, never replaced."""

import os
import re

OPT = "--xla_backend_optimization_level"
OPT_FLAG = re.compile(rf"{OPT}=(\S+)")
DEFAULT_OPT_LEVEL = "3"
"""XLA's own default for --xla_backend_optimization_level."""


def at_default_opt_level(flags: str | None = None) -> bool:
    """Whether ``flags`` (this process's XLA_FLAGS) compile at XLA's default level."""
    m = OPT_FLAG.search(os.environ.get("XLA_FLAGS", "") if flags is None else flags)
    return m is None or m.group(1) == DEFAULT_OPT_LEVEL


def xla_flags(*extra: str) -> str:
    """This process's XLA_FLAGS followed by ``extra``."""
    return " ".join([os.environ.get("XLA_FLAGS", ""), *extra]).strip()


def cpu_env(*flags: str, **extra: str) -> dict:
    """os.environ on the CPU platform, with ``flags`` added to XLA_FLAGS and ``extra`` set."""
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(*flags), **extra)
