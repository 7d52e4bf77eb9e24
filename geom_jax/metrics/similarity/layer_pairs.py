"""Representational similarity of two representations of the same points.

Public functions (pure JAX, jittable, float32 with Precision.HIGHEST, batched over
leading axes; x [..., N, Dx] and y [..., N, Dy] hold the same N points):

* `mutual_knn(x, y, mask, *, k)` and `cknna(x, y, mask, *, k)`: Huh et al. 2024,
  "The Platonic Representation Hypothesis", ICML, arXiv 2405.07987 (platonic-rep's
  ``mutual_knn`` and ``cknna``), on the L2-normalised features;
* `cka(x, y, mask, *, debiased)`: linear CKA, Kornblith et al. 2019, ICML,
  arXiv 1905.00414; debiased with the unbiased HSIC of Song et al. 2012, JMLR 13,
  eq. 5;
* `layer_similarity(stack_a, stack_b, mask, *, measures, k)`: every pair of layers
  of two stacks in one jitted call, each layer's neighbour lists and kernel
  statistics computed once and shared by its pairs; the per-pair functions are
  this with one layer on each side.

Neighbours (`neighbour_lists.neighbour_lists`): exact, by (squared distance between
the normalised features, index); for unit vectors |u - v|^2 = 2 - 2 u . v, the order
of the inner products, and ties, such as exact duplicate points (or copies scaled by
a power of two), go to the lower index, where torch.topk / argsort leave their order
unspecified. A valid zero vector has no direction: concrete inputs are refused,
traced ones give NaN. Only
points with mask True take part, as points and as neighbours; m is their number.
"""

import jax.numpy as jnp
import numpy as np

from geom_jax.errors import ArgumentError
from geom_jax.metrics.similarity import (
    cka_hsic,
    knn_alignment,
    measure,
    nulls,
    outlier_clamp,
    rbf_cka,
    registry,
)

MEASURES = registry.DEFAULT
"""The measures computed when none are named (every registered one: `measure.names()`)."""
SIMILARITY_K = knn_alignment.K
"""The neighbourhood size of the k-NN measures: the keyword of their public functions,
of run.compare and the --k flag of compare_representations.py."""


def _run(a, b, mask, measures, given, per_measure, names, layout_rank, nulls_at=None):
    """Checks, then every measure for every pair of layers: {name: [..., La, Lb]} and,
    with nulls_at = (permutations, seed, alpha), the null fields ``name/field``."""
    resolved = measure.resolve_all(measures, given, per_measure)
    permutations, seed, alpha = nulls_at or (0, 0, 0.05)
    nulls.check_alpha(alpha, "null_alpha")
    same = b is None or b is a
    a, b, mask = measure.check_inputs(a, None if same else b, mask, resolved, names, layout_rank)
    if layout_rank == 2:
        a, b = a[..., None, :, :], None if b is None else b[..., None, :, :]
    batch, n = a.shape[:-3], a.shape[-2]
    valid = (jnp.ones(batch + (n,), bool) if mask is None else mask).reshape((-1, n))
    flat = lambda s: None if s is None else s.reshape((-1,) + s.shape[-3:])
    perms = (
        measure.valid_permutations(np.asarray(valid), permutations, seed) if permutations else None
    )
    raw, null = measure.stack_scores(resolved, flat(a), flat(b), valid, perms)
    out = {}
    for m in resolved:
        out[m.name] = raw[m.name].reshape(batch + raw[m.name].shape[1:])
        if null is None:
            continue
        fields = nulls.calibrate(
            raw[m.name], null[m.name], similarity=m.similarity, best=m.best, alpha=alpha
        )
        for field, v in fields.items():
            out[f"{m.name}/{field}"] = v.reshape(batch + v.shape[1:])
    return out


def _layer_mask(mask):
    """A mask [..., N] shared by all layers, as a mask of stacks [..., L, N, D]."""
    return None if mask is None else jnp.asarray(mask)[..., None, :]


def layer_similarity(
    stack_a,
    stack_b=None,
    mask=None,
    *,
    measures=MEASURES,
    k=None,
    selection=None,
    cka_route=None,
    options=None,
    null_permutations=0,
    null_seed=0,
    null_alpha=0.05,
    clamp=None,
    **measure_options,
):
    """Similarity of every layer of stack_a with every layer of stack_b, optionally
    with a permutation null.

    Args:
      stack_a: float [..., La, N, Da], La representations of the same N points.
      stack_b: float [..., Lb, N, Db], or None (or stack_a itself): stack_a
        against itself, each layer's statistics computed once.
      mask: bool [..., N] of valid points, shared by all layers (None: all).
      measures: registered measure names (`measure.names()`): "mutual_knn",
        "cknna" (k nearest neighbours on the normalised features), "cka",
        "cka_debiased" (linear CKA, biased and unbiased HSIC) and the others
        registered in `registry`.
      k, selection, cka_route (the CKA measures' ``route``) and measure_options:
        option values, each given to every chosen measure that declares an
        option of that name; None leaves each measure its own default (k = 10
        for the k-NN alignment measures).
      options: {measure name: {option: value}} for one measure only, over the
        keywords.
      null_permutations: P permutations of the rows of stack_b (0: no null;
        otherwise P >= 20), the same permutation for every layer and measure.
      null_seed: seed of the permutations.
      null_alpha: level of the calibration's critical score tau.
      clamp: None, or q in (0, 1]: every layer of both stacks first clamped to
        [-t, t], t the mean over its valid points of the q-quantile of |x_i|
        (`outlier_clamp.clamp_outliers`; platonic-rep's 0.95 clamp, there over all
        layers of a model at once, here per layer).

    Returns:
      dict measure -> float32 [..., La, Lb]; entry [a, b] compares layer a of
      stack_a with layer b of stack_b and equals the per-pair function of those
      two layers. NaN for a CKA of a constant layer; the k-NN measures are NaN
      where a valid point is the zero vector (only under jit: concrete inputs
      raise instead). With a null, also ``measure/field`` for each field of
      `nulls.FIELDS` (per pair [..., La, Lb], best_match_p_value [..., La],
      max_p_value and max_calibrated [...]).

    Every pair is computed inside one jitted call per cloud with no host loop over
    pairs: each measure's per-layer statistics (neighbour lists, centred features,
    dissimilarity vectors) are computed once per layer and shared by the measures
    that need the same ones; the null relabels the second stack's statistics for
    each permutation (`measure.SimilarityMeasure.permute`) and scores all pairs again.

    Cost: 31 x 31 pairs of a [31, 5000, 576] stack took 37-44 s (20-22 s of process
    CPU) on a shared 2-core VM at load average 10-12, growing as N^2
    (benchmarks/bench_similarity.py); most of it is the per-layer neighbour lists
    and CKA kernel blocks, not the pairs.

    Reference: Huh et al. 2024, arXiv 2405.07987 (mutual k-NN, CKNNA); Kornblith et
    al. 2019, arXiv 1905.00414 (CKA); Song et al. 2012, JMLR 13, eq. 5 (unbiased
    HSIC); Gröger, Wen, Brbić 2026, arXiv 2602.14486 (the null and its calibration).
    """
    nulls.check_permutations(null_permutations)
    given = dict(measure_options, k=k, selection=selection, route=cka_route)
    if clamp is not None:
        outlier_clamp.check_q(clamp, "clamp")
        stack_a = outlier_clamp.clamp_outliers(stack_a, _layer_mask(mask), q=clamp)
        if stack_b is not None and stack_b is not stack_a:
            stack_b = outlier_clamp.clamp_outliers(stack_b, _layer_mask(mask), q=clamp)
    return _run(
        stack_a,
        stack_b,
        mask,
        measures,
        given,
        options,
        ("stack_a", "stack_b"),
        3,
        (null_permutations, null_seed, null_alpha),
    )


def similarity_null(
    x, y, mask=None, *, measure, permutations=100, seed=0, null_alpha=0.05, **options
):
    """One measure of x [..., N, Dx] and y [..., N, Dy] with its permutation null.

    Args:
      x, y: float [..., N, Dx] and [..., N, Dy], the same points.
      mask: bool [..., N] valid points (None: all).
      measure: a registered measure name.
      permutations: P >= 20 seeded permutations of y's valid rows.
      seed: the permutations' seed.
      null_alpha: level of the critical score tau.
      options: the measure's options.

    Returns:
      dict of float [...]: raw (the score), null_mean, null_std, p_value, tau and
      calibrated (`nulls.calibrate`).

    Reference: Gröger, Wen, Brbić 2026, arXiv 2602.14486, Algorithm 1
    (calibrated-similarity ``calibrate``: p-value (1 + #{null >= s}) / (P + 1),
    calibrated clip((s - tau) / (s_max - tau), 0, 1)).
    """
    nulls.check_permutations(permutations, "permutations", none=False)
    out = _run(
        x, y, mask, (measure,), options, None, ("x", "y"), 2, (permutations, seed, null_alpha)
    )
    name = next(iter(out))
    fields = ("null_mean", "null_std", "p_value", "tau", "calibrated")
    return {"raw": out[name][..., 0, 0], **{f: out[f"{name}/{f}"][..., 0, 0] for f in fields}}


def mutual_knn(x, y, mask=None, *, k=SIMILARITY_K.default, selection="auto"):
    """Mutual k-NN alignment of two representations x [..., N, Dx], y [..., N, Dy].

    mean over valid points i of |N_k^x(i) ∩ N_k^y(i)| / k, neighbours by inner
    product of the L2-normalised features, self excluded, ties to the lower index.

    Args:
      x, y: float [..., N, Dx] and [..., N, Dy], the same points.
      mask: bool [..., N] valid points (None: all).
      k: neighbours per point (>= 1; at least k + 1 valid points).
      selection: neighbour-selection backend ("auto", "host", "xla").

    Returns:
      float32 [...] in [0, 1].

    Reference: Huh et al. 2024, The Platonic Representation Hypothesis, ICML,
    arXiv 2405.07987 (platonic-rep ``AlignmentMetrics.mutual_knn``). Deliberate
    difference: ties are broken by the lower index, where torch's argsort leaves
    them unspecified.
    """
    return measure.evaluate(knn_alignment.MUTUAL_KNN, x, y, mask, k=k, selection=selection)


def cknna(x, y, mask=None, *, k=SIMILARITY_K.default, selection="auto"):
    """CKNNA (centred kernel nearest-neighbour alignment) of x [..., N, Dx], y [..., N, Dy].

    On the L2-normalised features, K = X X^T, L = Y Y^T, M_x, M_y the 0/1 masks
    of each point's k nearest neighbours (diagonal excluded, as platonic-rep's
    topk with a -inf diagonal), M = M_x ∘ M_y:

      HSIC_u(K∘M, L∘M) / (sqrt(HSIC_u(K∘M_x, K∘M_x) HSIC_u(L∘M_y, L∘M_y)) + 1e-6)

    with HSIC_u the unbiased estimator (Song et al. 2012, JMLR 13, eq. 5) over
    the m valid points, computed from the neighbour lists without any N x N
    matrix (`knn_alignment`).

    Args:
      x, y: float [..., N, Dx] and [..., N, Dy], the same points.
      mask: bool [..., N] valid points (None: all).
      k: neighbours per point (>= 2; at least max(k + 1, 4) valid points).
      selection: neighbour-selection backend.

    Returns:
      float32 [...].

    Reference: Huh et al. 2024, ICML, arXiv 2405.07987, platonic-rep
    ``AlignmentMetrics.cknna`` with its defaults (unbiased=True). Deliberate
    differences: ties to the lower index (torch.topk's order is unspecified);
    the ``distance_agnostic`` branch is not offered (there it returns the mask
    itself, and ``.item()`` of an N x N tensor fails), nor ``unbiased=False``.
    """
    return measure.evaluate(knn_alignment.CKNNA, x, y, mask, k=k, selection=selection)


def cka(
    x, y, mask=None, *, kernel="linear", debiased=False, route="auto", sigma=rbf_cka.SIGMA.default
):
    """CKA of x [..., N, Dx] and y [..., N, Dy], with linear or RBF kernels.

    HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) over the m valid points; HSIC biased
    (tr(K H L H) / (m - 1)^2) or, when debiased, the unbiased estimator of Song et
    al. 2012 (JMLR 13, eq. 5; needs m >= 4). kernel "linear": K = x x^T on the raw
    features (the measures ``cka``, ``cka_debiased``); "rbf": K_ij = exp(-|u_i -
    u_j|^2 / (2 sigma^2)) on the L2-normalised rows u, as platonic-rep (the measure
    ``cka_rbf``, `rbf_cka.cka_rbf`).

    Args:
      x, y: float [..., N, Dx] and [..., N, Dy], the same points (linear: raw
        features; CKA is invariant to translation, to isotropic scaling and to
        orthogonal maps of either; platonic-rep normalises rows first, which the
        linear kernel here does not).
      mask: bool [..., N] valid points (None: all).
      kernel: "linear" or "rbf".
      debiased: the unbiased HSIC instead of the biased one.
      route: linear kernel only: "auto", "features" (||x_c^T y_c||_F^2, no N x N
        matrix) or "kernels" (the N x N kernels in blocks); "auto" picks the one with
        fewer FLOPs, the kernels when N (Dx + Dy) < 2 (Dx Dy + Dx^2 + Dy^2) roughly.
      sigma: rbf kernel only: its bandwidth on unit rows (> 0).

    Returns:
      float32 [...]; NaN when x or y is constant over the valid points.

    Reference: Kornblith et al. 2019, Similarity of Neural Network Representations
    Revisited, ICML, arXiv 1905.00414, eq. 2-3 (biased); Song et al. 2012, eq. 5;
    platonic-rep ``AlignmentMetrics.cka`` (Huh et al. 2024, arXiv 2405.07987) for the
    RBF kernel. Unlike platonic-rep's ``cka`` no 1e-6 is added to the denominator (it
    would make CKA depend on the scale of the features).
    """
    if kernel == "rbf":
        return rbf_cka.cka_rbf(x, y, mask, sigma=sigma, debiased=debiased)
    if kernel != "linear":
        raise ArgumentError("{kernel} must be 'linear' or 'rbf', got {v!r}", "kernel", v=kernel)
    chosen = cka_hsic.CKA_DEBIASED if debiased else cka_hsic.CKA
    return measure.evaluate(chosen, x, y, mask, route=route)
