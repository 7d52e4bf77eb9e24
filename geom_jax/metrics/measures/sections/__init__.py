"""The report sections the measures declare: one module per measure module, named
alike, holding its figures and texts (read from loaded runs; no JAX)."""
