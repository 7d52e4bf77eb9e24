"""Observables as units: each declares what it consumes and what it returns.

An :class:`Observable` is one small unit (usually one module under
``geom_jax/metrics``) registered by name. :func:`geom_jax.metrics.layer_geometry`
computes the shared intermediates (unique-point mask, centred Gram matrix,
exact neighbour lists, ...) once per layer chunk, and only when a requested
observable consumes them; the results file's fields, their shapes and the
``RESULTS.md`` beside it are derived from the same declarations.

Declaring an observable (one new file and one registration line)::

    from geom_jax.metrics import registry

    def _mean_norm(ctx):
        norm = jnp.linalg.norm(ctx.x, axis=-1)
        return {"mean_norm": jnp.sum(norm * ctx.valid, -1) / jnp.sum(ctx.valid, -1)}

    MEAN_NORM = registry.Observable(
        name="mean_norm",
        compute=_mean_norm,
        fields=(registry.Field("mean_norm", doc="mean token norm", length=True),),
        consumes=("points",),
        doc="Mean Euclidean norm of the valid tokens.",
    )
    registry.register(MEAN_NORM)   # catalog.py holds the library's registration lines

Scopes:

* ``"layer"``: ``compute(ctx: LayerContext) -> {field: [C, ...]}`` for a chunk
  of C clouds (layers x prompts flattened, layer-major). A field with
  ``tokens=True`` is per token ([C, N]) and goes to ``tokens.npz``.
* ``"pair"``: ``compute(ctx)`` returns per-layer *carries* (any arrays
  [C, ...], e.g. neighbour lists); ``combine(carries, pctx: StackContext)``
  receives them stacked [L, B, ...] and returns fields [L', B, ...]
  (``Field.layers`` says which: ``"L-1"`` consecutive pairs, ``"L"`` e.g.
  each layer against the last).
* ``"prompt"``: ``combine(None, pctx)`` once per prompt -> fields [B, ...]
  (e.g. on the final hidden state or the logits).

``consumes`` names the intermediates (:data:`INTERMEDIATES`) and the inputs
the caller provides (:data:`INPUTS`; extend with :func:`register_input`).
``layer_geometry(..., inputs={...})`` passes the latter; the pipeline gives
``token_nll`` and the model-level inputs it knows. In ``compute``, use
``ctx.input(name)`` ([C, ...] for per-prompt inputs, as given for shared ones).
``knn_k(options)`` / ``knn_unique_k(options)`` / ``ranks(options, n)`` say how
many exact neighbours among all valid / among distinct points, and which
GRIDE-style neighbour ranks among distinct points, the unit needs;
``check(options, n)`` raises ``ValueError`` for bad static options and
``check_counts(options)`` gives the minimum number of valid (distinct)
points per prompt and layer it needs. Options are keyword arguments of
``layer_geometry`` (the built-in ones) or entries of its ``options=`` dict.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from geom_jax.metrics import distances, neighbors, stack_kernels, unique
from geom_jax.metrics.ranks import ranks_from_gram

SCOPES = ("layer", "pair", "prompt")
INTERMEDIATES = {
    "points": "the cloud x [C, N, D] and its valid mask [C, N]",
    "unique": "first occurrences among valid points [C, N] (the ID estimators' points)",
    "gram": "centred Gram matrix [C, N, N] and the centre [C, D]",
    "knn": "exact neighbour lists among all valid points: squared distances and indices [C, N, k]",
    "knn_unique": "exact neighbour lists among distinct points [C, N, k]",
    "ranked": "neighbour indices at fixed ranks among distinct points [C, N, R] (GRIDE)",
    "next_layer": "the next layer's carries (pair scope: combine sees all layers)",
    "stack": "the whole hidden stack [B, L, N, D] (pair / prompt scope: pctx.hidden)",
}
INPUTS: dict[str, tuple[bool, str]] = {
    "token_nll": (True, "[B, T-1] per-token negative log-likelihood (nats), 0 on padding"),
}
"""Inputs a caller may pass to layer_geometry: name -> (per_prompt, doc)."""


def register_input(name: str, per_prompt: bool, doc: str) -> None:
    """Declares an input the pipeline can provide (per prompt: leading axes = prompts)."""
    INPUTS[name] = (bool(per_prompt), doc)


@dataclasses.dataclass(frozen=True)
class Field:
    """One output array.

    dims: per-layer (or per-prompt) trailing dims, symbols documented in
    RESULTS.md: S GRIDE scales, K neighbourhood sizes, T tokens, or numbers.
    layers: the layer axis in the results: "L", "L-1", "L+1" (embedding
    output first) or "" (per prompt). tokens: per-token values, stored as
    float16 in tokens.npz. saved: False for layer_geometry-only extras.
    """

    name: str
    dims: tuple[str, ...] = ()
    doc: str = ""
    layers: str = "L"
    tokens: bool = False
    saved: bool = True
    length: bool = False
    """In the input's units of length: layer_geometry measures on clouds rescaled
    by a power of two (metrics/conditioning.py) and multiplies these back."""

    def shape(self, prompt_axis: str = "P") -> str:
        axes = [prompt_axis] + ([self.layers] if self.layers else []) + list(self.dims)
        return "[" + ", ".join(axes) + "]"


@dataclasses.dataclass(frozen=True)
class Observable:
    """A named observable; see the module docstring."""

    name: str
    fields: tuple[Field, ...]
    compute: Callable | None = None
    combine: Callable | None = None
    consumes: tuple[str, ...] = ("points",)
    scope: str = "layer"
    doc: str = ""
    reference: str = ""
    reduce: str = ""
    knn_k: Callable[[Mapping], int] | None = None
    knn_unique_k: Callable[[Mapping], int] | None = None
    ranks: Callable[[Mapping, int], tuple[int, ...]] | None = None
    check: Callable[[Mapping, int], None] | None = None
    min_points: Callable[[Mapping], tuple[int, int]] | None = None
    """(valid points, distinct valid points) needed per prompt and layer."""
    embedding: bool = False
    """The pipeline also computes it on the embedding output (layer 0)."""
    prepare: Callable | None = None
    """prepare(pctx: StackContext) -> per-prompt arrays [B, ...], computed once
    before the layer loop; compute reads them as ctx.prepared ([C, ...])."""
    previous: Callable | None = None
    """previous(ctx) -> arrays [C, ...] the next layer needs from this one
    (e.g. its Gram matrix); compute reads the previous layer's as ctx.previous
    (zeros for the first layer), carried across layer chunks."""
    in_all: bool = True
    """Part of the "all" set (False for costly model-level ones, asked for by name)."""

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise ValueError(f"observable {self.name!r}: scope must be one of {SCOPES}")
        if self.scope == "layer" and self.compute is None:
            raise ValueError(f"observable {self.name!r}: a layer observable needs compute")
        if self.scope != "layer" and self.combine is None:
            raise ValueError(f"observable {self.name!r}: scope {self.scope!r} needs combine")


REGISTRY: dict[str, Observable] = {}
PAPER = ("gride", "cosine", "overlap")
"""The paper's observables, the default set (loss and token NLL come from the model)."""


def register(obs: Observable, *, replace: bool = False) -> Observable:
    """Adds an observable to the registry (ValueError on a clash of names or fields)."""
    if obs.name in ("paper", "all"):
        raise ValueError(f"{obs.name!r} is reserved for observable sets")
    if obs.name in REGISTRY and not replace:
        raise ValueError(f"observable {obs.name!r} is already registered")
    taken = {f.name: o.name for o in REGISTRY.values() if o.name != obs.name for f in o.fields}
    for f in obs.fields:
        if f.name in taken:
            raise ValueError(
                f"field {f.name!r} of {obs.name!r} is already a field of {taken[f.name]!r}"
            )
    for c in obs.consumes:
        if c not in INTERMEDIATES and c not in INPUTS:
            raise ValueError(
                f"observable {obs.name!r} consumes {c!r}, which is neither an intermediate "
                f"({sorted(INTERMEDIATES)}) nor a declared input ({sorted(INPUTS)}; "
                "see register_input)"
            )
    REGISTRY[obs.name] = obs
    return obs


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def get(name: str) -> Observable:
    if name not in REGISTRY:
        raise ValueError(f"unknown observable {name!r}; known: {', '.join(known())}")
    return REGISTRY[name]


def known() -> list[str]:
    return ["paper", "all"] + list(REGISTRY)


def resolve(
    spec: str | Iterable[str] | None = "paper", name: str = "observables"
) -> tuple[str, ...]:
    """Observable names of ``spec``: "paper", "all", a comma list or a sequence of names
    (which may include "paper"), in registry order, without repeats."""
    if spec is None:
        spec = "paper"
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [str(s).strip() for s in items if str(s).strip()]
    if not items:
        raise ValueError(f"{name} is empty; known: {', '.join(known())}")
    wanted = set()
    for item in items:
        if item == "paper":
            wanted.update(PAPER)
        elif item == "all":
            wanted.update(_all())
        elif item in REGISTRY:
            wanted.add(item)
        else:
            raise ValueError(f"{name}: unknown observable {item!r}; known: {', '.join(known())}")
    return tuple(n for n in REGISTRY if n in wanted)


def _all() -> list[str]:
    return [n for n, o in REGISTRY.items() if o.in_all]


def canonical(spec) -> str:
    """A stable string for ``spec``: "paper", "all", or the comma list of names."""
    names = resolve(spec)
    if set(names) == set(PAPER):
        return "paper"
    if set(names) == set(_all()):
        return "all"
    return ",".join(names)


def fields(names: Iterable[str], *, saved_only: bool = False) -> list[Field]:
    out = [f for n in names for f in get(n).fields]
    return [f for f in out if f.saved] if saved_only else out


def describe(names: Iterable[str] | None = None) -> str:
    """A markdown table of the observables (name, scope, consumes, fields, reference)."""
    names = list(REGISTRY) if names is None else list(names)
    lines = ["| observable | scope | consumes | fields | reduction over tokens | reference |"]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for n in names:
        o = get(n)
        fs = ", ".join(f"`{f.name}` {f.shape()}" for f in o.fields if f.saved)
        lines.append(
            f"| `{o.name}` | {o.scope} | {', '.join(o.consumes)} | {fs} | {o.reduce} | "
            f"{o.reference} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- contexts


class LayerContext:
    """Shared intermediates of one chunk of clouds x [C, N, D], computed on first use.

    x [C, N, D] (each cloud divided by a power of two near its largest
    coordinate, metrics/conditioning.py: a field measured in units of length
    declares ``Field(length=True)`` and is multiplied back), valid [C, N],
    options (dict), layer [C] int32 (index of each cloud's
    layer in the stack), input(name). Properties: unique, gram, centre,
    knn_sq / knn_idx [C, N, knn_k] (exact, all valid points, ties to the lower
    index, +inf / -1 beyond the valid ones and in rows of invalid points;
    refinement.certified_knn), knn_sq_at(positions) (those ranks only),
    knn_unique(k) (among distinct points), ranked [C, N, len(ranks)]
    (Gram-selected indices at ranks).
    """

    def __init__(self, x, valid, options, *, knn_k, ranks, inputs, layer):
        self.x = x
        self.valid = valid
        self.options = options
        self.knn_k = int(knn_k)
        self.ranks = tuple(ranks)
        self.layer = layer
        self._inputs = inputs

    def input(self, name):
        if name not in self._inputs:
            raise ValueError(
                f"layer_geometry needs inputs[{name!r}] (pass inputs={{{name!r}: ...}})"
            )
        return self._inputs[name]

    @functools.cached_property
    def unique(self):
        tolerance = self.options.get("duplicate_tolerance", unique.DUPLICATE_TOLERANCE)
        return unique.distinct_points(self.x, self.valid, self.gram, tolerance)

    @functools.cached_property
    def _gram(self):
        return distances.centred_gram(self.x, self.valid)

    @property
    def gram(self):
        return self._gram[0]

    @property
    def centre(self):
        return self._gram[1]

    def cosine_stats(self, include_diagonal=True):
        """(mean, std) [C] of the cosine-similarity matrix of the valid points."""
        from geom_jax.metrics import cosine  # pylint: disable=g-import-not-at-top

        cache = self.__dict__.setdefault("_cosine_stats", {})
        if include_diagonal not in cache:
            cache[include_diagonal] = cosine.cosine_stats_from_gram(
                self.x, self.valid, self.gram, self.centre, include_diagonal
            )
        return cache[include_diagonal]

    @functools.cached_property
    def _selection(self):
        n = self.x.shape[-2]
        k_near = neighbors.num_candidates(self.knn_k, n) if self.knn_k else 0
        return neighbors.select_neighbors(
            self.gram,
            self.valid,
            self.unique,
            k_near=k_near,
            ranks=self.ranks,
            method=self.options["selection"],
        )

    @property
    def ranked(self):
        return self._selection[1]

    @functools.cached_property
    def _knn(self):
        return neighbors.certified_knn(
            self.x, self.gram, self._selection[0], self.valid, self.knn_k, self.options["selection"]
        )

    def knn_sq_at(self, positions, also=None):
        """Exact squared distances [C, N, len(positions)] at 0-based positions of the
        lists (only those pairs are refined; a request inside an earlier one reads
        it); with ``also`` [C, N, J], the exact squared distances of those pairs
        too, from the same pass (unmasked)."""
        positions = tuple(int(p) for p in positions)
        if also is not None:
            return self._knn.sq_at(positions, also)
        cache = self.__dict__.setdefault("_knn_sq_at", {})
        for done, sq in cache.items():
            if positions == done:
                return sq
            if set(positions) <= set(done):
                return sq[..., np.array([done.index(p) for p in positions])]
        cache[positions] = self._knn.sq_at(positions)
        return cache[positions]

    @property
    def knn_sq(self):
        return self.knn_sq_at(range(self.knn_k))

    @property
    def knn_idx(self):
        return self._knn.idx

    def knn_unique(self, k):
        """(squared distances, indices) [C, N, k] of the k nearest distinct valid points;
        from the shared lists when the chunk has no duplicates."""
        if k > self.knn_k:
            raise ValueError(f"knn_unique({k}) needs knn_k >= {k} (declare knn_unique_k)")
        cache = self.__dict__.setdefault("_knn_unique", {})
        if k not in cache:
            method = self.options["selection"]
            sq, idx, gram, keep = self.knn_sq_at(range(k)), self.knn_idx, self.gram, self.unique
            cache[k] = lax.cond(
                jnp.all(keep == self.valid),
                lambda: (sq, idx[..., :k]),
                lambda: neighbors.exact_knn(self.x, gram, keep, k, method),
            )
        return cache[k]

    # Higher-level queries, which metrics/blocked_context.BlockedContext answers without
    # the Gram matrix: observables that use them run on either path.

    def rank_source(self):
        """What query_ranks needs to count ranks in this layer's clouds from a later layer."""
        return {"gram": self.gram}

    def query_ranks(self, queries, source=None):
        """rank(i, queries[i, q]) [C, N, Q] in these clouds, or in the clouds of
        ``source`` (another layer's rank_source(), same valid points)."""
        gram = self.gram if source is None else source["gram"]
        return ranks_from_gram(_barrier(gram), self.valid, queries)

    def scatter_moments(self):
        """(tr S, |S|_F^2) [C] of the centred points' scatter matrix S (equal to the
        Gram matrix's: the same nonzero spectrum)."""
        return distances.trace_and_frobenius(_barrier(self.gram))

    def neighbour_sq_distances(self, idx):
        """|x_a - x_b|^2 [C, N, k, k] between the neighbours idx [C, N, k] of each point."""
        return distances.pair_sq_distances_from_gram(_barrier(self.gram), idx)


def _barrier(tree):
    return jax.tree.map(
        lambda a: lax.optimization_barrier(a) if isinstance(a, jax.Array) else a, tree
    )


class Isolated:
    """A view of a context whose arrays pass through lax.optimization_barrier.

    layer_geometry hands it to every observable outside the paper's set, so
    that XLA cannot merge (CSE) or fuse their operations with the paper's:
    requesting more observables never changes the paper's values, bit for bit.
    ``own`` holds per-observable attributes (prepared, previous).
    """

    def __init__(self, ctx, **own):
        self._ctx = ctx
        self._own = own

    def __getattr__(self, name):
        if name in self._own:
            return _barrier(self._own[name])
        value = getattr(self._ctx, name)
        if callable(value) and not isinstance(value, jax.Array):
            return lambda *a, **k: _barrier(value(*a, **k))
        return _barrier(value)


class StackContext:
    """What pair / prompt observables see: the stacked carries' batch [B] view.

    hidden [B, L, N, D] (float32, each cloud divided by 2**exponent [B, L] as
    the layer observables see it, metrics/conditioning.py; computed on first
    use from the raw stack and ``scale()`` -> (exponent, finite), zeros in
    non-finite clouds: lengths measured on it are multiplied back with
    ``conditioning.restore_lengths``), exponent_and_finite, valid
    [B, N], options, input(name) ([B, ...]), exact_knn / query_ranks (whole
    clouds, through the neighbour path's kernels), and map_layers(fn, *per_layer)
    which runs fn(x [C, N, D], valid [C, N], *args [C, ...]) over chunks of
    layers (args given with leading [L, B]) and returns its outputs stacked
    [L, B, ...].
    """

    def __init__(
        self, hidden, valid, options, inputs, layer_chunk, scale=None, kernels=stack_kernels.DENSE
    ):
        self._raw = hidden
        self._kernels = kernels
        self._scale = scale
        self.valid = valid
        self.options = options
        self._inputs = inputs
        self._chunk = layer_chunk

    @functools.cached_property
    def exponent_and_finite(self):
        if self._scale is None:
            return jnp.zeros(self._raw.shape[:2], jnp.int32), None
        return self._scale()

    @property
    def exponent(self):
        return self.exponent_and_finite[0]

    @functools.cached_property
    def hidden(self):
        exponent, finite = self.exponent_and_finite
        if finite is None:
            return self._raw
        from geom_jax.metrics import conditioning  # pylint: disable=g-import-not-at-top

        return conditioning.apply_scale(self._raw, self.valid[:, None, :], exponent, finite)

    def input(self, name):
        if name not in self._inputs:
            raise ValueError(
                f"layer_geometry needs inputs[{name!r}] (pass inputs={{{name!r}: ...}})"
            )
        return self._inputs[name]

    def exact_knn(self, x, valid, k):
        """(squared distances, indices) [C, N, k] of the k nearest valid neighbours
        of clouds x [C, N, D] (dense or row-blocked, as the layers)."""
        return self._kernels.exact_knn(x, valid, k, self.options["selection"])

    def query_ranks(self, x, valid, queries):
        """rank(i, queries[i, q]) [C, N, Q] in clouds x [C, N, D]."""
        return self._kernels.query_ranks(x, valid, queries)

    def map_layers(self, fn, *per_layer):
        b, n_layers, n, d = self.hidden.shape
        valid = self.valid

        def chunk_fn(start, layers, args):
            del start
            c = layers.shape[1]
            clouds = jnp.swapaxes(layers, 0, 1).reshape((c * b, n, d))
            vb = jnp.broadcast_to(valid, (c, b, n)).reshape((c * b, n))
            flat = [a.reshape((c * b,) + a.shape[2:]) for a in args]
            outs = fn(clouds, vb, *flat)
            return jax.tree.map(lambda o: o.reshape((c, b) + o.shape[1:]), outs)

        return map_chunks(chunk_fn, self.hidden, per_layer, self._chunk)


def needs(observables, options, n):
    """(knn_k, ranks) the observables need together: the longest exact neighbour
    list and the union of neighbour ranks among distinct points."""
    knn_k, ranks = 0, set()
    for obs in observables:
        if obs.knn_k is not None:
            knn_k = max(knn_k, int(obs.knn_k(options)))
        if obs.knn_unique_k is not None:
            knn_k = max(knn_k, int(obs.knn_unique_k(options)))
        if obs.ranks is not None:
            ranks.update(obs.ranks(options, n))
    return knn_k, tuple(sorted(ranks))


@functools.partial(jax.jit, static_argnames=("fn", "static_options", "knn_k", "ranks"))
def _on_points(x, valid, *, fn, static_options, knn_k, ranks):
    batch = x.shape[:-2]
    n, d = x.shape[-2:]
    xf = x.reshape((-1, n, d))
    vf = jnp.broadcast_to(valid, x.shape[:-1]).reshape((-1, n))
    layer = jnp.zeros(xf.shape[:1], jnp.int32)
    ctx = LayerContext(
        xf, vf, dict(static_options), knn_k=knn_k, ranks=ranks, inputs={}, layer=layer
    )
    return jax.tree.map(lambda a: a.reshape(batch + a.shape[1:]), fn(ctx))


def on_points(fn, x, valid, options, *, knn_k=0, ranks=()):
    """fn(LayerContext) on clouds x [..., N, D] (jitted; fn a module-level function,
    options a dict of hashable values): what the single-cloud public functions use,
    so that they and layer_geometry share one implementation."""
    options = {"selection": "auto", **options}
    return _on_points(
        x,
        valid,
        fn=fn,
        static_options=tuple(sorted(options.items())),
        knn_k=int(knn_k),
        ranks=tuple(ranks),
    )


def map_chunks(chunk_fn, h, per_layer, chunk, carry=False):
    """chunk_fn(start, layers [B, c, N, D], per_layer args [c, ...]) over layer chunks of h
    [B, L, N, D]; outputs [c, ...] are stacked to [L, ...]. Equal chunks; a last
    partial chunk is the final `chunk` layers (overlapping the previous one), so
    that no padded copy of the stack is made.

    With carry, chunk_fn(start, layers, args, carry_in) -> (outputs, carry_out)
    runs as a scan (carry_in None for the first chunk). Only the overlapping last
    chunk sees a carry from a layer other than its first layer's predecessor, and
    its outputs for those overlapped layers are dropped."""
    n_layers = h.shape[1]
    if chunk >= n_layers:
        if carry:
            return chunk_fn(jnp.int32(0), h, list(per_layer), None)[0]
        return chunk_fn(jnp.int32(0), h, list(per_layer))
    n_full, rem = divmod(n_layers, chunk)
    starts = [i * chunk for i in range(n_full)] + ([n_layers - chunk] if rem else [])

    def sliced(start):
        return (
            start,
            lax.dynamic_slice_in_dim(h, start, chunk, axis=1),
            [lax.dynamic_slice_in_dim(a, start, chunk, axis=0) for a in per_layer],
        )

    if carry:
        first, state = chunk_fn(*sliced(jnp.int32(0)), None)
        _, rest = lax.scan(
            lambda c, start: chunk_fn(*sliced(start), c)[::-1],
            state,
            jnp.asarray(starts[1:], jnp.int32),
        )
        outs = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, rest)
    else:
        outs = lax.map(lambda start: chunk_fn(*sliced(start)), jnp.asarray(starts, jnp.int32))

    def layers_of(o):
        full = o[:n_full].reshape((n_full * chunk,) + o.shape[2:])
        return jnp.concatenate([full, o[-1, chunk - rem :]], axis=0) if rem else full

    return jax.tree.map(layers_of, outs)
