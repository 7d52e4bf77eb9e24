"""Logical axis names of every parameter and activation, and the one table of rules
mapping them onto a ('data', 'model') device mesh (MaxText-style logical sharding).

Parameters hold their names in NNX metadata (`out_sharding`, with eager
sharding off); activations and batches are named where they are placed
(`geom_jax.sharding`). `partition.mesh_spec` is the one function from names
to PartitionSpecs, and refuses a name without a rule.
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

# Activation and batch axes.
BATCH = "batch"
"""Rows of a batch: split over 'data' (the forward's GSPMD batch, host <-> device)."""
METRICS_BATCH = "metrics_batch"
"""Rows of a batch in the metrics' shard_map: every device, when the batch divides evenly."""
SEQUENCE = "sequence"
ACTIVATION_EMBED = "activation_embed"
"""The hidden dimension of activations (never sharded: the metrics need whole vectors)."""
PROCESSES = "processes"
"""Mesh axis of the one-device-per-process mesh that checkpoints rows (sweep.Checkpointer)."""
PROCESS_ROWS = "process_rows"

ACTIVATION_AXES = (BATCH, METRICS_BATCH, SEQUENCE, ACTIVATION_EMBED, PROCESS_ROWS)

RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    (BATCH, DATA),
    (METRICS_BATCH, (DATA, MODEL)),
    (SEQUENCE, None),
    (ACTIVATION_EMBED, None),
    (PROCESS_ROWS, PROCESSES),
    (LAYERS, None),
    (VOCAB, MODEL),
    (EMBED, None),
    (Q_HEADS, MODEL),
    (KV_HEADS, MODEL),
    (HEAD_DIM, None),
    (MLP, MODEL),
    (POSITIONS, None),
)


def fsdp_rules(rules=RULES) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
    """`rules` with the hidden dimension (`embed`) also sharded over 'data'
    (FSDP / ZeRO-3 style), for models that do not fit the 'model' axis alone."""
    return tuple((name, DATA if name == EMBED else target) for name, target in rules)
