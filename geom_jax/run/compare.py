"""Two pooled runs compared layer by layer: mutual k-NN, CKNNA, CKA (and information
imbalance) between every hidden state of one and every hidden state of the other.

The runs' rows are matched by window key, shuffle level and repeat; runs whose rows
do not correspond (other text, other windows, other pooling) are refused with one
line naming the first mismatch. When either run is imported (representations from
outside geom-jax, :mod:`geom_jax.run.kinds.imported`), rows are matched by key alone:
A's structured rows (shuffle level 0, repeat 0; every row of an imported run), in A's
order, each with B's structured row of the same key. For each shuffle level (and
repeat) the matched points form one cloud per hidden state, and
:func:`geom_jax.metrics.layer_similarity`
gives one [La, Lb] matrix per measure, every pair in one jitted call. Writes
``similarity.npz`` and ``RESULTS.md``, a heat map per measure and ``report.md``:
per hidden state of A the best-matching one of B and its score, and the diagonal
when La = Lb (Huh et al., ICML 2024, arXiv 2405.07987; Kornblith et al., ICML 2019,
arXiv 1905.00414; Cheng et al., ICLR 2025, arXiv 2405.15471).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
from absl import logging

from geom_jax import metrics, plotting, results
from geom_jax.errors import ArgumentError
from geom_jax.io import files
from geom_jax.io.representation_store import RepresentationStore
from geom_jax.metrics.similarity import measure as similarity_measure
from geom_jax.metrics.similarity import nulls, outlier_clamp, registry
from geom_jax.metrics.similarity.layer_pairs import SIMILARITY_K as SIMILARITY_K
from geom_jax.run import run_kind
from geom_jax.run.kinds import POOLED_RUN, pooled_sweep
from geom_jax.run.kinds.pooled import Pooled
from geom_jax.run.spec import UserError

IMBALANCE = "info_imbalance"
MEASURES = registry.DEFAULT + (IMBALANCE,)
"""The measures compared when none are named."""


def known_measures() -> tuple[str, ...]:
    """Every registered similarity measure, and the information imbalance."""
    return similarity_measure.names() + (IMBALANCE,)


def measure_options() -> dict:
    """{option name: Option} of every registered measure's options shown as flags (the
    first declaration of a name gives its type and doc; defaults stay each measure's)."""
    out = {}
    for name in similarity_measure.names():
        for option in similarity_measure.get(name).options:
            if option.flag:
                out.setdefault(option.name, option)
    return out


SIMILARITY_FILE = "similarity.npz"
MATCHED = (
    "pool",
    "windows",
    "max_tokens",
    "dataset",
    "text_field",
    "split",
    "method",
    "max_shuffle",
    "shuffle_repeats",
    "seed",
    "add_bos",
    "num_prompts",
)
"""Flags two runs must share for their rows to be the same text at the same level."""


@dataclasses.dataclass
class PooledRun:
    """A finished pooled (or imported) run: its folder, metadata, rows (tokens.npz), store
    and kind."""

    folder: str
    metadata: dict
    rows: dict
    store: RepresentationStore
    kind: Pooled = POOLED_RUN

    @property
    def flags(self) -> dict:
        return self.metadata.get("flags", {})

    @property
    def cutter(self) -> str:
        """The tokenizer that cut its windows: window_tokenizer, or the model's own."""
        return self.flags.get("window_tokenizer") or self.metadata.get("model", "")


def open_run(folder: str, which: str) -> PooledRun:
    """A pooled or imported run's files (UserError naming ``runs`` when it is neither)."""
    meta_path = os.path.join(folder, results.METADATA_FILE)
    tokens_path = os.path.join(folder, results.TOKENS_FILE)
    if not os.path.isfile(meta_path):
        raise UserError(
            "{runs}: {which} {folder!r} holds no finished run (no metadata.json)",
            "runs",
            which=which,
            folder=folder,
        )
    meta = files.read_json(meta_path)
    kind = run_kind.of_metadata(meta)
    if not isinstance(kind, Pooled):
        raise UserError(
            "{runs}: {which} {folder!r} is not a pooled run ({pool}=none: its clouds are "
            "tokens, not one point per row); rerun it with {pool}=last or mean",
            ("runs", "pool"),
            which=which,
            folder=folder,
        )
    if not os.path.isfile(tokens_path):
        raise UserError(
            "{runs}: {which} {folder!r} has no tokens.npz (its rows)",
            "runs",
            which=which,
            folder=folder,
        )
    with np.load(tokens_path) as z:
        rows = {k: z[k] for k in z.files}
    store = _open_store(os.path.join(folder, pooled_sweep.STORE), len(rows["row_prompt_key"]))
    return PooledRun(folder, meta, rows, store, kind)


def _open_store(path: str, rows: int) -> RepresentationStore:
    """The store as written, checked to hold one point per row of tokens.npz."""
    try:
        store = RepresentationStore.open_existing(path)
    except FileNotFoundError as e:
        raise UserError("{runs}: {problem}", "runs", problem=str(e)) from None
    if store.rows != rows:
        raise UserError(
            "{runs}: {path} holds {have} rows, tokens.npz {want}",
            "runs",
            path=path,
            have=store.rows,
            want=rows,
        )
    return store


def _keys(run: PooledRun) -> list[tuple]:
    r = run.rows
    return list(
        zip(r["row_prompt_key"].tolist(), r["row_shuffle"].tolist(), r["row_repeat"].tolist())
    )


def match_rows(a: PooledRun, b: PooledRun) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (ia, ib) of the same window at the same level and repeat in both
    runs, in a's order; UserError naming the first thing that does not correspond.
    With an imported run on either side, by key alone (:func:`match_keys`)."""
    if a.kind.keys_only or b.kind.keys_only:
        return match_keys(a, b)
    for flag in MATCHED:
        va, vb = a.flags.get(flag), b.flags.get(flag)
        if va != vb:
            raise UserError(
                "{runs}: the runs' rows do not correspond: {" + flag + "}={va!r} in {fa!r} "
                "but {vb!r} in {fb!r}",
                ("runs", flag),
                va=va,
                vb=vb,
                fa=a.folder,
                fb=b.folder,
            )
    if a.flags.get("windows") and a.cutter != b.cutter:
        raise UserError(
            "{runs}: the runs cut their windows with other tokenizers ({ca!r}, {cb!r}): other "
            "text; rerun one with {window_tokenizer}={ca}",
            ("runs", "window_tokenizer"),
            ca=a.cutter,
            cb=b.cutter,
        )
    keys_b = {key: i for i, key in enumerate(_keys(b))}
    ka = _keys(a)
    missing = [key for key in ka if key not in keys_b]
    if missing or len(ka) != len(keys_b):
        first = missing[0] if missing else next(k for k in keys_b if k not in set(ka))
        raise UserError(
            "{runs}: the runs' rows do not correspond: window {key!r} at level {s}, repeat "
            "{r} is in one run only",
            "runs",
            key=first[0],
            s=first[1],
            r=first[2],
        )
    ia = np.arange(len(ka))
    ib = np.asarray([keys_b[key] for key in ka])
    if a.metadata.get("model") == b.metadata.get("model"):  # one tokenizer: the same ids
        ids_a, ids_b = a.rows["input_ids"][ia], b.rows["input_ids"][ib]
        bad = np.flatnonzero((ids_a != ids_b).any(axis=-1))
        if bad.size:
            key = ka[bad[0]]
            raise UserError(
                "{runs}: the runs' rows do not correspond: window {key!r} at level {s} has "
                "other tokens in the two runs (other text or another shuffle)",
                "runs",
                key=key[0],
                s=key[1],
            )
    return ia, ib


def _structured(run: PooledRun) -> np.ndarray:
    """The rows matched by key: shuffle level 0, repeat 0 (all of an imported run's)."""
    return np.flatnonzero((run.rows["row_shuffle"] == 0) & (run.rows["row_repeat"] == 0))


def match_keys(a: PooledRun, b: PooledRun) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (ia, ib): a's structured rows in a's order, each with b's structured
    row of the same ``row_prompt_key`` (b may hold more); UserError naming the first key
    of a that b lacks."""
    ia, rows_b = _structured(a), _structured(b)
    keys_b = {}
    for i, key in zip(rows_b.tolist(), b.rows["row_prompt_key"][rows_b].tolist()):
        keys_b.setdefault(key, i)
    keys_a = a.rows["row_prompt_key"][ia].tolist()
    missing = next((key for key in keys_a if key not in keys_b), None)
    if missing is not None:
        raise UserError(
            "{runs}: the runs' rows do not correspond: key {key!r} of {fa!r} is not a row of "
            "{fb!r} (with an imported run, rows are matched by key)",
            "runs",
            key=missing,
            fa=a.folder,
            fb=b.folder,
        )
    return ia, np.asarray([keys_b[key] for key in keys_a], np.int64)


def compare(
    folder_a: str,
    folder_b: str,
    output_dir: str,
    *,
    k: int | None = None,
    measures=MEASURES,
    null_permutations: int = 0,
    null_seed: int = 0,
    null_alpha: float = 0.05,
    clamp: float | None = None,
    progress: bool = True,
    **options,
) -> dict:
    """The similarity matrices of two pooled runs (``folder_b == folder_a``: a run
    against itself); writes the files of the module docstring. Returns the arrays.

    k and options: values of the measures' options (None: each measure's default);
    null_permutations (P >= 20, or 0 for none), null_seed and null_alpha: the
    permutation null of every similarity measure (`metrics.similarity.nulls`); clamp:
    None, or the quantile q of platonic-rep's outlier clamp applied to every hidden
    state first (`metrics.clamp_outliers`)."""
    a = open_run(folder_a, "the first run")
    b = (
        a
        if os.path.abspath(folder_b) == os.path.abspath(folder_a)
        else open_run(folder_b, "the second run")
    )
    measures = tuple(measures)
    unknown = [m for m in measures if m not in known_measures()]
    if unknown or not measures:
        raise UserError(
            "{measures}: unknown {u}; known: {k}",
            "measures",
            u=unknown,
            k=", ".join(known_measures()),
        )
    sim_measures = tuple(m for m in measures if m != IMBALANCE)
    given = dict(options, k=k)
    try:
        nulls.check_permutations(null_permutations)
        nulls.check_alpha(null_alpha, "null_alpha")
        if clamp is not None:
            outlier_clamp.check_q(clamp, "clamp")
        resolved = similarity_measure.resolve_all(sim_measures, given) if sim_measures else {}
    except ArgumentError as e:
        raise UserError(e.template, e.names, **e.values) from None
    least, why = similarity_measure.least_points(resolved) if resolved else (2, "needs")
    ia, ib = match_rows(a, b)
    levels = list(
        dict.fromkeys(zip(a.rows["row_shuffle"][ia].tolist(), a.rows["row_repeat"][ia].tolist()))
    )
    os.makedirs(output_dir, exist_ok=True)
    out = {}
    for s, r in levels:
        sel = (a.rows["row_shuffle"][ia] == s) & (a.rows["row_repeat"][ia] == r)
        pts_a = np.moveaxis(a.store.read(ia[sel]), 0, 1)  # [La, N, Da]
        pts_b = pts_a if b is a else np.moveaxis(b.store.read(ib[sel]), 0, 1)
        if len(pts_a[0]) < least:
            raise UserError(
                "{measures}: " + why + " >= {need} points per level, got {n}",
                "measures",
                need=least,
                n=len(pts_a[0]),
            )
        logging.info(
            "level %d repeat %d: %d points, %d x %d hidden states%s",
            s,
            r,
            pts_a.shape[1],
            pts_a.shape[0],
            pts_b.shape[0],
            f", {null_permutations} permutations" if null_permutations else "",
        )
        got = (
            metrics.layer_similarity(
                pts_a,
                None if b is a else pts_b,
                measures=sim_measures,
                null_permutations=null_permutations,
                null_seed=null_seed,
                null_alpha=null_alpha,
                clamp=clamp,
                **{o: v for o, v in given.items() if v is not None},
            )
            if sim_measures
            else {}
        )
        for name, v in got.items():
            out.setdefault(name, []).append(np.asarray(jax.device_get(v)))
        if IMBALANCE in measures:
            out.setdefault(IMBALANCE, []).append(np.asarray(metrics.imbalance_matrix(pts_a, pts_b)))
    arrays = {m: np.stack(v) for m, v in out.items()}
    arrays["level_shuffle"] = np.asarray([s for s, _ in levels], np.int32)
    arrays["level_repeat"] = np.asarray([r for _, r in levels], np.int32)
    arrays["num_points"] = np.asarray(
        [
            int(((a.rows["row_shuffle"][ia] == s) & (a.rows["row_repeat"][ia] == r)).sum())
            for s, r in levels
        ],
        np.int32,
    )
    files.atomic_write_bytes(os.path.join(output_dir, SIMILARITY_FILE), files.npz_bytes(arrays))
    files.write_json(
        os.path.join(output_dir, results.METADATA_FILE),
        {
            "runs": [a.folder, b.folder],
            "models": [a.metadata.get("model"), b.metadata.get("model")],
            "random_init": [a.metadata.get("random_init"), b.metadata.get("random_init")],
            "measures": list(measures),
            "options": {m.name: opts for m, opts in resolved.items()},
            "null": {"permutations": null_permutations, "seed": null_seed, "alpha": null_alpha},
            "clamp": clamp,
        },
    )
    _readme(output_dir, arrays, a, b, measures, null_permutations)
    report(output_dir, arrays, a, b, measures, resolved, null_permutations)
    return arrays


IMBALANCE_DOC = "(Delta(a -> b), Delta(b -> a)), information imbalance, k = 1 (Glielmo et al. 2022)"


def _doc(name: str) -> str:
    if name == IMBALANCE:
        return IMBALANCE_DOC
    m = similarity_measure.get(name)
    kind = "" if m.similarity else " (a distance: smaller is more similar)"
    return f"{m.doc}{kind} ({m.reference})"


def _readme(output_dir, arrays, a, b, measures, permutations) -> None:
    la, lb = arrays[measures[0]].shape[1:3]
    lines = [
        "# Representational similarity of two runs",
        "",
        "```python",
        "import numpy as np",
        'r = np.load("similarity.npz")',
        "```",
        "",
        f"A = `{a.folder}` ({a.metadata.get('model')}), B = `{b.folder}` "
        f"({b.metadata.get('model')}). V levels (shuffle level x repeat), La = {la} and "
        f"Lb = {lb} hidden states (0 = embedding output).",
        "",
        "| field | shape | meaning |",
        "| --- | --- | --- |",
    ]
    for m in measures:
        shape = "[V, La, Lb, 2]" if m == IMBALANCE else "[V, La, Lb]"
        lines.append(
            f"| `{m}` | {shape} | {_doc(m)}; entry [v, a, b]: hidden state a of A "
            "against hidden state b of B |"
        )
    if permutations:
        shapes = {"best_match_p_value": "[V, La]", "max_p_value": "[V]", "max_calibrated": "[V]"}
        named = ", ".join(f"`{m}`" for m in measures if m != IMBALANCE)
        for field, what in nulls.FIELDS.items():
            lines.append(
                f"| `MEASURE/{field}` | {shapes.get(field, '[V, La, Lb]')} | {what}; for "
                f"MEASURE in {named}, {permutations} permutations of B's rows |"
            )
    lines += [
        "| `level_shuffle`, `level_repeat` | [V] | the level's shuffle index and repeat |",
        "| `num_points` | [V] | the level's matched points |",
    ]
    files.atomic_write_bytes(
        os.path.join(output_dir, results.README_FILE), ("\n".join(lines) + "\n").encode()
    )


def best_matches(matrix: np.ndarray, similarity: bool = True) -> list[tuple[int, int, float]]:
    """Per row a of a [La, Lb] score matrix: (a, the best column b, its score); the
    best is the largest similarity or the smallest distance."""
    pick = (np.nanargmax, np.nanmax) if similarity else (np.nanargmin, np.nanmin)
    return [(i, int(pick[0](row)), float(pick[1](row))) for i, row in enumerate(matrix)]


def _options_text(resolved) -> str:
    shown = [
        f"{m.name}: " + ", ".join(f"{k}={v}" for k, v in opts.items() if k != "selection")
        for m, opts in resolved.items()
        if any(k != "selection" for k in opts)
    ]
    return ("; ".join(shown) + ".") if shown else ""


def report(output_dir, arrays, a, b, measures, resolved, permutations=0) -> str:
    """Heat maps of the structured level and report.md with the best matches (and,
    with a null, their calibrated scores and p-values)."""
    level = 0
    lines = [
        "# Representational similarity",
        "",
        f"A = `{a.folder}` ({a.metadata.get('model')}), B = `{b.folder}` "
        f"({b.metadata.get('model')}); level s = {int(arrays['level_shuffle'][level])}, "
        f"{int(arrays['num_points'][level])} points. {_options_text(resolved)}",
    ]
    if permutations:
        lines += [
            "",
            f"Null: {permutations} permutations of B's rows (the same for every hidden "
            "state), calibrated as Gröger, Wen, Brbić 2026 (arXiv 2602.14486): "
            "calibrated = clip((s - tau) / (s_max - tau), 0, 1), tau the 95% critical score; "
            "p = (1 + #{null at least as similar}) / (P + 1), smallest 1 / (P + 1).",
        ]
    for m in measures:
        v = arrays[m][level]
        similarity = True
        if m == IMBALANCE:
            v = 1.0 - v[..., 0]  # higher = A's neighbourhoods predict B's better
            what = "1 - Delta(A -> B)"
        else:
            what = m
            similarity = similarity_measure.get(m).similarity
        fig, (ax,) = plotting.figure(1, height=4.6)
        image = ax.imshow(v, origin="lower", cmap="viridis", aspect="auto")
        fig.colorbar(image, ax=ax)
        ax.set(xlabel="hidden state of B", ylabel="hidden state of A", title=what)
        png = f"similarity_{m}.png"
        plotting.save(fig, os.path.join(output_dir, png))
        matches = best_matches(v, similarity)
        has_null = f"{m}/p_value" in arrays
        lines += ["", f"## {what}", "", f"![{what}]({png})", ""]
        if not similarity:
            lines += ["A distance: the best match is the smallest.", ""]
        if has_null:
            cal = arrays[f"{m}/calibrated"][level]
            p_best = arrays[f"{m}/best_match_p_value"][level]
            lines += [
                f"Largest over all pairs: p = {float(arrays[f'{m}/max_p_value'][level]):.3g}, "
                f"calibrated {float(arrays[f'{m}/max_calibrated'][level]):.3f}.",
                "",
                "| hidden state of A | best of B | score | calibrated | p (best of row) |",
                "| --- | --- | --- | --- | --- |",
            ]
            lines += [
                f"| {i} | {j} | {score:.3f} | {cal[i, j]:.3f} | {p_best[i]:.3g} |"
                for i, j, score in matches
            ]
        else:
            lines += ["| hidden state of A | best of B | score |", "| --- | --- | --- |"]
            lines += [f"| {i} | {j} | {score:.3f} |" for i, j, score in matches]
        if v.shape[0] == v.shape[1]:
            lines += ["", "Diagonal (A's hidden state l against B's l):"]
            lines += plotting.layer_table(what, np.diagonal(v), first=0)
            if has_null:
                diag_p = np.diagonal(arrays[f"{m}/p_value"][level])
                diag_cal = np.diagonal(arrays[f"{m}/calibrated"][level])
                lines += ["", "Diagonal, calibrated and p-value:"]
                lines += plotting.layer_table(f"{m} calibrated", diag_cal, first=0)
                lines += plotting.layer_table(f"{m} p-value", diag_p, "{:.3g}", first=0)
    path = os.path.join(output_dir, "report.md")
    files.atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path
