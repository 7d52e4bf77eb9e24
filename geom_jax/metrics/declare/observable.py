"""What an observable declares about itself: options, fields, inputs, report sections.

An :class:`Observable` is one self-describing unit. Generic code (the
execution engine, the fused step, the run's flags and checks, the result
files, the report) reads these declarations and never names a specific
observable:

* :class:`Option`: name, type, default and doc of a setting. From this one
  declaration come the ``layer_geometry`` keyword (or ``options=`` entry),
  the command-line flag, the ``metadata.json`` entry and the ``--resume``
  check.
* :class:`Field`: one result array, its named dims (:data:`DIMS`), layer
  axis and dtype, from which ``results.npz``, ``tokens.npz``, ``RESULTS.md``
  and the labelled ``xarray`` dataset of ``geom_jax.results.load`` follow.
* :class:`ModelInput`: an array the fused step derives from the model (e.g.
  lens statistics of every hidden state), computed only when a requested
  observable consumes it.
* :class:`HostInputs`: arrays derived on the host from the caller's concrete
  inputs before the jitted call (e.g. the probes' folds and class one-hots from
  the row labels), because they set static shapes or need NumPy.
* :class:`ReportSection`: a figure and the numbers the report states.

Declaring one (a new module and one registration line, or an entry point
of the ``geom_jax.observables`` group in another package)::

    from geom_jax.metrics.declare import observable

    SCALE = observable.Option("norm_power", float, 2.0, "power of the norm")

    def _mean_norm(ctx):
        norm = jnp.sum(jnp.abs(ctx.x) ** ctx.options["norm_power"], -1)
        return {"mean_norm": jnp.sum(norm * ctx.valid, -1) / jnp.sum(ctx.valid, -1)}

    MEAN_NORM = observable.Observable(
        name="mean_norm",
        compute=_mean_norm,
        fields=(observable.Field("mean_norm", doc="mean token norm"),),
        options=(SCALE,),
        doc="Mean norm of the valid tokens.",
    )
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from geom_jax.errors import ArgumentError

SCOPES = ("layer", "pair", "prompt")

PER_PROMPT, POOLED = "per_prompt", "pooled"
"""The names of the two kinds of run (:mod:`geom_jax.run.kinds`), as declarations use them:
each prompt's tokens a cloud, or one pooled point per row and the rows of a level a cloud."""

IMPORTED = "imported"
"""The kind of a run imported from arrays held outside geom-jax (one point per row, as
pooled, measured by nothing at import: ``experiments/import_representations.py``)."""

INTERMEDIATES = {
    "points": "the cloud x [C, N, D] and its valid mask [C, N]",
    "unique": "first occurrences among valid points [C, N] (the ID estimators' points)",
    "gram": "centred Gram matrix [C, N, N] and the centre [C, D]",
    "knn": "exact neighbour lists among all valid points: squared distances and indices [C, N, k]",
    "knn_unique": "exact neighbour lists among distinct points [C, N, k]",
    "ranked": "neighbour indices at fixed ranks among distinct points [C, N, R] (GRIDE)",
    "next_layer": "the next layer's carries (pair scope: combine sees all layers)",
    "stack": "the whole hidden stack [L, B, N, D] (pair / prompt scope: pctx.hidden)",
}
"""What the execution engine computes once per layer chunk for the observables that consume it."""


@dataclasses.dataclass(frozen=True)
class Option:
    """A setting of one or more observables (or of the engine).

    Attributes:
      name: the keyword of ``layer_geometry``, the flag ``--name`` and the key
        in ``metadata.json``.
      type: int, float, bool or str (the flag's type; values are coerced).
      default: the value when none is given; None only with ``optional``.
      doc: one line, shown by ``--help`` and in the docs.
      choices: allowed values (a flag with choices is an enum).
      check: ``check(value)`` raises ValueError naming the option.
      check_inputs: ``check_inputs(value)`` raises ValueError naming the option when
        the files or folders the value names are missing or wrong; run only where
        an observable reads the option (a run checks every option's form first).
      optional: None is a value (e.g. range_max None: resolved from the cloud).
      defining: the value changes results (``--resume`` refuses a change).
      flag: exposed on the command line.
      resolve: ``resolve(value, n, kind)`` -> the value for clouds of n points of a
        kind of run (PER_PROMPT: a prompt's tokens, POOLED: one point per row; e.g.
        range_max None -> the largest range n points support, capped).
    """

    name: str
    type: type
    default: Any
    doc: str
    choices: tuple | None = None
    check: Callable[[Any], None] | None = None
    check_inputs: Callable[[Any], None] | None = None
    optional: bool = False
    defining: bool = True
    flag: bool = True
    resolve: Callable[[Any, int, str], Any] | None = None

    def value(self, given: Any = None, *, present: bool = False, inputs: bool = True) -> Any:
        """The checked value of the option: ``given`` when present, else the default
        (with ``inputs``, also the files it names: ``check_inputs``)."""
        v = given if present else self.default
        if v is None:
            if self.optional:
                return None
            raise ArgumentError("{" + self.name + "} must be set", self.name)
        v = _coerce(self.name, self.type, v)
        if self.choices is not None and v not in self.choices:
            raise ArgumentError(
                "{" + self.name + "} must be one of {choices}, got {v!r}",
                self.name,
                choices=self.choices,
                v=v,
            )
        if self.check is not None:
            self.check(v)
        if inputs and self.check_inputs is not None:
            self.check_inputs(v)
        return v


def _coerce(name, kind, v):
    def bad(what):
        return ArgumentError("{" + name + "} must be " + what + ", got {v!r}", name, v=v)

    if kind is bool:
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        raise bad("a bool")
    if kind is int:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise bad("an integer")
        return int(v)
    if kind is float:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number)):
            raise bad("a number")
        return float(v)
    if kind is str:
        if not isinstance(v, str):
            raise bad("a string")
        return v
    return v


@dataclasses.dataclass(frozen=True)
class Dim:
    """A named array dimension: its symbol in the docs and its coordinate."""

    symbol: str
    doc: str
    coords: Callable[[int], np.ndarray] | None = None
    """size -> coordinate values (None: 0..size-1)."""
    coord_name: str = ""
    """Name under which the coordinate is also stored in results.npz (e.g. gride_n1)."""


DIMS: dict[str, Dim] = {
    "scale": Dim(
        "S",
        "GRIDE scale j: neighbour ranks n1 = 2**j and n2 = 2 n1",
        lambda n: 2 ** np.arange(n),
        "gride_n1",
    ),
    "k": Dim("K", "neighbourhood size k", lambda n: np.arange(1, n + 1)),
    "token": Dim("T", "token position"),
    "target": Dim("T-1", "predicted token position t = 1..T-1", lambda n: np.arange(1, n + 1)),
    "direction": Dim("2", "(A -> B, B -> A)", lambda n: np.array(["forward", "backward"][:n])),
    "position": Dim("T", "token position of a pooled run's row"),
    "logit_scale": Dim(
        "S'", "GRIDE scale j of the logit cloud: n1 = 2**j", lambda n: 2 ** np.arange(n), "logit_n1"
    ),
}
"""Dims fields may use (register more with :func:`register_dim`)."""

LAYER_AXES: dict[str, tuple[str, str]] = {
    "L": ("layer", "transformer layer l = 1..L"),
    "L-1": ("layer_pair", "pair of layers (l, l+1), l = 1..L-1"),
    "L+1": ("hidden_state", "hidden state 0..L (0 = embedding output)"),
}
"""A field's ``layers`` symbol -> (dim name, doc)."""


def register_dim(name: str, dim: Dim) -> None:
    """Declares a dim name for fields (an existing name must keep its declaration)."""
    if name in DIMS and DIMS[name] != dim:
        raise ValueError(f"dim {name!r} is already declared as {DIMS[name]}")
    DIMS[name] = dim


def layer_coords(layers: str, size: int) -> np.ndarray:
    """Coordinate of a layer axis: 1..L, 1..L-1 (first layer of the pair) or 0..L."""
    return np.arange(size) if layers == "L+1" else np.arange(1, size + 1)


@dataclasses.dataclass(frozen=True)
class Field:
    """One result array.

    Attributes:
      name: its key in ``results.npz`` / ``tokens.npz``.
      dims: trailing dim names (:data:`DIMS`), after the row and layer axes.
      doc: one line (RESULTS.md, the README's tables).
      layers: the layer axis, a key of :data:`LAYER_AXES` or "" (per row).
      dtype: stored dtype ("float32", "int32", "bool"; per-token float32 fields float16).
      tokens: per point (its dims end with "token"): in ``tokens.npz``, float fields as
        float16 in per-prompt runs; a pooled run stores it per row, [R, L', ...].
      saved: False for ``layer_geometry``-only extras.
      length: in the input's units of length (the engine measures on clouds
        rescaled by a power of two and multiplies these back).
    """

    name: str
    dims: tuple[str, ...] = ()
    doc: str = ""
    layers: str = "L"
    dtype: str = "float32"
    tokens: bool = False
    saved: bool = True
    length: bool = False

    def __post_init__(self):
        if self.layers and self.layers not in LAYER_AXES:
            raise ValueError(
                f"field {self.name!r}: layers must be one of {sorted(LAYER_AXES)} or '', "
                f"got {self.layers!r}"
            )
        if isinstance(self.dims, str):
            raise ValueError(f"field {self.name!r}: dims must be a tuple of names")

    @property
    def stored_dtype(self) -> np.dtype:
        return np.dtype(np.float16 if self.tokens and self.dtype == "float32" else self.dtype)

    def per_row(self) -> Field:
        """The field of a pooled run's rows: one point per row, so the "token" dim is the
        row itself ([R, L', ...] in ``tokens.npz``, in the declared dtype)."""
        return dataclasses.replace(
            self, dims=tuple(d for d in self.dims if d != "token"), tokens=False
        )

    def dim_names(self, row_dim: str = "row") -> tuple[str, ...]:
        """Named dims of the stored array: row, the layer axis, then ``dims``."""
        layer = (LAYER_AXES[self.layers][0],) if self.layers else ()
        return (row_dim,) + layer + tuple(self.dims)

    def shape(self, row_axis: str = "P") -> str:
        """The shape in symbols, e.g. ``[P, L, S]``."""
        symbols = [DIMS[d].symbol if d in DIMS else d for d in self.dims]
        axes = [row_axis] + ([self.layers] if self.layers else []) + symbols
        return "[" + ", ".join(axes) + "]"


@dataclasses.dataclass(frozen=True)
class ModelInput:
    """An input the fused step derives from the model for the observables consuming it.

    fn(model, out) (or fn(model, out, prepared) with ``prepare``) -> an array,
    [B, ...] when per_prompt, else shared (e.g. the unembedding [V, D]);
    prepare(model, options) runs once per pipeline (e.g. a factor of the
    unembedding, a tuned lens), and its arrays are arguments of the jitted step.
    """

    name: str
    fn: Callable
    per_prompt: bool
    doc: str
    prepare: Callable | None = None


@dataclasses.dataclass(frozen=True)
class HostInputs:
    """Inputs an observable derives on the host, before the jitted call, from the
    caller's concrete inputs.

    ``fn(inputs, valid, options) -> {name: array}``: inputs holds the per-prompt
    inputs the observable consumes (registry.INPUTS) as NumPy arrays [B, ...],
    valid the NumPy bool mask [B, N], options the checked option values; it returns
    NumPy arrays [B, ...] under ``names`` (which register as per-prompt inputs, so
    that ``ctx.input(name)`` reads them per cloud; their shapes may carry static
    sizes). It raises ValueError naming the input or option for data the observable
    cannot measure: that is the refusal before compute.

    The engine (``metrics.compute.host_inputs``) calls it in ``layer_geometry`` /
    ``stack_geometry`` when the arrays are concrete, and refuses traced ones naming
    the observable; a caller that jits its own call (a pooled run's cloud loop)
    calls ``compute.host_inputs`` first and passes the results in ``inputs``, which
    the engine then uses as given.
    """

    fn: Callable
    names: Mapping[str, str]
    """name -> doc of each array fn returns (none: fn only checks the inputs, e.g. that the
    labels an agreement score reads have two classes, and returns {})."""


@dataclasses.dataclass(frozen=True)
class ReportSection:
    """A section of the report: a figure and the numbers it states.

    figure(runs, path) -> path draws the PNG for the runs that hold ``needs``;
    text(run) -> markdown lines states its numbers for one run. Either may be
    None. ``needs``: the fields that must be present (default: the
    observable's saved fields).
    """

    title: str
    figure: Callable | None = None
    text: Callable | None = None
    needs: tuple[str, ...] = ()
    file: str = ""
    """Name of the PNG (default: from the title)."""
    kinds: tuple[str, ...] = (PER_PROMPT,)
    """The kinds of run it is drawn for: PER_PROMPT (a row per prompt and shuffle level),
    POOLED (a row per measured cloud of a pooled run)."""

    def png(self) -> str:
        if self.file:
            return self.file
        stem = "".join(c if c.isalnum() else "_" for c in self.title.lower()).strip("_")
        return "_".join(p for p in stem.split("_") if p) + ".png"


@dataclasses.dataclass(frozen=True)
class Observable:
    """A named observable (see the module docstring).

    Scopes:

    * ``"layer"``: ``compute(ctx) -> {field: [C, ...]}`` for a chunk of C clouds
      (layers x prompts flattened, layer-major). A field with ``tokens=True`` is
      per token ([C, N]) and goes to ``tokens.npz``.
    * ``"pair"``: ``compute(ctx)`` returns per-layer carries (arrays [C, ...],
      e.g. neighbour lists); ``combine(carries, stack)`` receives them stacked
      [L, B, ...] and returns fields [L', B, ...] (``Field.layers`` says which:
      "L-1" consecutive pairs, "L" e.g. each layer against the last).
    * ``"prompt"``: ``combine(None, stack)`` once per batch -> fields [B, ...]
      (layered ones [L', B, ...]).

    ``consumes`` names the intermediates (:data:`INTERMEDIATES`) and inputs
    (registry.INPUTS; ``model_inputs`` declares those derived from the model,
    ``host_inputs`` (:class:`HostInputs`) those derived on the host from the
    concrete inputs it consumes before the jitted call, read with ``ctx.input``
    without being listed in ``consumes``).
    ``knn_k(options)`` / ``knn_unique_k(options)`` / ``ranks(options, n)`` say
    how many exact neighbours among all valid / distinct points and which
    neighbour ranks among distinct points the unit needs; ``check(options,
    n)`` raises ValueError for bad options; ``min_points(options)`` gives
    (valid points, distinct points, what needs them) per prompt and layer.
    ``prepare(stack)`` runs once before the layer loop (``ctx.prepared``);
    ``previous(ctx)`` gives what the next layer needs from this one
    (``ctx.previous``). ``embedding``: computed on the embedding output too
    (its fields' layer axis is "L+1"). ``paper``: one of the paper's
    observables (the default set); the others are computed in isolation so
    that asking for more never changes the paper's numbers. ``dataset``: in the
    default set of dataset-scale clouds (one point per prompt). ``token_cloud``:
    needs the tokens of one prompt as the cloud (their order, or the model's
    logits per position), so it is refused for pooled runs. ``in_all``: part
    of "all". ``report``: its sections of the report. ``status(fields, mask)``
    -> int bits [B, L] flagging degenerate layers, documented in
    ``status_flags`` (bit -> meaning; bit 1 is the engine's non-finite flag).
    """

    name: str
    fields: tuple[Field, ...]
    compute: Callable | None = None
    combine: Callable | None = None
    consumes: tuple[str, ...] = ("points",)
    scope: str = "layer"
    doc: str = ""
    reference: str = ""
    reduce: str = ""
    options: tuple[Option, ...] = ()
    knn_k: Callable | None = None
    knn_unique_k: Callable | None = None
    ranks: Callable | None = None
    check: Callable | None = None
    min_points: Callable | None = None
    embedding: bool = False
    prepare: Callable | None = None
    previous: Callable | None = None
    paper: bool = False
    pooled: bool = False
    token_cloud: bool = False
    in_all: bool = True
    model_inputs: tuple[ModelInput, ...] = ()
    host_inputs: HostInputs | None = None
    report: tuple[ReportSection, ...] = ()
    status: Callable | None = None
    status_flags: Mapping[int, str] = dataclasses.field(default_factory=dict)
    dataset: dataclasses.InitVar[bool | None] = None

    def __post_init__(self, dataset):
        if dataset is not None:
            warnings.warn(
                f"observable {self.name!r}: dataset= is deprecated; use pooled=",
                DeprecationWarning,
                stacklevel=3,
            )
            object.__setattr__(self, "pooled", self.pooled or bool(dataset))
        if self.scope not in SCOPES:
            raise ValueError(f"observable {self.name!r}: scope must be one of {SCOPES}")
        if self.scope == "layer" and self.compute is None:
            raise ValueError(f"observable {self.name!r}: a layer observable needs compute")
        if self.scope != "layer" and self.combine is None:
            raise ValueError(f"observable {self.name!r}: scope {self.scope!r} needs combine")
        for f in self.fields:
            if f.length and not f.layers:
                raise ValueError(
                    f"observable {self.name!r}: field {f.name!r} in units of length needs a "
                    "layer axis (its clouds' scale is restored per layer)"
                )
        names = [o.name for o in self.options]
        if len(set(names)) != len(names):
            raise ValueError(f"observable {self.name!r} declares an option twice: {names}")

    def saved_fields(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.saved)


def merge_options(groups: Sequence[Sequence[Option]]) -> dict[str, Option]:
    """name -> Option over several declarations; the same name must be the same Option."""
    out: dict[str, Option] = {}
    for group in groups:
        for opt in group:
            if opt.name in out and out[opt.name] != opt:
                raise ValueError(
                    f"option {opt.name!r} is declared twice with different settings: "
                    f"{out[opt.name]} and {opt}"
                )
            out.setdefault(opt.name, opt)
    return out
