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

import functools

import jax
import jax.numpy as jnp
import numpy as np

from geom_jax.metrics import validation
from geom_jax.metrics.declare.observable import Option
from geom_jax.metrics.neighbours.host_selection import check_method
from geom_jax.metrics.similarity import cka_hsic, knn_alignment

MEASURES = ("mutual_knn", "cknna", "cka", "cka_debiased")
SIMILARITY_K = Option("k", int, 10, "Neighbours per point of mutual k-NN and CKNNA.")
"""The neighbourhood size of the list measures: the keyword of every public function
here, of run.compare and the --k flag of compare_representations.py."""
LIST_MEASURES = ("mutual_knn", "cknna")


def _check_measures(measures):
    if isinstance(measures, str):
        measures = (measures,)
    measures = tuple(measures)
    unknown = [m for m in measures if m not in MEASURES]
    if unknown or not measures:
        raise ValueError(f"measures must be a non-empty subset of {MEASURES}, got {measures!r}")
    return tuple(m for m in MEASURES if m in measures)


def _min_valid(measures, k):
    """Fewest valid points the measures are defined on, and why."""
    need = [(2, "cka needs")]
    if any(m in LIST_MEASURES for m in measures):
        need.append((k + 1, f"k={k} needs"))
    if "cknna" in measures or "cka_debiased" in measures:
        need.append((4, "the unbiased HSIC (cknna, cka_debiased) needs"))
    return max(need)


def _check_k(measures, k):
    if not any(m in LIST_MEASURES for m in measures):
        return
    low = 2 if "cknna" in measures else 1
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < low:
        what = "for cknna " if low == 2 else ""
        raise ValueError(f"k must be an integer >= {low} {what}(got {k!r})")


def _check_inputs(a, b, mask, measures, k, names, layout_rank):
    """Shapes, k, point counts (static and, for a concrete mask, per cloud),
    finite values and, for the neighbour measures, no zero vector at a valid point.
    Returns (a, b, mask) as float32 / bool arrays."""
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
    _check_k(measures, k)
    least, why = _min_valid(measures, k)
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
    lists = any(m in LIST_MEASURES for m in measures)
    for name, arr in zip(names, (a, b)):
        if arr is None or not validation.is_concrete(arr, mask):
            continue
        pts = np.asarray(arr)
        valid = np.ones(batch + (n,), bool) if mask is None else np.asarray(mask)
        valid = np.broadcast_to(
            valid.reshape(batch + (1,) * (layout_rank - 2) + (n,)), pts.shape[:-1]
        )
        validation.check_finite(pts, valid, name)
        if lists:
            zero = ~np.any(pts != 0, axis=-1) & valid
            if zero.any():
                at = tuple(int(i) for i in np.argwhere(zero)[0])
                raise ValueError(
                    f"{name} has a zero vector at valid point {at[-1]} (cloud {at[:-1]}): its "
                    "direction, which mutual_knn and cknna compare, is undefined; mask it out"
                )
    return a, b, mask


def _lists(x, valid, k, selection):
    """Per-layer list statistics of stacks x [B, L, N, D] -> each [B, L, ...]."""
    b, n_layers, n, d = x.shape
    vf = jnp.broadcast_to(valid[:, None, :], (b, n_layers, n)).reshape(b * n_layers, n)
    out = knn_alignment.layer_lists(x.reshape(b * n_layers, n, d), vf, k, selection)
    return jax.tree.map(lambda o: o.reshape((b, n_layers) + o.shape[1:]), out)


def _one_batch(xa, xb, valid, lists_a, lists_b, *, measures, k, route):
    """All measures [La, Lb] for one batch element (xb, lists_b None: xa itself)."""
    m = jnp.sum(valid).astype(jnp.float32)
    out = {}
    if lists_a is not None:
        ia, ka, ra, za = lists_a
        ib, kb, rb, zb = lists_a if lists_b is None else lists_b
        want = "cknna" in measures
        count, hsic = knn_alignment.all_pairs((ia, ka, ra), (ib, kb, rb), m, want)
        bad = za[:, None] | zb[None, :]
        if "mutual_knn" in measures:
            mk = knn_alignment.mutual_knn_from_counts(count, m, k)
            out["mutual_knn"] = jnp.where(bad, jnp.nan, mk)
        if want:
            ha = knn_alignment.self_hsic(ia, ka, ra, m)
            hb = ha if lists_b is None else knn_alignment.self_hsic(ib, kb, rb, m)
            out["cknna"] = jnp.where(bad, jnp.nan, knn_alignment.cknna_from_hsic(hsic, ha, hb))
    if "cka" in measures or "cka_debiased" in measures:
        ca = cka_hsic.centred(xa, valid)
        cb = None if xb is None else cka_hsic.centred(xb, valid)
        s, s_a, s_b = cka_hsic.squared_norms(ca, cb, route)
        if "cka" in measures:
            out["cka"] = cka_hsic.cka_biased(s, s_a, s_b)
        if "cka_debiased" in measures:
            ta = cka_hsic.layer_terms(ca)
            tb = ta if cb is None else cka_hsic.layer_terms(cb)
            out["cka_debiased"] = cka_hsic.cka_unbiased(s, s_a, s_b, ta, tb, m)
    return out


@functools.partial(jax.jit, static_argnames=("measures", "k", "selection", "route"))
def _similarity(xa, xb, valid, *, measures, k, selection, route):
    """xa [B, La, N, Da], xb [B, Lb, N, Db] or None (xa itself), valid [B, N]."""
    lists = any(m in LIST_MEASURES for m in measures)
    lists_a = _lists(xa, valid, k, selection) if lists else None
    lists_b = _lists(xb, valid, k, selection) if lists and xb is not None else None
    _, la, n, da = xa.shape
    lb, db = (la, da) if xb is None else xb.shape[1::2]
    chosen = cka_hsic.pick_route(route, n, la, da, lb, db, xb is None)
    fn = functools.partial(_one_batch, measures=measures, k=k, route=chosen)
    return jax.lax.map(lambda args: fn(*args), (xa, xb, valid, lists_a, lists_b))


def _run(a, b, mask, measures, k, selection, route, names, layout_rank):
    check_method(selection)
    cka_hsic.check_route(route)
    measures = _check_measures(measures)
    same = b is None or b is a
    a, b, mask = _check_inputs(a, None if same else b, mask, measures, k, names, layout_rank)
    if layout_rank == 2:
        a, b = a[..., None, :, :], None if b is None else b[..., None, :, :]
    batch, n = a.shape[:-3], a.shape[-2]
    valid = jnp.ones(batch + (n,), bool) if mask is None else mask
    flat = lambda s: None if s is None else s.reshape((-1,) + s.shape[-3:])
    out = _similarity(
        flat(a),
        flat(b),
        valid.reshape((-1, n)),
        measures=measures,
        k=int(k) if any(m in LIST_MEASURES for m in measures) else 0,
        selection=selection,
        route=route,
    )
    return {name: v.reshape(batch + v.shape[1:]) for name, v in out.items()}


def layer_similarity(
    stack_a,
    stack_b=None,
    mask=None,
    *,
    measures=MEASURES,
    k=SIMILARITY_K.default,
    selection="auto",
    cka_route="auto",
):
    """Similarity of every layer of stack_a with every layer of stack_b.

    Args:
      stack_a: float [..., La, N, Da], La representations of the same N points.
      stack_b: float [..., Lb, N, Db], or None (or stack_a itself): stack_a
        against itself, each layer's statistics computed once.
      mask: bool [..., N] of valid points, shared by all layers (None: all).
      measures: names from MEASURES: "mutual_knn", "cknna" (k nearest neighbours on
        the normalised features), "cka", "cka_debiased" (linear CKA, biased and
        unbiased HSIC).
      k: neighbours per point for mutual_knn and cknna (k >= 2 for cknna).
      selection: "auto", "host" or "xla", the neighbour-selection backend.
      cka_route: "auto", "features" or "kernels": how sum_ij K_a,ij K_b,ij =
        ||X_a^T X_b||_F^2 is computed (`cka_hsic`). "auto" takes whichever
        needs fewer FLOPs (`cka_hsic.cka_cost`): 2 N Da Db per pair for
        features, against N^2 D per layer (the upper-triangle blocks of its kernel)
        plus N^2 per pair for the kernels. At N = 5,000, D = 576 and 31 x 31 layers
        of one stack that is 3.2e12 against 0.47e12 FLOPs: kernels; for a single
        pair the kernels win only when N is below about the feature dimensions.

    Returns:
      dict measure -> float32 [..., La, Lb]; entry [a, b] compares layer a of
      stack_a with layer b of stack_b and equals the per-pair function
      (`mutual_knn`, `cknna`, `cka`) of those two layers. NaN for a CKA of a
      constant layer; mutual_knn and cknna are NaN where a valid point is the zero
      vector (only under jit: concrete inputs raise instead).

    Every pair is computed inside one jitted call with no host loop over pairs:
    the neighbour lists, kernel values at listed pairs, reciprocity and CKA
    statistics are per-layer arrays; the La x Lb outputs are functions of them
    (the list measures: a loop over batches of layer pairs; CKA: one pass over the
    kernel blocks or the features of all layers).

    Cost: 31 x 31 pairs of a [31, 5000, 576] stack took 37-44 s (20-22 s of process
    CPU) on a shared 2-core VM at load average 10-12, growing as N^2
    (benchmarks/bench_similarity.py); most of it is the per-layer neighbour lists
    and CKA kernel blocks, not the pairs.

    Reference: Huh et al. 2024, arXiv 2405.07987 (mutual k-NN, CKNNA); Kornblith et
    al. 2019, arXiv 1905.00414 (CKA); Song et al. 2012, JMLR 13, eq. 5 (unbiased HSIC).
    """
    return _run(
        stack_a, stack_b, mask, measures, k, selection, cka_route, ("stack_a", "stack_b"), 3
    )


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
    out = _run(x, y, mask, ("mutual_knn",), k, selection, "auto", ("x", "y"), 2)
    return out["mutual_knn"][..., 0, 0]


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
    out = _run(x, y, mask, ("cknna",), k, selection, "auto", ("x", "y"), 2)
    return out["cknna"][..., 0, 0]


def cka(x, y, mask=None, *, debiased=False, route="auto"):
    """Linear CKA of x [..., N, Dx] and y [..., N, Dy].

    HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = x x^T, L = y y^T over the m
    valid points; HSIC biased (tr(K H L H) / (m - 1)^2) or, when debiased, the
    unbiased estimator of Song et al. 2012 (JMLR 13, eq. 5; needs m >= 4).

    Args:
      x, y: float [..., N, Dx] and [..., N, Dy], the same points (raw features:
        CKA is invariant to translation, to isotropic scaling and to orthogonal
        maps of either; platonic-rep normalises rows first, which this does not).
      mask: bool [..., N] valid points (None: all).
      debiased: the unbiased HSIC instead of the biased one.
      route: "auto", "features" (||x_c^T y_c||_F^2, no N x N matrix) or "kernels"
        (the N x N kernels in blocks); "auto" picks the one with fewer FLOPs, the
        kernels when N (Dx + Dy) < 2 (Dx Dy + Dx^2 + Dy^2) roughly.

    Returns:
      float32 [...]; NaN when x or y is constant over the valid points.

    Reference: Kornblith et al. 2019, Similarity of Neural Network Representations
    Revisited, ICML, arXiv 1905.00414, eq. 2-3 (biased); Song et al. 2012, eq. 5.
    Unlike platonic-rep's ``cka`` no 1e-6 is added to the denominator (it would
    make CKA depend on the scale of the features).
    """
    measures = ("cka_debiased",) if debiased else ("cka",)
    out = _run(x, y, mask, measures, 0, "auto", route, ("x", "y"), 2)
    return out[measures[0]][..., 0, 0]
