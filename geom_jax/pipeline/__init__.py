"""The fused step (model forward and every observable in one jitted call) and the
model bound to it: ``GeometryPipeline``."""

from geom_jax.pipeline.fused import GeometryPipeline, check_token_ids, execution_dtypes
from geom_jax.pipeline.pooled import PooledPipeline, pooled_step
from geom_jax.pipeline.schema import (
    MODEL_FIELDS,
    STATUS_NON_FINITE,
    health_fields,
    layer_status,
    result_fields,
    status_flags,
)
from geom_jax.pipeline.step import (
    PromptGeometry,
    cloud_geometry,
    geometry_from_hidden,
    geometry_step,
)

__all__ = [
    "GeometryPipeline",
    "MODEL_FIELDS",
    "PooledPipeline",
    "PromptGeometry",
    "cloud_geometry",
    "pooled_step",
    "STATUS_NON_FINITE",
    "check_token_ids",
    "execution_dtypes",
    "geometry_from_hidden",
    "geometry_step",
    "health_fields",
    "layer_status",
    "result_fields",
    "status_flags",
]
