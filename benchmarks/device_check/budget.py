"""The budget: seconds left, and stages run in order while their estimates fit."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable


class Budget:
    """Seconds left of `seconds`, read from `clock` (injectable for tests)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.perf_counter):
        self.seconds = float(seconds)
        self.clock = clock
        self.start = clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining(self) -> float:
        return self.seconds - self.elapsed()


def log(budget: Budget, msg: str) -> None:
    print(f"[device_check {budget.elapsed():7.1f} s] {msg}", flush=True)


def run_stages(stages, budget: Budget, report: dict, on_update=lambda report: None):
    """Runs (name, estimate_s, fn) in order: skipped with a note when less than
    estimate_s of the budget is left (estimate None: always runs), an exception
    is recorded as the stage's error; on_update(report) after each stage."""
    for name, estimate, fn in stages:
        left = budget.remaining()
        if estimate is not None and left < estimate:
            report[name] = {
                "skipped": True,
                "note": (
                    f"skipped: {max(left, 0.0):.0f} s of the {budget.seconds:.0f} s budget left, "
                    f"the stage needs about {estimate:.0f} s"
                ),
            }
            log(budget, f"{name}: {report[name]['note']}")
        else:
            log(budget, f"{name}: start")
            t0 = budget.elapsed()
            try:
                result = dict(fn())
            except Exception as e:  # a failing stage must not stop the others
                result = {
                    "error": f"{type(e).__name__}: {e}"[:2000],
                    "traceback": traceback.format_exc()[-4000:],
                }
                log(budget, f"{name}: FAILED {result['error'][:300]}")
            result["seconds"] = round(budget.elapsed() - t0, 2)
            report[name] = result
            log(budget, f"{name}: done in {result['seconds']:.1f} s")
        on_update(report)
    return report
