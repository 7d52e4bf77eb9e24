"""Checks of a run's inputs before any compute: its fields, its model, its token ids.

Every failure is a :class:`UserError` naming the fields in the library's terms
(``max_tokens=...``); the command line prints them as flags.
"""

from __future__ import annotations

import numpy as np

from geom_jax import data, models, pipeline
from geom_jax.metrics.declare import registry
from geom_jax.metrics.declare.observable import Option
from geom_jax.run import spec as run_spec
from geom_jax.run.spec import UserError


def wrap(error: BaseException, template: str = "{problem}", names=(), **values) -> UserError:
    """A UserError quoting ``error`` (its argument names keep their rendering)."""
    return UserError(template, names, problem=error, **values)


def _positive(spec, name, minimum=1, hint=""):
    value = getattr(spec, name)
    if value < minimum:
        bound = "positive" if minimum == 1 else f">= {minimum}"
        raise UserError(
            "{" + name + "} must be {bound}{hint}, got {value}",
            name,
            bound=bound,
            hint=hint,
            value=value,
        )


def check_types(spec: run_spec.RunSpec) -> None:
    """Every field has its declared type and, where declared, one of its choices."""
    for name, field in run_spec.table().items():
        value = getattr(spec, name)
        if value is None:
            continue
        if isinstance(field, Option):
            try:
                field.value(value, present=True, inputs=False)
            except ValueError as e:
                raise wrap(e) from None
            continue
        kind = tuple if field.type is list else field.type
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            raise UserError(
                "{" + name + "} must be a {kind}, got {value!r}",
                name,
                kind=field.type.__name__,
                value=value,
            )
        if field.choices is not None and value not in field.choices:
            raise UserError(
                "{" + name + "} must be one of {choices}, got {value!r}",
                name,
                choices=field.choices,
                value=value,
            )


def check_options_apply(spec: run_spec.RunSpec, observables: registry.ObservableSet) -> None:
    """An option set away from its default must belong to a requested observable."""
    mine = observables.declared_options
    for name, opt in registry.all_options().items():
        if name in mine or getattr(spec, name) == opt.default:
            continue
        owners = [o.name for o in registry.REGISTRY.values() if opt in o.options]
        raise UserError(
            "{"
            + name
            + "}={value} applies to the {owners} observable"
            + ("" if len(owners) == 1 else "s")
            + "; add {first} to {observables} (now {current!r})",
            (name, "observables"),
            value=getattr(spec, name),
            owners=", ".join(owners),
            first=owners[0] if owners else "?",
            current=spec.observables,
        )


def num_tokens(spec: run_spec.RunSpec) -> int:
    """Tokens per row: max_tokens, plus the BOS token when add_bos."""
    return spec.max_tokens + int(spec.add_bos)


def check_spec(spec: run_spec.RunSpec) -> None:
    """Static checks of the fields (no file or model access)."""
    check_types(spec)
    for name in ("batch_size", "checkpoint_every", "shuffle_repeats"):
        _positive(spec, name)
    for name in ("max_shuffle", "seed"):
        _positive(spec, name, minimum=0)
    _positive(spec, "max_tokens", minimum=4)
    if spec.num_prompts is not None:
        _positive(spec, "num_prompts", minimum=0, hint=" (0 = every qualifying prompt)")
    if spec.layer_chunk is not None:
        _positive(spec, "layer_chunk", minimum=0, hint=" (0 = automatic)")
    if not spec.text_field:
        raise UserError("{text_field} must not be empty", "text_field")
    observables = spec.observable_set
    try:
        spec.kind.check_options(spec, observables)
    except ValueError as e:
        raise wrap(e) from None
    check_options_apply(spec, observables)
    if spec.method == "structured" and spec.shuffle_repeats > 1:
        raise UserError(
            "{shuffle_repeats}={r} applies to {method}=shuffled or {method}=permuted; "
            "{method}=structured runs each prompt once",
            ("shuffle_repeats", "method"),
            r=spec.shuffle_repeats,
        )
    if spec.method == "shuffled":
        try:
            data.check_divisible(spec.max_tokens, spec.max_shuffle)
        except ValueError as e:
            raise wrap(e, "{method}=shuffled: {problem}", "method") from None


def resolved(spec: run_spec.RunSpec, n: int) -> run_spec.RunSpec:
    """spec with each option that the cloud size resolves (range_max None: the largest
    range clouds of ``n`` points support in this kind of run) replaced by its value, as
    recorded in metadata.json."""
    changes = {}
    for name, opt in spec.observable_set.declared_options.items():
        if opt.resolve is not None:
            changes[name] = opt.resolve(getattr(spec, name), n, spec.kind.name)
    return spec.replace(**changes)


def check_model(spec: run_spec.RunSpec):
    """Reads the model's configuration (no weights) and checks the run fits it: a
    ported architecture, and prompts within its context length. Returns the
    DecoderConfig."""
    try:
        config = models.load_config(spec.model, revision=spec.revision or None)
    except (ValueError, FileNotFoundError) as e:
        raise wrap(e, "{model}={value}: {problem}", "model", value=spec.model) from None
    n = num_tokens(spec)
    if n > config.max_position_embeddings:
        bos = " + 1 ({add_bos})" if spec.add_bos else ""
        raise UserError(
            "{max_tokens}={tokens}" + bos + " exceeds the context of {model}={name}: its "
            "max_position_embeddings is {context}",
            ("max_tokens", "model", "add_bos"),
            tokens=spec.max_tokens,
            name=spec.model,
            context=config.max_position_embeddings,
        )
    return config


def check_token_ids(token_ids: np.ndarray, vocab_size: int, model: str) -> None:
    """Refuses token ids the model has no embedding for (a tokenizer of another
    model, a corrupt vocabulary) before any compute: the pipeline's check, on every
    row of the run at once."""
    try:
        pipeline.check_token_ids(token_ids, vocab_size)
    except ValueError as e:
        raise UserError(
            "{model}={name}: the prompts' {problem}; is the tokenizer the model's own?",
            "model",
            name=model,
            problem=str(e),
        ) from None
