"""Label overlap: how often a point's nearest neighbours share its label.

For each valid point i with label c_i and k_i nearest neighbours (Euclidean,
exact, self excluded, ties to the lower index, valid points only):
o_i = |{j in N_{k_i}(i): c_j = c_i}| / k_i, averaged over the valid points with
weights 1 / n_{c_i} (n_c the number of valid points of class c; the weights are
normalised by their sum, so this is the mean over classes of the class-mean
overlap) or uniformly. k_i = k, or with class_fraction f,
k_i = max(1, floor(n_{c_i} f)) (float64 product, as DADApy's ``int(count *
class_fraction)``).

Reference: DADApy 0.3.4 ``MetricComparisons.return_label_overlap`` (Glielmo et
al. 2022, Patterns 3(10) 100589, arXiv 2205.03373); class_fraction as in Doimo
et al. 2024 (The representation landscape of few-shot learning and fine-tuning
in large language models, NeurIPS, arXiv 2409.03662). Deliberate difference:
DADApy drops the first column of each neighbour list as "the point itself",
which with exact duplicates can be a copy instead; here the point itself is
excluded and its copies are neighbours like any other point.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from geom_jax.errors import ArgumentError
from geom_jax.metrics import validation
from geom_jax.metrics.declare.observable import (
    PER_PROMPT,
    POOLED,
    Dim,
    Field,
    Observable,
    Option,
    ReportSection,
    register_dim,
)
from geom_jax.metrics.declare.options import renamed_keywords
from geom_jax.metrics.measures.sections import label_overlap as sections
from geom_jax.metrics.neighbours import neighbour_lists
from geom_jax.metrics.neighbours.host_selection import check_method


def _class_sizes(labels, valid):
    """n_{c_i} [C, N]: valid points with the label of point i (0 where invalid),
    by sorting and binary search (no N x N comparison)."""
    keyed = jnp.where(valid, labels, jnp.iinfo(jnp.int32).max)
    ordered = jnp.sort(keyed, axis=-1)
    search = lambda side: jax.vmap(lambda s, q: jnp.searchsorted(s, q, side=side))
    count = search("right")(ordered, keyed) - search("left")(ordered, keyed)
    return jnp.where(valid, count, 0)


@functools.partial(jax.jit, static_argnames=("max_k", "weighted", "selection"))
def _label_overlap(x, labels, valid, k_per_point, *, max_k, weighted, selection):
    idx = neighbour_lists.neighbour_lists(x, valid, max_k, selection)
    neighbour_labels = jnp.take_along_axis(
        labels, jnp.maximum(idx, 0).reshape(idx.shape[0], -1), -1
    )
    neighbour_labels = neighbour_labels.reshape(idx.shape)
    within = jnp.arange(max_k, dtype=jnp.int32) < k_per_point[..., None]
    same = (neighbour_labels == labels[..., None]) & (idx >= 0) & within
    kp = jnp.maximum(k_per_point, 1).astype(jnp.float32)
    per_point = jnp.sum(same, axis=-1, dtype=jnp.int32).astype(jnp.float32) / kp
    if weighted:
        sizes = _class_sizes(labels, valid)
        w = jnp.where(valid, 1.0 / jnp.maximum(sizes, 1).astype(jnp.float32), 0.0)
    else:
        w = valid.astype(jnp.float32)
    return jnp.sum(w * per_point, axis=-1) / jnp.sum(w, axis=-1)


def _host_k(labels, valid, class_fraction):
    """k_i = max(1, int(n_{c_i} * class_fraction)) per point [C, N] (0 where invalid)."""
    out = np.zeros(labels.shape, np.int32)
    for c in range(labels.shape[0]):
        lab = labels[c][valid[c]]
        classes, counts = np.unique(lab, return_counts=True)
        per_class = np.array([max(1, int(int(n) * float(class_fraction))) for n in counts])
        out[c, valid[c]] = per_class[np.searchsorted(classes, lab)]
    return out


def _check_counts(valid, k_per_point, batch):
    """Each cloud needs more valid points than its largest k (concrete mask only)."""
    if not validation.is_concrete(valid, k_per_point):
        return
    n = valid.shape[-1]
    val = np.broadcast_to(np.asarray(valid), batch + (n,)).reshape(-1, n)
    kp = np.broadcast_to(np.asarray(k_per_point), batch + (n,)).reshape(-1, n)
    counts = val.sum(-1)
    need = np.where(val, kp, 0).max(-1) + 1
    bad = np.flatnonzero(counts < np.maximum(need, 2))
    if bad.size:
        c = int(bad[0])
        where = tuple(int(i) for i in np.unravel_index(c, batch)) if batch else ()
        raise ValueError(
            f"k={int(need[c]) - 1} needs >= {max(int(need[c]), 2)} valid points, but cloud "
            f"{where} has {int(counts[c])}"
        )


def _as_labels(labels, shape):
    if not hasattr(labels, "shape"):
        labels = np.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be an integer array [..., N], got dtype {labels.dtype}")
    try:
        np.broadcast_shapes(tuple(labels.shape), shape)
    except ValueError:
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not broadcast to the points' {shape}"
        ) from None
    if len(labels.shape) == 0 or labels.shape[-1] != shape[-1]:
        raise ValueError(f"labels must have shape [..., N] with N = {shape[-1]}")
    if validation.is_concrete(labels):
        lab = np.asarray(labels)
        info = np.iinfo(np.int32)
        if lab.size and (lab.min() < info.min or lab.max() >= info.max):
            raise ValueError(
                f"labels must lie in [{info.min}, {info.max}), got {lab.min()}..{lab.max()}"
            )
    return labels


def _check_label_k(v):
    if v < 1:
        raise ArgumentError("{label_k} must be an integer >= 1, got {v!r}", "label_k", v=v)


register_dim(
    "label_k", Dim("K'", "neighbourhood size k of the label overlap", lambda n: np.arange(1, n + 1))
)

LABEL_K = Option(
    "label_k",
    int,
    30,
    "Largest neighbourhood size k of the label overlap (DADApy's default k = 30).",
    check=_check_label_k,
)


@renamed_keywords(k="label_k")
def label_overlap(
    x,
    labels,
    mask=None,
    *,
    label_k=LABEL_K.default,
    class_fraction=None,
    weighted=True,
    selection="auto",
):
    """Fraction of each point's nearest neighbours that share its label, averaged.

    Args:
      x: float [..., N, D] point clouds; a stack [L, N, D] with labels [N] gives
        the label overlap of every layer, [L], in one call.
      labels: integer [..., N] (broadcast against x's leading axes), values in
        the int32 range.
      mask: bool [..., N] valid points (None: all): only they are points,
        neighbours and class members.
      label_k: neighbours per point (ignored with class_fraction); ``k=`` is its
        deprecated former name.
      class_fraction: None, or f in (0, 1]: point i uses
        k_i = max(1, floor(n_{c_i} f)) neighbours (Doimo et al. 2024). The k_i and
        their maximum (the static list length) are computed on the host, so labels
        and mask must be concrete (not traced) then.
      weighted: weights 1 / class size (DADApy's default) instead of uniform.
      selection: neighbour-selection backend ("auto", "host", "xla").

    Returns:
      float32 [...], in [0, 1].

    Reference: DADApy 0.3.4 ``MetricComparisons.return_label_overlap``.
    """
    check_method(selection)
    x = validation.as_points(x, "x")
    batch, n = x.shape[:-2], x.shape[-2]
    labels = _as_labels(labels, tuple(x.shape[:-1]))
    mask = validation.as_mask(mask, batch, n)
    valid = jnp.ones(batch + (n,), bool) if mask is None else mask
    if class_fraction is None:
        validation.check_max_k(n, label_k, name="label_k")
        max_k = int(label_k)
        k_per_point = jnp.full(batch + (n,), max_k, jnp.int32)
    else:
        if isinstance(class_fraction, bool) or not 0.0 < float(class_fraction) <= 1.0:
            raise ValueError(f"class_fraction must be in (0, 1], got {class_fraction!r}")
        if not validation.is_concrete(labels, mask):
            raise ValueError(
                "class_fraction needs concrete labels and mask (the largest k per point sets a "
                "static shape): call label_overlap outside jit, or pass label_k instead"
            )
        lab = np.broadcast_to(np.asarray(labels), batch + (n,)).reshape(-1, n)
        val = np.broadcast_to(np.asarray(valid), batch + (n,)).reshape(-1, n)
        kp = _host_k(lab, val, class_fraction)
        max_k = int(kp.max()) if kp.size else 1
        if max_k > n - 1:
            raise ValueError(
                f"class_fraction={class_fraction} gives k = {max_k} neighbours, but a point has "
                f"only {n - 1}"
            )
        k_per_point = jnp.asarray(kp.reshape(batch + (n,)))
    _check_counts(valid, k_per_point, batch)
    validation.validate_points(x, mask)
    flat = lambda a: jnp.broadcast_to(a, batch + (n,)).reshape(-1, n)
    out = _label_overlap(
        x.reshape((-1, n, x.shape[-1])),
        flat(jnp.asarray(labels, jnp.int32)),
        flat(valid),
        flat(k_per_point),
        max_k=max_k,
        weighted=bool(weighted),
        selection=selection,
    )
    return out.reshape(batch)


def label_overlap_from_lists(idx, labels, valid, weighted=True):
    """Label overlap for k = 1..K at once from sorted neighbour lists idx [C, N, K]
    (-1 beyond the valid neighbours), labels [C, N] int (negative: unlabelled, left
    out) -> [C, K]: the (class-size weighted) mean over points of the fraction of
    their k nearest neighbours sharing their label."""
    k = idx.shape[-1]
    valid = valid & (labels >= 0)
    neighbour = jnp.take_along_axis(labels, jnp.maximum(idx, 0).reshape(idx.shape[0], -1), -1)
    same = (neighbour.reshape(idx.shape) == labels[..., None]) & (idx >= 0)
    per_point = jnp.cumsum(same, axis=-1, dtype=jnp.int32).astype(jnp.float32)
    per_point = per_point / jnp.arange(1, k + 1, dtype=jnp.float32)
    if weighted:
        sizes = _class_sizes(labels, valid)
        w = jnp.where(valid, 1.0 / jnp.maximum(sizes, 1).astype(jnp.float32), 0.0)
    else:
        w = valid.astype(jnp.float32)
    total = jnp.sum(w[..., None] * per_point, axis=-2)
    return total / jnp.maximum(jnp.sum(w, axis=-1), 1e-30)[..., None]


def _compute(ctx):
    k = ctx.options["label_k"]
    lists = ctx.knn_idx[..., :k]
    return {"label_overlap": label_overlap_from_lists(lists, ctx.input("labels"), ctx.valid)}


OBSERVABLE = Observable(
    name="label_overlap",
    compute=_compute,
    fields=(
        Field(
            "label_overlap",
            ("label_k",),
            "fraction of a point's k nearest neighbours sharing its label (class-size "
            "weighted mean), k = index + 1.",
        ),
    ),
    consumes=("points", "knn", "labels"),
    doc=__doc__,
    reference="DADApy 0.3.4 return_label_overlap; Doimo et al. 2024, arXiv 2409.03662",
    reduce="mean over labelled points, weights 1 / class size",
    options=(LABEL_K,),
    knn_k=lambda o: o["label_k"],
    check=lambda o, n: validation.check_max_k(n, o["label_k"], name="label_k"),
    pooled=True,
    in_all=False,
    report=(
        ReportSection(
            "Label overlap across layers",
            figure=sections.plot,
            text=sections.text,
            file="label_overlap.png",
            kinds=(PER_PROMPT, POOLED),
        ),
    ),
)
