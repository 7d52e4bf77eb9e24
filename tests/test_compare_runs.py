"""compare_representations (issue 23): a pooled run against its random-init control and
against itself; rows that do not correspond refused, naming the first mismatch."""

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import run_helpers, tolerances

from geom_jax import metrics
from geom_jax import run as geom_run
from geom_jax.io.representation_store import RepresentationStore
from geom_jax.run import compare
from geom_jax.run.kinds import pooled_sweep

COMPARE = os.path.join(run_helpers.ROOT, "experiments", "compare_representations.py")


def _spec(model, out, **kw):
    base = dict(
        pool="last",
        windows=True,
        max_tokens=10,
        num_prompts=40,
        batch_size=8,
        range_max=None,
        max_k=8,
        observables="gride",
    )
    base.update(kw)
    return run_helpers.small_spec(model, out, **base)


@pytest.fixture(scope="module")
def pair(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    trained, control = root / "trained", root / "random"
    geom_run.run(_spec(tiny, trained))
    geom_run.run(_spec(tiny, control, random_init=3))
    return str(trained), str(control)


def _points(folder):
    store = RepresentationStore.open_existing(os.path.join(folder, pooled_sweep.STORE))
    return np.moveaxis(store.read(slice(None)), 0, 1)


def test_trained_against_random_init(pair, tmp_path):
    trained, control = pair
    got = compare.compare(trained, control, str(tmp_path / "cmp"))
    a, b = _points(trained), _points(control)
    assert not np.allclose(a[1:], b[1:])  # other weights, other points
    want = metrics.layer_similarity(a, b, measures=("mutual_knn", "cka"), k=10)
    tolerances.assert_rank_field(
        got["mutual_knn"][0],
        want["mutual_knn"],
        "mutual_knn_matrix",
        tolerances.mutual_knn_matrix_atol(a, b, 10),
    )
    np.testing.assert_allclose(got["cka"][0], want["cka"], atol=1e-6)
    tolerances.assert_rank_field(
        got["info_imbalance"][0],
        metrics.imbalance_matrix(a, b),
        "imbalance_matrix",
        tolerances.imbalance_matrix_atol(a, b),
    )
    assert got["mutual_knn"].shape == (1, 4, 4) and got["info_imbalance"].shape == (1, 4, 4, 2)
    report = (tmp_path / "cmp" / "report.md").read_text()
    j = int(np.argmax(got["cka"][0, 2]))
    assert f"| 2 | {j} | {got['cka'][0, 2, j]:.3f} |" in report
    assert (tmp_path / "cmp" / "similarity_cka.png").read_bytes()[:4] == b"\x89PNG"
    assert "| `cka` | [V, La, Lb] |" in (tmp_path / "cmp" / "RESULTS.md").read_text()


def test_a_run_against_itself_has_a_unit_diagonal(pair, tmp_path):
    trained, _ = pair
    proc = subprocess.run(
        [
            sys.executable,
            COMPARE,
            f"--runs={trained}",
            f"--output_dir={tmp_path / 'self'}",
            "--null_permutations=20",
        ],
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(tmp_path / "self" / compare.SIMILARITY_FILE) as z:
        # both sides the same float32 lists: 1 whatever the near-ties (atol 0)
        tolerances.assert_rank_field(np.diagonal(z["mutual_knn"][0]), np.ones(4), "mutual_knn", 0.0)
        np.testing.assert_allclose(np.diagonal(z["cka"][0]), 1.0, atol=1e-6)
        np.testing.assert_array_equal(z["cka"][0], z["cka"][0].T)
        # a layer against itself beats all 20 permutations: the smallest p-value, 1 / 21
        np.testing.assert_allclose(np.diagonal(z["cka/p_value"][0]), 1 / 21)
        assert z["mutual_knn/best_match_p_value"].shape == (1, 4)
        assert z["cknna/max_p_value"].shape == (1,)
        assert np.all(np.diagonal(z["cka/calibrated"][0]) == 1.0)
    report = (tmp_path / "self" / "report.md").read_text()
    assert "| hidden state of A | best of B | score | calibrated | p (best of row) |" in report
    assert "Null: 20 permutations of B's rows" in report
    assert "| `MEASURE/p_value` | [V, La, Lb] |" in (tmp_path / "self" / "RESULTS.md").read_text()
    with run_helpers.raises_user_error(r"--null_permutations=5 is too few for a p-value"):
        compare.compare(trained, trained, str(tmp_path / "bad"), null_permutations=5)


def test_rows_that_do_not_correspond_are_refused(pair, tiny, tmp_path):
    trained, _ = pair
    other = tmp_path / "other"
    geom_run.run(_spec(tiny, other, seed=5))  # another sample of windows
    proc = subprocess.run(
        [sys.executable, COMPARE, f"--runs={trained},{other}", f"--output_dir={tmp_path / 'x'}"],
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "--runs: the runs' rows do not correspond: --seed=0 in" in line
    tokens = tmp_path / "tokens"
    geom_run.run(
        _spec(
            tiny,
            tokens,
            observables="paper",
            pool="none",
            windows=False,
            max_tokens=16,
            num_prompts=2,
        )
    )
    with run_helpers.raises_user_error(r"--runs: the first run .* is not a pooled run"):
        compare.compare(str(tokens), trained, str(tmp_path / "y"))
