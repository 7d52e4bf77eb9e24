"""One point per row: the fused forward that pools each row's hidden states.

For dataset-scale clouds (Cheng et al., ICLR 2025, arXiv 2405.15471; Valeriani et
al., NeurIPS 2023, arXiv 2302.00294) the jitted step returns, per row, the [L+1, D]
hidden states of its last valid token or their mean over its valid tokens
(embedding output first) and the row's loss; the geometry of the accumulated
clouds is computed once every row is in (:mod:`geom_jax.run.kinds.pooled`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from geom_jax import models, sharding
from geom_jax.pipeline.fused import check_token_ids


def pooled_step(graphdef, state, input_ids, attention_mask, *, pool: str, skip_first: bool):
    """Forward, pooled hidden states [B, L+1, D] float32 and row loss [B]; pure.

    skip_first: leave the first token (a BOS) out of the mean (it is the attention
    sink, whose state would dominate it)."""
    out = models.forward(graphdef, state, input_ids, attention_mask)
    pool_mask = attention_mask
    if skip_first and pool == "mean":
        pool_mask = attention_mask.at[:, 0].set(0)
    return {
        "representation": models.pool_hidden(out.hidden_states, pool_mask, pool),
        "loss": models.row_loss(out.token_nll, attention_mask),
    }


class PooledPipeline:
    """A model bound to a pooling and a device mesh.

    Example::

      model, _ = geom_jax.models.load("smollm2-135m")
      pipe = PooledPipeline(model, pool="last")
      rows = pipe.to_host(pipe(input_ids, attention_mask))   # representation [B, L+1, D]
    """

    def __init__(
        self,
        model: models.Decoder,
        *,
        pool: str,
        skip_first: bool = False,
        mesh: Mesh | None = None,
        rules=None,
    ):
        models.check_pool(pool)
        self.vocab_size = model.config.vocab_size
        self.mesh = mesh if mesh is not None else sharding.make_mesh((1, 1), jax.devices()[:1])
        graphdef, state = nnx.split(model)
        self.state = sharding.place_state(state, self.mesh, rules)
        self.layers = model.config.num_layers + 1
        self.dim = model.config.hidden_size
        self._step = jax.jit(
            functools.partial(pooled_step, graphdef, pool=pool, skip_first=skip_first),
            out_shardings=sharding.batch_sharding(self.mesh),
        )

    def __call__(self, input_ids, attention_mask=None) -> dict:
        input_ids = check_token_ids(input_ids, self.vocab_size)
        if attention_mask is None:
            attention_mask = np.ones_like(input_ids)
        ids = sharding.to_global(self.mesh, input_ids)
        mask = sharding.to_global(self.mesh, np.asarray(attention_mask, np.int32))
        return self._step(self.state, ids, mask)

    def to_host(self, out) -> dict[str, np.ndarray]:
        """This process's rows of a result, as NumPy arrays."""
        return sharding.to_host_local(self.mesh, out)

    def output_shapes(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        return {
            "representation": jax.ShapeDtypeStruct(
                (batch_size, self.layers, self.dim), jnp.float32
            ),
            "loss": jax.ShapeDtypeStruct((batch_size,), jnp.float32),
        }
