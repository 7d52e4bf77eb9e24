"""Label overlap against DADApy 0.3.4 (stored fixtures) and the float64 reference.

Label overlaps are ratios of exact neighbour counts: with the same neighbour lists
float32 and float64 agree to a float32 weighted mean's rounding. Neighbours float32
cannot order may trade places: the tolerance is the rank rule (tests/helpers/tolerances.py,
label_overlap_atol: 1 / k_i per swap in point i's list, weighted), from each test's
points; 0 where they have no near-ties, and then the comparison is exact up to rounding.
"""

import os

import jax
import numpy as np
import pytest
from helpers import tolerances
from reference import oracle

from geom_jax import metrics


def _keywords(kwargs):
    """The oracle's and tolerances' keywords as label_overlap's (k is label_k there)."""
    return {("label_k" if name == "k" else name): v for name, v in kwargs.items()}


def fixture(name):
    return os.path.join(os.path.dirname(__file__), "fixtures", name)


@pytest.fixture(scope="module")
def clouds():
    return np.load(fixture("clouds_reference.npz"))


@pytest.fixture(scope="module")
def dadapy():
    return np.load(fixture("similarity_reference.npz"))


def test_every_layer_matches_dadapy_on_the_manifold(clouds):
    """The per-layer form: a stack [3, 4000, 64] with labels [4000] in one call each."""
    points, labels = clouds["manifold/points"], clouds["manifold/labels"]
    for kwargs, field in (({"k": 30}, "k30"), ({"class_fraction": 0.3}, "cf03")):
        tolerances.assert_rank_field(
            metrics.label_overlap(points, labels, **_keywords(kwargs)),
            clouds[f"manifold/label_overlap_{field}"],
            "label_overlap",
            tolerances.label_overlap_atol(points, labels, **kwargs),
            f"{field}: ",
        )


def test_masked_llm_clouds_match_dadapy_on_their_distinct_points(clouds, dadapy):
    """SmolLM2 last-token states (576 dims, 77 classes of 1 to 273 points): the mask
    keeps each layer's distinct rows, which is what DADApy was given."""
    points, labels = clouds["smollm2_last_token/points"], clouds["smollm2_last_token/labels"]
    mask = dadapy["smollm2_distinct/mask"]
    for kwargs, field in (({"k": 30}, "k30"), ({"class_fraction": 0.3}, "cf03")):
        tolerances.assert_rank_field(
            metrics.label_overlap(points, labels, mask, **_keywords(kwargs)),
            dadapy[f"smollm2_distinct/label_overlap_{field}"],
            "label_overlap",
            tolerances.label_overlap_atol(points, labels, mask=mask, **kwargs),
            f"{field}: ",
        )


def test_duplicates_with_different_labels_follow_the_definition(clouds):
    """The full SmolLM2 clouds hold 5 pairs of identical rows with different labels.
    DADApy drops the first neighbour column as "self", which for a copy listed first
    keeps the point itself (its own label) instead; its stored value differs from the
    definition here by about 5.6e-3 at class_fraction 0.3 (and a fresh DADApy run
    reproduces the fixture only to 4e-4: the order of tied copies decides). Here the
    point itself is excluded, copies are ordinary neighbours: the float64 reference."""
    points, labels = clouds["smollm2_last_token/points"][0], clouds["smollm2_last_token/labels"]
    for kwargs in ({"k": 30}, {"class_fraction": 0.3}):
        got = float(metrics.label_overlap(points, labels, **_keywords(kwargs)))
        want = oracle.label_overlap(points, labels, **kwargs)
        atol = tolerances.label_overlap_atol(points, labels, **kwargs)
        tolerances.assert_rank_field(got, want, "label_overlap", atol, f"{kwargs}: ")
    stored = clouds["smollm2_last_token/label_overlap_cf03"][0]
    assert abs(got - stored) > 1e-3


def small_cloud(rng, n=150, d=6, classes=5):
    centres = 2.0 * rng.standard_normal((classes, d))
    labels = rng.integers(0, classes, n)
    x = centres[labels] + rng.standard_normal((n, d))
    labels = np.where(labels == 3, -7, labels)  # arbitrary (negative) label values
    return x.astype(np.float32), labels


@pytest.mark.parametrize("weighted", [True, False])
def test_matches_reference_with_masks_duplicates_and_a_batch(weighted):
    rng = np.random.default_rng(4)
    clouds_, labels_, masks = [], [], []
    for b in range(2):
        x, labels = small_cloud(rng)
        x[140:] = x[:10]  # exact copies, same labels
        labels[140:] = labels[:10]
        mask = rng.random(150) > 0.2 * b
        clouds_.append(x)
        labels_.append(labels)
        masks.append(mask)
    x, labels, mask = np.stack(clouds_), np.stack(labels_), np.stack(masks)
    for kwargs in ({"k": 7}, {"class_fraction": 0.29}, {"class_fraction": 1.0 / 3.0}):
        got = metrics.label_overlap(x, labels, mask, weighted=weighted, **_keywords(kwargs))
        for b in range(2):
            want = oracle.label_overlap(x[b], labels[b], valid=mask[b], weighted=weighted, **kwargs)
            atol = tolerances.label_overlap_atol(
                x[b], labels[b], mask=mask[b], weighted=weighted, **kwargs
            )
            tolerances.assert_rank_field(got[b], want, "label_overlap", atol, f"{kwargs}, {b}: ")


def test_class_fraction_k_per_point_is_dadapys_floor():
    """Classes of 1, 2, 3 and 10 points at class_fraction 0.3: k = 1, 1, 1, 3 (int of the
    float product, at least 1). Every point's k-th neighbour decides its overlap here."""
    x = np.concatenate([np.arange(16, dtype=np.float32)[:, None] ** 1.5, np.zeros((16, 1))], 1)
    labels = np.array([0] + [1] * 2 + [2] * 3 + [3] * 10)
    got = float(metrics.label_overlap(x.astype(np.float32), labels, class_fraction=0.3))
    want = oracle.label_overlap(x, labels, class_fraction=0.3)
    atol = tolerances.label_overlap_atol(x, labels, class_fraction=0.3)
    tolerances.assert_rank_field(got, want, "label_overlap", atol)
    # With k = 2 everywhere the value changes: the k per point matters.
    assert abs(float(metrics.label_overlap(x.astype(np.float32), labels, label_k=2)) - want) > 0.01


BAD = {
    "float_labels": (
        lambda x, lab: metrics.label_overlap(x, lab * 1.0),
        "labels must be an integer",
    ),
    "labels_shape": (lambda x, lab: metrics.label_overlap(x, lab[:-1]), "labels"),
    "k_too_large": (
        lambda x, lab: metrics.label_overlap(x, lab, label_k=150),
        "label_k=150 needs N >= 151",
    ),
    "few_valid": (
        lambda x, lab: metrics.label_overlap(x, lab, np.arange(150) < 20, label_k=30),
        "k=30 needs >= 31 valid points",
    ),
    "fraction_range": (
        lambda x, lab: metrics.label_overlap(x, lab, class_fraction=1.5),
        "class_fraction must be in",
    ),
    "fraction_everything": (
        lambda x, lab: metrics.label_overlap(x, np.zeros_like(lab), class_fraction=1.0),
        "gives k = 150 neighbours",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_raises_before_compute(case):
    x, labels = small_cloud(np.random.default_rng(0))
    fn, message = BAD[case]
    with pytest.raises(ValueError, match=message):
        fn(x, labels)


def test_class_fraction_under_jit_is_refused():
    x, labels = small_cloud(np.random.default_rng(0))
    with pytest.raises(ValueError, match="class_fraction needs concrete labels"):
        jax.jit(lambda p, q: metrics.label_overlap(p, q, class_fraction=0.3))(x, labels)
    jitted = jax.jit(lambda p, q: metrics.label_overlap(p, q, label_k=5))
    want = oracle.label_overlap(x, labels, 5)
    atol = tolerances.label_overlap_atol(x, labels, k=5)
    tolerances.assert_rank_field(float(jitted(x, labels)), want, "label_overlap", atol, "jit: ")


def test_the_observable_equals_the_function_and_dadapy(clouds):
    """layer_geometry's label_overlap (every k at once, from the shared neighbour lists)
    at k = 30 is label_overlap(k=30) and DADApy's value; at smaller k, the function's."""
    points, labels = clouds["manifold/points"][:, :1500], clouds["manifold/labels"][:1500]
    geo = metrics.layer_geometry(
        points[None], observables="label_overlap", inputs={"labels": labels[None]}
    )
    assert geo.label_overlap.shape == (1, 3, 30)
    curve_atol = tolerances.label_overlap_curve_atol(points, labels, 30)  # [3, 30]
    for k in (1, 7, 30):
        tolerances.assert_rank_field(
            geo.label_overlap[0, :, k - 1],
            metrics.label_overlap(points, labels, label_k=k),
            "label_overlap_curve",
            curve_atol[:, k - 1],
            f"k={k}: ",
        )
    points, labels = clouds["manifold/points"], clouds["manifold/labels"]
    full = metrics.layer_geometry(
        points[None], observables="label_overlap", inputs={"labels": labels[None]}
    )
    tolerances.assert_rank_field(
        full.label_overlap[0, :, 29],
        clouds["manifold/label_overlap_k30"],
        "label_overlap_curve",
        tolerances.label_overlap_atol(points, labels, k=30),
    )
