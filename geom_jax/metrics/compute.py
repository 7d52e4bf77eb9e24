"""Every requested observable of a hidden-state stack in one jitted call."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from geom_jax.metrics import chunking, validation
from geom_jax.metrics.backends import blocked_context, conditioning, dense_context, ring_context
from geom_jax.metrics.declare import registry
from geom_jax.metrics.declare.options import SELECTION
from geom_jax.metrics.neighbours import blocked_rows, duplicates, host_selection, ring_rows


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


def auto_layer_chunk(n_layers, n_prompts, n_tokens):
    """Layers per chunk so that one chunk's Gram matrices take about
    chunking.CHUNK_GRAM_BYTES."""
    per_layer = n_prompts * n_tokens * n_tokens * 4
    widest = max(1, min(n_layers, chunking.CHUNK_GRAM_BYTES // per_layer))
    n_chunks = -(-n_layers // widest)
    return -(-n_layers // n_chunks)


SCALE = "__scale__"
"""Key of each chunk's (exponent, finite) [c, b] among its outputs: every cloud's
power-of-two scale and finiteness are measured where the chunk is read anyway."""


@functools.partial(
    jax.jit, static_argnames=("observables", "static_options", "layer_chunk", "rows")
)
def _stack_geometry(hidden, mask, inputs, *, observables, static_options, layer_chunk, rows):
    """The observables of a layer-major stack hidden [L, B, N, D] -> fields [B, L', ...];
    rows: how the blocked path's row blocks are laid out (one device, a mesh, or each
    cloud's points split over a mesh: ring_rows.RingRows)."""
    options = dict(static_options)
    n_layers, b, n, d = hidden.shape
    valid = jnp.ones((b, n), bool) if mask is None else mask
    ring = isinstance(rows, ring_rows.RingRows)
    if ring:
        hidden, valid = rows.constrain(hidden, 2), rows.constrain(valid, 1)
    per_prompt = {k: v for k, v in inputs.items() if registry.INPUTS.get(k, (False,))[0]}
    shared = {k: v for k, v in inputs.items() if not registry.INPUTS.get(k, (False,))[0]}
    observables = observables.observables
    layered = [o for o in observables if o.scope in ("layer", "pair")]
    knn_k, ranks = dense_context.needs(observables, options, n)

    chunk = auto_layer_chunk(n_layers, b, n) if layer_chunk is None else min(layer_chunk, n_layers)
    path = "blocked" if rows != blocked_rows.LOCAL else options["neighbour_path"]
    context, kernels = dense_context.LayerContext, dense_context.DENSE
    if ring:
        block_rows = options["block_rows"]
        context = functools.partial(ring_context.RingContext, block_rows=block_rows, rows=rows)
        kernels = ring_context.RingKernels(rows, block_rows)
    elif blocked_context.use_blocked(path, chunk * b, n):
        block_rows = options["block_rows"]
        context = functools.partial(
            blocked_context.BlockedContext, block_rows=block_rows, rows=rows
        )
        kernels = blocked_context.BlockedKernels(block_rows, rows)
    stack = dense_context.StackContext(
        hidden,
        valid,
        options,
        per_prompt | shared,
        chunk,
        scale=lambda: conditioning.scale_of(hidden, valid[None]),
        kernels=kernels,
    )
    isolated = dense_context.Isolated(stack)
    prepared = {o.name: o.prepare(isolated) for o in layered if o.prepare is not None}
    carried = [o for o in layered if o.previous is not None]

    def chunk_fn(start, layers, _, carry_in=None):
        """layers [c, b, N, D] (raw) -> per-layer outputs with leading axes [c, b],
        their exponents and finiteness under SCALE (and, for observables with
        `previous`, the carry: their last layer's arrays)."""
        c = layers.shape[0]
        vb = jnp.broadcast_to(valid, (c, b, n)).reshape((c * b, n))
        clouds = layers.reshape((c * b, n, d))
        e, ok = conditioning.scale_of(clouds, vb)
        clouds = conditioning.apply_scale(clouds, vb, e, ok)

        def per_cloud(v):
            return jnp.broadcast_to(v, (c,) + v.shape).reshape((c * b,) + v.shape[1:])

        chunk_inputs = dict(shared)
        chunk_inputs.update({k: per_cloud(v) for k, v in per_prompt.items()})
        layer = jnp.repeat(start + jnp.arange(c, dtype=jnp.int32), b)
        ctx = context(
            clouds,
            vb,
            options,
            knn_k=knn_k,
            ranks=ranks,
            inputs=chunk_inputs,
            layer=layer,
            exponent=e,
        )
        outs, carry_out = {}, {}
        for o in layered:
            if o.paper:
                outs[o.name] = _compute(o, ctx)
                continue
            own = {}
            if o.name in prepared:
                own["prepared"] = jax.tree.map(per_cloud, prepared[o.name])
            if o.previous is not None:
                mine = jax.tree.map(
                    lambda a: a.reshape((c, b) + a.shape[1:]),
                    o.previous(dense_context.Isolated(ctx, **own)),
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
            outs[o.name] = _compute(o, dense_context.Isolated(ctx, **own))
        outs[SCALE] = (e, ok)
        outs = jax.tree.map(lambda a: a.reshape((c, b) + a.shape[1:]), outs)
        return (outs, carry_out) if carried else outs

    per_layer = {}
    if layered:
        per_layer = dense_context.map_chunks(chunk_fn, hidden, [], chunk, carry=bool(carried))
        exponent, finite = per_layer[SCALE]
    else:
        exponent, finite = stack.exponent_and_finite

    result = {}
    for o in observables:
        if o.scope == "layer":
            fields = per_layer[o.name]
        elif o.scope == "pair":
            fields = o.combine(per_layer[o.name], stack if o.paper else isolated)
        else:
            fields = o.combine(None, isolated)
        for f in o.fields:
            a = fields[f.name]
            if f.length:
                a = conditioning.restore_lengths(a, exponent)
            ok = _clouds_finite(o.scope, f.layers, finite)
            if ok is not None:
                ok = ok.reshape(ok.shape + (1,) * (a.ndim - ok.ndim))
                a = jnp.where(ok, a, jnp.nan if jnp.issubdtype(a.dtype, jnp.floating) else 0)
            result[f.name] = jnp.swapaxes(a, 0, 1) if f.layers else a
    result["finite"] = jnp.swapaxes(finite, 0, 1)
    return LayerGeometry(result)


def _compute(obs, ctx):
    """obs.compute(ctx), a question the context refuses naming the observable."""
    try:
        return obs.compute(ctx)
    except ring_context.Refused as err:
        raise ValueError(f"observable {obs.name!r}: {err}") from None


def _clouds_finite(scope, layers, finite):
    """Whether the clouds a field [L', b, ...] is measured on are all finite: its own
    layer (layer scope, whatever the results' layer axis: cosine's "L+1" gains the
    embedding in the pipeline), layers l and l + 1 ("L-1" pairs) or layer l and the
    last (pair fields over "L"); None for prompt-scope fields, which do not read the
    clouds. finite [L, b]."""
    if scope == "layer":
        return finite
    if scope == "pair" and layers == "L-1":
        return finite[:-1] & finite[1:]
    if scope == "pair" and layers == "L":
        return finite & finite[-1:]
    return None


def check_observables(observables, options, n, hidden=None, mask=None, layer_axis=-3):
    """Static checks of each observable's options, then (concrete arrays) the valid
    and distinct point counts per prompt and layer.

    hidden: [..., L, N, D] with ``layer_axis`` -3, or layer-major [L, B, N, D]
    with ``layer_axis`` 0 (then mask [B, N])."""
    observables = registry.resolve(observables)
    for obs in observables.observables:
        if obs.check is not None:
            obs.check(options, n)
    needs = [o.min_points(options) for o in observables.observables if o.min_points is not None]
    if not needs or hidden is None or not validation.is_concrete(hidden, mask):
        return
    h = np.asarray(hidden)
    if layer_axis == 0:
        h = np.moveaxis(h, 0, -3)
    prompt_shape = tuple(h.shape[:-3])
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
        keep = np.asarray(duplicates.unique_mask(h, valid[..., None, :]))
        distinct = keep.sum(-1)  # [..., L]
        if distinct.min() < need_unique[0]:
            pos = np.unravel_index(int(np.argmin(distinct)), distinct.shape)
            raise ValueError(
                f"{need_unique[1]} needs >= {need_unique[0]} distinct valid points, but prompt "
                f"{tuple(int(p) for p in pos[:-1])}, layer {int(pos[-1])} has {int(distinct[pos])}"
            )


def _required_inputs(observables, inputs):
    for obs in observables.observables:
        for c in obs.consumes:
            if c in registry.INPUTS and c not in inputs:
                raise ValueError(
                    f"observable {obs.name!r} consumes {c!r}: pass inputs={{{c!r}: ...}} "
                    f"({registry.INPUTS[c][1]})"
                )


def host_inputs(observables, inputs, mask, options, n):
    """inputs plus those the observables derive on the host (``Observable.host_inputs``)
    from the concrete inputs they consume, per-prompt [B, ...], and mask [B, N] (None:
    all valid). An observable whose host inputs are all given already is left alone
    (a caller that jits its own call derives them first, with this function), and so is
    one whose host inputs only check (no names) when its inputs are traced.

    Raises:
      ValueError: naming the observable, when what it derives from is traced; the
        observable's own refusal of data it cannot measure (naming the input or option).
    """
    out = dict(inputs)
    for obs in registry.resolve(observables).observables:
        derived = registry.host_input_names(obs)
        if obs.host_inputs is None or (derived and all(name in out for name in derived)):
            continue
        read = {c: out[c] for c in obs.consumes if c in registry.INPUTS and c in out}
        if not validation.is_concrete(mask, *read.values()):
            if not derived:  # a check only: the caller that jits checked them first
                continue
            raise ValueError(
                f"observable {obs.name!r} derives its inputs {sorted(derived)} on the host from "
                f"concrete {sorted(read) + ['mask']}, which are traced here: call "
                "layer_geometry outside jit, or derive them first with "
                "metrics.compute.host_inputs and pass them in inputs="
            )
        read = {k: np.asarray(v) for k, v in read.items()}
        b = next(iter(read.values())).shape[0] if read else 1
        valid = np.ones((b, n), bool) if mask is None else np.asarray(mask, bool)
        out.update(obs.host_inputs.fn(read, valid, dict(options)))
    return out


def row_layout(mesh, neighbour_path):
    """How the blocked path lays out its row blocks: one device, split over the mesh's
    data axis with the points replicated (which forces the blocked path), or, for
    neighbour_path "ring", each cloud's points split over that axis."""
    if mesh is None:
        if neighbour_path == "ring":
            raise ValueError(
                "neighbour_path='ring' splits each cloud's points over the 'data' axis of a "
                "mesh: pass mesh= (or neighbour_path='blocked' on one device)"
            )
        return blocked_rows.LOCAL
    if neighbour_path == "dense":
        raise ValueError("neighbour_path='dense' cannot split rows over a mesh; use 'blocked'")
    if blocked_rows.DATA_AXIS not in mesh.shape:
        raise ValueError(f"mesh must have a {blocked_rows.DATA_AXIS!r} axis, got {mesh.shape}")
    if neighbour_path == "ring":
        return ring_rows.RingRows(mesh, blocked_rows.DATA_AXIS)
    return blocked_rows.ShardedRows(mesh, blocked_rows.DATA_AXIS)


def prepare(observables, n, *, layer_chunk=None, options=None, **option_values):
    """(ObservableSet, checked option values resolved for clouds of n points, as the
    static tuple the jitted engine takes) of a call, before any array is read."""
    observables = registry.resolve(observables)
    if layer_chunk is not None and (not isinstance(layer_chunk, int) or layer_chunk < 1):
        raise ValueError(f"layer_chunk must be a positive integer or None, got {layer_chunk!r}")
    values = dict(options or {})
    for k, v in option_values.items():
        if k in values:
            raise ValueError(f"{k} is given both as a keyword and in options=")
        values[k] = v
    host_selection.check_method(values.get(SELECTION.name, SELECTION.default))
    opts = observables.options(values, n=n)
    return observables, opts


def _checked(
    hidden,
    prompt_major,
    mask,
    observables,
    layer_chunk,
    inputs,
    options,
    validate,
    option_values,
    *,
    layer_axis,
):
    """What stack_geometry and layer_geometry check before any compute: (observable
    set, option values, inputs). prompt_major: hidden (or its shape) as [..., L, N, D]."""
    n = hidden.shape[-2]
    observables, opts = prepare(
        observables, n, layer_chunk=layer_chunk, options=options, **option_values
    )
    inputs = dict(inputs or {})
    _required_inputs(observables, inputs)
    if validate:
        validation.validate_hidden(
            prompt_major, mask, allow_non_finite=True, max_k=None, gride=False
        )
    check_observables(
        observables, opts, n, hidden if validate else None, mask, layer_axis=layer_axis
    )
    return observables, opts, inputs


def _call(stack, mask, inputs, observables, opts, layer_chunk, mesh):
    return _stack_geometry(
        stack,
        mask,
        jax.tree.map(jnp.asarray, inputs),
        observables=observables,
        static_options=tuple(sorted(opts.items())),
        layer_chunk=layer_chunk,
        rows=row_layout(mesh, opts["neighbour_path"]),
    )


def stack_geometry(
    hidden,
    mask=None,
    *,
    observables="paper",
    layer_chunk=None,
    inputs=None,
    options=None,
    validate=True,
    mesh=None,
    **option_values,
):
    """:func:`layer_geometry` of a layer-major stack hidden [L, B, N, D], mask [B, N]:
    the decoder's layout (``DecoderOutput.hidden_states``), so the fused step passes
    its hidden states without a transpose. Returns fields [B, L', ...]."""
    hidden = validation.check_points(hidden, "hidden", 4, "[L, B, N, D]")
    n_layers, b = hidden.shape[:2]
    prompt_major = jax.ShapeDtypeStruct((b, n_layers) + tuple(hidden.shape[2:]), hidden.dtype)
    observables, opts, inputs = _checked(
        hidden,
        prompt_major,
        mask,
        observables,
        layer_chunk,
        inputs,
        options,
        validate,
        option_values,
        layer_axis=0,
    )
    inputs = host_inputs(observables, inputs, mask, opts, hidden.shape[-2])
    hidden = validation.as_points(hidden, "hidden", min_rank=4)
    if mask is not None:
        mask = jnp.asarray(mask, bool)
    return _call(hidden, mask, inputs, observables, opts, layer_chunk, mesh)


def layer_geometry(
    hidden,
    mask=None,
    *,
    observables="paper",
    layer_chunk=None,
    inputs=None,
    options=None,
    validate=True,
    mesh=None,
    **option_values,
):
    """The requested observables of every layer of a hidden-state stack.

    The shared intermediates (one centred Gram matrix per layer, certified exact
    neighbour lists, neighbours at fixed ranks) are computed once per layer chunk
    and only when a requested observable consumes them. ID estimators use the
    distinct valid tokens (first occurrence kept), the graph observables and
    cosine all valid tokens.

    Each cloud is rescaled by an exact power of two before any square is taken
    (metrics/backends/conditioning.py), so the results do not depend on its scale (1e20 or
    1e-30 times a cloud gives the same IDs). A cloud with a NaN or inf at a valid
    token gets NaN for every output that reads it (``finite`` False), also under
    jit. Tokens closer than ``duplicate_tolerance`` times the cloud's RMS norm to
    an earlier one count as duplicates for the ID estimators
    (duplicates.near_duplicates; 0 keeps exact duplicates only); GRIDE scales needing
    more distinct tokens than remain are NaN.

    Args:
      hidden: [..., L, N, D] hidden states (e.g. [B, L, T, D] of a model's layers).
      mask: bool [..., N] valid tokens per prompt, shared by all layers (None: all).
      observables: "paper" (GRIDE + TwoNN, cosine statistics, neighbourhood
        overlap), "all", a comma list or a sequence of names (``registry.known()``).
      layer_chunk: layers processed at a time (lax.map) to bound memory; None picks
        about 8 MiB of Gram matrix per chunk.
      inputs: arrays the observables consume besides the points
        (``registry.INPUTS``; per-prompt ones with the leading axes of ``mask``).
      options: a dict of option values (the same as keywords).
      validate: with concrete inputs, value checks run first; under an outer jit /
        shard_map only the static checks run.
      mesh: a jax Mesh: the blocked path's row blocks are split over its "data" axis
        inside shard_map (each device holds the points and its own blocks; the per-row
        results are all-gathered), whatever N; the results equal one device's. For a
        dataset-scale cloud on several devices (or hosts started with
        jax.distributed, the points replicated). With neighbour_path="ring" each
        device holds N / devices points of each cloud instead (a stack passed already
        split on N over "data" is not copied) and the other devices' blocks pass
        around a ring (metrics/neighbours/ring_rows.py): O((N / devices)(D + k +
        #ranks)) memory per device, the same neighbours and counts as one device, IDs
        within 1e-6; observables that read every pair of a cloud or the Gram entries
        between neighbours (tle_id, id_battery) are refused there.
      **option_values: the observables' options by name (``registry.resolve(
        observables).declared_options``): range_max (GRIDE; None is min(256, N -
        1)), max_k, twonn_discard_fraction, include_diagonal, id_k,
        entropy_alpha, duplicate_tolerance, selection ("auto": NumPy host
        selection on CPU, lax.top_k elsewhere; "host"; "xla"), neighbour_path
        ("dense" holds each cloud's N x N centred Gram matrix; "blocked",
        metrics/backends/blocked_context.py, computes the same exact neighbour lists,
        distances and IDs from blocks of block_rows Gram rows, O(N (block + k +
        #ranks)) memory per cloud; "auto" picks "blocked" above 4,096 points per
        cloud or 1 GiB of Gram matrices per layer chunk; "ring": see mesh),
        block_rows, and those of observables registered by other packages.

    Returns:
      A LayerGeometry (dict pytree with attribute access) of float32 arrays
      [..., L, ...] (pair fields [..., L-1, ...]), see each observable's fields,
      plus ``finite`` bool [..., L].

    Reference: Viswanathan et al. 2025, "The Geometry of Tokens in Internal
    Representations of Large Language Models" (the paper's observables).
    """
    hidden = validation.check_points(hidden, "hidden", 3, "[..., L, N, D]")
    n = hidden.shape[-2]
    prompt_shape = tuple(hidden.shape[:-3])
    observables, opts, inputs = _checked(
        hidden,
        hidden,
        mask,
        observables,
        layer_chunk,
        inputs,
        options,
        validate,
        option_values,
        layer_axis=-3,
    )
    hidden = validation.as_points(hidden, "hidden", min_rank=3)
    b = int(np.prod(prompt_shape, dtype=np.int64))
    stack = jnp.moveaxis(hidden.reshape((b,) + hidden.shape[-3:]), 1, 0)
    if mask is not None:
        mask = jnp.asarray(mask, bool).reshape((b, n))
    per_prompt = {
        k: jnp.asarray(v).reshape((b,) + np.shape(v)[len(prompt_shape) :])
        for k, v in inputs.items()
        if registry.INPUTS.get(k, (False,))[0]
    }
    per_prompt = host_inputs(observables, per_prompt, mask, opts, n)
    shared = {
        k: jnp.asarray(v) for k, v in inputs.items() if not registry.INPUTS.get(k, (False,))[0]
    }
    geo = _call(stack, mask, per_prompt | shared, observables, opts, layer_chunk, mesh)
    return LayerGeometry({k: v.reshape(prompt_shape + v.shape[1:]) for k, v in geo.items()})
