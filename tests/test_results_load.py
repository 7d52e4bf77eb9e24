"""geom_jax.results.load: a run's files as one xarray.Dataset with named dims (issue 21,
acceptance 3)."""

import numpy as np
import pytest
from helpers import run_helpers

from geom_jax import results
from geom_jax import run as geom_run


@pytest.fixture(scope="module")
def run_dir(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("load") / "run"
    spec = run_helpers.small_spec(
        tiny,
        out,
        method="shuffled",
        max_shuffle=1,
        num_prompts=2,
        observables="paper,mle_id,info_imbalance",
        id_k=6,
    )
    geom_run.run(spec)
    return str(out)


def test_variables_equal_the_files_with_named_dims(run_dir):
    ds = results.load(run_dir)
    with np.load(f"{run_dir}/{results.RESULTS_FILE}") as z:
        stored = {k: z[k] for k in z.files}
    with np.load(f"{run_dir}/{results.TOKENS_FILE}") as z:
        tokens = {k: z[k] for k in z.files}
    names = set(ds.data_vars) | set(ds.coords)
    assert set(stored) | set(tokens) <= names
    for name, value in stored.items():
        np.testing.assert_array_equal(ds[name].values, value, err_msg=name)
        assert ds[name].dtype == value.dtype, name
    np.testing.assert_array_equal(ds["local_id"].values, tokens["local_id"].astype(np.float32))
    assert ds["gride_ids"].dims == ("row", "layer", "scale")
    assert ds["overlap"].dims == ("row", "layer_pair", "k")
    assert ds["cos_mean"].dims == ("row", "hidden_state")
    assert ds["info_imbalance_next"].dims == ("row", "layer_pair", "direction")
    assert ds["token_nll"].dims == ("row", "target") and ds["loss"].dims == ("row",)
    assert ds["local_id"].dims == ("row", "layer", "token")
    assert ds["prompt_key"].dims == ("row",) and "prompt_key" in ds.coords
    np.testing.assert_array_equal(ds["gride_n1"].values, 2 ** np.arange(ds.sizes["scale"]))
    np.testing.assert_array_equal(ds["layer"].values, [1, 2, 3])
    np.testing.assert_array_equal(ds["hidden_state"].values, [0, 1, 2, 3])
    np.testing.assert_array_equal(ds["k"].values, np.arange(1, 9))
    assert list(ds["direction"].values) == ["forward", "backward"]
    assert ds.attrs["model"].endswith("tiny-llama")
    assert '"observables": "gride,cosine,overlap,info_imbalance,mle_id"' in ds.attrs["flags"]


def test_to_dataframe_is_the_tidy_table(run_dir):
    ds = results.load(run_dir)
    df = ds[["twonn"]].to_dataframe().reset_index()
    assert len(df) == ds.sizes["row"] * ds.sizes["layer"]
    assert {"row", "layer", "twonn", "prompt_key", "shuffle_index"} <= set(df.columns)
    row = df[(df.row == 3) & (df.layer == 2)].iloc[0]
    assert row.twonn == ds["twonn"].values[3, 1]
    assert row.prompt_key == ds["prompt_key"].values[3]
    ov = ds["overlap"].sel(k=4).to_dataframe().reset_index()
    np.testing.assert_array_equal(
        ov["overlap"].values.reshape(ds.sizes["row"], -1), ds["overlap"].values[:, :, 3]
    )
