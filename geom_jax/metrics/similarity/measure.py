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
        the symmetry). Jittable.
      options: the measure's :class:`Option` declarations (name, type, default, doc,
        check).
      permute: ``permute(stats, perm [N] int32, valid, **options)`` -> the statistics
        of the points reordered as ``points[..., perm, :]`` (valid points are
        permuted among themselves, invalid ones stay). None: ``layer_stats`` of the
        permuted points.
      similarity: True when a larger score means more similar (CKA, overlaps),
        False for distances (Procrustes, the angular shape metric).
      best: the score of two identical representations (the calibration's s_max,
        Gröger et al.; for a distance its smallest value); None when unbounded.
      min_points: ``min_points(options)`` -> (the fewest valid points the measure is
        defined on, the reason's words, e.g. "k=10 needs").
      check: ``check(options)`` raises ArgumentError for values no single option
        check can judge (combinations).
    """

    name: str
    doc: str
    reference: str
    layer_stats: Callable[..., Any]
    pair_scores: Callable[..., Any]
    options: tuple[Option, ...] = ()
    permute: Callable[..., Any] | None = None
    similarity: bool = True
    best: float | None = 1.0
    min_points: Callable[[dict], tuple[int, str]] = _two_points
    check: Callable[[dict], None] | None = None

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


def names() -> tuple[str, ...]:
    """Registered measures, in registration order."""
    return tuple(_MEASURES)


def check_inputs(a, b, mask, least, why, names=("x", "y"), layout_rank=2):
    """Shapes, same N and leading axes, point counts (static and, for a concrete mask,
    per cloud) and finite values at valid points. Returns (a, b, mask) as float32 /
    bool arrays (b None: a against itself)."""
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
    return a, b, mask


def permuted_stats(measure: SimilarityMeasure, stats, points, perm, valid, options):
    """Statistics of ``points[:, perm]`` (points [L, N, D], perm [N])."""
    if measure.permute is not None:
        return measure.permute(stats, perm, valid, **options)
    return measure.layer_stats(jnp.take(points, perm, axis=1), valid, **options)


@functools.partial(jax.jit, static_argnames=("name", "options"))
def _scores(xa, xb, valid, perms, *, name, options):
    """One batch element: scores [La, Lb] and, for perms [P, N] (P may be 0), the
    null scores [P, La, Lb] of xa against xb with its rows permuted."""
    measure = get(name)
    opts = dict(options)
    stats_a = measure.layer_stats(xa, valid, **opts)
    stats_b = None if xb is None else measure.layer_stats(xb, valid, **opts)
    raw = measure.pair_scores(stats_a, stats_b, valid, **opts)
    if perms.shape[0] == 0:
        return raw, jnp.zeros((0,) + raw.shape, raw.dtype)
    points_b = xa if xb is None else xb
    base_b = stats_a if xb is None else stats_b

    def one(perm):
        permuted = permuted_stats(measure, base_b, points_b, perm, valid, opts)
        return measure.pair_scores(stats_a, permuted, valid, **opts)

    return raw, jax.lax.map(one, perms)


def valid_permutations(valid, permutations, seed):
    """int32 [B, P, N]: per cloud of valid [B, N], P seeded permutations of its valid
    points among themselves (invalid points fixed). Row p is the same for every
    layer of the permuted stack (Gröger et al. 2026, Algorithm 2)."""
    valid = np.asarray(valid, bool)
    rng = np.random.default_rng(seed)
    out = np.broadcast_to(
        np.arange(valid.shape[-1], dtype=np.int32),
        valid.shape[:-1] + (permutations, valid.shape[-1]),
    ).copy()
    for b in range(valid.shape[0]):
        where = np.flatnonzero(valid[b])
        for p in range(permutations):
            out[b, p, where] = where[rng.permutation(len(where))]
    return out


def stack_scores(name, a, b, valid, options, perms=None):
    """Scores of measure ``name`` for stacks a [B, La, N, Da], b [B, Lb, N, Db] or None
    (a against itself), valid [B, N], resolved options: float32 [B, La, Lb], and with
    perms [B, P, N] the null scores [B, P, La, Lb]. One jitted call per cloud."""
    frozen = tuple(sorted(options.items()))
    n = a.shape[-2]
    raws, nulls = [], []
    for i in range(a.shape[0]):
        p = np.zeros((0, n), np.int32) if perms is None else perms[i]
        raw, null = _scores(
            a[i], None if b is None else b[i], valid[i], jnp.asarray(p), name=name, options=frozen
        )
        raws.append(raw)
        nulls.append(null)
    return jnp.stack(raws), (None if perms is None else jnp.stack(nulls))


def evaluate(name, x, y, mask=None, **given):
    """The public per-pair function of a registered measure: x [..., N, Dx] and
    y [..., N, Dy] (y None: x against itself) -> float32 [...]."""
    measure = get(name)
    options = measure.resolve(given)
    least, why = measure.min_points(options)
    same = y is None or y is x
    x, y, mask = check_inputs(x, None if same else y, mask, least, why)
    batch, n = x.shape[:-2], x.shape[-2]
    valid = jnp.ones(batch + (n,), bool) if mask is None else mask
    a = x.reshape((-1, 1) + x.shape[-2:])
    b = None if same else y.reshape((-1, 1) + y.shape[-2:])
    raw, _ = stack_scores(name, a, b, valid.reshape(-1, n), options)
    return raw[:, 0, 0].reshape(batch)
