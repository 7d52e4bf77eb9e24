"""Permutation nulls of similarity scores and their calibration.

Gröger, Wen, Brbić 2026 (ICML, arXiv 2602.14486; their package
``calibrated-similarity``): permuting the rows of one representation breaks the
correspondence of points while keeping each cloud's geometry, so the scores of
permuted pairs are what a measure gives to unrelated representations of the same
size and dimension. From the observed score s and the null scores s_1..s_P
(orientated so that larger is more similar; a distance d is read as s = -d):

* p-value: (1 + #{s_p >= s}) / (P + 1) (the add-one permutation p-value);
* tau: the ceil((1 - alpha)(P + 1))-th smallest of {s, s_1, ..., s_P};
* calibrated score: clip((s - tau) / (s_max - tau), 0, 1), s_max the score of two
  identical representations (the measure's ``best``); relu(s - tau) when the
  measure has none. Zero for a score the null reaches at level alpha.

For a stack against a stack the same permutation reorders every layer of the
second (their Algorithm 2), so the maximum over all layer pairs, and over the
layers of B for each layer of A (its best match), have nulls of their own: the
maximum of each permuted [La, Lb] matrix. A best-match claim is judged against
that null, not against one pair's.
"""

from __future__ import annotations

import math

import numpy as np

from geom_jax.errors import ArgumentError

MIN_PERMUTATIONS = 20
"""Fewest permutations that give a p-value: with P the smallest is 1 / (P + 1)."""

FIELDS = {
    "null_mean": "mean of the null scores (the measure's own units)",
    "null_std": "standard deviation of the null scores (ddof = 1)",
    "p_value": "(1 + #{null at least as similar}) / (P + 1)",
    "tau": "critical score: the ceil((1 - alpha)(P + 1))-th of observed and null, ascending "
    "in similarity",
    "calibrated": "clip((s - tau) / (s_max - tau), 0, 1) in similarity orientation",
    "best_match_p_value": "per layer of A, p-value of its best score over the layers of B "
    "against the null of that maximum",
    "max_p_value": "p-value of the largest score over all layer pairs against the null of "
    "the maximum",
    "max_calibrated": "calibrated largest score over all layer pairs (Algorithm 2, agg=max)",
}
"""The null fields of every measure, as ``layer_similarity`` names them ``measure/field``."""


def check_permutations(permutations, name="null_permutations", none=True):
    """P >= MIN_PERMUTATIONS, or P = 0 (no null) where ``none`` allows it."""
    if isinstance(permutations, bool) or not isinstance(permutations, (int, np.integer)):
        raise ArgumentError("{" + name + "} must be an integer, got {v!r}", name, v=permutations)
    if (permutations != 0 or not none) and permutations < MIN_PERMUTATIONS:
        raise ArgumentError(
            "{" + name + "}={v} is too few for a p-value: the smallest is 1 / (P + 1); "
            "use P >= {least}" + (" (or 0 for no null)" if none else ""),
            name,
            v=int(permutations),
            least=MIN_PERMUTATIONS,
        )


def check_alpha(alpha, name="alpha"):
    if not 0.0 < float(alpha) < 1.0:
        raise ArgumentError("{" + name + "} must be in (0, 1), got {v!r}", name, v=alpha)


def _critical(observed, null, alpha):
    """tau over the last axis of concat(observed[..., None], null)."""
    combined = np.sort(np.concatenate([observed[..., None], null], axis=-1), axis=-1)
    p = null.shape[-1]
    idx = min(max(math.ceil((1.0 - alpha) * (p + 1)) - 1, 0), p)
    return combined[..., idx]


def _calibrate(observed, null, alpha, best):
    """(p-value, tau, calibrated) of observed [...] against null [..., P], both
    orientated as similarities; best the similarity of identical representations."""
    p = null.shape[-1]
    p_value = (1.0 + np.sum(null >= observed[..., None], axis=-1)) / (p + 1.0)
    tau = _critical(observed, null, alpha)
    if best is None:
        calibrated = np.maximum(observed - tau, 0.0)
    else:
        calibrated = np.clip((observed - tau) / np.maximum(best - tau, 1e-12), 0.0, 1.0)
    bad = np.isnan(observed) | np.isnan(null).any(axis=-1)
    return (
        np.where(bad, np.nan, p_value),
        np.where(bad, np.nan, tau),
        np.where(bad, np.nan, calibrated),
    )


def calibrate(raw, null, *, similarity=True, best=1.0, alpha=0.05):
    """Null statistics of scores raw [..., La, Lb] given null scores [..., P, La, Lb].

    Args:
      raw: observed scores [..., La, Lb].
      null: scores of the permuted pairs [..., P, La, Lb] (the same permutation p
        for every pair of one matrix).
      similarity: larger means more similar (False: a distance).
      best: the score of identical representations (None: unbounded).
      alpha: level of the critical score tau.

    Returns:
      dict with the keys of FIELDS: per pair [..., La, Lb] (null_mean, null_std,
      p_value, tau and calibrated, tau and calibrated in the measure's own units),
      best_match_p_value [..., La], max_p_value and max_calibrated [...].

    Reference: Gröger, Wen, Brbić 2026, arXiv 2602.14486, Algorithms 1 and 2
    (calibrated-similarity 0.1.1 ``calibrate`` and ``calibrate_layers(agg="max")``).
    """
    check_alpha(alpha)
    raw = np.asarray(raw, np.float64)
    null = np.moveaxis(np.asarray(null, np.float64), -3, -1)
    sign = 1.0 if similarity else -1.0
    s, s_null = sign * raw, sign * null
    s_best = None if best is None else sign * best
    p_value, tau, calibrated = _calibrate(s, s_null, alpha, s_best)
    out = {
        "null_mean": null.mean(-1),
        "null_std": null.std(-1, ddof=1),
        "p_value": p_value,
        "tau": sign * tau,
        "calibrated": calibrated,
    }
    row_best, row_null = np.max(s, axis=-1), np.max(s_null, axis=-2)
    out["best_match_p_value"] = _calibrate(row_best, row_null, alpha, s_best)[0]
    flat = s.reshape(s.shape[:-2] + (-1,))
    flat_null = s_null.reshape(s_null.shape[:-3] + (-1, s_null.shape[-1]))
    top_p, _, top_cal = _calibrate(np.max(flat, axis=-1), np.max(flat_null, axis=-2), alpha, s_best)
    out["max_p_value"] = top_p
    out["max_calibrated"] = top_cal
    return out
