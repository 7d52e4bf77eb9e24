"""Benchmarks and references, outside the installed package.

``reference``: the float64 NumPy transcription of the definitions (test oracle
and the source of the paper column's GRIDE); ``paper``: the paper's CPU path
operation for operation; ``peer``: what a user runs today with DADApy and
scikit-learn, executed in the separate ``make bench-env`` environment;
``torch_forward``: the Hugging Face PyTorch forward; ``benchmarking``: shared
helpers of the benchmark scripts.
"""
