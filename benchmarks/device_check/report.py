"""device_report.json and device_report.md."""

from __future__ import annotations

import json
import math
import os

import numpy as np

from benchmarks.device_check.settings import REPORT_JSON, REPORT_MD


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.generic,)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def _fmt(x, spec=".3g"):
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    return format(x, spec)


def markdown(report: dict) -> str:
    """The report as Markdown, one section per stage."""
    lines = [
        "# Device check",
        "",
        f"{report.get('date', '')}: {report['platform']} / {report['device_kind']}, "
        f"jax {report.get('jax_version', '')}, {'--quick, ' if report.get('quick') else ''}"
        f"budget {report.get('budget_s', 0):.0f} s, elapsed {report.get('elapsed_s', 0):.0f} s.",
        "",
    ]

    def head(stage):
        r = report.get(stage, {})
        lines.extend([f"## {stage}", ""])
        if r.get("skipped"):
            lines.extend([r["note"], ""])
            return None
        if "error" in r:
            lines.extend([f"FAILED: `{r['error']}`", ""])
            return None
        if not r:
            lines.extend(["not run", ""])
            return None
        return r

    r = head("correctness")
    if r:
        lines.append(
            f"**{'OK' if r['ok'] else 'FAILED'}** - {r['model']}, batch {r['batch']} x "
            f"{r['tokens']} tokens, range_max {r['range_max']}, max_k {r['max_k']}, "
            f"observables {r.get('observables', 'paper')}, "
            f"matmul precision {r['matmul_precision']}."
        )
        lines.append("")
        for group in ("checks", "informational"):
            for name, c in r.get(group, {}).items():
                lines.append(f"- {name}: {'OK' if c['ok'] else 'FAILED'}")
                if "error" in c:
                    lines.append(f"  - error: `{c['error'][:300]}`")
                for field, f in c.get("fields", {}).items():
                    lines.append(
                        f"  - {field}: {f['statistic']} {_fmt(f['value'], '.2e')} "
                        f"(limit {f['limit']:.0e}){'' if f['ok'] else ' FAILED'}"
                    )
        lines.append("")
    r = head("forward")
    if r:
        lines.append(
            f"{r['model']}, T = {r['tokens']}: largest batch that fits {_fmt(r['batch'])}, "
            f"{_fmt(r['tokens_per_s'], ',.0f')} tokens/s, "
            + (
                f"MFU {r['mfu']:.1%} of {r['peak_tflops']:.0f} TFLOP/s."
                if r.get("mfu") is not None
                else r.get("note", "")
            )
        )
        lines.extend(
            [
                "",
                "| batch | fits | compile s | step s | tokens/s | MFU |",
                "|---|---|---|---|---|---|",
            ]
        )
        for t in r["batch_search"]["tries"]:
            lines.append(
                f"| {t['batch']} | {t['fits']} | {_fmt(t.get('compile_s'))} | "
                f"{_fmt(t.get('step_s'))} | {_fmt(t.get('tokens_per_s'), ',.0f')} | "
                f"{_fmt(t.get('mfu'), '.1%')} |"
            )
        lines.extend(
            ["", f"Search: {r['batch_search']['first_try']}; {r['batch_search']['note']}.", ""]
        )
    r = head("metrics")
    if r:
        shape = " x ".join(str(v) for v in r["shape_per_prompt"])
        lines.extend(
            [
                f"layer_geometry on {shape} per prompt (range_max {r['range_max']}, max_k "
                f"{r['max_k']}, selection {r['selection']}): "
                f"{_fmt(r['seconds_per_prompt'], '.4f')} s per prompt.",
                "",
                "| batch | layer_chunk | compile s | step s | s/prompt | Gram TFLOP/s |",
                "|---|---|---|---|---|---|",
            ]
        )
        for t in r["runs"]:
            lines.append(
                f"| {t['batch']} | {t['layer_chunk']} | {t['compile_s']} | {_fmt(t['step_s'])} | "
                f"{_fmt(t['seconds_per_prompt'], '.4f')} | {_fmt(t['gram_tflops_per_s'])} |"
            )
        lines.extend(["", r.get("note", ""), ""] if r.get("note") else [""])
    r = head("clouds")
    if r:
        lines.extend(
            [
                f"layer_geometry on one layer of {r['points']:,} points x {r['dim']} dims "
                f"(paper set, range_max {r['range_max']}, {r['path']} path): "
                f"{_fmt(r['step_s'])} s (compile {r['compile_s']} s), Gram "
                f"{_fmt(r['gram_tflops_per_s'])} TFLOP/s, peak device memory "
                f"{_fmt((r['peak_bytes'] or 0) / 2**30)} GiB.",
                "",
            ]
        )
        ring = r.get("ring")
        if ring:
            lines.extend(
                [
                    f"The same cloud on the ring path (points split over {ring['devices']} "
                    f"device(s)): {_fmt(ring['step_s'])} s (compile {ring['compile_s']} s); "
                    f"GRIDE within {_fmt(ring['gride_ids_rel'])} of the blocked path, "
                    f"overlaps {'equal' if ring['overlap_equal'] else 'NOT equal'}.",
                    "",
                ]
            )
    r = head("fused")
    if r:
        lines.extend(["| model | batch | step s | prompts/s |", "|---|---|---|---|"])
        for name, m in r["models"].items():
            if "error" in m:
                lines.append(f"| {name} | FAILED: {m['error'][:200]} | | |")
            else:
                lines.append(
                    f"| {name} | {_fmt(m['batch'])} | {_fmt(m['step_s'])} | "
                    f"{_fmt(m['prompts_per_s'])} |"
                )
        lines.extend(["", r["note"] or "", ""])
    r = head("projection")
    if r:
        lines.extend(
            [
                f"The paper's sweep, {r['prompts']:,} prompts x {r['shuffle_levels']} shuffle "
                f"levels per model, on {r['devices']} device; paper: "
                + " + ".join(f"{v:.0f} min {k}" for k, v in r["paper_minutes_per_model"].items())
                + " per model.",
                "",
                "| model | s/prompt | min (structured) | min (6 levels) | source |",
                "|---|---|---|---|---|",
            ]
        )
        for name, m in r["models"].items():
            lines.append(
                f"| {name} | {_fmt(m['seconds_per_prompt'], '.4f')} | "
                f"{_fmt(m.get('minutes_structured'), '.1f')} | "
                f"{_fmt(m.get('minutes_shuffled'), '.1f')} | {m['source'] or '-'} |"
            )
        lines.extend(
            [
                "",
                f"Total (6 levels, 3 models): {_fmt(r['total_minutes_shuffled'], '.1f')} min on "
                f"one device vs the paper's {r['paper_total_minutes']:.0f} min "
                f"(speed-up {_fmt(r['speedup_vs_paper'], '.1f')}x). {r['note']}",
                "",
            ]
        )
        c = r.get("cheng_protocol") or {}
        if c:
            lines.extend(
                [
                    f"Cheng et al.'s protocol on Llama-3-8B ({c['partitions']} x "
                    f"{c['points_per_partition']:,} points, {c['levels']} levels, "
                    f"{c['layers']} hidden states, windows of {c['window_tokens']} tokens): "
                    f"{_fmt(c.get('total_minutes'), '.1f')} min on one device (geometry "
                    f"{_fmt(c.get('geometry_minutes'), '.1f')} min, forward "
                    f"{_fmt(c.get('forward_minutes'), '.1f')} min). {c.get('note', '')}",
                    "",
                ]
            )
    return "\n".join(lines)


def write_report(output_dir: str, report: dict) -> None:
    """Both report files, each written to a temporary name and renamed."""
    os.makedirs(output_dir, exist_ok=True)
    for name, text in (
        (REPORT_JSON, json.dumps(_jsonable(report), indent=2, allow_nan=False)),
        (REPORT_MD, markdown(report)),
    ):
        path = os.path.join(output_dir, name)
        with open(path + ".tmp", "w") as f:
            f.write(text + "\n")
        os.replace(path + ".tmp", path)
