"""Advanced Density Peaks clustering (ADP) and scores of a clustering against known classes.

ADP (d'Errico, Facco, Laio & Rodriguez 2021, Information Sciences 560, 476,
arXiv 1802.10549, "Automatic topography of high-dimensional data sets by non-parametric
density peak clustering") as DADApy 0.3.4's ``Data.compute_clustering_ADP(Z, halo)``
computes it (its Cython path, ``_cython/cython_clustering.pyx``), from a log density,
its error and an adaptive neighbourhood size k* per point:

1. With ``m = min(log_den - Z err)``, ``log_den_c = log_den - m + 1`` and
   ``g = log_den_c - err``. A putative centre is a point whose g is not below the g of
   any of its k* nearest neighbours; a putative centre that lies within the k*
   neighbourhood of a point of higher g is dropped. The centres left are the clusters,
   numbered in increasing order of their point index.
2. The other points, in order of decreasing g, join the cluster of their nearest
   neighbour already assigned (the whole neighbour list is searched).
3. A point p1 of cluster c (not a centre) is a border point towards the cluster c' of
   the first of its k* neighbours p2 outside c, if no other point of c comes before p1
   in p2's neighbour list (p1 need not be in it). The saddle between c and c' is the
   border point of either side with the highest g; its log_den_c and error are the
   border's density and error.
4. Merging: while some pair (i, j) with a saddle fails
   ``log_den_c[centre] - bord > Z (err[centre] + bord_err)`` for either centre, the pair
   with the highest saddle (the first in row-major order among equals) merges; the
   centre with the smaller ``(log_den_c[centre] - bord) / (err[centre] + bord_err)``
   is dropped and its saddles pass to the survivor where higher.
5. Halo (``halo=True``): a point whose log_den_c is below the highest saddle of its
   cluster gets the label ``HALO`` (-1).

Conventions (DADApy's, kept so that labels equal DADApy's exactly, not only up to a
relabelling):

* Clusters are numbered by increasing point index of their centre (DADApy's order;
  not by density). The centre of a merged cluster is that of the survivor of step 4,
  which need not be its densest point.
* ``log_den_bord`` is DADApy's matrix: ``bord + m - 1``. A pair without a saddle holds
  ``m - 1`` (error 0) and the diagonal ``m - 2`` (error 0), ``m`` as in step 1;
  ``border_points`` (DADApy's ``bord_indices``) is -1 there.
* Populations count the points of each cluster, halo points included (DADApy's
  ``cluster_indices``).
* Points tied in g are visited in order of increasing index (a stable sort; DADApy's
  ``np.argsort(-g)`` leaves that order to NumPy's sort).
* Step 2, when none of a point's neighbours is assigned yet (a dropped putative centre
  whose whole list lies below it), follows DADApy's lookup table of dropped centres,
  whose pointer column is shifted by one row (a dropped centre reads the pointer of the
  dropped centre before it; the first reads index -1, the last point). Where that lookup
  lands on a point not yet assigned, DADApy's result is undefined (``np.empty``); here
  the point then joins the cluster of the densest point whose k* neighbourhood holds it
  (what the lookup table means to hold).
* A putative centre is dropped once, whichever number of points of higher g hold it
  in their k* neighbourhood: DADApy's ``max_rho < 0`` test for the first such point
  assumes g > 0 (true for Z >= 1; below 1 a large error can make g negative, and DADApy
  would then count the centre again for each point).

The clustering itself is sequential and runs on the host (NumPy, float64):
:func:`adp_from_density` takes densities and neighbour lists;
:func:`adp_clusters_from_density` finds the neighbour lists of clouds with geom_jax's
exact k-NN (:func:`geom_jax.metrics.knn`) and clusters each cloud;
:func:`cluster_clouds` clusters a layer chunk's clouds from the engine's lists (the
``adp`` observable, :mod:`geom_jax.metrics.measures.adp`).

:func:`adjusted_rand_index` and :func:`adjusted_mutual_information` score labels against
known classes with scikit-learn's definitions, leaving out halo / invalid points.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from geom_jax.errors import ArgumentError
from geom_jax.metrics import validation
from geom_jax.metrics.measures import density
from geom_jax.metrics.neighbours.search import knn

HALO = -1
"""Label of a halo point (``halo=True``)."""
INVALID = -2
"""Label of a point outside the mask."""
DEFAULT_MAXK = 100
"""Neighbours per point in :func:`adp_clusters_from_density` (DADApy's default maxk,
``min(100, N - 1)``)."""


class Clusters(NamedTuple):
    """One cloud's ADP clustering; point indices are those of the cloud (mask included).

    Attributes:
      labels: int32 [N], the cluster of each point, 0 .. C-1 in increasing order of the
        centre's index; ``HALO`` (-1) for halo points, ``INVALID`` (-2) outside the mask.
      centres: int32 [C], the point index of each cluster's centre (DADApy's
        ``cluster_centers``).
      populations: int32 [C], points per cluster, halo points included.
      log_den_bord: float64 [C, C], the log density of the saddle between two clusters
        (DADApy's ``log_den_bord``: ``m - 1`` where there is none, ``m - 2`` on the
        diagonal, m the minimum of ``log_den - Z err``).
      log_den_bord_err: float64 [C, C], its error (0 where there is no saddle).
      border_points: int32 [C, C], the saddle point of each pair (DADApy's
        ``bord_indices``), -1 where there is none.
    """

    labels: np.ndarray
    centres: np.ndarray
    populations: np.ndarray
    log_den_bord: np.ndarray
    log_den_bord_err: np.ndarray
    border_points: np.ndarray

    @property
    def n_clusters(self) -> int:
        return len(self.centres)


# -- checks -----------------------------------------------------------------------------


def check_z(z, name="Z"):
    """z as a float, refused (naming ``name``) unless a finite number > 0."""
    if not validation.is_number(z) or not math.isfinite(float(z)) or float(z) <= 0.0:
        raise ArgumentError(
            "{" + name + "} must be a finite number > 0, got {value!r}", name, value=z
        )
    return float(z)


def _host_array(value, name, shape, kind):
    """value as a NumPy array of the given shape; kind "float" (read as float64) or
    "int" (an integer dtype, read as int64)."""
    try:
        arr = np.asarray(validation.as_array(value, name))
    except (TypeError, ValueError) as e:
        raise ArgumentError("{" + name + "} cannot be read as an array: {e}", name, e=e) from None
    if arr.shape != tuple(shape):
        raise ArgumentError(
            "{" + name + "} must have shape {want}, got {got}",
            name,
            want=tuple(shape),
            got=arr.shape,
        )
    if kind == "int":
        if not np.issubdtype(arr.dtype, np.integer):
            raise ArgumentError(
                "{" + name + "} must be an integer array, got dtype {dtype}", name, dtype=arr.dtype
            )
        return arr.astype(np.int64)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ArgumentError(
            "{" + name + "} must be a real array, got dtype {dtype}", name, dtype=arr.dtype
        )
    return arr.astype(np.float64)


def _check_values(log_den, log_den_err, kstar, k, valid=None):
    """Finite densities, non-negative errors, 1 <= k* <= k (at the valid points)."""
    sel = (lambda a: a) if valid is None else (lambda a: a[valid])
    if not np.all(np.isfinite(sel(log_den))):
        raise ArgumentError("{log_density} has non-finite values", "log_density")
    err = sel(log_den_err)
    if not np.all(np.isfinite(err)) or np.any(err < 0):
        raise ArgumentError(
            "{log_density_err} must be finite and >= 0 (a standard error)", "log_density_err"
        )
    ks = sel(kstar)
    if ks.size and (ks.min() < 1 or ks.max() > k):
        raise ArgumentError(
            "{kstar} must lie in [1, {k}] (the neighbours per point), got values in [{lo}, {hi}]",
            "kstar",
            k=k,
            lo=int(ks.min()),
            hi=int(ks.max()),
        )


# -- the clustering (one cloud, NumPy) --------------------------------------------------


def _putative_centres(g, kstar, nb):
    """Putative centres (bool [N]) and, for each putative centre that a point of higher g
    holds in its k* neighbourhood, that centre, the first point of highest g holding it
    and the number of such points (DADApy's ``to_remove`` loop)."""
    n, m = nb.shape
    within = np.arange(m)[None, :] < kstar[:, None]
    gn = g[nb]
    putative = ~np.any(within & (g[:, None] < gn), axis=1)
    rows, cols = np.nonzero(within & putative[nb] & (g[:, None] > gn))
    target = nb[rows, cols]
    order = np.lexsort((rows, -g[rows], target))
    target, rows = target[order], rows[order]
    dropped, first, hits = np.unique(target, return_index=True, return_counts=True)
    return putative, dropped, rows[first], hits


def _removal_table(n_putative, dropped, pointer, hits):
    """DADApy's ``to_remove`` table [n_putative, 2] as its loop leaves it: row r holds
    the r-th dropped centre and the pointer of the (r-1)-th (-1 for r = 0); row R repeats
    the last dropped centre when that one had two hits or more."""
    table = -np.ones((n_putative, 2), np.int64)
    r = len(dropped)
    table[:r, 0] = dropped
    table[1 : r + 1, 1] = pointer
    if r and hits[-1] >= 2:
        table[r, 0] = dropped[-1]
    return table


def _assign(g, nb, centres, table, dropped, pointer):
    """DADApy's preliminary assignment: int64 [N] cluster of each point, and the number
    of points that needed the table (and, of those, the ones whose lookup was undefined)."""
    n = len(g)
    cluster = -np.ones(n, np.int64)
    cluster[centres] = np.arange(len(centres))
    own_pointer = dict(zip(dropped.tolist(), pointer.tolist()))
    looked_up = undefined = 0
    for ele in np.argsort(-g, kind="stable"):
        if cluster[ele] != -1:
            continue
        near = cluster[nb[ele]]
        hit = np.flatnonzero(near != -1)
        if hit.size:
            cluster[ele] = near[hit[0]]
            continue
        looked_up += 1
        neighbours = np.concatenate(([ele], nb[ele]))  # DADApy's row: the point first
        _, _, ind = np.intersect1d(neighbours, table[:, 0], return_indices=True)
        higher = table[ind, 1]
        label = cluster[higher[np.argmax(g[higher])]] if higher.size else -1
        if label == -1:
            undefined += 1
            label = cluster[own_pointer[int(ele)]]
        cluster[ele] = label
    return cluster, looked_up, undefined


def _borders(g, log_den_c, log_den_err, kstar, nb, cluster, is_centre, n_clusters):
    """Saddle density, error (log_den_c units) and point of each pair of clusters."""
    n, m = nb.shape
    within = np.arange(m)[None, :] < kstar[:, None]
    outside = within & (cluster[nb] != cluster[:, None])
    cand = np.flatnonzero(~is_centre & outside.any(axis=1))
    p2 = nb[cand, np.argmax(outside[cand], axis=1)]
    c1 = cluster[cand]
    row = nb[p2]
    stop = cluster[row] == c1[:, None]  # p1 itself is in c1
    first = np.argmax(stop, axis=1)
    ok = ~stop.any(axis=1) | (row[np.arange(len(cand)), first] == cand)
    cand, p2, c1 = cand[ok], p2[ok], c1[ok]
    order = np.lexsort((cand, c1))  # DADApy's loop: by cluster, then by point
    rho = np.zeros((n_clusters, n_clusters))
    err = np.zeros((n_clusters, n_clusters))
    point = -np.ones((n_clusters, n_clusters), np.int64)
    for p1, c, cp in zip(cand[order], c1[order], cluster[p2[order]]):
        if g[p1] > rho[c, cp]:
            rho[c, cp] = rho[cp, c] = g[p1]
            point[c, cp] = point[cp, c] = p1
    has = point != -1
    rho[has] = log_den_c[point[has]]
    err[has] = log_den_err[point[has]]
    np.fill_diagonal(rho, -1.0)
    np.fill_diagonal(err, 0.0)
    return rho, err, point


def _merge(z, log_den_c, log_den_err, centres, rho, err, point):
    """DADApy's multimodality test, in place on rho, err, point; returns the surviving
    clusters (bool [C]) and the survivor each cluster was merged into (int [C])."""
    nc = len(centres)
    rc, ec = log_den_c[centres], log_den_err[centres]
    alive = np.ones(nc, bool)
    into = np.arange(nc)
    # Only pairs with a saddle can fail the test (log_den_c[centre] >= 1 + Z err[centre]
    # exceeds the threshold where bord is 0 or -1), so the loop keeps their list, in
    # row-major order, instead of scanning every pair.
    iu, ju = np.nonzero(np.triu(rho > 0, 1))
    while iu.size:
        b, be = rho[iu, ju], err[iu, ju]
        fail = (rc[iu] - b < z * (ec[iu] + be)) | (rc[ju] - b < z * (ec[ju] + be))
        if not fail.any():
            break
        at = np.flatnonzero(fail)
        at = at[np.argmax(b[at])]
        imod, jmod = int(iu[at]), int(ju[at])
        with np.errstate(divide="ignore", invalid="ignore"):
            h1 = (rc[imod] - rho[imod, jmod]) / (ec[imod] + err[imod, jmod])
            h2 = (rc[jmod] - rho[imod, jmod]) / (ec[jmod] + err[imod, jmod])
        if h1 < h2:
            imod, jmod = jmod, imod
        alive[jmod] = False
        into[into == jmod] = imod
        rho[imod, jmod] = rho[jmod, imod] = -1.0
        err[imod, jmod] = err[jmod, imod] = 0.0
        others = np.ones(nc, bool)
        others[[imod, jmod]] = False
        up = others & (rho[imod] < rho[jmod])
        point[imod, up] = point[jmod, up]
        point[up, imod] = point[imod, up]
        rho[imod, up] = rho[jmod, up]
        rho[up, imod] = rho[imod, up]
        err[imod, up] = err[jmod, up]
        err[up, imod] = err[imod, up]
        rho[jmod, others] = rho[others, jmod] = -1.0
        err[jmod, others] = err[others, jmod] = 0.0
        keep = (iu != imod) & (ju != imod) & (iu != jmod) & (ju != jmod)
        partners = np.flatnonzero(rho[imod] > 0)
        lo, hi = np.minimum(partners, imod), np.maximum(partners, imod)
        iu, ju = np.concatenate((iu[keep], lo)), np.concatenate((ju[keep], hi))
        order = np.lexsort((ju, iu))
        iu, ju = iu[order], ju[order]
    return alive, into


def _adp(log_den, log_den_err, kstar, nb, z, halo):
    """The clustering of one cloud from validated arrays: (Clusters, diagnostics; its
    ``halo`` is the bool [N] of the points below their cluster's highest saddle, the
    halo points whether or not ``halo`` labels them)."""
    log_den_min = np.min(log_den - z * log_den_err)
    log_den_c = log_den - log_den_min + 1
    g = log_den_c - log_den_err
    putative, dropped, pointer, hits = _putative_centres(g, kstar, nb)
    candidates = np.flatnonzero(putative)
    centres = np.setdiff1d(candidates, dropped)
    table = _removal_table(len(candidates), dropped, pointer, hits)
    cluster, looked_up, undefined = _assign(g, nb, centres, table, dropped, pointer)
    is_centre = np.zeros(len(g), bool)
    is_centre[centres] = True
    rho, err, point = _borders(
        g, log_den_c, log_den_err, kstar, nb, cluster, is_centre, len(centres)
    )
    alive, into = _merge(z, log_den_c, log_den_err, centres, rho, err, point)
    number = np.cumsum(alive) - 1
    labels = number[into[cluster]]
    surv = np.flatnonzero(alive)
    pick = np.ix_(surv, surv)
    rho_m, err_m, point_m = rho[pick], err[pick], point[pick]
    populations = np.bincount(labels, minlength=len(surv))
    below = log_den_c < rho_m.max(axis=1)[labels]
    if halo:
        labels = np.where(below, HALO, labels)
    out = Clusters(
        labels=labels.astype(np.int32),
        centres=centres[surv].astype(np.int32),
        populations=populations.astype(np.int32),
        log_den_bord=rho_m + log_den_min - 1,
        log_den_bord_err=err_m,
        border_points=point_m.astype(np.int32),
    )
    info = {
        "putative": len(candidates),
        "dropped": len(dropped),
        "looked_up": looked_up,
        "undefined": undefined,
        "halo": below,
    }
    return out, info


def adp_from_density(log_density, log_density_err, kstar, neighbours, *, Z=1.65, halo=False):
    """ADP clustering of one cloud from its densities and neighbour lists (host, NumPy).

    DADApy 0.3.4's ``compute_clustering_ADP(Z, halo)`` (see the module docstring for the
    algorithm and the conventions kept); with DADApy's own ``log_den``, ``log_den_err``,
    ``kstar`` and ``dist_indices[:, 1:]`` it returns DADApy's labels, centres,
    populations and saddle matrices.

    Args:
      log_density: float [N], the log density of each point (e.g. PAk's).
      log_density_err: float [N], its standard error (>= 0).
      kstar: int [N], each point's neighbourhood size k*, 1 <= k* <= M.
      neighbours: int [N, M], each point's neighbours by increasing distance, the point
        itself excluded (ties in any fixed order; DADApy's ``dist_indices[:, 1:]``). Every
        column is used: the assignment searches the whole list, and so does the border
        test (DADApy's maxk).
      Z: merging significance (> 0): a pair of peaks stays apart when both stand more
        than Z standard errors above their saddle.
      halo: label the points below their cluster's highest saddle ``HALO`` (-1).

    Returns:
      :class:`Clusters`.

    Reference: d'Errico, Facco, Laio & Rodriguez 2021 (Information Sciences 560, 476,
    arXiv 1802.10549); DADApy 0.3.4 ``Data.compute_clustering_ADP``.
    """
    z = check_z(Z)
    halo = validation.check_flag(halo, "halo")
    nb = np.asarray(validation.as_array(neighbours, "neighbours"))
    if nb.ndim != 2 or nb.shape[1] < 1 or not np.issubdtype(nb.dtype, np.integer):
        raise ArgumentError(
            "{neighbours} must be an integer array [N, M] with M >= 1, got shape {shape}, "
            "dtype {dtype}",
            "neighbours",
            shape=nb.shape,
            dtype=nb.dtype,
        )
    n, m = nb.shape
    nb = nb.astype(np.int64)
    if np.any((nb < 0) | (nb >= n)) or np.any(nb == np.arange(n)[:, None]):
        raise ArgumentError(
            "{neighbours} must hold point indices in [0, {n}), the point itself excluded",
            "neighbours",
            n=n,
        )
    log_den = _host_array(log_density, "log_density", (n,), "float")
    log_den_err = _host_array(log_density_err, "log_density_err", (n,), "float")
    ks = _host_array(kstar, "kstar", (n,), "int")
    _check_values(log_den, log_den_err, ks, m)
    return _adp(log_den, log_den_err, ks, nb, z, halo)[0]


def _in_cloud(result, valid, n):
    """A Clusters of the valid points mapped back to the cloud's indices."""
    labels = np.full(n, INVALID, np.int32)
    labels[valid] = result.labels
    bord = result.border_points
    return result._replace(
        labels=labels,
        centres=valid[result.centres].astype(np.int32),
        border_points=np.where(bord >= 0, valid[np.maximum(bord, 0)], -1).astype(np.int32),
    )


def _clusters_of_valid(log_den, log_den_err, kstar, idx, rows, z, halo):
    """One cloud's clustering from its arrays [N] (float64, float64, int64) and neighbour
    lists idx [N, k] (cloud indices, valid points only), rows the indices of its valid
    points: (Clusters in the cloud's indices, _adp's diagnostics over the valid points)."""
    n = len(log_den)
    position = -np.ones(n, np.int64)
    position[rows] = np.arange(len(rows))
    nb = position[idx[rows]]
    result, info = _adp(log_den[rows], log_den_err[rows], kstar[rows], nb, z, halo)
    return _in_cloud(result, rows, n), info


MAX_POPULATIONS = 16
"""Populations :func:`cluster_clouds` keeps per cloud: the largest, in decreasing order."""


def cluster_clouds(log_den, log_den_err, kstar, idx, valid, *, z, halo):
    """ADP of each cloud of a layer chunk from the engine's arrays (host, NumPy; what the
    ``adp`` observable calls from inside the jitted engine: adp.on_host).

    Args:
      log_den, log_den_err: float [C, N], each point's log density and its error.
      kstar: int [C, N], each point's neighbourhood size.
      idx: int [C, N, K], each point's nearest valid points (cloud indices, increasing
        distance, -1 beyond the valid ones): cloud c uses its first min(K, N_valid - 1).
      valid: bool [C, N].
      z, halo: :func:`adp_from_density`'s Z and halo.

    Returns:
      (labels int32 [C, N] as :attr:`Clusters.labels`, core bool [C, N]: valid points
      at or above their cluster's highest saddle (the points ``halo=True`` keeps),
      populations int32 [C, MAX_POPULATIONS]: the largest populations in decreasing
      order, 0 beyond the clusters, clusters int32 [C]). A cloud with fewer than 2
      valid points or a non-finite density or error at one of them (PAk at a point with
      a twin, a non-finite layer) is not clustered: labels ``INVALID``, no core point,
      no cluster.
    """
    log_den = np.asarray(log_den, np.float64)
    log_den_err = np.asarray(log_den_err, np.float64)
    kstar, idx, valid = np.asarray(kstar, np.int64), np.asarray(idx, np.int64), np.asarray(valid)
    c_count, n = log_den.shape
    labels = np.full((c_count, n), INVALID, np.int32)
    core = np.zeros((c_count, n), bool)
    populations = np.zeros((c_count, MAX_POPULATIONS), np.int32)
    clusters = np.zeros(c_count, np.int32)
    for c in range(c_count):
        rows = np.flatnonzero(valid[c])
        k = min(idx.shape[-1], len(rows) - 1)
        finite = np.all(np.isfinite(log_den[c, rows])) and np.all(np.isfinite(log_den_err[c, rows]))
        if k < 1 or not finite:
            continue
        args = (log_den[c], log_den_err[c], kstar[c], idx[c, :, :k], rows)
        result, info = _clusters_of_valid(*args, z, halo)
        labels[c] = result.labels
        core[c, rows] = ~info["halo"]
        top = np.sort(result.populations)[::-1][:MAX_POPULATIONS]
        populations[c, : len(top)] = top
        clusters[c] = result.n_clusters
    return labels, core, populations, clusters


def adp_clusters_from_density(
    x, log_density, log_density_err, kstar, mask=None, *, Z=1.65, halo=False, maxk=DEFAULT_MAXK
):
    """ADP clustering of each cloud x [..., N, D], its neighbour lists found in JAX.

    The neighbour lists are geom_jax's exact k-NN (:func:`geom_jax.metrics.knn`: float32
    distances by direct differences, ties to the lower index) with
    k = min(maxk, N_valid - 1) neighbours, N_valid the smallest valid count over the
    clouds (DADApy's default maxk is min(100, N - 1)); each cloud's valid points are then
    clustered on the host by :func:`adp_from_density`.

    Args:
      x: [..., N, D] float points.
      log_density: float [..., N], each point's log density (ignored outside the mask).
      log_density_err: float [..., N], its standard error.
      kstar: int [..., N], each point's neighbourhood size, 1 <= k* <= k.
      mask: optional bool [..., N] of valid points; the others are never neighbours and
        are labelled ``INVALID`` (-2).
      Z: merging significance (> 0).
      halo: label halo points ``HALO`` (-1).
      maxk: neighbours per point at most (>= 1).

    Returns:
      :class:`Clusters` for a single cloud x [N, D]; for x [..., N, D] with leading axes,
      nested lists of them in the leading axes' shape. Indices (centres, border points)
      are those of the cloud, invalid rows included.
    """
    z = check_z(Z)
    halo = validation.check_flag(halo, "halo")
    maxk = validation.check_int(maxk, "maxk", 1)
    x = validation.as_points(x, "x")
    batch, n = tuple(x.shape[:-2]), x.shape[-2]
    mask = validation.as_mask(mask, batch, n)
    validation.validate_points(x, mask, min_valid=2)
    valid = np.ones(batch + (n,), bool) if mask is None else np.asarray(mask, bool)
    log_den = _host_array(log_density, "log_density", batch + (n,), "float")
    log_den_err = _host_array(log_density_err, "log_density_err", batch + (n,), "float")
    ks = _host_array(kstar, "kstar", batch + (n,), "int")
    k = min(maxk, int(valid.reshape(-1, n).sum(axis=1).min()) - 1)
    _check_values(log_den, log_den_err, ks, k, valid)
    _, idx = knn(x, mask, k=k)
    idx = np.asarray(idx).reshape(-1, n, k)
    flat = valid.reshape(-1, n)
    results = []
    for c in range(flat.shape[0]):
        args = (a.reshape(-1, n)[c] for a in (log_den, log_den_err, ks))
        result, _ = _clusters_of_valid(*args, idx[c], np.flatnonzero(flat[c]), z, halo)
        results.append(result)
    if not batch:
        return results[0]
    out = np.empty(len(results), object)
    out[:] = results
    return out.reshape(batch).tolist()


# -- scores against known classes --------------------------------------------------------


def _label_pair(labels, truth):
    """Codes of the kept points (both labels >= 0): truth codes, label codes, and the
    contingency table's non-zero entries (row, column, count) in row-major order."""
    arrays = []
    for value, name in ((labels, "labels"), (truth, "truth")):
        arr = np.asarray(validation.as_array(value, name))
        if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            raise ArgumentError(
                "{" + name + "} must be a 1-d integer array, got shape {shape}, dtype {dtype}",
                name,
                shape=arr.shape,
                dtype=arr.dtype,
            )
        arrays.append(arr.astype(np.int64))
    labels, truth = arrays
    if labels.shape != truth.shape:
        raise ArgumentError(
            "{labels} and {truth} must have the same length, got {a} and {b}",
            ("labels", "truth"),
            a=len(labels),
            b=len(truth),
        )
    keep = (labels >= 0) & (truth >= 0)
    if not keep.any():
        raise ArgumentError(
            "{labels}: no point has a label >= 0 in both {truth} and it", ("labels", "truth")
        )
    classes, a = np.unique(truth[keep], return_inverse=True)
    clusters, b = np.unique(labels[keep], return_inverse=True)
    if len(classes) < 2:
        raise ArgumentError(
            "{truth} must hold at least two classes among the points kept, got {count}",
            "truth",
            count=len(classes),
        )
    codes, counts = np.unique(a * len(clusters) + b, return_counts=True)
    rows, cols = codes // len(clusters), codes % len(clusters)
    return a, b, rows, cols, counts


def adjusted_rand_index(labels, truth):
    """Adjusted Rand index of a clustering against known classes.

    scikit-learn's ``adjusted_rand_score(truth, labels)`` on the points whose label is
    >= 0 in both (halo points, -1, and invalid ones, -2, are left out): the Rand index of
    the pairs of points, adjusted for chance; 1 for the same partition, ~0 for
    independent ones (negative possible), 1.0 where both put every point in its own
    class or in one class.

    Args:
      labels: int [n], a clustering (e.g. :attr:`Clusters.labels`).
      truth: int [n], the known classes; at least two among the points kept.

    Returns:
      float.

    Reference: Hubert & Arabie 1985 (J. Classification 2, 193); scikit-learn
    ``sklearn.metrics.adjusted_rand_score``.
    """
    a, b, rows, cols, counts = _label_pair(labels, truth)
    n = len(a)
    n_c = np.bincount(a).astype(np.int64)
    n_k = np.bincount(b).astype(np.int64)
    squares = int(np.sum(counts * counts))
    tp = squares - n
    fp = int(np.sum(counts * n_k[cols])) - squares
    fn = int(np.sum(counts * n_c[rows])) - squares
    tn = n * n - fp - fn - squares
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def _entropy(codes):
    pi = np.bincount(codes).astype(np.float64)
    pi = pi[pi > 0]
    if pi.size == 1:
        return 0.0
    total = np.sum(pi)
    return float(-np.sum((pi / total) * (np.log(pi) - math.log(total))))


def _expected_mutual_information(a_sizes, b_sizes, n):
    """scikit-learn's ``expected_mutual_information`` (Vinh, Epps & Bailey 2010) for
    class sizes a [R] and cluster sizes b [K] of n points."""
    lgam = np.array([math.inf] + [math.lgamma(v) for v in range(1, n + 2)])  # log (v - 1)!
    nijs = np.arange(0, max(a_sizes.max(), b_sizes.max()) + 1, dtype=np.float64)
    nijs[0] = 1.0
    term1 = nijs / n
    log_nnij = math.log(n) + np.log(nijs)
    emi = 0.0
    for ai in a_sizes:
        start = np.maximum(1, ai - n + b_sizes)
        end = np.minimum(ai, b_sizes) + 1
        length = np.maximum(end - start, 0)
        if not length.sum():
            continue
        bj = np.repeat(b_sizes, length)
        nij = np.repeat(start - np.cumsum(length) + length, length) + np.arange(length.sum())
        term2 = log_nnij[nij] - math.log(ai) - np.log(bj)
        gln = (
            lgam[ai + 1]
            + lgam[bj + 1]
            + lgam[n - ai + 1]
            + lgam[n - bj + 1]
            - (lgam[nij + 1] + lgam[n + 1])
            - lgam[ai - nij + 1]
            - lgam[bj - nij + 1]
            - lgam[n - ai - bj + nij + 1]
        )
        emi += float(np.sum(term1[nij] * term2 * np.exp(gln)))
    return emi


def adjusted_mutual_information(labels, truth):
    """Adjusted mutual information of a clustering against known classes.

    scikit-learn's ``adjusted_mutual_info_score(truth, labels,
    average_method="arithmetic")`` on the points whose label is >= 0 in both (halo and
    invalid points left out): (MI - E[MI]) / ((H(truth) + H(labels)) / 2 - E[MI]), E[MI]
    under random permutations with the same class sizes; 0.0 where ``labels`` has a
    single class.

    Args:
      labels: int [n], a clustering (e.g. :attr:`Clusters.labels`).
      truth: int [n], the known classes; at least two among the points kept.

    Returns:
      float.

    Reference: Vinh, Epps & Bailey 2010 (JMLR 11, 2837); scikit-learn
    ``sklearn.metrics.adjusted_mutual_info_score``.
    """
    a, b, rows, cols, counts = _label_pair(labels, truth)
    n = len(a)
    a_sizes, b_sizes = np.bincount(a), np.bincount(b)
    if len(b_sizes) == 1:
        return 0.0
    # mutual_info_score on the contingency table's non-zero entries
    pi, pj = a_sizes, b_sizes
    log_counts = np.log(counts)
    frac = counts / n
    outer = pi[rows].astype(np.int64) * pj[cols].astype(np.int64)
    log_outer = -np.log(outer) + math.log(pi.sum()) + math.log(pj.sum())
    mi = frac * (log_counts - math.log(n)) + frac * log_outer
    mi = np.where(np.abs(mi) < np.finfo(mi.dtype).eps, 0.0, mi)
    mi = float(np.clip(mi.sum(), 0.0, None))
    emi = _expected_mutual_information(a_sizes, b_sizes, n)
    normalizer = (_entropy(a) + _entropy(b)) / 2
    eps = np.finfo(np.float64).eps
    denominator = normalizer - emi
    denominator = min(denominator, -eps) if denominator < 0 else max(denominator, eps)
    numerator = mi - emi
    numerator = min(numerator, -eps) if numerator < 0 else max(numerator, eps)
    return float(numerator / denominator)


def adp_clusters(x, mask=None, *, Z=1.65, halo=False, intrinsic_dim=None, maxk=DEFAULT_MAXK):
    """ADP clustering of each cloud x [..., N, D] with its own PAk density: what DADApy
    0.3.4's ``compute_clustering_ADP(Z, halo)`` does when no density was computed before
    (``compute_density_PAk()`` with the TwoNN dimension, d'Errico et al. 2021, arXiv
    1802.10549).

    Args:
      x: [..., N, D] float points.
      mask: optional bool [..., N] of valid points (the others are labelled ``INVALID``).
      Z: merging significance (> 0).
      halo: label halo points ``HALO`` (-1).
      intrinsic_dim: the dimension of the densities (None: each cloud's TwoNN estimate).
      maxk: neighbours per point at most, for k* and the lists (DADApy's 100).

    Returns:
      :class:`Clusters` per cloud, as :func:`adp_clusters_from_density`. A cloud with
      exact duplicates has no PAk density at the twins (NaN) and is refused.
    """
    check_z(Z)
    validation.check_flag(halo, "halo")
    validation.check_int(maxk, "maxk", 1)
    log_den, err = density.pak_density(x, mask, intrinsic_dim=intrinsic_dim, max_k=maxk)
    kstar = density.pak_kstar(x, mask, intrinsic_dim=intrinsic_dim, max_k=maxk)
    return adp_clusters_from_density(x, log_den, err, kstar, mask, Z=Z, halo=halo, maxk=maxk)
