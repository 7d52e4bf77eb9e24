"""The pipeline with observables beyond the paper's: shapes, per-token file, model inputs."""

import json

import jax.numpy as jnp
import numpy as np
from helpers import run_helpers, tolerances

from geom_jax import metrics, models, pipeline, results
from geom_jax import run as geom_run
from geom_jax.metrics.declare import observable, registry
from geom_jax.run import sweep


def _scaled_norm(ctx):
    w = ctx.input("final_norm_scale")  # shared: [D]
    norm = jnp.sqrt(jnp.sum((ctx.x * w) ** 2, -1))
    return {"scaled_norm": jnp.sum(norm * ctx.valid, -1) / jnp.sum(ctx.valid, -1)}


SCALED_NORM = observable.Observable(
    "scaled_norm",
    compute=_scaled_norm,
    fields=(observable.Field("scaled_norm", (), "mean norm after the final scale.", length=True),),
    consumes=("points", "final_norm_scale"),
    model_inputs=(
        observable.ModelInput(
            "final_norm_scale",
            lambda m, out: m.final_norm_scale[...],
            per_prompt=False,
            doc="[D] the final norm's scale",
        ),
    ),
)


def test_pipeline_all_observables_and_a_model_input(tiny, tmp_path):
    model, _ = models.load(tiny)
    with registry.registered(SCALED_NORM):
        _all_observables_and_a_model_input(model, tmp_path)
    assert "scaled_norm" not in registry.REGISTRY and "final_norm_scale" not in registry.INPUTS


def _all_observables_and_a_model_input(model, tmp_path):
    pipe = pipeline.GeometryPipeline(model, range_max=8, max_k=8, observables="all", id_k=6)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, model.config.vocab_size, (2, 40)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 30:] = 0
    rows = pipe.to_host(pipe(ids, mask))
    n_layers = model.config.num_layers
    shapes = {k: v.shape for k, v in pipe.output_shapes(2, 40).items()}
    assert shapes["local_id"] == (2, n_layers, 40)
    assert shapes["reciprocity"] == (2, n_layers, 8)
    assert shapes["info_imbalance_next"] == (2, n_layers - 1, 2)
    assert shapes["cos_mean"] == (2, n_layers + 1)
    assert {k: v.shape for k, v in rows.items()} == shapes
    assert np.all(np.isnan(rows["local_id"][1, :, 30:]))
    assert np.all(np.isfinite(rows["local_id"][0]))
    fwd = model(jnp.asarray(ids), jnp.asarray(mask))
    hidden = np.asarray(fwd.hidden_states)[1:].transpose(1, 0, 2, 3)
    w = np.asarray(model.final_norm_scale[...])
    for b, n in enumerate((40, 30)):
        want = np.linalg.norm(hidden[b, :, :n] * w, axis=-1).mean(-1)
        np.testing.assert_allclose(rows["scaled_norm"][b], want, rtol=1e-4)
        # the pipeline's own forward pass against this one: the rank rule of the points
        points = hidden[b, :, :n]
        tolerances.assert_rank_field(
            rows["reciprocity"][b],
            metrics.reciprocity(points, max_k=8),
            "reciprocity",
            tolerances.reciprocity_atol(points, 8),
            f"prompt {b}: ",
        )
    arrays = {
        "prompt_index": np.arange(2),
        "prompt_key": np.array(["a", "b"]),
        "shuffle_index": np.zeros(2, np.int32),
        "gride_n1": 2 ** np.arange(rows["gride_ids"].shape[-1]),
        **rows,
    }
    results.save_results(str(tmp_path), arrays, "all")
    with np.load(tmp_path / results.TOKENS_FILE) as z:
        assert z.files == ["local_id"] and z["local_id"].dtype == np.float16
    with np.load(tmp_path / results.RESULTS_FILE) as z:
        assert "local_id" not in z.files and z["info_imbalance_last"].shape == (2, n_layers, 2)
    loaded = results.load_results(str(tmp_path))
    np.testing.assert_allclose(loaded["local_id"], rows["local_id"], rtol=1e-3)
    readme = (tmp_path / results.README_FILE).read_text()
    assert f"| `local_id` | [2, {n_layers}, 40] | [P, L, T] per-token MLE local ID" in readme
    assert "| `tle_id` | layer | `tle_id` [P, L] | `id_k` |" in readme


def test_run_spec_observables_checked_and_resume_refuses_a_changed_set(tmp_path):
    bad = geom_run.RunSpec(output_dir=str(tmp_path / "x"), observables="paper,bogus")
    with run_helpers.raises_user_error(r"^--observables: unknown observable 'bogus'"):
        geom_run.checks.check_spec(bad)
    assert registry.resolve("reciprocity,paper").canonical == "gride,cosine,overlap,reciprocity"
    out = tmp_path / "run"
    spec = geom_run.RunSpec(output_dir=str(out), observables="paper")
    geom_run.output_dir.check_output_dir(spec)
    geom_run.output_dir.record_run_config(spec)
    # a started run: a folder with only run_config.json is reusable by any run (issue 13)
    (out / sweep.CHECKPOINT_DIR / "1").mkdir(parents=True)
    again = geom_run.RunSpec(output_dir=str(out), observables="all", resume=True)
    with run_helpers.raises_user_error(r"observables='paper' \(now 'all'\)"):
        geom_run.output_dir.check_output_dir(again)
    geom_run.output_dir.check_output_dir(geom_run.RunSpec(output_dir=str(out), resume=True))
    # A run recorded before --observables existed was the paper's set.
    config = out / results.RUN_CONFIG_FILE
    saved = json.loads(config.read_text())
    del saved["observables"]
    config.write_text(json.dumps(saved))
    geom_run.output_dir.check_output_dir(geom_run.RunSpec(output_dir=str(out), resume=True))
