"""geom-jax: geometry of token representations in LLMs, in JAX."""

__version__ = "0.1.0"
