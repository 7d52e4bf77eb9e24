"""Every requested observable of a hidden-state stack in one jitted call."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from geom_jax.metrics import (
    blocked_context,
    blocked_knn,
    catalog,
    conditioning,
    host_callback,
    registry,
    stack_kernels,
    unique,
    validation,
)


@jax.tree_util.register_pytree_node_class
class LayerGeometry(dict):
    """Per-layer geometry of token clouds: field name -> array, leading axes [...] the prompts.

    A dict (pytree) with attribute access (``geo.gride_ids``). Which fields
    it holds follows the requested observables (see ``registry.describe()``);
    the paper's set gives:

    gride_ids, gride_errs, gride_scales: [..., L, S] GRIDE at n1 = 2**s.
    twonn: [..., L] TwoNN, linear fit on the kept fraction (twonn_discard_fraction).
    twonn_ml: [..., L] TwoNN maximum likelihood (N - 1) / sum log mu.
    n_unique: [..., L] number of distinct valid tokens (the ID estimators' N).
    cos_mean, cos_std: [..., L] cosine-similarity statistics, diagonal included.
    overlap: [..., L-1, max_k], overlap[..., l, k-1] = chi_k(layer l, layer l+1).
    """

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                f"no field {name!r} here (fields: {sorted(self)}); was its observable requested?"
            ) from None

    def tree_flatten(self):
        keys = tuple(self)
        return tuple(self[k] for k in keys), keys

    @classmethod
    def tree_unflatten(cls, keys, values):
        return cls(zip(keys, values))


CHUNK_GRAM_BYTES = 8 * 2**20
"""Default Gram-matrix size per layer chunk: small enough for the allocator to
reuse buffers between chunks (larger ones are fresh mmaps, page-faulted on
every call) and to bound memory, large enough to amortise per-chunk overhead."""


def auto_layer_chunk(n_layers, n_prompts, n_tokens):
    """Layers per chunk so that one chunk's Gram matrices take about CHUNK_GRAM_BYTES."""
    per_layer = n_prompts * n_tokens * n_tokens * 4
    widest = max(1, min(n_layers, CHUNK_GRAM_BYTES // per_layer))
    n_chunks = -(-n_layers // widest)
    return -(-n_layers // n_chunks)


SCALE = "__scale__"
"""Key of each chunk's (exponent, finite) [c, b] among its outputs: every cloud's
power-of-two scale and finiteness are measured where the chunk is read anyway."""


@functools.partial(
    jax.jit,
    static_argnames=(
        "names",
        "static_options",
        "layer_chunk",
        "neighbour_path",
        "block_rows",
        "rows",
    ),
)
def _layer_geometry(
    hidden,
    mask,
    inputs,
    *,
    names,
    static_options,
    layer_chunk,
    neighbour_path="dense",
    block_rows=None,
    rows=blocked_knn.LOCAL,
):
    options = dict(static_options)
    prompt_shape = hidden.shape[:-3]
    n_layers, n, d = hidden.shape[-3:]
    b = int(np.prod(prompt_shape, dtype=np.int64))
    h = hidden.reshape((b, n_layers, n, d))
    valid = jnp.ones((b, n), bool) if mask is None else mask.reshape((b, n))
    per_prompt = {
        k: v.reshape((b,) + v.shape[len(prompt_shape) :])
        for k, v in inputs.items()
        if registry.INPUTS.get(k, (False,))[0]
    }
    shared = {k: v for k, v in inputs.items() if not registry.INPUTS.get(k, (False,))[0]}
    observables = [registry.get(name) for name in names]
    layered = [o for o in observables if o.scope in ("layer", "pair")]
    knn_k, ranks = registry.needs(observables, options, n)

    chunk = auto_layer_chunk(n_layers, b, n) if layer_chunk is None else min(layer_chunk, n_layers)
    blocked = blocked_context.use_blocked(neighbour_path, chunk * b, n)
    context, kernels = registry.LayerContext, stack_kernels.DENSE
    if blocked:
        context = functools.partial(
            blocked_context.BlockedContext, block_rows=block_rows, rows=rows
        )
        kernels = blocked_context.BlockedKernels(block_rows, rows)
    stack = registry.StackContext(
        h,
        valid,
        options,
        per_prompt | shared,
        chunk,
        scale=lambda: conditioning.scale_of(h, valid[:, None, :]),
        kernels=kernels,
    )
    isolated = registry.Isolated(stack)
    prepared = {o.name: o.prepare(isolated) for o in layered if o.prepare is not None}
    carried = [o for o in layered if o.previous is not None]

    def chunk_fn(start, layers, _, carry_in=None):
        """layers [b, c, N, D] (raw) -> per-layer outputs with leading axes [c, b],
        their exponents and finiteness under SCALE (and, for observables with
        `previous`, the carry: their last layer's arrays)."""
        c = layers.shape[1]
        vb = jnp.broadcast_to(valid, (c, b, n)).reshape((c * b, n))
        clouds = jnp.swapaxes(layers, 0, 1).reshape((c * b, n, d))
        e, ok = conditioning.scale_of(clouds, vb)
        clouds = conditioning.apply_scale(clouds, vb, e, ok)

        def per_cloud(v):
            return jnp.broadcast_to(v, (c,) + v.shape).reshape((c * b,) + v.shape[1:])

        chunk_inputs = dict(shared)
        chunk_inputs.update({k: per_cloud(v) for k, v in per_prompt.items()})
        layer = jnp.repeat(start + jnp.arange(c, dtype=jnp.int32), b)
        ctx = context(
            clouds, vb, options, knn_k=knn_k, ranks=ranks, inputs=chunk_inputs, layer=layer
        )
        outs, carry_out = {}, {}
        for o in layered:
            if o.name in registry.PAPER:
                outs[o.name] = o.compute(ctx)
                continue
            own = {}
            if o.name in prepared:
                own["prepared"] = jax.tree.map(per_cloud, prepared[o.name])
            if o.previous is not None:
                mine = jax.tree.map(
                    lambda a: a.reshape((c, b) + a.shape[1:]),
                    o.previous(registry.Isolated(ctx, **own)),
                )
                before = jax.tree.map(lambda a: jnp.zeros_like(a[0]), mine)
                if carry_in is not None:
                    before = carry_in[o.name]
                own["previous"] = jax.tree.map(
                    lambda p, m: jnp.concatenate([p[None], m[:-1]]).reshape((c * b,) + m.shape[2:]),
                    before,
                    mine,
                )
                carry_out[o.name] = jax.tree.map(lambda a: a[-1], mine)
            outs[o.name] = o.compute(registry.Isolated(ctx, **own))
        outs[SCALE] = (e, ok)
        outs = jax.tree.map(lambda a: a.reshape((c, b) + a.shape[1:]), outs)
        return (outs, carry_out) if carried else outs

    per_layer = {}
    if layered:
        per_layer = registry.map_chunks(chunk_fn, h, [], chunk, carry=bool(carried))
        exponent, finite = (jnp.swapaxes(a, 0, 1) for a in per_layer[SCALE])
    else:
        exponent, finite = stack.exponent_and_finite

    result = {}
    for o in observables:
        if o.scope == "layer":
            fields = per_layer[o.name]
        elif o.scope == "pair":
            fields = o.combine(per_layer[o.name], stack if o.name in registry.PAPER else isolated)
        else:
            fields = o.combine(None, isolated)
        for f in o.fields:
            a = fields[f.name]
            if f.layers:
                a = jnp.swapaxes(a, 0, 1)
            if f.length:
                a = conditioning.restore_lengths(a, exponent)
            ok = _clouds_finite(o.scope, f.layers, finite)
            if ok is not None:
                ok = ok.reshape(ok.shape + (1,) * (a.ndim - ok.ndim))
                a = jnp.where(ok, a, jnp.nan if jnp.issubdtype(a.dtype, jnp.floating) else 0)
            result[f.name] = a.reshape(prompt_shape + a.shape[1:])
    result["finite"] = finite.reshape(prompt_shape + (n_layers,))
    return LayerGeometry(result)


def _clouds_finite(scope, layers, finite):
    """Whether the clouds a field [b, L', ...] is measured on are all finite:
    its own layer (layer scope, whatever the results' layer axis: cosine's
    "L+1" gains the embedding in the pipeline), layers l and l + 1 ("L-1"
    pairs) or layer l and the last (pair fields over "L"); None for
    prompt-scope fields, which do not read the clouds."""
    if scope == "layer":
        return finite
    if scope == "pair" and layers == "L-1":
        return finite[:, :-1] & finite[:, 1:]
    if scope == "pair" and layers == "L":
        return finite & finite[:, -1:]
    return None


def options_of(
    *,
    range_max=None,
    max_k=32,
    id_k=20,
    entropy_alpha=2.0,
    twonn_discard_fraction=0.1,
    include_diagonal=True,
    selection="auto",
    duplicate_tolerance=unique.DUPLICATE_TOLERANCE,
    options=None,
):
    """The options dict every observable reads (checked, hashable values)."""
    if not 0 <= duplicate_tolerance < 1:
        raise ValueError(f"duplicate_tolerance must be in [0, 1), got {duplicate_tolerance!r}")
    out = {
        "range_max": range_max,
        "max_k": max_k,
        "id_k": id_k,
        "entropy_alpha": entropy_alpha,
        "twonn_discard_fraction": float(twonn_discard_fraction),
        "include_diagonal": bool(include_diagonal),
        "selection": selection,
        "duplicate_tolerance": float(duplicate_tolerance),
    }
    for k, v in (options or {}).items():
        if k in out:
            raise ValueError(f"options[{k!r}]: pass {k} as a keyword argument of layer_geometry")
        out[k] = v
    return out


def check_observables(names, options, n, hidden=None, mask=None):
    """Static checks of each observable's options, then (concrete arrays) the
    valid and distinct point counts per prompt and layer."""
    for name in names:
        check = registry.get(name).check
        if check is not None:
            check(options, n)
    needs = [registry.get(name).min_points for name in names]
    needs = [f(options) for f in needs if f is not None]
    if not needs or hidden is None or not validation.is_concrete(hidden, mask):
        return
    prompt_shape = tuple(hidden.shape[:-3])
    valid = np.ones(prompt_shape + (n,), bool) if mask is None else np.asarray(mask, bool)
    counts = valid.sum(-1)
    for need_valid, _, arg in needs:
        if need_valid and counts.size and counts.min() < need_valid:
            flat = int(np.argmin(counts))
            where = (
                tuple(int(p) for p in np.unravel_index(flat, prompt_shape)) if prompt_shape else ()
            )
            raise ValueError(
                f"mask: {arg} needs >= {need_valid} valid points, but prompt {where} has "
                f"{int(counts.reshape(-1)[flat])}"
            )
    need_unique = max((n_u, arg) for _, n_u, arg in needs)
    if need_unique[0]:
        keep = np.asarray(unique.unique_mask(np.asarray(hidden), valid[..., None, :]))
        distinct = keep.sum(-1)  # [..., L]
        if distinct.min() < need_unique[0]:
            pos = np.unravel_index(int(np.argmin(distinct)), distinct.shape)
            raise ValueError(
                f"{need_unique[1]} needs >= {need_unique[0]} distinct valid points, but prompt "
                f"{tuple(int(p) for p in pos[:-1])}, layer {int(pos[-1])} has {int(distinct[pos])}"
            )


def layer_geometry(
    hidden,
    mask=None,
    *,
    observables="paper",
    range_max=None,
    max_k=32,
    id_k=20,
    entropy_alpha=2.0,
    layer_chunk=None,
    twonn_discard_fraction=0.1,
    include_diagonal=True,
    selection="auto",
    inputs=None,
    options=None,
    validate=True,
    duplicate_tolerance=unique.DUPLICATE_TOLERANCE,
    neighbour_path="auto",
    block_rows=None,
    mesh=None,
):
    """The requested observables of every layer of a hidden-state stack.

    hidden: [..., L, N, D] hidden states (e.g. [B, L+1, T, D] from a model);
    mask: bool [..., N] valid tokens per prompt, shared by all layers (None:
    all valid). observables: "paper" (GRIDE + TwoNN, cosine statistics,
    neighbourhood overlap), "all", a comma list or a sequence of names
    (``registry.known()``). The shared intermediates (one centred Gram
    matrix per layer, exact neighbour lists) are computed once per layer
    chunk and only when a requested observable consumes them. ID estimators
    use the distinct valid tokens (first occurrence kept), the graph
    observables and cosine all valid tokens.

    Options: range_max (GRIDE; None is min(256, N - 1), the largest range N
    tokens support), max_k (overlap, reciprocity), id_k (MLE /
    TLE neighbours), entropy_alpha (matrix entropy; default 2, from the
    shared Gram matrix; 1 needs an eigendecomposition per layer, several
    times the rest's cost on CPU), twonn_discard_fraction,
    include_diagonal (cosine), selection ("auto": NumPy host selection on
    CPU, lax.top_k elsewhere; "host"; "xla"), options (a dict for
    observables registered outside the library). inputs: arrays the
    observables consume besides the points (``registry.INPUTS``; per-prompt
    ones with the leading axes of ``mask``). layer_chunk bounds memory by
    processing that many layers at a time (lax.map); None picks about 8 MiB
    of Gram matrix per chunk. With validate (default) and concrete inputs,
    value checks run first; under an outer jit / shard_map only the static
    checks run.

    Each cloud is rescaled by an exact power of two before any square is
    taken (metrics/conditioning.py), so the results do not depend on its
    scale (1e20 or 1e-30 times a cloud gives the same IDs) and ordinary
    clouds give bit for bit the same numbers as without it. A cloud with a
    NaN or inf at a valid token gets NaN for every output that reads it
    (``finite`` False), also under jit. duplicate_tolerance: valid tokens
    closer than this times the cloud's RMS norm to an earlier one count as
    duplicates for the ID estimators (unique.near_duplicates; 0 keeps exact
    duplicates only); GRIDE scales needing more distinct tokens than remain
    are NaN.

    neighbour_path: "dense" holds each cloud's N x N centred Gram matrix;
    "blocked" (metrics/blocked_context.py) computes the same exact neighbour
    lists, distances and IDs from blocks of block_rows Gram rows (None: about
    64 MiB of them), O(N (block + k + #ranks)) memory per cloud; "auto" picks
    "blocked" for clouds of more than 4,096 points
    (blocked_context.CLOUD_GRAM_BUDGET) or when one layer chunk's Gram
    matrices would exceed blocked_context.DENSE_GRAM_BUDGET (1 GiB).
    Observables that read the Gram matrix itself run dense only.
    mesh: a jax Mesh: the row blocks are split over its "data" axis inside
    shard_map (each device holds the points and its own blocks; the per-row
    results are all-gathered), the row-blocked path is used whatever N, and the
    results equal one device's; for a dataset-level cloud on several devices
    (or hosts started with jax.distributed, the points replicated).

    Returns a LayerGeometry (dict pytree with attribute access) of float32
    arrays [..., L, ...] (pair fields [..., L-1, ...]), see each observable's
    fields, plus ``finite`` bool [..., L].
    """
    names = registry.resolve(observables)
    host_callback.check_method(selection)
    blocked_context.check_neighbour_path(neighbour_path)
    blocked_knn.check_block_rows(block_rows)
    rows = blocked_knn.LOCAL
    if mesh is not None:
        if neighbour_path == "dense":
            raise ValueError("neighbour_path='dense' cannot split rows over a mesh; use 'blocked'")
        if blocked_knn.DATA_AXIS not in mesh.shape:
            raise ValueError(f"mesh must have a {blocked_knn.DATA_AXIS!r} axis, got {mesh.shape}")
        rows, neighbour_path = blocked_knn.ShardedRows(mesh, blocked_knn.DATA_AXIS), "blocked"
    validation.check_discard_fraction(twonn_discard_fraction, "twonn_discard_fraction")
    if layer_chunk is not None and (not isinstance(layer_chunk, int) or layer_chunk < 1):
        raise ValueError(f"layer_chunk must be a positive integer or None, got {layer_chunk!r}")
    validation.check_points(hidden, "hidden", 3, "[..., L, N, D]")
    n = hidden.shape[-2]
    range_max = validation.resolve_range_max(n, range_max)
    opts = options_of(
        range_max=range_max,
        max_k=max_k,
        id_k=id_k,
        entropy_alpha=entropy_alpha,
        twonn_discard_fraction=twonn_discard_fraction,
        include_diagonal=include_diagonal,
        selection=selection,
        duplicate_tolerance=duplicate_tolerance,
        options=options,
    )
    inputs = dict(inputs or {})
    for name in names:
        for c in registry.get(name).consumes:
            if c in registry.INPUTS and c not in inputs:
                raise ValueError(
                    f"observable {name!r} consumes {c!r}: pass inputs={{{c!r}: ...}} "
                    f"({registry.INPUTS[c][1]})"
                )
    sizes = dict(
        range_max=range_max,
        max_k=max_k if "overlap" in names else None,
        gride="gride" in names,
    )
    if validate:
        validation.validate_hidden(hidden, mask, allow_non_finite=True, **sizes)
    else:
        validation.check_sizes(n, **sizes)
    check_observables(names, opts, n, hidden if validate else None, mask)
    hidden = validation.as_points(hidden, "hidden", min_rank=3)
    if mask is not None:
        mask = jnp.asarray(mask, bool)
    inputs = jax.tree.map(jnp.asarray, inputs)
    return _layer_geometry(
        hidden,
        mask,
        inputs,
        names=names,
        static_options=tuple(sorted(opts.items())),
        layer_chunk=layer_chunk,
        neighbour_path=neighbour_path,
        block_rows=block_rows,
        rows=rows,
    )


catalog.register_all()
