"""The registry of observables: registration, discovery and resolved observable sets.

Observables are declared with :mod:`geom_jax.metrics.declare.observable` and
registered by name: the library's own by :mod:`geom_jax.metrics.declare.builtin`
(one line each), others through the ``geom_jax.observables`` entry-point
group, found on first use (a package declares, in its metadata,
``name = "package.module:OBSERVABLE"``; the object may be an Observable, a
sequence of them, or a callable returning either). :func:`resolve` turns a
spec ("paper", "all", a comma list) into an :class:`ObservableSet`, the one
object that flows from a run's spec to the jitted step and the files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import warnings
from collections.abc import Iterable, Iterator, Mapping
from importlib import metadata

from geom_jax.metrics.declare import builtin
from geom_jax.metrics.declare import options as shared_options
from geom_jax.metrics.declare.observable import (
    INTERMEDIATES,
    Field,
    Observable,
    Option,
    merge_options,
)

ENTRY_POINT_GROUP = "geom_jax.observables"

REGISTRY: dict[str, Observable] = {}
"""name -> Observable, in registration order (the results' order)."""

INPUTS: dict[str, tuple[bool, str]] = {
    "token_nll": (True, "[B, T-1] per-token negative log-likelihood (nats), 0 on padding"),
    "labels": (True, "[B, N] class id of each point of a dataset-scale cloud (-1: none)"),
}
"""Inputs a caller may pass to layer_geometry: name -> (per_prompt, doc); the observables'
model inputs and host inputs (per prompt) are added when they register."""

SETS = ("paper", "pooled", "all")
"""Named sets: the paper's observables, the default of pooled runs, and all."""

FORMER_SETS = {"dataset": "pooled"}
"""Former set names, still accepted with a DeprecationWarning."""

_discovered = False


def register(obs: Observable, *, replace: bool = False) -> Observable:
    """Adds an observable (ValueError on a clash of names, fields or option declarations)."""
    if obs.name in SETS or obs.name in FORMER_SETS:
        raise ValueError(f"{obs.name!r} is reserved for observable sets")
    if obs.name in REGISTRY and not replace:
        raise ValueError(f"observable {obs.name!r} is already registered")
    others = [o for o in REGISTRY.values() if o.name != obs.name]
    taken = {f.name: o.name for o in others for f in o.fields}
    for f in obs.fields:
        if f.name in taken:
            raise ValueError(
                f"field {f.name!r} of {obs.name!r} is already a field of {taken[f.name]!r}"
            )
    merge_options([shared_options.ENGINE] + [o.options for o in others] + [obs.options])
    model_inputs = {m.name for m in obs.model_inputs}
    derived = {h for o in REGISTRY.values() for h in host_input_names(o)}
    for h in host_input_names(obs):
        if (h in INPUTS and h not in derived) or h in obs.consumes:
            raise ValueError(
                f"observable {obs.name!r} derives the host input {h!r}, which is already an "
                "input (or listed in its consumes)"
            )
    for c in obs.consumes:
        if c not in INTERMEDIATES and c not in INPUTS and c not in model_inputs:
            raise ValueError(
                f"observable {obs.name!r} consumes {c!r}, which is neither an intermediate "
                f"({sorted(INTERMEDIATES)}), a declared input ({sorted(INPUTS)}) nor one of "
                "its model_inputs"
            )
    for m in obs.model_inputs:
        INPUTS[m.name] = (m.per_prompt, m.doc)
    for name, doc in host_input_names(obs).items():
        INPUTS[name] = (True, doc)
    REGISTRY[obs.name] = obs
    return obs


def host_input_names(obs: Observable) -> dict[str, str]:
    """name -> doc of the inputs ``obs`` derives on the host (Observable.host_inputs)."""
    return dict(obs.host_inputs.names) if obs.host_inputs is not None else {}


def unregister(name: str) -> None:
    obs = REGISTRY.pop(name, None)
    if obs is not None:
        for m in obs.model_inputs:
            if not any(m.name in {i.name for i in o.model_inputs} for o in REGISTRY.values()):
                INPUTS.pop(m.name, None)
        for h in host_input_names(obs):
            if not any(h in host_input_names(o) for o in REGISTRY.values()):
                INPUTS.pop(h, None)


@contextlib.contextmanager
def registered(*observables: Observable) -> Iterator[tuple[Observable, ...]]:
    """Registers observables for the duration of a ``with`` block, then removes them
    (and restores any they replaced)."""
    discover()
    before = dict(REGISTRY)
    inputs_before = dict(INPUTS)
    try:
        for obs in observables:
            register(obs, replace=True)
        yield observables
    finally:
        REGISTRY.clear()
        REGISTRY.update(before)
        INPUTS.clear()
        INPUTS.update(inputs_before)


def register_input(name: str, per_prompt: bool, doc: str) -> None:
    """Declares an input callers pass to layer_geometry (leading axes: prompts if per_prompt)."""
    INPUTS[name] = (bool(per_prompt), doc)


def _as_observables(obj, where: str) -> list[Observable]:
    if callable(obj) and not isinstance(obj, Observable):
        obj = obj()
    items = [obj] if isinstance(obj, Observable) else list(obj)
    for item in items:
        if not isinstance(item, Observable):
            raise TypeError(f"entry point {where} gave {type(item).__name__}, not an Observable")
    return items


def discover(*, refresh: bool = False) -> None:
    """Registers the built-in observables (``builtin``) and every
    ``geom_jax.observables`` entry point (once; with refresh, entry points installed
    since are registered too)."""
    global _discovered
    if _discovered and not refresh:
        return
    _discovered = True
    for obs in builtin.BUILTIN:
        if REGISTRY.get(obs.name) is not obs:
            register(obs)
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        for obs in _as_observables(ep.load(), f"{ep.name} = {ep.value}"):
            if REGISTRY.get(obs.name) is not obs:
                register(obs)


def get(name: str) -> Observable:
    discover()
    if name not in REGISTRY:
        raise ValueError(f"unknown observable {name!r}; known: {', '.join(known())}")
    return REGISTRY[name]


def known() -> list[str]:
    discover()
    return list(SETS) + list(REGISTRY)


def _paper() -> list[str]:
    return [n for n, o in REGISTRY.items() if o.paper]


def _pooled() -> list[str]:
    return [n for n, o in REGISTRY.items() if o.pooled]


def _all() -> list[str]:
    return [n for n, o in REGISTRY.items() if o.in_all]


def _set(name: str) -> list[str]:
    return {"paper": _paper, "pooled": _pooled, "all": _all}[name]()


@dataclasses.dataclass(frozen=True)
class ObservableSet:
    """A resolved set of observables, in registry order: what a run measures.

    Hashable (a static argument of the jitted step); everything derived from
    the declarations (fields, options, model inputs) is read from here.
    """

    names: tuple[str, ...]

    def __iter__(self):
        return iter(self.names)

    def __len__(self):
        return len(self.names)

    def __contains__(self, name):
        return name in self.names

    @property
    def observables(self) -> tuple[Observable, ...]:
        return tuple(get(n) for n in self.names)

    @property
    def canonical(self) -> str:
        """ "paper", "all" or the comma list of names (``--resume`` compares it)."""
        if set(self.names) == set(_paper()):
            return "paper"
        if set(self.names) == set(_all()):
            return "all"
        return ",".join(self.names)

    def fields(self, *, saved_only: bool = False) -> list[Field]:
        out = [f for o in self.observables for f in o.fields]
        return [f for f in out if f.saved] if saved_only else out

    @functools.cached_property
    def declared_options(self) -> dict[str, Option]:
        """The options the set reads (and the engine's), name -> declaration."""
        return merge_options([shared_options.ENGINE] + [o.options for o in self.observables])

    def options(
        self, values: Mapping | None = None, *, n: int | None = None, kind: str = "tokens"
    ) -> dict:
        """Checked values of every declared option, defaults filled in (and, with the
        cloud size n, resolved: e.g. range_max None -> the largest range n supports).
        Options of other registered observables are accepted and left out; a name no
        observable declares is refused, naming the known ones."""
        values = dict(values or {})
        unknown = sorted(set(values) - set(all_options()))
        if unknown:
            raise ValueError(
                f"{unknown[0]!r} is not an option of any observable (options of "
                f"{self.canonical!r}: {', '.join(sorted(self.declared_options))})"
            )
        out = {}
        for name, opt in self.declared_options.items():
            v = opt.value(values.get(name), present=name in values)
            resolved = n is not None and opt.resolve is not None
            out[name] = opt.resolve(v, n, kind) if resolved else v
        return out

    @property
    def model_inputs(self):
        """The model inputs the observables consume, in a stable order."""
        seen = {}
        for o in self.observables:
            for m in o.model_inputs:
                if m.name in o.consumes:
                    seen.setdefault(m.name, m)
        return tuple(seen.values())


def resolve(spec: str | Iterable[str] | ObservableSet | None = "paper") -> ObservableSet:
    """The ObservableSet of ``spec``: a set's name ("paper", "pooled", "all"; "dataset" is
    the former "pooled"), a comma list or a sequence of names (which may include a set's
    name), in registry order, without repeats.

    Raises:
      ValueError: an empty spec or an unknown name (naming the known ones).
    """
    if isinstance(spec, ObservableSet):
        return spec
    discover()
    if spec is None:
        spec = "paper"
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [str(s).strip() for s in items if str(s).strip()]
    if not items:
        raise ValueError(f"observables is empty; known: {', '.join(known())}")
    wanted = set()
    for item in items:
        if item in FORMER_SETS:
            warnings.warn(
                f"observables={item!r} is deprecated; use {FORMER_SETS[item]!r}",
                DeprecationWarning,
                stacklevel=2,
            )
            item = FORMER_SETS[item]
        if item in SETS:
            wanted.update(_set(item))
        elif item in REGISTRY:
            wanted.add(item)
        else:
            raise ValueError(f"unknown observable {item!r}; known: {', '.join(known())}")
    return ObservableSet(tuple(n for n in REGISTRY if n in wanted))


def all_options() -> dict[str, Option]:
    """Every option of every registered observable and of the engine (the run's flags)."""
    discover()
    return merge_options([shared_options.ENGINE] + [o.options for o in REGISTRY.values()])


def describe(names: Iterable[str] | None = None) -> str:
    """A markdown table of the observables (name, scope, fields, options, reference)."""
    discover()
    names = list(REGISTRY) if names is None else list(names)
    lines = ["| observable | scope | fields | options | reduction over tokens | reference |"]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for n in names:
        o = get(n)
        fs = ", ".join(f"`{f.name}` {f.shape()}" for f in o.fields if f.saved)
        opts = ", ".join(f"`{p.name}`" for p in o.options)
        lines.append(f"| `{o.name}` | {o.scope} | {fs} | {opts} | {o.reduce} | {o.reference} |")
    return "\n".join(lines)
