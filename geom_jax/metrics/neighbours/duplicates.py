"""Duplicate points as static-shape masks: identical vectors, and near-duplicates.

TwoNN and GRIDE divide neighbour distances; among (nearly) identical
vectors those distances are rounding noise, and the estimators return
numbers (IDs of 30 and more for a prompt of one repeated token) that
measure nothing. DADApy warns about duplicates for the same reason. Exact
duplicates are found by hashing (:func:`first_occurrence`); near-duplicates
(:func:`near_duplicates`) are points whose distance to an earlier valid point
is below ``tolerance`` times the cloud's RMS norm, the scale float32 rounding
is relative to (the default 1e-5 is about 100 float32 ulps).
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from geom_jax.metrics import validation
from geom_jax.metrics.declare import options
from geom_jax.metrics.neighbours import distances

_SALT_SEED = 0x5EED


def fmix32(h):
    """MurmurHash3 finaliser: a bijective avalanche on uint32."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _row_hashes(x):
    """Two 32-bit hashes of the bit pattern of each row ([..., N, D] -> 2 x [..., N]).

    Each coordinate is salted by its position and mixed before summation, so
    distinct rows collide with probability about 2**-64; +0 and -0 hash alike.
    """
    d = x.shape[-1]
    rng = np.random.default_rng(_SALT_SEED)
    salt = jnp.asarray(rng.integers(0, 2**32, d, dtype=np.uint64).astype(np.uint32))
    mult = jnp.asarray((rng.integers(0, 2**31, d, dtype=np.uint64) * 2 + 1).astype(np.uint32))
    bits = lax.bitcast_convert_type(jnp.where(x == 0, jnp.zeros_like(x), x), jnp.uint32)
    mixed = fmix32(bits ^ salt)
    h1 = jnp.sum(mixed, axis=-1, dtype=jnp.uint32)
    h2 = jnp.sum(mixed * mult, axis=-1, dtype=jnp.uint32)
    return fmix32(h1), fmix32(h2 ^ jnp.uint32(0x9E3779B9))


def first_occurrence(x, valid):
    """Bool [..., N]: valid points with no identical valid point at a lower index.

    Rows are sorted by (invalid, hash, index), so each run of identical
    vectors is contiguous and starts at its first occurrence; a row is a
    duplicate when it equals (hash and exact coordinates) the previous row
    of the run. The coordinates are compared, and the flags put back in
    point order, only when two valid rows share both hashes (lax.cond), so a
    batch without duplicates costs the hashes and one sort. Static shapes,
    no loop over points.
    """
    n = x.shape[-2]
    h1, h2 = _row_hashes(x)
    idx = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), valid.shape)
    invalid = (~valid).astype(jnp.int32)
    inv_s, h1_s, h2_s, idx_s = lax.sort((invalid, h1, h2, idx), dimension=-1, num_keys=4)
    same_hash = (
        (inv_s[..., 1:] == 0)
        & (inv_s[..., :-1] == 0)
        & (h1_s[..., 1:] == h1_s[..., :-1])
        & (h2_s[..., 1:] == h2_s[..., :-1])
    )

    def compare():
        x_s = jnp.take_along_axis(x, idx_s[..., None], axis=-2)
        same = same_hash & jnp.all(x_s[..., 1:, :] == x_s[..., :-1, :], axis=-1)
        dup_s = jnp.concatenate([jnp.zeros_like(same[..., :1]), same], axis=-1)
        _, dup = lax.sort((idx_s, dup_s.astype(jnp.int32)), dimension=-1, num_keys=1)
        return valid & (dup == 0)

    return lax.cond(jnp.any(same_hash), compare, lambda: valid)


DUPLICATE_TOLERANCE = options.DUPLICATE_TOLERANCE.default
"""Default relative distance below which two points count as one for the ID estimators."""


GRAM_ERROR = 4 * 2.0**-24
"""Per coordinate, a bound on the float32 error of G_ii + G_jj - 2 G_ij relative
to G_ii + G_jj (each product and sum rounds once per coordinate)."""


def near_duplicates(x, valid, gram, tolerance=DUPLICATE_TOLERANCE, *, distinct=None):
    """Bool [..., N]: valid points within ``tolerance * R`` of an earlier valid point.

    R is the RMS norm of the valid points (uncentred: rounding noise is
    relative to the vectors' norm, not to their spread). The earlier point
    tested is the nearest one by the Gram matrix, and the distance to it is
    then computed from the coordinates (the Gram trick cannot resolve
    distances this small). Exact duplicates pass too (distance 0).

    With ``distinct`` (the exact first occurrences, :func:`first_occurrence`),
    that search runs only when some pair of distinct points is close enough
    by the Gram matrix, within its float32 error bound (GRAM_ERROR), to be
    near-duplicates; otherwise no point is flagged besides, possibly, exact
    duplicates, which ``distinct`` already excludes. ``distinct & ~result``
    is the same either way, and the search (an arg-min over every pair, 15%
    of the paper's metrics on CPU) is skipped for the usual clouds.

    Args:
      x: [..., N, D] float32 points.
      valid: bool [..., N].
      gram: [..., N, N] Gram matrix of x (centred or not).
      tolerance: relative distance; 0 disables the test.
      distinct: optional bool [..., N], the exact first occurrences among valid.

    Returns:
      bool [..., N] near-duplicates (never the first point of a group).
    """
    n, d = x.shape[-2:]
    diag = jnp.diagonal(gram, axis1=-2, axis2=-1)
    limit = (tolerance**2) * _sq_radius(x, valid)
    lower = jnp.tril(jnp.ones((n, n), bool), k=-1)

    def search():
        earlier = lower & valid[..., None, :]
        score = jnp.where(earlier, diag[..., None, :] - 2.0 * gram, jnp.inf)
        nearest = jnp.argmin(score, axis=-1)
        other = jnp.take_along_axis(x, nearest[..., None], axis=-2)
        d2 = jnp.sum(jnp.square(x - other), axis=-1)
        return valid & jnp.any(earlier, axis=-1) & (d2 <= limit[..., None])

    if distinct is None:
        return search()
    close = _close_pairs(gram, limit, d) & lower & distinct[..., :, None] & distinct[..., None, :]
    return lax.cond(jnp.any(close), search, lambda: valid & False)


def _sq_radius(x, valid):
    count = jnp.maximum(jnp.sum(valid, axis=-1), 1).astype(x.dtype)
    return jnp.sum(jnp.where(valid, jnp.sum(jnp.square(x), axis=-1), 0.0), axis=-1) / count


def _close_pairs(gram, limit, d):
    """Pairs whose squared distance by the Gram matrix is within limit [...] plus the
    Gram matrix's float32 error bound (identical points always are)."""
    diag = jnp.diagonal(gram, axis1=-2, axis2=-1)
    both = diag[..., :, None] + diag[..., None, :]
    return (both - 2.0 * gram) <= limit[..., None, None] + d * GRAM_ERROR * both


def distinct_points(x, valid, gram, tolerance=DUPLICATE_TOLERANCE):
    """Bool [..., N]: valid points that are neither identical to nor (tolerance > 0)
    a near-duplicate of an earlier valid point: ``first_occurrence`` and
    ``near_duplicates`` together.

    One pass over the Gram matrix first asks whether any two valid points can be
    that close (their Gram distance within ``tolerance * R`` plus its float32
    error bound, which identical points always are); only then are the rows
    hashed and the near-duplicates searched. A batch with no such pair (every
    layer of an LLM past the embeddings, in practice) skips both, and the result
    is the same either way.

    Args:
      x: [..., N, D] float32 points.
      valid: bool [..., N].
      gram: [..., N, N] Gram matrix of x (centred or not).
      tolerance: relative distance of near-duplicates; 0 keeps exact duplicates only.

    Returns:
      bool [..., N], first occurrences kept.
    """
    n, d = x.shape[-2:]
    limit = (tolerance**2) * _sq_radius(x, valid)
    lower = jnp.tril(jnp.ones((n, n), bool), k=-1)
    close = _close_pairs(gram, limit, d) & lower & valid[..., :, None] & valid[..., None, :]

    def full():
        keep = first_occurrence(x, valid)
        if tolerance > 0:
            keep = keep & ~near_duplicates(x, valid, gram, tolerance, distinct=keep)
        return keep

    return lax.cond(jnp.any(close), full, lambda: valid)


@jax.jit
def _unique_mask(x, valid):
    return first_occurrence(x, valid)


def unique_mask(x, mask=None):
    """Public helper: bool [..., N] mask of first occurrences among valid points."""
    x = validation.as_points(x, "x")
    return _unique_mask(x, distances.valid_or_all(x, mask))
