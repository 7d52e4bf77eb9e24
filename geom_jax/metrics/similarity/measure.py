"""A similarity measure, declared once, and how every declared measure is computed.

A measure compares two representations x [N, Dx], y [N, Dy] of the same N points.
Its declaration (:class:`SimilarityMeasure`) says what it needs per layer and how
two layers' statistics give a score, so that for two stacks of La and Lb layers

* each layer's statistics (centred features, neighbour lists, a dissimilarity
  vector, a whitening) are computed once and shared by its Lb (or La) pairs;
* every pair is scored inside one jitted call;
* a permutation null relabels the statistics of the second stack
  (``permute``: rows of y permuted, the same permutation for all its layers,
  Gröger et al. 2026, arXiv 2602.14486, Algorithm 2) instead of recomputing them
  where the measure allows (neighbour lists are relabelled, a dissimilarity
  vector gathered), or recomputes them from the permuted points otherwise.

The declaration is the single source of a measure's name, options (keywords of
its public function and of ``layer_similarity``, flags of
compare_representations.py), its reference and the direction of its scores.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from geom_jax.errors import ArgumentError
from geom_jax.metrics import validation
from geom_jax.metrics.declare.observable import Option


def _two_points(options):
    return 2, "needs"


@dataclasses.dataclass(frozen=True)
class SimilarityMeasure:
    """Everything about one similarity measure.

    Attributes:
      name: the measure's name (``measures=`` of ``layer_similarity``, ``--measures``).
      doc: one line: what the score is.
      reference: the paper (arXiv id) and the implementation it is checked against.
      layer_stats: ``layer_stats(x [L, N, D] float32, valid [N] bool, **options)`` ->
        a pytree whose leaves have leading axis L: what a layer contributes to all
        its pairs. Jittable; options are static.
      pair_scores: ``pair_scores(stats_a, stats_b, valid, **options)`` -> float32
        [La, Lb]; ``stats_b`` None means stack a against itself (a measure may use
        the symmetry). Jittable. With ``pair_stats``: ``pair_scores(shared, stats_a,
        stats_b, valid, **options)``.
      pair_stats: ``pair_stats(stats_a, stats_b, valid, **options)`` -> what the pairs
        of several measures share (CKA's sum_ij K_ij L_ij for both HSIC estimators),
        computed once for the measures whose ``pair_stats``, statistics and options
        are the same; None: nothing shared.
      options: the measure's :class:`Option` declarations (name, type, default, doc,
        check).
      permute: ``permute(stats, perm [N] int32, valid, **options)`` -> the statistics
        of the points reordered as ``points[..., perm, :]`` (valid points are
        permuted among themselves, invalid ones stay). None: ``layer_stats`` of the
        permuted points.
      similarity: True when a larger score means more similar (CKA, overlaps),
        False for distances (Procrustes, the angular shape metric).
      best: the most similar score the measure can give (the calibration's s_max,
        Gröger et al.): that of two identical representations for all but cycle_knn
        (whose identical inputs score the fraction of points with a reciprocated
        neighbour); for a distance its smallest value; None when unbounded.
      min_points: ``min_points(options)`` -> (the fewest valid points the measure is
        defined on, the reason's words, e.g. "k=10 needs").
      check: ``check(options)`` raises ArgumentError for values no single option
        check can judge (combinations).
      check_values: ``check_values(points, valid, name, options)`` on concrete inputs
        (NumPy [..., N, D] and bool [..., N]) raises ValueError naming ``name`` for
        values the measure is undefined on (e.g. a zero vector, which has no
        direction); finiteness is checked for every measure.
    """

    name: str
    doc: str
    reference: str
    layer_stats: Callable[..., Any]
    pair_scores: Callable[..., Any]
    options: tuple[Option, ...] = ()
    pair_stats: Callable[..., Any] | None = None
    permute: Callable[..., Any] | None = None
    similarity: bool = True
    best: float | None = 1.0
    min_points: Callable[[dict], tuple[int, str]] = _two_points
    check: Callable[[dict], None] | None = None
    check_values: Callable[..., None] | None = None

    def resolve(self, given: dict) -> dict:
        """The measure's option values: ``given`` (only its own names), defaults
        elsewhere, each checked."""
        own = {o.name for o in self.options}
        unknown = sorted(set(given) - own)
        if unknown:
            raise ArgumentError(
                "{measures}: " + self.name + " takes no option {unknown} (its options: {own})",
                "measures",
                unknown=", ".join(unknown),
                own=", ".join(sorted(own)) or "none",
            )
        values = {o.name: o.value(given.get(o.name), present=o.name in given) for o in self.options}
        if self.check is not None:
            self.check(values)
        return values


_MEASURES: dict[str, SimilarityMeasure] = {}


def register(measure: SimilarityMeasure) -> SimilarityMeasure:
    """Adds a measure to the registry (its name must be new); returns it."""
    if measure.name in _MEASURES and _MEASURES[measure.name] is not measure:
        raise ValueError(f"a similarity measure named {measure.name!r} is already registered")
    _MEASURES[measure.name] = measure
    return measure


def get(name: str) -> SimilarityMeasure:
    if name not in _MEASURES:
        raise ArgumentError(
            "{measures}: unknown measure {name!r}; known: {known}",
            "measures",
            name=name,
            known=", ".join(_MEASURES),
        )
    return _MEASURES[name]


def as_measure(measure: str | SimilarityMeasure) -> SimilarityMeasure:
    """A declaration, or the registered one of that name."""
    return measure if isinstance(measure, SimilarityMeasure) else get(measure)


def names() -> tuple[str, ...]:
    """Registered measures, in registration order."""
    return tuple(_MEASURES)


def resolve_all(measures, given: dict, per_measure: dict | None = None) -> dict:
    """{measure: resolved options} for measures (declarations or names): each takes the keywords of
    ``given`` that it declares (None values left to its default) and, over them,
    ``per_measure[name]``."""
    if isinstance(measures, str):
        measures = (measures,)
    measures = tuple(dict.fromkeys(measures))
    if not measures:
        raise ArgumentError("{measures} must name at least one measure", "measures")
    per_measure = dict(per_measure or {})
    unknown = sorted(set(per_measure) - set(measures))
    if unknown:
        raise ArgumentError(
            "{options}: {unknown} not among the measures {measures}",
            ("options", "measures"),
            unknown=", ".join(unknown),
        )
    declared = {o.name for m in measures for o in as_measure(m).options}
    stray = sorted(k for k, v in given.items() if v is not None and k not in declared)
    if stray:
        raise ArgumentError(
            "{measures}: no measure of {chosen} takes {stray}",
            "measures",
            chosen=", ".join(measures),
            stray=", ".join(stray),
        )
    out = {}
    for m in measures:
        measure = as_measure(m)
        name = measure.name
        own = {o.name for o in measure.options}
        mine = {k: v for k, v in given.items() if k in own and v is not None}
        mine.update(per_measure.get(name, {}))
        out[measure] = measure.resolve(mine)
    return out


def least_points(measures: dict) -> tuple[int, str]:
    """The fewest valid points all the measures ({name: options}) are defined on."""
    return max(as_measure(m).min_points(opts) for m, opts in measures.items())


def check_inputs(a, b, mask, measures, names=("x", "y"), layout_rank=2):
    """Shapes, same N and leading axes, point counts (static and, for a concrete mask,
    per cloud), finite values at valid points and each measure's ``check_values``.
    measures: {name: resolved options}. Returns (a, b, mask) as float32 / bool
    arrays (b None: a against itself)."""
    least, why = least_points(measures)
    a = validation.as_points(a, names[0], layout_rank)
    if b is not None:
        b = validation.as_points(b, names[1], layout_rank)
        if a.shape[-2] != b.shape[-2] or a.shape[:-layout_rank] != b.shape[:-layout_rank]:
            raise ValueError(
                f"{names[0]} and {names[1]} must hold the same N points (and leading axes): "
                f"shapes {tuple(a.shape)} and {tuple(b.shape)}"
            )
    batch, n = a.shape[: a.ndim - layout_rank], a.shape[-2]
    mask = validation.as_mask(mask, batch, n)
    if n < least:
        raise ValueError(f"{why} >= {least} points per cloud, got N = {n}")
    if mask is not None and validation.is_concrete(mask):
        counts = np.asarray(mask).reshape(-1, n).sum(-1)
        if counts.size and counts.min() < least:
            where = np.unravel_index(int(np.argmin(counts)), batch) if batch else ()
            raise ValueError(
                f"mask: {why} >= {least} valid points, but cloud {tuple(int(i) for i in where)} "
                f"has {int(counts.min())}"
            )
    for name, arr in zip(names, (a, b)):
        if arr is None or not validation.is_concrete(arr, mask):
            continue
        pts = np.asarray(arr)
        valid = np.ones(batch + (n,), bool) if mask is None else np.asarray(mask)
        valid = np.broadcast_to(
            valid.reshape(batch + (1,) * (layout_rank - 2) + (n,)), pts.shape[:-1]
        )
        validation.check_finite(pts, valid, name)
        for measure_name, opts in measures.items():
            check = as_measure(measure_name).check_values
            if check is not None:
                check(pts, valid, name, opts)
    return a, b, mask


def _frozen(options: dict) -> tuple:
    return tuple(sorted(options.items()))


def _shared(specs, xa, xb, valid):
    """Per-layer statistics of both stacks, computed once for all the measures whose
    ``layer_stats`` and options are the same (mutual k-NN and CKNNA share their
    neighbour lists). Returns {key: (stats_a, stats_b or None)} and each spec's key."""
    groups, keys = {}, []
    for measure, frozen in specs:
        key = (measure.layer_stats, frozen)
        if key not in groups:
            opts = dict(frozen)
            groups[key] = (
                measure.layer_stats(xa, valid, **opts),
                None if xb is None else measure.layer_stats(xb, valid, **opts),
            )
        keys.append(key)
    return groups, keys


def _pair_scores(specs, keys, sides, valid):
    """{name: [La, Lb]} of every measure, given each group's (stats_a, stats_b); what
    measures share through ``pair_stats`` is computed once."""
    shared, out = {}, {}
    for (measure, frozen), key in zip(specs, keys):
        stats_a, stats_b = sides[key]
        opts = dict(frozen)
        if measure.pair_stats is None:
            out[measure.name] = measure.pair_scores(stats_a, stats_b, valid, **opts)
            continue
        at = (measure.pair_stats, key)
        if at not in shared:
            shared[at] = measure.pair_stats(stats_a, stats_b, valid, **opts)
        out[measure.name] = measure.pair_scores(shared[at], stats_a, stats_b, valid, **opts)
    return out


def _permuted(specs, keys, groups, points_b, perm, valid):
    """The second stack's statistics with its rows permuted, once per group."""
    out = {}
    for (measure, frozen), key in zip(specs, keys):
        if key in out:
            continue
        stats_a, stats_b = groups[key]
        base = stats_a if stats_b is None else stats_b
        opts = dict(frozen)
        if measure.permute is not None:
            out[key] = measure.permute(base, perm, valid, **opts)
        else:
            out[key] = measure.layer_stats(jnp.take(points_b, perm, axis=1), valid, **opts)
    return out


@functools.partial(jax.jit, static_argnames=("specs",))
def _scores(xa, xb, valid, perms, *, specs):
    """One cloud: {name: scores [La, Lb]} for every measure of specs ((measure, frozen
    options), ...) and, for perms [P, N] (P may be 0), {name: null scores [P, La, Lb]}
    of xa against xb (None: xa) with its rows permuted by each perm, the same
    permutation for every layer and measure."""
    groups, keys = _shared(specs, xa, xb, valid)
    raw = _pair_scores(specs, keys, groups, valid)
    if perms.shape[0] == 0:
        return raw, {name: jnp.zeros((0,) + v.shape, v.dtype) for name, v in raw.items()}
    points_b = xa if xb is None else xb

    def one(perm):
        permuted = _permuted(specs, keys, groups, points_b, perm, valid)
        sides = {key: (groups[key][0], permuted[key]) for key in permuted}
        return _pair_scores(specs, keys, sides, valid)

    return raw, jax.lax.map(one, perms)


def valid_permutations(valid, permutations, seed):
    """int32 [B, P, N]: per cloud of valid [B, N], P seeded permutations of its valid
    points among themselves (invalid points fixed). Row p is the same for every
    layer of the permuted stack (Gröger et al. 2026, Algorithm 2)."""
    valid = np.asarray(valid, bool)
    rng = np.random.default_rng(seed)
    n = valid.shape[-1]
    out = np.broadcast_to(np.arange(n, dtype=np.int32), (valid.shape[0], permutations, n)).copy()
    for b in range(valid.shape[0]):
        where = np.flatnonzero(valid[b])
        for p in range(permutations):
            out[b, p, where] = where[rng.permutation(len(where))]
    return out


def stack_scores(measures, a, b, valid, perms=None):
    """Scores of several measures for stacks a [B, La, N, Da], b [B, Lb, N, Db] or None
    (a against itself), valid [B, N]. measures: {name: resolved options}. Returns
    {name: float32 [B, La, Lb]} and, with perms [B, P, N], {name: [B, P, La, Lb]}
    (else None). One jitted call per cloud, each layer's statistics computed once."""
    specs = tuple((as_measure(name), _frozen(opts)) for name, opts in measures.items())
    n = a.shape[-2]
    raws, nulls = [], []
    for i in range(a.shape[0]):
        p = np.zeros((0, n), np.int32) if perms is None else perms[i]
        raw, null = _scores(
            a[i], None if b is None else b[i], valid[i], jnp.asarray(p), specs=specs
        )
        raws.append(raw)
        nulls.append(null)
    stack = lambda parts: {m.name: jnp.stack([p[m.name] for p in parts]) for m, _ in specs}
    return stack(raws), (None if perms is None else stack(nulls))


def evaluate(measure, x, y, mask=None, **given):
    """The public per-pair function of a measure (its declaration or a registered
    name): x [..., N, Dx] and y [..., N, Dy] (y None: x against itself) -> float32
    [...]."""
    measure = as_measure(measure)
    name = measure.name
    measures = {measure: measure.resolve(given)}
    same = y is None or y is x
    x, y, mask = check_inputs(x, None if same else y, mask, measures)
    batch, n = x.shape[:-2], x.shape[-2]
    valid = jnp.ones(batch + (n,), bool) if mask is None else mask
    a = x.reshape((-1, 1) + x.shape[-2:])
    b = None if same else y.reshape((-1, 1) + y.shape[-2:])
    raw, _ = stack_scores(measures, a, b, valid.reshape(-1, n))
    return raw[name][:, 0, 0].reshape(batch)
