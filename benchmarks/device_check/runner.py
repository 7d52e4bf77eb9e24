"""run(): the selected stages within the budget, then the projection and the report."""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Callable

import flax
import jax

from benchmarks.device_check.budget import Budget, log, run_stages
from benchmarks.device_check.report import write_report
from benchmarks.device_check.settings import COMPUTE_STAGES, STAGES, make_settings
from benchmarks.device_check.stages import DeviceCheck


def run(
    output_dir: str,
    *,
    quick: bool = False,
    budget_s: float = 420.0,
    peak_tflops: float | None = None,
    max_batch: int = 256,
    seed: int = 0,
    stages=COMPUTE_STAGES,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    """Runs the selected stages within budget_s, then the projection, and writes
    the two report files; returns the report."""
    unknown = [name for name in stages if name not in COMPUTE_STAGES]
    if unknown:
        raise ValueError(f"stages: unknown {unknown}; choose from {', '.join(COMPUTE_STAGES)}")
    budget = Budget(budget_s, clock)
    s = make_settings(quick, max_batch)
    check = DeviceCheck(s, budget, seed=seed, peak_tflops=peak_tflops, stages=stages)
    accel = check.accel
    report = check.report
    report.update(
        platform=accel.platform,
        device_kind=accel.device_kind,
        devices=jax.device_count(),
        jax_version=jax.__version__,
        flax_version=flax.__version__,
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        quick=quick,
        budget_s=budget_s,
        settings=dataclasses.asdict(s),
    )
    log(
        budget,
        f"jax {jax.__version__} on {accel.platform} ({accel.device_kind}), "
        f"{jax.device_count()} device(s); budget {budget_s:.0f} s{'; --quick' if quick else ''}",
    )

    def update(rep):
        rep["elapsed_s"] = round(budget.elapsed(), 1)
        write_report(output_dir, rep)

    write_report(output_dir, report | {name: {} for name in STAGES})
    for name in COMPUTE_STAGES:
        if name not in stages:
            report[name] = {"skipped": True, "note": "skipped: not among --stages"}
    todo = [(name, s.estimate(name), getattr(check, name)) for name in stages]
    run_stages(todo + [("projection", None, check.projection)], budget, report, update)
    if (
        check.accel.platform != "cpu"
        and check._selection_inputs is not None
        and budget.remaining() > 0
    ):
        name = "selection: host on accelerator vs xla on accelerator"
        log(budget, f"informational: {name}")
        result = check.host_selection_on_accelerator()
        report["correctness"].setdefault("informational", {})[name] = result
        log(budget, f"informational: {'OK' if result['ok'] else 'FAILED'}")
        update(report)
    report["correctness"].setdefault("ok", False)
    update(report)
    return report


def exit_status(report: dict) -> int:
    """1 when a stage raised or a correctness check that ran failed, else 0."""
    if any("error" in report.get(name, {}) for name in STAGES):
        return 1
    c = report.get("correctness", {})
    return 0 if c.get("skipped") or c.get("ok") else 1
