"""Lenses on a decoder's hidden states: entropy, free energy and expected energy
of the logit lens (or a tuned lens) per layer, the model's predictive entropy
per token, and the intrinsic dimension of the final logits' point cloud.

    model, _ = geom_jax.models.load("smollm2-135m")
    out = model(ids)
    ro = geom_jax.lens.readout(model)
    unc = geom_jax.lens.lens_uncertainty(out.hidden_states, ro)   # [B, L+1] each
    lid = geom_jax.lens.logit_id(out.hidden_states[-1],
                                 factor=geom_jax.lens.logit_factor(ro.vocab_rows))
"""

from geom_jax.lens.logit_cloud import DEFAULT_RANGE_MAX, LogitID, logit_factor, logit_id
from geom_jax.lens.uncertainty import (
    LensUncertainty,
    lens_stats,
    lens_uncertainty,
    logit_uncertainty,
    translate,
)
from geom_jax.lens.unembedding import Readout, readout

__all__ = [
    "DEFAULT_RANGE_MAX",
    "LensUncertainty",
    "LogitID",
    "Readout",
    "lens_stats",
    "lens_uncertainty",
    "logit_factor",
    "logit_id",
    "logit_uncertainty",
    "readout",
    "translate",
]
