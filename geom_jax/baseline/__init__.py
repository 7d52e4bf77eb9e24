"""Reference implementations of the paper's PyTorch/NumPy pipeline, for benchmarks and parity checks only (needs the `baseline` extra)."""
