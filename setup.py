"""geom-jax: the geometry of token representations inside LLMs, in JAX."""

from setuptools import find_packages, setup

# Ranges, not pins: they hold on Python 3.11 with jax 0.10 (CPU) and on
# Python 3.12 with jax 0.11 (CUDA/TPU images).
INSTALL_REQUIRES = [
    "jax>=0.10,<0.12",
    "flax>=0.12,<0.14",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11",
    "chex>=0.1.89",
    "absl-py>=2.1",
    "numpy>=1.26",
    "transformers>=5.0,<6",
    "tokenizers>=0.21",
    "safetensors>=0.4",
    "huggingface_hub>=0.30",
    "gguf>=0.16",
    "datasets>=3.0",
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "xarray>=2024.1",
    # representations.zarr (geom_jax.io.representation_store); orbax brings it too.
    "tensorstore>=0.1.60",
]

# torch is used only by tests and the PyTorch baseline, never by geom_jax
# itself. The upper bound selects the CPU wheel shipped on the build machines.
TORCH = "torch>=2.4,<=2.13.0"
BASELINE = [TORCH, "accelerate>=1.0", "scikit-learn>=1.4", "scipy>=1.12"]

setup(
    name="geom_jax",
    version="0.1.0",
    description=(
        "JAX-native measurements of the geometry of token representations "
        "(intrinsic dimension, neighbourhood overlap, cosine similarity) "
        "inside large language models."
    ),
    python_requires=">=3.11",
    packages=find_packages(include=["geom_jax", "geom_jax.*"]),
    # The C++ sources of the CPU kernels, compiled on first use (native_kernels.py).
    package_data={"geom_jax.metrics.neighbours": ["native/*.cc"]},
    install_requires=INSTALL_REQUIRES,
    # Observables outside geom_jax.metrics register through this group, as another
    # package's would (geom_jax.metrics.declare.registry.discover).
    entry_points={
        "geom_jax.observables": ["lens = geom_jax.lens.observables:OBSERVABLES"],
    },
    extras_require={
        "baseline": BASELINE,
        # zarr-python: the independent reader of representations.zarr in the tests.
        "test": BASELINE + ["pytest>=8", "pytest-xdist>=3.5", "networkx>=3", "zarr>=3"],
    },
)
