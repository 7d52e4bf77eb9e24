"""benchmarks/device_check/: the prepared accelerator check, proven on CPU."""

import importlib
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = "benchmarks.device_check"
STAGE_KEYS = ("correctness", "forward", "metrics", "clouds", "fused", "projection")
TOP_KEYS = ("platform", "device_kind") + STAGE_KEYS

# Packages the device image lacks (gguf, datasets) or the check must not need
# (torch and the Hugging Face stack): importing any of them fails the run.
BLOCKED = ("torch", "gguf", "datasets", "transformers", "sklearn")
RUNNER = f"""
import runpy, sys
BLOCKED = {BLOCKED!r}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"device_check must not import {{name}}")
sys.meta_path.insert(0, Block())
sys.argv = [{MODULE!r}] + sys.argv[1:]
runpy.run_module({MODULE!r}, run_name="__main__", alter_sys=True)
"""
# The same, with every stage after correctness estimated at LATER_ESTIMATE_S, so
# that whether they fit a small budget does not depend on the machine's speed.
LATER_ESTIMATE_S = 1000.0
RUNNER_SLOW_LATER = RUNNER.replace(
    f"runpy.run_module({MODULE!r}",
    f"""import dataclasses
import benchmarks.device_check.runner as runner
make_settings = runner.make_settings
def slow_later(*args, **kwargs):
    s = make_settings(*args, **kwargs)
    est = tuple((n, e if n == "correctness" else {LATER_ESTIMATE_S!r}) for n, e in s.estimates)
    return dataclasses.replace(s, estimates=est)
runner.make_settings = slow_later
runpy.run_module({MODULE!r}""",
)

dc = importlib.import_module(MODULE)


def _run_script(*args, runner=RUNNER):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, "-c", runner, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )


def _read_report(out):
    with open(os.path.join(out, "device_report.json")) as f:
        report = json.loads(f.read(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    with open(os.path.join(out, "device_report.md")) as f:
        md = f.read()
    return report, md


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path):
    """Acceptance 1: --quick on CPU writes both reports, every key, correctness.ok."""
    out = str(tmp_path / "report")
    proc = _run_script("--quick", f"--output_dir={out}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report, md = _read_report(out)
    for key in TOP_KEYS:
        assert key in report, key
    assert report["platform"] == "cpu"
    assert report["correctness"]["ok"] is True
    for stage in STAGE_KEYS:
        assert "error" not in report[stage] and not report[stage].get("skipped"), stage
    checks = report["correctness"]["checks"]
    assert len(checks) == 2 and all(c["ok"] for c in checks.values())
    assert set(checks["fused step: accelerator vs CPU backend"]["fields"]) >= {
        "gride_ids",
        "overlap",
        "cos_mean",
        "loss",
    }
    fwd = report["forward"]
    assert fwd["batch"] == 2 and fwd["tokens_per_s"] > 0  # doubled from 1 to --quick's cap
    assert [t["batch"] for t in fwd["batch_search"]["tries"]] == [1, 2]
    assert fwd["mfu"] is None and "peak" in fwd["note"]  # CPU: no peak known
    assert report["metrics"]["seconds_per_prompt"] > 0
    clouds = report["clouds"]
    assert clouds["points"] == 5000 and clouds["path"] == "blocked" and clouds["step_s"] > 0
    ring = clouds["ring"]  # the ring path on the machine's devices (one CPU device here)
    assert ring["devices"] == 1 and ring["overlap_equal"] and ring["gride_ids_rel"] <= 1e-6
    cheng = report["projection"]["cheng_protocol"]
    want = clouds["step_s"] * (10_000 / 5000) ** 2 * (4096 / 64) * 33 * 5 * 2 / 60
    assert cheng["geometry_minutes"] == pytest.approx(want)
    assert "Cheng et al.'s protocol on Llama-3-8B" in md
    fused = report["fused"]["models"]
    assert set(fused) == {"llama-3-8b", "pythia-6.9b"}  # --quick measures two families
    assert fused["pythia-6.9b"]["batch"] == fused["llama-3-8b"]["batch"] == 2
    proj = report["projection"]["models"]
    assert set(proj) == set(dc.PAPER_MODELS)
    assert proj["pythia-6.9b"]["source"] == "measured fused step"
    assert proj["pythia-6.9b"]["seconds_per_prompt"] == pytest.approx(
        1 / fused["pythia-6.9b"]["prompts_per_s"]
    )
    assert proj["mistral-7b"]["source"].startswith("llama-3-8b's fused step x forward FLOPs")
    for name in dc.PAPER_MODELS:
        assert proj[name]["minutes_shuffled"] == pytest.approx(6 * proj[name]["minutes_structured"])
    for section in STAGE_KEYS:
        assert f"## {section}" in md
    assert "**OK**" in md and "wrote" in proc.stdout


def test_zero_budget_skips_every_stage_with_a_note(tmp_path):
    """With no budget every compute stage is skipped with a note, and the report
    is still complete; exit status 0 (nothing failed)."""
    out = str(tmp_path / "report")
    proc = _run_script("--quick", "--budget_s=0", f"--output_dir={out}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report, md = _read_report(out)
    for key in TOP_KEYS:
        assert key in report, key
    for stage in ("correctness", "forward", "metrics", "clouds", "fused"):
        assert report[stage]["skipped"] is True
        assert "budget" in report[stage]["note"]
    assert report["correctness"]["ok"] is False
    assert report["projection"]["total_minutes_shuffled"] is None
    assert "no projection" in report["projection"]["cheng_protocol"]["note"]
    assert md.count("skipped: 0 s of the 0 s budget left") == 5


@pytest.mark.slow
def test_too_small_budget_skips_later_stages_with_a_note(tmp_path):
    """Acceptance 2: 8 s cover correctness (estimate 5 s with --quick) but none of
    the later stages (each estimated above the budget here: with the real
    estimates a fast machine fits them); they are skipped with a note, the
    projection says it has nothing, and the report is still complete and valid."""
    out = str(tmp_path / "report")
    proc = _run_script("--quick", "--budget_s=8", f"--output_dir={out}", runner=RUNNER_SLOW_LATER)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report, md = _read_report(out)
    for key in TOP_KEYS:
        assert key in report, key
    assert report["correctness"]["ok"] is True and "skipped" not in report["correctness"]
    for stage in ("forward", "metrics", "clouds", "fused"):
        assert report[stage]["skipped"] is True
        assert "of the 8 s budget left" in report[stage]["note"]
        assert f"needs about {LATER_ESTIMATE_S:.0f} s" in report[stage]["note"]
    proj = report["projection"]
    assert all(m["seconds_per_prompt"] is None for m in proj["models"].values())
    assert proj["total_minutes_shuffled"] is None and "skipped" in proj["note"]
    assert md.count("of the 8 s budget left") == 4 and "**OK**" in md
    # what is left after correctness depends on the machine's speed
    assert re.search(r"forward: skipped: \d+ s of the 8 s budget left", proc.stdout), proc.stdout


def test_stages_after_the_budget_are_skipped_and_errors_recorded():
    """The gate: a stage runs only while its estimate fits; a raising stage is
    recorded and the later ones still run; estimate None always runs."""
    now = [0.0]
    budget = dc.Budget(10.0, clock=lambda: now[0])
    ran = []

    def stage(name, cost, fail=False):
        def fn():
            ran.append(name)
            now[0] += cost
            if fail:
                raise RuntimeError("boom")
            return {"value": name}

        return fn

    stages = [
        ("a", 2.0, stage("a", 3.0, fail=True)),
        ("b", 5.0, stage("b", 4.0)),
        ("c", 5.0, stage("c", 1.0)),  # 3 s left < 5: skipped
        ("d", 2.0, stage("d", 1.0)),
        ("e", None, stage("e", 0.0)),  # budget spent, but always runs
    ]
    updates = []
    report = dc.run_stages(stages, budget, {}, lambda r: updates.append(sorted(r)))
    assert ran == ["a", "b", "d", "e"]
    assert report["a"]["error"] == "RuntimeError: boom" and "boom" in report["a"]["traceback"]
    assert report["b"] == {"value": "b", "seconds": 4.0}
    assert report["c"]["skipped"] and "3 s of the 10 s budget left" in report["c"]["note"]
    assert "needs about 5 s" in report["c"]["note"]
    assert report["e"]["value"] == "e"
    assert len(updates) == 5


def test_exit_status():
    assert dc.exit_status({"correctness": {"ok": True}, "forward": {"mfu": 0.5}}) == 0
    assert dc.exit_status({"correctness": {"ok": True}, "fused": {"error": "OOM"}}) == 1
    assert dc.exit_status({"correctness": {"ok": False}}) == 1
    assert dc.exit_status({"correctness": {"ok": False, "skipped": True}}) == 0


class _OOM(RuntimeError):
    pass


def _trial_fitting(limit, calls):
    def trial(b):
        calls.append(b)
        if b > limit:
            raise _OOM(f"RESOURCE_EXHAUSTED: Out of memory allocating for batch {b}")
        return {"step_s": 0.1 * b}

    return trial


def test_find_batch_doubles_then_bisects_to_the_largest_fit():
    calls = []
    out = dc.find_batch(_trial_fitting(5, calls), first=1, max_batch=64, deadline=lambda: 1e9)
    assert calls == [1, 2, 4, 8, 6, 5]
    assert out["best"]["batch"] == 5
    assert [t["fits"] for t in out["tries"]] == [True, True, True, False, False, True]
    assert "largest fit 5, smallest failure 6" in out["note"]


def test_find_batch_halves_from_a_first_guess_that_does_not_fit():
    calls = []
    out = dc.find_batch(_trial_fitting(20, calls), first=48, max_batch=48, deadline=lambda: 1e9)
    # halves until 12 fits, then bisects below the smallest failure (24, then 21)
    assert calls == [48, 24, 12, 18, 21]
    assert out["best"]["batch"] == 18


def test_find_batch_stops_at_max_batch_time_and_real_errors():
    calls = []
    out = dc.find_batch(_trial_fitting(100, calls), first=3, max_batch=12, deadline=lambda: 1e9)
    assert calls == [3, 6, 12] and "max_batch=12" in out["note"]

    calls = []
    out = dc.find_batch(_trial_fitting(100, calls), first=1, max_batch=64, deadline=lambda: -1.0)
    assert calls == [1] and "time budget" in out["note"]

    def broken(b):
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError, match="not a memory"):
        dc.find_batch(broken, first=1, max_batch=4, deadline=lambda: 1e9)


def test_compare_applies_each_fields_tolerance():
    rng = np.random.default_rng(0)
    ref = {
        "gride_ids": rng.uniform(5, 20, (2, 4, 3)),
        "overlap": rng.uniform(0, 1, (2, 3, 8)),
        "cos_mean": rng.uniform(-0.01, 0.3, (2, 5)),
        "loss": rng.uniform(8, 11, (2,)),
        "new_observable": rng.uniform(1, 2, (2, 4)),
    }
    same = {k: v.copy() for k, v in ref.items()}
    assert dc.compare(same, ref)["ok"]

    near = {k: v * (1 + 5e-5) for k, v in ref.items()}
    c = dc.compare(near, ref)
    assert c["ok"], c
    assert c["fields"]["gride_ids"]["value"] == pytest.approx(5e-5, rel=1e-6)
    assert c["fields"]["new_observable"]["limit"] == dc.DEFAULT_TOLERANCE[1]

    off = {k: v.copy() for k, v in ref.items()}
    off["loss"][1] *= 1 + 2e-4  # over the 1e-4 loss tolerance
    off["overlap"][0, 0, 0] += 0.5  # one neighbour set: mean abs 0.5 / 48 > 1e-3
    c = dc.compare(off, ref)
    assert not c["ok"]
    assert [f for f, r in c["fields"].items() if not r["ok"]] == ["overlap", "loss"]

    missing = {k: v for k, v in ref.items() if k != "loss"}
    c = dc.compare(missing, ref)
    assert not c["ok"] and c["fields"]["loss"]["value"] == math.inf
    extra = {**ref, "twonn": ref["loss"]}
    assert not dc.compare(extra, ref)["ok"]  # a field on one side only

    nan = {k: v.copy() for k, v in ref.items()}
    nan["gride_ids"][0, 0, 0] = np.nan
    assert dc.deviation(nan["gride_ids"], ref["gride_ids"], "max_rel") == math.inf
    assert dc.deviation(ref["gride_ids"][:1], ref["gride_ids"], "max_rel") == math.inf
    both = nan["gride_ids"]
    assert dc.deviation(both, both.copy(), "max_rel") == 0.0  # NaN at the same place


def test_report_files_are_strict_json_and_markdown_with_errors(tmp_path):
    report = {
        "platform": "gpu",
        "device_kind": "NVIDIA H200",
        "correctness": {"ok": False, "error": "XlaRuntimeError: boom", "seconds": 1.0},
        "forward": {"skipped": True, "note": "skipped: 0 s of the 420 s budget left"},
        "metrics": {},
        "fused": {"skipped": True, "note": "skipped: budget"},
        "projection": {"error": "ZeroDivisionError: division by zero"},
        "settings": {"value": float("inf"), "nested": [np.float32(1.5), float("nan")]},
    }
    dc.write_report(str(tmp_path), report)
    data, md = _read_report(str(tmp_path))
    assert data["settings"] == {"value": "inf", "nested": [1.5, "nan"]}
    assert "FAILED: `XlaRuntimeError: boom`" in md
    assert "skipped: 0 s of the 420 s budget left" in md
    assert "## metrics\n\nnot run" in md
    assert not any(p.endswith(".tmp") for p in os.listdir(tmp_path))


def test_quick_presets_keep_each_family_and_its_options():
    s = dc.make_settings(True)
    for name in dc.PAPER_MODELS + ("smollm2-135m",):
        full = dc.model_config(name, dc.make_settings(False))
        small = dc.model_config(name, s)
        assert small.family == full.family and small.norm == full.norm
        assert small.parallel_residual == full.parallel_residual
        assert small.sliding_window == full.sliding_window
        assert small.tie_word_embeddings == full.tie_word_embeddings
        assert small.rotary_dim / small.head_dim == full.rotary_dim / full.head_dim
        assert small.num_params() < 1e6 < full.num_params()


def test_stage_selection_runs_only_the_chosen_stages(tmp_path):
    report = dc.run(str(tmp_path), quick=True, stages=())
    for stage in dc.COMPUTE_STAGES:
        assert report[stage]["skipped"] is True
        assert report[stage]["note"] == "skipped: not among --stages"
    assert report["projection"]["models"]["llama-3-8b"]["source"] is None
    data, md = _read_report(str(tmp_path))
    assert data["correctness"]["ok"] is False and md.count("not among --stages") == 5
    with pytest.raises(ValueError, match="unknown \\['speed'\\]"):
        dc.run(str(tmp_path), quick=True, stages=("speed",))


class _Memory:
    def __init__(self, temp, output):
        self.temp_size_in_bytes, self.output_size_in_bytes = temp, output


class _Compiled:
    def __init__(self, temp, output):
        self.memory = _Memory(temp, output)

    def memory_analysis(self):
        return self.memory


class _Device:
    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        return self.stats


def test_predict_batch_from_free_memory_and_the_compiled_step():
    gib = 2**30
    device = _Device({"bytes_limit": 100 * gib, "bytes_in_use": 20 * gib})
    compiled = _Compiled(temp=gib, output=gib // 2)
    guess, note = dc.predict_batch(device, lambda: compiled, max_batch=256)
    assert guess == 48  # 0.9 * 80 GiB / 1.5 GiB = 48 (a multiple of 8)
    assert "80.0 GiB free" in note and "first try 48" in note
    assert dc.predict_batch(device, lambda: compiled, max_batch=20)[0] == 20
    tight = _Device({"bytes_limit": 4 * gib, "bytes_in_use": 3 * gib})
    assert dc.predict_batch(tight, lambda: compiled, max_batch=256)[0] == 1
    assert dc.predict_batch(_Device(None), lambda: pytest.fail("compiled"), 256)[0] is None
