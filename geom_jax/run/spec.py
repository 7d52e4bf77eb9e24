"""What defines a run: one table of its fields, and the observables' options.

:data:`FIELDS` declares every field of a run (name, type, default, doc,
whether it changes the results); the registered observables' options
(:func:`geom_jax.metrics.declare.registry.all_options`) join them. From these
declarations come :class:`RunSpec`, the command-line flags
(:mod:`geom_jax.run.flags`), ``run_config.json`` and the ``--resume`` check,
and the ``flags`` entry of ``metadata.json``: no field or default is written
twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax

from geom_jax import data
from geom_jax.errors import ArgumentError
from geom_jax.metrics.declare import registry
from geom_jax.metrics.declare.observable import Option
from geom_jax.run import compilation, run_kind

METHODS = ("structured", "shuffled", "permuted")
DTYPES = ("float32", "bfloat16")
POOLS = ("none", "last", "mean")


class UserError(ArgumentError):
    """A problem with the run's inputs, reported to the user without a traceback."""


@dataclasses.dataclass(frozen=True)
class RunField:
    """One field of a run.

    Attributes:
      name: the RunSpec attribute and the flag ``--name``.
      type: str, int, float, bool or list (a comma list of strings).
      default: its value when not given.
      doc: the flag's help.
      defining: changes the results (``--resume`` refuses a change).
      choices: allowed values (an enum flag).
      unset: the flag value that means None (e.g. 0 for "every qualifying prompt").
      required: the command line must give it.
      before: its value in runs recorded before the field existed (default: the
        default), for the ``--resume`` check of such runs.
    """

    name: str
    type: type
    default: Any
    doc: str
    defining: bool = True
    choices: tuple | None = None
    unset: Any = None
    required: bool = False
    before: Any = None


FIELDS: tuple[RunField, ...] = (
    RunField("model", str, "smollm2-135m", "Model alias, Hub id, local folder or .gguf file."),
    RunField("revision", str, "", "Hub branch, tag or commit of the model (e.g. step1000)."),
    RunField(
        "dataset",
        str,
        data.PYDOC,
        "'pydoc', a Hub dataset id (NeelNanda/pile-10k), .txt/.jsonl path.",
    ),
    RunField("text_field", str, "text", "Field holding the text (.jsonl, datasets)."),
    RunField("split", str, "train", "Dataset split."),
    RunField(
        "streaming", bool, False, "Stream a Hub dataset instead of caching it.", defining=False
    ),
    RunField(
        "method",
        str,
        "structured",
        "structured; shuffled at s=0..max_shuffle; permuted: the structured prompt and "
        "shuffle_repeats full random permutations of its tokens.",
        choices=METHODS,
    ),
    RunField(
        "shuffle_repeats",
        int,
        1,
        "Independent shuffles per level s > 0 (shuffled) or full permutations (permuted).",
    ),
    RunField("max_tokens", int, 1024, "Tokens per prompt (shorter are dropped)."),
    RunField("max_shuffle", int, 5, "Largest shuffle index s (4**s blocks)."),
    RunField("num_prompts", int, 16, "Prompts to keep (0 = all qualifying).", unset=0),
    RunField("batch_size", int, 1, "Rows per jitted step."),
    RunField("seed", int, 0, "Seed of the shuffles."),
    RunField("add_bos", bool, False, "Prepend the tokenizer's BOS token."),
    RunField(
        "filter_models",
        list,
        (),
        "Other models whose tokenizers a prompt must also fill (comparisons).",
    ),
    RunField("dtype", str, "float32", "Activation dtype.", choices=DTYPES),
    RunField("param_dtype", str, "float32", "Parameter dtype.", choices=DTYPES),
    RunField("layer_chunk", int, None, "Layers per metrics chunk (0 = automatic).", unset=0),
    RunField(
        "observables",
        str,
        None,
        "'paper' (GRIDE/TwoNN, cosine, overlap; the default of per-prompt runs), 'pooled' "
        "(the default of pooled runs; 'dataset' is its former name), 'all', or a comma "
        "list of names (may include a set, e.g. paper,reciprocity).",
        before="paper",
    ),
    RunField(
        "pool",
        str,
        "none",
        "none: each prompt's tokens are a cloud; last / mean: one point per row (its last "
        "token, or the mean over its tokens) and the rows of each shuffle level a cloud.",
        choices=POOLS,
    ),
    RunField(
        "windows",
        bool,
        False,
        "Cut every document into consecutive windows of max_tokens tokens (thousands of "
        "points from the pydoc corpus); num_prompts caps them (a seeded sample).",
    ),
    RunField(
        "partitions",
        int,
        1,
        "Pooled runs: split each cloud into this many disjoint seeded random subsets and "
        "measure each (Cheng et al.'s protocol).",
    ),
    RunField(
        "label_field",
        str,
        "",
        "Record field labelling each row (jsonl, Hugging Face datasets; pydoc windows carry "
        "their topic): the label overlap's classes.",
    ),
    RunField(
        "window_tokenizer",
        str,
        "",
        "Model whose tokenizer cuts the windows (their text, re-tokenised by --model), so "
        "that models with different tokenizers see the same text.",
    ),
    RunField(
        "random_init",
        int,
        None,
        "Seed of random weights for the model's architecture (the untrained control); "
        "unset: the trained weights.",
    ),
    RunField(
        "output_dir",
        str,
        "",
        "Folder for results.npz and metadata.json.",
        defining=False,
        required=True,
    ),
    RunField("resume", bool, False, "Continue the run checkpointed in output_dir.", defining=False),
    RunField("checkpoint_every", int, 4, "Batches between checkpoints.", defining=False),
    RunField("progress", bool, True, "Show a progress bar.", defining=False),
    RunField(
        "mesh_shape",
        str,
        "",
        "Device mesh 'DATA,MODEL' (default: every device on data).",
        defining=False,
    ),
    RunField(
        "fsdp", bool, False, "Also shard parameters' embed axis over data (FSDP).", defining=False
    ),
    RunField(
        "compilation_cache",
        str,
        compilation.DEFAULT_DIR,
        "Folder of JAX's persistent compilation cache ('' = off; JAX_COMPILATION_CACHE_DIR "
        "wins): a later run of the same shapes loads its compiled steps from it.",
        defining=False,
    ),
    RunField(
        "params_checkpoint",
        str,
        "",
        "Orbax folder of converted parameters (written if missing).",
        defining=False,
    ),
)
"""The run's own fields, in --help order."""


def table() -> dict[str, RunField | Option]:
    """Every field of a run: the run's own, then every registered observable option."""
    out: dict[str, RunField | Option] = {f.name: f for f in FIELDS}
    for name, opt in registry.all_options().items():
        if name in out:
            raise ValueError(f"observable option {name!r} clashes with a run field of that name")
        out[name] = opt
    return out


def _normalise(field: RunField | Option, value):
    if value is None or (getattr(field, "unset", None) is not None and value == field.unset):
        return None
    if field.type is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        return tuple(str(v) for v in value)
    if field.type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


class RunSpec:
    """The values of every field of a run (see :data:`FIELDS` and the observables'
    options); attribute access, immutable (``replace`` gives a changed copy).

    ``RunSpec(output_dir="out", model="smollm2-135m", max_tokens=256, id_k=10)``;
    fields not given take their declared defaults.
    """

    def __init__(self, **values):
        fields = table()
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise UserError(
                "{problem}: not a field of a run (fields: {known})",
                problem=f"{unknown[0]!r}",
                known=", ".join(fields),
            )
        spec = {
            name: _normalise(f, values[name] if name in values else f.default)
            for name, f in fields.items()
        }
        if spec["observables"] is None:
            kind = run_kind.of_pool(spec["pool"], default=run_kind.kinds()[0])
            spec["observables"] = kind.default_observables
        try:
            spec["observables"] = registry.resolve(spec["observables"]).canonical
        except ValueError:
            pass  # checks.check_spec reports it
        object.__setattr__(self, "_values", spec)

    def __getattr__(self, name):
        values = self.__dict__.get("_values", {})
        if name in values:
            return values[name]
        raise AttributeError(f"RunSpec has no field {name!r}")

    def __setattr__(self, name, value):
        raise AttributeError("RunSpec is immutable; use spec.replace(...)")

    def __eq__(self, other):
        return isinstance(other, RunSpec) and other._values == self._values

    def __hash__(self):
        return hash(tuple(sorted(self._values.items())))

    def __repr__(self):
        given = {k: v for k, v in self._values.items() if v != table()[k].default}
        return "RunSpec(" + ", ".join(f"{k}={v!r}" for k, v in given.items()) + ")"

    @property
    def kind(self) -> run_kind.RunKind:
        """The kind of run ``pool`` selects (:mod:`geom_jax.run.kinds`): per-prompt, each
        prompt's tokens a cloud, or pooled, one point per row."""
        try:
            return run_kind.of_pool(self.pool)
        except ValueError as e:
            raise UserError("{pool}: {problem}", "pool", problem=e) from None

    def values(self) -> dict[str, Any]:
        return dict(self._values)

    def replace(self, **changes) -> RunSpec:
        return RunSpec(**{**self._values, **changes})

    @property
    def observable_set(self) -> registry.ObservableSet:
        """The resolved observables (ArgumentError naming ``observables`` when unknown)."""
        try:
            return registry.resolve(self.observables)
        except ValueError as e:
            raise UserError("{observables}: {problem}", "observables", problem=e) from None

    def option_values(self) -> dict[str, Any]:
        """The values of the options the run's observables read (and the engine's)."""
        return {name: self._values[name] for name in self.observable_set.declared_options}

    def defining(self) -> dict:
        """The fields that define the results (the run's own defining fields and the
        options of its observables), plus the runtime's process count (from jax, so
        also right when SLURM or a TPU pod started jax.distributed) where the run's
        kind leaves per-process state (``RunKind.per_process_state``): ``--resume``
        refuses a change of any."""
        fields = table()
        out = {f.name: self._values[f.name] for f in FIELDS if f.defining}
        for name in self.observable_set.declared_options:
            if fields[name].defining:
                out[name] = self._values[name]
        out["filter_models"] = list(out["filter_models"])
        if self.kind.per_process_state:
            out["num_processes"] = jax.process_count()
        return out


def saved_value(name: str, saved: Mapping):
    """A defining field's value in a saved run_config.json; a field the run predates
    takes its declared default (the value such runs had)."""
    if name in saved:
        return saved[name]
    field = table().get(name)
    if field is None:
        return None
    old = getattr(field, "before", None)
    value = _normalise(field, field.default if old is None else old)
    return list(value) if isinstance(value, tuple) else value
