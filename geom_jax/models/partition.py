"""Where each Decoder parameter lives on a ('data', 'model') device mesh.

`param_axes(config)` lists every parameter's shape and logical axis names
(the NNX `out_sharding` metadata of an abstract Decoder); `mesh_spec` maps
names through logical-axis rules (default `axes.RULES`, or
`axes.fsdp_rules()`) onto a mesh PartitionSpec, and is the one route from
logical axes to shardings: `param_shardings` (the loader, the params
checkpoint) and `state_shardings` (the pipeline's placement of an NNX state)
both go through it. `check_mesh` refuses a mesh whose axes do not divide the
dimensions they shard, before any weight is read.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec

from . import axes as ax
from .config import DecoderConfig
from .decoder import abstract_decoder

Path = tuple[str, ...]

CONFIG_FIELDS = {
    ax.LAYERS: "num_layers",
    ax.VOCAB: "vocab_size",
    ax.EMBED: "hidden_size",
    ax.Q_HEADS: "num_heads",
    ax.KV_HEADS: "num_kv_heads",
    ax.HEAD_DIM: "head_dim",
    ax.MLP: "intermediate_size",
    ax.POSITIONS: "max_position_embeddings",
}


class MeshMismatchError(ValueError):
    """A mesh axis does not divide a model dimension it would shard."""


@dataclasses.dataclass(frozen=True)
class ParamAxes:
    shape: tuple[int, ...]
    names: tuple[str, ...]


@functools.lru_cache(maxsize=16)
def _param_axes(config: DecoderConfig) -> tuple[tuple[Path, ParamAxes], ...]:
    state = nnx.state(abstract_decoder(config), nnx.Param)
    return tuple(
        (
            tuple(str(k) for k in path),
            ParamAxes(tuple(var.get_value().shape), tuple(var.get_metadata()["out_sharding"])),
        )
        for path, var in nnx.to_flat_state(state)
    )


def param_axes(config: DecoderConfig) -> dict[Path, ParamAxes]:
    """Parameter path (as in `nnx.to_pure_dict(state)`) -> shape and logical names."""
    return dict(_param_axes(config))


class UnknownLogicalAxisError(ValueError):
    """A logical axis name with no rule (MaxText's check_valid_logical_axes)."""


def mesh_spec(names: tuple[str | None, ...], rules=None) -> PartitionSpec:
    """Logical names -> PartitionSpec through ``rules`` (default `axes.RULES`).

    None stays unsharded; a mesh axis is used at most once per spec (a later
    name whose mesh axes are taken is replicated, as flax's
    logical_to_mesh_axes does).

    Raises:
      UnknownLogicalAxisError: a name with no rule, naming it and the known ones.
    """
    table = dict(ax.RULES if rules is None else rules)
    used: set[str] = set()
    out = []
    for name in names:
        if name is None:
            out.append(None)
            continue
        if name not in table:
            raise UnknownLogicalAxisError(
                f"logical axis {name!r} has no sharding rule (known: {', '.join(table)})"
            )
        target = table[name]
        mesh_axes = () if target is None else (target,) if isinstance(target, str) else target
        if not mesh_axes or used & set(mesh_axes):
            out.append(None)
            continue
        used.update(mesh_axes)
        out.append(mesh_axes[0] if len(mesh_axes) == 1 else tuple(mesh_axes))
    return PartitionSpec(*out)


def param_specs(config: DecoderConfig, rules=None) -> dict[Path, PartitionSpec]:
    return {path: mesh_spec(p.names, rules) for path, p in param_axes(config).items()}


def param_shardings(config: DecoderConfig, mesh: Mesh, rules=None) -> dict[Path, NamedSharding]:
    """Path -> NamedSharding on `mesh`; call `check_mesh` first."""
    return {path: NamedSharding(mesh, spec) for path, spec in param_specs(config, rules).items()}


def state_shardings(state, mesh: Mesh, rules=None):
    """NamedShardings of an NNX state (same tree), from each parameter's
    logical axis names through `mesh_spec`."""

    def one(var):
        names = var.get_metadata()["out_sharding"]
        return var.replace(NamedSharding(mesh, mesh_spec(names, rules)))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _names(entry) -> tuple[str, ...]:
    """The mesh axes of one PartitionSpec entry."""
    if entry is None:
        return ()
    return entry if isinstance(entry, tuple) else (entry,)


def _axis_size(mesh: Mesh, entry) -> tuple[str, int]:
    names = _names(entry)
    label = " x ".join(f"'{n}'" for n in names)
    return label, math.prod(mesh.shape[n] for n in names)


def mesh_problems(config: DecoderConfig, mesh: Mesh | AbstractMesh, rules=None) -> list[str]:
    """One sentence per (dimension, mesh axis) pair that does not divide."""
    used = {n for spec in param_specs(config, rules).values() for e in spec for n in _names(e)}
    missing = sorted(used - set(mesh.axis_names))
    if missing:
        return [
            f"the rules shard over mesh axes {missing} that the mesh "
            f"(axes {tuple(mesh.axis_names)}) does not have"
        ]
    explicit = [n for n, t in zip(mesh.axis_names, mesh.axis_types) if t == AxisType.Explicit]
    if explicit:
        return [
            f"mesh axes {explicit} are AxisType.Explicit (jax.make_mesh's default); the decoder "
            "runs under automatic sharding: build the mesh with axis_types=(AxisType.Auto,) * 2 "
            "(geom_jax.sharding.make_mesh does)"
        ]
    shape = tuple(mesh.axis_sizes)
    problems: dict[tuple[int, str], str] = {}
    order = list(CONFIG_FIELDS)
    for p in param_axes(config).values():
        for name, dim, entry in zip(p.names, p.shape, mesh_spec(p.names, rules)):
            if entry is None:
                continue
            label, size = _axis_size(mesh, entry)
            if dim % size:
                field = CONFIG_FIELDS.get(name, name)
                key = (order.index(name) if name in order else len(order), label)
                problems[key] = (
                    f"{field}={dim} is not divisible by the {label} mesh axis of size {size} "
                    f"(mesh shape {shape})"
                )
    return [problems[k] for k in sorted(problems)]


def check_mesh(config: DecoderConfig, mesh: Mesh | AbstractMesh, rules=None) -> None:
    """Raises MeshMismatchError naming each model dimension and the mesh axis
    size that does not divide it (e.g. num_kv_heads=3 on a 'model' axis of 2).
    Needs only the mesh's axis names and sizes, so an AbstractMesh will do."""
    problems = mesh_problems(config, mesh, rules)
    if problems:
        model = config.name or config.checkpoint_id or config.family
        raise MeshMismatchError(f"cannot shard {model} on this mesh: " + "; ".join(problems))


__all__ = [
    "CONFIG_FIELDS",
    "MeshMismatchError",
    "UnknownLogicalAxisError",
    "ParamAxes",
    "check_mesh",
    "mesh_problems",
    "mesh_spec",
    "param_axes",
    "param_shardings",
    "param_specs",
    "state_shardings",
]
