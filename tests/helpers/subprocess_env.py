"""The suite's XLA code generation, and environments for its subprocesses: this
process's code generation (SUITE_CODEGEN and whatever the user set, such as
--xla_cpu_max_isa) with a test's own flags added, never replaced."""

import json
import os
import re
import subprocess
import sys

OPT = "--xla_backend_optimization_level"
FUSION_EMITTERS = "--xla_cpu_use_fusion_emitters"
SUITE_CODEGEN = (f"{OPT}=0", f"{FUSION_EMITTERS}=false")
"""What tests/conftest.py adds to XLA_FLAGS unless they name either flag: LLVM at -O0
and XLA:CPU's loop emitters instead of its fusion emitters, which compile the suite's
programs 2-3x faster than XLA's defaults (docs/history.md section 18)."""
XLA_DEFAULTS = {OPT: "3", FUSION_EMITTERS: "true"}
CODEGEN_FLAG = re.compile(rf"({OPT}|{FUSION_EMITTERS})=(\S+)")


def codegen_named(flags: str | None = None) -> bool:
    """Whether ``flags`` (default: this process's XLA_FLAGS) name a SUITE_CODEGEN flag."""
    return CODEGEN_FLAG.search(_flags(flags)) is not None


def at_xla_defaults(flags: str | None = None) -> bool:
    """Whether ``flags`` (default: this process's XLA_FLAGS) compile as XLA's defaults
    do, the code generation users get, in every flag SUITE_CODEGEN sets."""
    return all(XLA_DEFAULTS[m.group(1)] == m.group(2) for m in CODEGEN_FLAG.finditer(_flags(flags)))


def without_codegen(flags: str) -> str:
    """``flags`` less any SUITE_CODEGEN flag: XLA's default code generation."""
    return " ".join(CODEGEN_FLAG.sub("", flags).split())


def xla_flags(*extra: str) -> str:
    """This process's XLA_FLAGS followed by ``extra``."""
    return " ".join([os.environ.get("XLA_FLAGS", ""), *extra]).strip()


def cpu_env(*flags: str, **extra: str) -> dict:
    """os.environ on the CPU platform, with ``flags`` added to XLA_FLAGS and ``extra`` set."""
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(*flags), **extra)


def _flags(flags):
    return os.environ.get("XLA_FLAGS", "") if flags is None else flags


def simulated_devices_env(count: int = 8, **extra: str) -> dict:
    """cpu_env with ``count`` simulated CPU devices and a 900 s collective timeout: the
    devices share the machine's cores and wait for each other at every collective, so one
    can lag the others by more than XLA's default 40 s rendezvous timeout when loaded."""
    return cpu_env(
        f"--xla_force_host_platform_device_count={count}",
        "--xla_cpu_collective_call_terminate_timeout_seconds=900",
        **extra,
    )


def run_on_simulated_devices(script: str, *args: str, pythonpath: str, count: int = 8) -> str:
    """Runs ``python -c script args`` on ``count`` simulated CPU devices (PYTHONPATH
    ``pythonpath``); returns its stdout, asserting it succeeded (stderr's tail shown)."""
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=simulated_devices_env(count, PYTHONPATH=pythonpath),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return proc.stdout


def report_on_simulated_devices(script: str, *, pythonpath: str, count: int = 8):
    """The JSON a script prints after "REPORT " (run_on_simulated_devices)."""
    out = run_on_simulated_devices(script, pythonpath=pythonpath, count=count)
    return json.loads(out.split("REPORT ", 1)[1])
