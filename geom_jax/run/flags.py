"""The command line of a run: absl flags generated from the run's field table.

Every field of :data:`geom_jax.run.spec.FIELDS` and every registered
observable option with ``flag=True`` becomes ``--name`` (its type, default,
choices and doc from the declaration); :func:`spec_from_flags` reads them
back into a :class:`~geom_jax.run.spec.RunSpec`. Errors keep the library's
terms until :func:`message` adds the ``--`` to the names they mention.
"""

from __future__ import annotations

from absl import flags

from geom_jax import errors
from geom_jax.metrics.declare.observable import Option
from geom_jax.run import spec as run_spec

PREFIX = "--"

DISTRIBUTED = (
    ("coordinator_address", "host:port of process 0 (multi-process)."),
    ("num_processes", "Number of processes (multi-process)."),
    ("process_id", "This process's index (multi-process)."),
)


def _define(field, flag_values) -> None:
    default = field.default
    if isinstance(field, run_spec.RunField):
        if field.required:
            default = None
        elif field.unset is not None and default is None:
            default = field.unset
    kw = {"flag_values": flag_values}
    if field.type is bool:
        flags.DEFINE_bool(field.name, default, field.doc, **kw)
    elif field.type is list:
        flags.DEFINE_list(field.name, list(default or ()), field.doc, **kw)
    elif field.choices is not None:
        flags.DEFINE_enum(field.name, default, [str(c) for c in field.choices], field.doc, **kw)
    elif field.type is int:
        flags.DEFINE_integer(field.name, default, field.doc, **kw)
    elif field.type is float:
        flags.DEFINE_float(field.name, default, field.doc, **kw)
    else:
        flags.DEFINE_string(field.name, default, field.doc, **kw)


def define_flags(flag_values=flags.FLAGS) -> None:
    """Defines the flags of ``experiments/token_geometry.py`` (idempotent)."""
    for name, field in run_spec.table().items():
        if isinstance(field, Option) and not field.flag:
            continue
        if name not in flag_values:
            _define(field, flag_values)
    for name, doc in DISTRIBUTED:
        if name not in flag_values:
            kind = flags.DEFINE_string if name == "coordinator_address" else flags.DEFINE_integer
            kind(name, None, doc, flag_values=flag_values)
    flags.mark_flag_as_required("output_dir", flag_values=flag_values)


def spec_from_flags(flag_values=flags.FLAGS) -> run_spec.RunSpec:
    """The RunSpec of parsed flags (a field's ``unset`` flag value means None)."""
    values = {}
    for name, field in run_spec.table().items():
        if name not in flag_values:
            continue
        value = flag_values[name].value
        if isinstance(field, run_spec.RunField) and field.unset is not None:
            if value == field.unset:
                value = None
        values[name] = value
    return run_spec.RunSpec(**values)


def message(error: BaseException) -> str:
    """An error as the command line prints it: the arguments it names as flags."""
    return errors.render(error, PREFIX)
