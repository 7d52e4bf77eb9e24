"""What the check runs and how it compares: stages, settings (full and --quick), tolerances."""

from __future__ import annotations

import dataclasses

from geom_jax import metrics, models

REPORT_JSON = "device_report.json"


REPORT_MD = "device_report.md"


STAGES = ("correctness", "forward", "metrics", "clouds", "fused", "projection")


COMPUTE_STAGES = STAGES[:-1]


# The paper's sweep (Sec. 3): 2,244 Pile-10K prompts of 1024 tokens, each also
# block-shuffled at s = 1..5 (6 levels with the original), on three models; the
# authors report about 40 minutes on 4 H100s plus 25 minutes on 192 CPU cores
# per model.
PAPER_PROMPTS = 2244


PAPER_SHUFFLE_LEVELS = 6


PAPER_MODELS = ("llama-3-8b", "mistral-7b", "pythia-6.9b")


PAPER_MINUTES = {"gpu (4 x H100)": 40.0, "cpu (192 cores)": 25.0}


# The observable set: the one place where it is chosen. Every field the fused
# step and layer_geometry return is compared (fields present on one side only
# fail); a field without a row in TOLERANCES gets DEFAULT_TOLERANCE.
def observable_options() -> dict:
    """Keyword arguments choosing the fused correctness run's observables: every
    registered one where geom_jax.metrics has a registry (issue 10), else the
    library's only set, the paper's."""
    if hasattr(metrics, "registry"):
        return {"observables": "all"}
    return {}


TOLERANCES = {
    # field: (statistic, limit); "max_rel" is max |a - b| / max(|b|, 1e-3 max|b|)
    "gride_ids": ("max_rel", 1e-3),
    "gride_errs": ("max_rel", 1e-3),
    "gride_scales": ("max_rel", 1e-3),
    "twonn": ("max_rel", 1e-3),
    "twonn_ml": ("max_rel", 1e-3),
    "overlap": ("mean_abs", 1e-3),
    "cos_mean": ("max_rel", 1e-3),
    "cos_std": ("max_rel", 1e-3),
    "n_unique": ("max_abs", 0.0),
    "loss": ("max_rel", 1e-4),
    "token_nll": ("max_rel", 1e-4),
}


DEFAULT_TOLERANCE = ("max_rel", 1e-3)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Shapes of one run; `quick` shrinks every preset and shape."""

    quick: bool
    correctness_model: str = "smollm2-135m"
    correctness_batch: int = 2
    correctness_tokens: int = 1024
    range_max: int = 256
    max_k: int = 32
    forward_model: str = "llama-3-8b"
    tokens: int = 1024
    max_batch: int = 256
    fused_max_batch: int = 64
    metric_layers: int = 33
    metric_dim: int = 4096
    # (batch, layer_chunk) runs of the metric kernels; None: the library's choice
    metric_runs: tuple[tuple[int, int | None], ...] = ((1, None), (4, None), (4, 33))
    # One layer of a dataset-scale cloud (one point per prompt) on the row-blocked path.
    cloud_points: int = 100_000
    cloud_dim: int = 4096
    cloud_range_max: int = 256
    fused_models: tuple[str, ...] = PAPER_MODELS  # measured; the projection scales the rest
    repeats: int = 2
    # Seconds a stage needs at least: it is skipped when less of the budget is
    # left, and an earlier stage's searches leave the later stages' estimates.
    estimates: tuple[tuple[str, float], ...] = (
        ("correctness", 60.0),
        ("forward", 90.0),
        ("metrics", 30.0),
        ("clouds", 60.0),
        ("fused", 100.0),
    )

    def estimate(self, stage: str) -> float:
        return dict(self.estimates).get(stage, 0.0)


def make_settings(quick: bool, max_batch: int = 256) -> Settings:
    if not quick:
        return Settings(quick=False, max_batch=max_batch)
    return Settings(
        quick=True,
        correctness_tokens=64,
        range_max=16,
        max_k=8,
        tokens=64,
        max_batch=min(max_batch, 2),
        fused_max_batch=2,
        fused_models=("llama-3-8b", "pythia-6.9b"),
        metric_layers=5,
        metric_dim=64,
        metric_runs=((2, None),),
        cloud_points=5000,
        cloud_dim=64,
        cloud_range_max=64,
        repeats=2,
        estimates=(
            ("correctness", 5.0),
            ("forward", 5.0),
            ("metrics", 2.0),
            ("clouds", 3.0),
            ("fused", 5.0),
        ),
    )


def shrink(cfg: models.DecoderConfig) -> models.DecoderConfig:
    """The same family and options at toy size (for --quick)."""
    kv = 4 if cfg.num_kv_heads == cfg.num_heads else 2
    return cfg.replace(
        num_layers=3,
        hidden_size=64,
        num_heads=4,
        num_kv_heads=kv,
        head_dim=16,
        intermediate_size=128,
        vocab_size=512,
        rotary_dim=16 * cfg.rotary_dim // cfg.head_dim,
    )


def model_config(name: str, s: Settings) -> models.DecoderConfig:
    cfg = models.presets.get(name)
    return shrink(cfg) if s.quick else cfg
