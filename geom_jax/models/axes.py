"""Logical axis names carried by every parameter, and default rules mapping
them onto a ('data', 'model') device mesh (MaxText-style logical sharding).

Parameters hold their names in NNX metadata (`out_sharding`, with eager
sharding off), so `nnx.get_partition_spec(state)` under
`flax.core.spmd.logical_axis_rules(RULES)` gives mesh PartitionSpecs.
"""

from __future__ import annotations

# Mesh axes.
DATA = "data"
MODEL = "model"
MESH_AXES = (DATA, MODEL)

# Logical axes of the parameters.
LAYERS = "layers"
VOCAB = "vocab"
EMBED = "embed"
Q_HEADS = "q_heads"
KV_HEADS = "kv_heads"
HEAD_DIM = "head_dim"
MLP = "mlp"
POSITIONS = "positions"  # rows of learned absolute position embeddings

LOGICAL_AXES = (LAYERS, VOCAB, EMBED, Q_HEADS, KV_HEADS, HEAD_DIM, MLP, POSITIONS)

# Activation axes, for with_sharding_constraint in a later sharded forward.
BATCH = "batch"
SEQUENCE = "sequence"

RULES: tuple[tuple[str, str | None], ...] = (
    (BATCH, DATA),
    (SEQUENCE, None),
    (LAYERS, None),
    (VOCAB, MODEL),
    (EMBED, None),
    (Q_HEADS, MODEL),
    (KV_HEADS, MODEL),
    (HEAD_DIM, None),
    (MLP, MODEL),
    (POSITIONS, None),
)


def fsdp_rules(rules=RULES) -> tuple[tuple[str, str | None], ...]:
    """`rules` with the hidden dimension (`embed`) also sharded over 'data'
    (FSDP / ZeRO-3 style), for models that do not fit the 'model' axis alone."""
    return tuple((name, DATA if name == EMBED else target) for name, target in rules)


FSDP_RULES = fsdp_rules()
