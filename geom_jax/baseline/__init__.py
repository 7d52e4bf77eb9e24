"""Reference implementations of the paper's PyTorch / NumPy pipeline.

For benchmarks and parity checks only (needs the ``baseline`` extra).
"""
