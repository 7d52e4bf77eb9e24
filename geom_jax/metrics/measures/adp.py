"""The density-peak observables: ``adp`` (Advanced Density Peaks clusters of every layer)
and ``adp_agreement`` (the clusters scored against the rows' labels).

The densities, k* and neighbour lists are the ``density`` observable's (JAX, either
neighbour path, shared through ``ctx.cached``: asking for ``density``, ``adp`` and
``adp_agreement`` together computes them once); the clustering is
:func:`geom_jax.metrics.measures.density_peaks.cluster_clouds`, sequential NumPy on the
host, called from inside the jitted engine once per layer chunk (all its clouds in one
call: :func:`on_host`), and shared between the two observables the same way.

* ``adp_density="pak"`` (DADApy's default): PAk log density, its error and k*, as
  ``compute_clustering_ADP`` computes them when no density was set; ``"knn"``: the k-NN
  log density (k = density_k), error 1 / sqrt(k) and k* = k everywhere, as after
  DADApy's ``compute_density_kNN(k)`` (Doimo et al. 2024, k = 16).
* The neighbour lists of the clustering are the first max(density_k, pak_max_k) exact
  neighbours (DADApy's maxk = min(100, N - 1) at the defaults), duplicates included,
  ties to the lower index; a masked cloud uses min(that, N_valid - 1).
* Labels equal DADApy's (clusters numbered by increasing index of their centre, -1 for
  halo points with ``adp_halo``, -2 at padding). A cloud with a non-finite density at a
  valid point (PAk at a point with an exact twin, where DADApy fails too; a non-finite
  layer) is not clustered: labels -2, 0 clusters, NaN fractions and scores.
* ``adp_agreement``: scikit-learn's ``adjusted_rand_score`` and
  ``adjusted_mutual_info_score`` (arithmetic normalisation) of the labels against the
  rows' labels (input ``labels``, -1 unlabelled), over the valid points labelled in
  both: unlabelled rows are left out, and so are halo points when ``adp_halo`` marks
  them (as DADApy's reference scores are computed; without ``adp_halo`` every point
  keeps its cluster). NaN where fewer than two classes remain.

Reference: d'Errico, Facco, Laio & Rodriguez 2021 (Information Sciences 560, 476;
arXiv 1802.10549); DADApy 0.3.4 ``Data.compute_clustering_ADP(Z, halo)``; Doimo et al.
2024 (arXiv 2409.03662: ADP of the last-token cloud per layer, ARI against the subjects).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from geom_jax.errors import ArgumentError
from geom_jax.metrics.declare.observable import (
    PER_PROMPT,
    POOLED,
    Dim,
    Field,
    HostInputs,
    Observable,
    Option,
    ReportSection,
    register_dim,
)
from geom_jax.metrics.measures import density, density_peaks
from geom_jax.metrics.measures.sections import density as sections
from geom_jax.metrics.neighbours import host_selection

register_dim(
    "adp_cluster",
    Dim(
        str(density_peaks.MAX_POPULATIONS),
        f"the {density_peaks.MAX_POPULATIONS} most populous ADP clusters, largest first",
        lambda n: np.arange(1, n + 1),
    ),
)

ADP_Z = Option(
    "adp_z",
    float,
    1.65,
    "ADP merging significance Z: two peaks stay apart when both stand more than Z errors "
    "above their saddle (DADApy's 1.65; Doimo et al. 2024 use 1.6).",
    check=lambda v: density_peaks.check_z(v, "adp_z"),
)

ADP_HALO = Option(
    "adp_halo",
    bool,
    False,
    "Label ADP halo points (below their cluster's highest saddle) -1.",
)

ADP_DENSITY = Option(
    "adp_density",
    str,
    "pak",
    "Density ADP clusters: pak (DADApy's default) or knn (k = density_k, Doimo et al. 2024).",
    choices=("pak", "knn"),
)

OPTIONS = density.OPTIONS + (ADP_Z, ADP_HALO, ADP_DENSITY)


def on_host(fn, shapes, *args):
    """fn(*NumPy arrays) -> tuple of arrays of ``shapes``, run on the host from inside
    the jitted engine: on CPU through host_selection.host_call (the buffers themselves:
    jax.pure_callback first device_puts its operands on CPU device 0, which on a mesh of
    CPU devices waits behind that device's own running program and deadlocks),
    elsewhere jax.pure_callback (executed once, on one device)."""
    return lax.platform_dependent(
        *args,
        cpu=lambda *a: host_selection.host_call(fn, shapes, *a),
        default=lambda *a: jax.pure_callback(fn, shapes, *a, vmap_method="sequential"),
    )


def _clusters(ctx):
    o = ctx.options
    d = density.densities(ctx)
    if o["adp_density"] == "pak":
        log_den, err, kstar = d["pak"]
    else:
        log_den, err = d["knn"]
        kstar = jnp.where(ctx.valid, o["density_k"], -1).astype(jnp.int32)
    c, n = ctx.valid.shape
    shapes = (
        jax.ShapeDtypeStruct((c, n), jnp.int32),
        jax.ShapeDtypeStruct((c, n), jnp.bool_),
        jax.ShapeDtypeStruct((c, density_peaks.MAX_POPULATIONS), jnp.int32),
        jax.ShapeDtypeStruct((c,), jnp.int32),
    )
    host = functools.partial(
        density_peaks.cluster_clouds, z=float(o["adp_z"]), halo=bool(o["adp_halo"])
    )
    return on_host(host, shapes, log_den, err, kstar, d["idx"], ctx.valid)


def clusters(ctx):
    """(labels [C, N], core [C, N], populations [C, P], clusters [C]) of the chunk
    (:func:`density_peaks.cluster_clouds`), computed once per layer chunk."""
    return ctx.cached("adp.clusters", _clusters)


def _adp_fields(ctx):
    labels, core, populations, count = clusters(ctx)
    n_valid = jnp.sum(ctx.valid, axis=-1).astype(jnp.float32)
    done = count > 0
    core_fraction = jnp.sum(core & ctx.valid, axis=-1) / n_valid
    largest = populations[:, 0] / n_valid
    return {
        "adp_labels": labels,
        "adp_clusters": count,
        "adp_core_fraction": jnp.where(done, core_fraction, jnp.nan),
        "adp_largest_fraction": jnp.where(done, largest, jnp.nan),
        "adp_populations": populations,
    }


def agreement_scores(labels, truth, valid):
    """(ARI, AMI) float32 [C] of each cloud's labels [C, N] against truth [C, N] over its
    valid points labelled in both (labels >= 0, truth >= 0); NaN where fewer than two
    classes of truth remain (host, NumPy: density_peaks' scikit-learn definitions)."""
    labels, truth, valid = np.asarray(labels), np.asarray(truth), np.asarray(valid)
    out = np.full((2, labels.shape[0]), np.nan, np.float32)
    for c in range(labels.shape[0]):
        keep = valid[c] & (labels[c] >= 0) & (truth[c] >= 0)
        if len(np.unique(truth[c, keep])) < 2:
            continue
        pair = (labels[c, keep], truth[c, keep])
        out[0, c] = density_peaks.adjusted_rand_index(*pair)
        out[1, c] = density_peaks.adjusted_mutual_information(*pair)
    return out[0], out[1]


def _agreement_fields(ctx):
    labels = clusters(ctx)[0]
    truth = jnp.asarray(ctx.input("labels"), jnp.int32)
    c = labels.shape[0]
    shapes = (jax.ShapeDtypeStruct((c,), jnp.float32),) * 2
    ari, ami = on_host(agreement_scores, shapes, labels, truth, ctx.valid)
    return {"adp_ari": ari, "adp_ami": ami}


CLUSTERS_SECTION = ReportSection(
    "Density-peak clusters across layers",
    figure=sections.plot_clusters,
    text=sections.clusters_text,
    file="adp_clusters.png",
    kinds=(PER_PROMPT, POOLED),
)


def _check_labels(inputs, valid, options):
    """Refuses, before compute, a cloud whose labelled valid points hold one class (an
    agreement score against one class is undefined; a cloud with no labelled point gets
    NaN); derives nothing."""
    labels = np.asarray(inputs["labels"])
    for b in range(labels.shape[0]):
        classes = np.unique(labels[b][valid[b] & (labels[b] >= 0)])
        if len(classes) == 1:
            raise ArgumentError(
                "{labels} must have at least 2 classes among the labelled valid points of "
                "each cloud for adp_agreement, cloud ({b},) has {count}",
                "labels",
                b=b,
                count=len(classes),
            )
    return {}


_COMMON = dict(
    doc=__doc__,
    reference=(
        "d'Errico et al. 2021 (Information Sciences 560, 476; arXiv 1802.10549); DADApy "
        "0.3.4 compute_clustering_ADP; Doimo et al. 2024 (arXiv 2409.03662)"
    ),
    options=OPTIONS,
    knn_k=density.list_width,
    knn_unique_k=lambda o: 2,
    check=density.check_options,
    min_points=density.min_points,
    in_all=False,
    report=(CLUSTERS_SECTION,),
)

OBSERVABLE = Observable(
    name="adp",
    compute=_adp_fields,
    fields=(
        Field(
            "adp_labels",
            ("token",),
            "ADP cluster of each point (0.. by increasing centre index, as DADApy), -1 halo "
            "(adp_halo), -2 padding or a cloud not clustered.",
            dtype="int32",
            tokens=True,
        ),
        Field("adp_clusters", (), "number of ADP clusters (0: not clustered).", dtype="int32"),
        Field(
            "adp_core_fraction",
            (),
            "fraction of the valid points at or above their cluster's highest saddle (the "
            "core points; halo points are the others, whether or not adp_halo labels them).",
        ),
        Field(
            "adp_largest_fraction",
            (),
            "population of the largest cluster over the valid points (halo included).",
        ),
        Field(
            "adp_populations",
            ("adp_cluster",),
            f"the {density_peaks.MAX_POPULATIONS} largest cluster populations (halo points "
            "included, as DADApy's), largest first, 0 beyond the clusters.",
            dtype="int32",
        ),
    ),
    consumes=("points", "unique", "knn", "knn_unique"),
    reduce="per point; counts and fractions over the valid points",
    **_COMMON,
)

AGREEMENT = Observable(
    name="adp_agreement",
    compute=_agreement_fields,
    fields=(
        Field(
            "adp_ari",
            (),
            "adjusted Rand index of the ADP clusters against the rows' labels (scikit-learn's).",
        ),
        Field(
            "adp_ami",
            (),
            "adjusted mutual information (arithmetic) of the ADP clusters against the labels.",
        ),
    ),
    consumes=("points", "unique", "knn", "knn_unique", "labels"),
    host_inputs=HostInputs(_check_labels, {}),
    reduce="over the valid points labelled in both (halo points left out with adp_halo)",
    **_COMMON,
)
