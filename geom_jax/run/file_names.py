"""The files of a run's output folder (written by :mod:`geom_jax.results` and the runner)."""

RESULTS_FILE = "results.npz"
METADATA_FILE = "metadata.json"
RUN_CONFIG_FILE = "run_config.json"
README_FILE = "RESULTS.md"
TOKENS_FILE = "tokens.npz"
