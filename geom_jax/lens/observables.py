"""The ``lens`` and ``logit_id`` observables of the registry (prompt scope).

Both need the model, not only the hidden states, so the fused step computes
their inputs under GSPMD before the metrics' shard_map (see
:func:`geom_jax.pipeline.register_model_input`): ``lens_stats`` [B, L+1, T, 3]
(per-position entropy, free energy and expected energy of every hidden
state's lens logits, in vocabulary pieces) and ``logit_points`` [B, T, r]
(the final hidden states times a factor F of W_U^T W_U, computed once per
model). The observables reduce them per prompt. Neither is part of
``--observables=all`` (they are ~(L+1) times the cost of the model's own
read-out); ask for them by name.

Options: ``lens`` = "logit" (default) or "tuned:DIR" (a folder of
``experiments/train_tuned_lens.py``); ``logit_range_max`` (default 64, the
follow-up's range). Registered through the ``geom_jax.observables`` entry
point group (setup.py), as another package's observables would be.
"""

from __future__ import annotations

import jax.numpy as jnp

from geom_jax.errors import ArgumentError
from geom_jax.lens import logit_cloud, report, tuned, uncertainty
from geom_jax.lens.unembedding import readout as model_readout
from geom_jax.metrics import validation
from geom_jax.metrics.declare.observable import Field, ModelInput, Observable, Option
from geom_jax.metrics.measures.intrinsic_dimension import TWONN_DISCARD_FRACTION

LOGIT_LENS = "logit"
TUNED_PREFIX = "tuned:"
REFERENCE_LENS = (
    "nostalgebraist 2020 (logit lens); Belrose et al. 2023, arXiv 2303.08112 (tuned lens); "
    "definitions of H, F, E: Cheng et al., arXiv 2405.15471 (revised)"
)


def parse_lens(spec: str) -> str | None:
    """None for the logit lens, the folder for "tuned:DIR"; ValueError otherwise."""
    if spec == LOGIT_LENS:
        return None
    if isinstance(spec, str) and spec.startswith(TUNED_PREFIX) and spec[len(TUNED_PREFIX) :]:
        return spec[len(TUNED_PREFIX) :]
    raise ArgumentError("{lens} must be 'logit' or 'tuned:DIR', got {spec!r}", "lens", spec=spec)


def _check_lens_folder(spec: str) -> None:
    """A tuned lens folder must hold a trained lens (read before any compute)."""
    folder = parse_lens(spec)
    if folder is not None:
        try:
            tuned.read_meta(folder)
        except (ValueError, OSError) as e:
            raise ArgumentError("{lens}={spec}: {problem}", "lens", spec=spec, problem=e) from None


LENS_OPTION = Option(
    "lens",
    str,
    LOGIT_LENS,
    "Lens of the lens observable: 'logit' or 'tuned:DIR' (experiments/train_tuned_lens.py).",
    check=parse_lens,
    check_inputs=_check_lens_folder,
)

LOGIT_RANGE_MAX = Option(
    "logit_range_max",
    int,
    logit_cloud.DEFAULT_RANGE_MAX,
    "Largest GRIDE neighbour rank n2 of logit_id.",
)


def load_translators(spec: str, model):
    """The (weight, bias) of a tuned lens checked against ``model``, or None (logit lens)."""
    folder = parse_lens(spec)
    if folder is None:
        return None
    lens, meta = tuned.load(folder)
    tuned.check_model(meta, model, lens_dir=folder)
    return lens.translators


def _lens_stats_input(model, out, translators):
    per = uncertainty.lens_stats(out.hidden_states, model_readout(model), translators)
    return jnp.moveaxis(per, 0, 1)  # [B, L+1, T, 3]


def _prepare_lens(model, options):
    try:
        return load_translators(options[LENS_OPTION.name], model)
    except ValueError as e:  # e.g. a tuned lens of another model
        spec = options[LENS_OPTION.name]
        raise ArgumentError("{lens}={spec}: {problem}", "lens", spec=spec, problem=e) from None


def _logit_points_input(model, out, factor):
    del model
    return logit_cloud.logit_points(out.hidden_states[-1], factor)


def _prepare_logit_points(model, options):
    del options
    ro = model_readout(model)
    return logit_cloud.logit_factor(ro.vocab_rows, softcap=ro.softcap)


def _lens_combine(_, stack):
    per = stack.input("lens_stats")  # [B, L+1, T, 3]
    valid = stack.valid
    count = jnp.sum(valid, axis=-1).astype(jnp.float32)  # [B]
    sums = jnp.sum(jnp.where(valid[:, None, :, None], per, 0.0), axis=2)  # [B, L+1, 3]
    means = jnp.where(
        count[:, None, None] > 0, sums / jnp.maximum(count, 1.0)[:, None, None], jnp.nan
    )
    means = jnp.moveaxis(means, 1, 0)  # [L+1, B, 3]: layered fields come layer-first
    return {
        "lens_entropy": means[..., 0],
        "lens_free_energy": means[..., 1],
        "lens_energy": means[..., 2],
        "token_entropy": jnp.where(valid, per[:, -1, :, 0], jnp.nan),
    }


def _logit_id_combine(_, stack):
    n = stack.valid.shape[-1]
    out = logit_cloud.cloud_id(
        stack.hidden[-1],
        stack.input("logit_points"),
        stack.valid,
        n_scales=validation.n_scales(n, stack.options["logit_range_max"]),
        discard_fraction=stack.options["twonn_discard_fraction"],
        method=stack.options["selection"],
    )
    return {
        "logit_gride_ids": out.gride_ids,
        "logit_gride_errs": out.gride_errs,
        "logit_gride_scales": out.gride_scales,
        "logit_twonn": out.twonn,
    }


def _check_logit_id(options, n):
    validation.check_range_max(n, options["logit_range_max"], name="logit_range_max")


LENS_STATS = ModelInput(
    "lens_stats",
    _lens_stats_input,
    per_prompt=True,
    doc="[B, L+1, T, 3] per-position H, F, E of each hidden state's lens",
    prepare=_prepare_lens,
)

LOGIT_POINTS = ModelInput(
    "logit_points",
    _logit_points_input,
    per_prompt=True,
    doc="[B, T, r] final hidden states x F, F F^T = W_U^T W_U",
    prepare=_prepare_logit_points,
)

LENS = Observable(
    name="lens",
    scope="prompt",
    combine=_lens_combine,
    consumes=("lens_stats",),
    model_inputs=(LENS_STATS,),
    fields=(
        Field(
            "lens_entropy", (), "mean entropy H of the lens predictions, hidden state 0..L.", "L+1"
        ),
        Field("lens_free_energy", (), "mean free energy F = -log sum exp(z - max z).", "L+1"),
        Field("lens_energy", (), "mean expected energy E = sum p (max z - z) (H = E - F).", "L+1"),
        Field(
            "token_entropy",
            ("token",),
            "the model's predictive entropy per position.",
            "",
            tokens=True,
        ),
    ),
    doc=uncertainty.__doc__,
    reference=REFERENCE_LENS,
    reduce="mean over valid positions (token_entropy: per position)",
    options=(LENS_OPTION,),
    token_cloud=True,
    in_all=False,
    report=(report.LENS_SECTION, report.UNCERTAINTY_SECTION),
)

LOGIT_ID = Observable(
    name="logit_id",
    scope="prompt",
    combine=_logit_id_combine,
    consumes=("logit_points",),
    model_inputs=(LOGIT_POINTS,),
    fields=(
        Field(
            "logit_gride_ids",
            ("logit_scale",),
            "GRIDE ID of the final logits' cloud at n1 = 2**j.",
            "",
        ),
        Field("logit_gride_errs", ("logit_scale",), "its standard error.", ""),
        Field("logit_gride_scales", ("logit_scale",), "mean logit distance (r_n1 + r_n2)/2.", ""),
        Field("logit_twonn", (), "TwoNN ID of the final logits' cloud.", ""),
    ),
    doc=logit_cloud.__doc__,
    reference="Denti et al. 2022 (GRIDE); Facco et al. 2017 (TwoNN); range 64 as arXiv 2405.15471",
    reduce="maximum likelihood over distinct positions (first occurrence kept)",
    options=(LOGIT_RANGE_MAX, TWONN_DISCARD_FRACTION),
    check=_check_logit_id,
    min_points=lambda o: (3, 3, "logit_id"),
    token_cloud=True,
    in_all=False,
    report=(report.UNCERTAINTY_SECTION,),
)

OBSERVABLES = (LENS, LOGIT_ID)
"""The entry point of the ``geom_jax.observables`` group (setup.py)."""
