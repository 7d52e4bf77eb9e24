"""Write tests/fixtures/platonic_reference.npz: platonic-rep and DADApy values for
tests/test_similarity_platonic.py.

Runs in the bench environment (torch CPU, DADApy 0.3.4), never imports geom_jax. It
imports platonic-rep's ``metrics.py`` (minyoungg/platonic-rep, Huh et al. 2024, arXiv
2405.07987) from a checkout given by ``--platonic``; that module imports
``torchaudio.functional`` (whose pure-Python ``edit_distance`` is the one function used),
so torchaudio must import: where no torchaudio build matches the installed torch,
``pip install --no-deps --target DIR torchaudio`` and delete ``DIR/torchaudio/lib/*.so``
(the compiled extension is then skipped), and put DIR on PYTHONPATH:

  git --git-dir=PLATONIC_GIT archive HEAD | tar -x -C /tmp/platonic-rep
  PYTHONPATH=DIR .bench-venv/bin/python tests/reference/platonic_reference.py \
      --platonic /tmp/platonic-rep tests/fixtures/platonic_reference.npz

Cases (all float32 points, N = 128, Dx = 24, Dy = 10; every value computed on the valid
points only, in float64 from them, except where platonic-rep casts to float32 itself:
``cycle_knn_*`` and ``lcs_knn`` are ``.float()`` means of integer counts):

* ``gauss``: x and y independent standard Gaussian clouds;
* ``curved``: x = tanh(z A) + noise, y = sin(z B) + noise, two nonlinear maps of one
  3-d Gaussian latent z (x with an offset of 3);
* ``duplicates``: as ``curved`` with another seed, its last 12 rows exact copies of
  earlier rows in both x and y (exact ties);
* ``masked``: as ``curved`` with another seed, 20 points invalid (the test fills their
  rows with garbage).

Seeds are drawn until float32 orders every list as float64 does: no two consecutive
values of a point's first K_LIST + 1 inner products of the unit rows differ by less than
GAP (absolute), nor its K_OVERLAP-th and next squared distance of the raw points (GAP
relative), exact ties (copies) apart; GAP is above tests/helpers/tolerances.py's windows,
(D + 4) eps and (D + 2) eps.

Keys ``CASE/FIELD``:

* ``x`` [N, Dx], ``y`` [N, Dy] float32; ``mask`` [N] bool (all True but for ``masked``);
* ``cycle_knn_xy``, ``cycle_knn_yx``: ``AlignmentMetrics.cycle_knn(a, b, topk=K_LIST)``
  with (a, b) = (x, y) and (y, x), on F.normalize'd float64 features (as
  ``measure_alignment.compute_score`` normalises before every metric);
* ``lcs_knn``: ``AlignmentMetrics.lcs_knn(x, y, topk=K_LIST)``: the mean over points of
  the length of the longest common subsequence of the two ordered neighbour lists, in
  [0, K_LIST] (not divided by K_LIST);
* ``edit_distance_knn``: ``AlignmentMetrics.edit_distance_knn(x, y, topk=K_LIST)``:
  1 - mean Levenshtein distance (torchaudio) of the two ordered lists / K_LIST;
* ``lists_verbatim`` bool: platonic-rep's own ``compute_nearest_neighbors`` (torch
  argsort, tie order unspecified) gave the same lists, in the same order, as the
  ties-to-the-lower-index lists (a stable argsort of the float64 inner products,
  computed pair by pair so that exact copies tie exactly); the list values above come
  from platonic-rep's metric code with its neighbour search replaced by those stable
  lists (the same numbers wherever ``lists_verbatim``; False only for ``duplicates``);
* ``cka_rbf`` [S, 2]: ``AlignmentMetrics.cka(x, y, kernel_metric="rbf",
  rbf_sigma=SIGMAS[s], unbiased=u)`` for u = False, True, on the normalised features
  (K = exp(-cdist^2 / (2 sigma^2)), HSIC biased tr(K H L H) or unbiased Song et al. 2012
  eq. 5, CKA = HSIC_kl / (sqrt(HSIC_kk HSIC_ll) + 1e-6));
* ``cka_rbf_hsic`` [S, 2, 3]: the three HSICs (kl, kk, ll) inside each of those calls
  (recorded by wrapping ``metrics.hsic_biased`` / ``hsic_unbiased``), so that a test can
  take HSIC_kl / sqrt(HSIC_kk HSIC_ll) without the 1e-6;
* ``clamped_x`` [Q, m, Dx]: ``metrics.remove_outliers(x_valid, q=QS[i])`` (the clamp of
  ``measure_alignment.prepare_features``, exact=False as its command line's default:
  the threshold is the mean over points of torch.quantile of each point's |x|), float64;
* ``data_overlap``: DADApy 0.3.4's overlap count (``return_data_overlap``, k =
  K_OVERLAP, Euclidean, raw features) on the k + 1 nearest-neighbour lists with ties to
  the lower index and the point itself first, given as ``Data(distances=(d, idx))`` and
  ``dist_indices=``;
* ``data_overlap_verbatim`` bool: ``Data(x).return_data_overlap(coordinates=y, k)``
  (scikit-learn's lists) gave that same value; False only for ``duplicates``, where
  scikit-learn may list a copy before the point itself and DADApy drops column 0
  whatever it holds.

Top-level keys: ``K_LIST``, ``K_OVERLAP``, ``SIGMAS`` [S], ``QS`` [Q].
"""

import argparse
import contextlib
import sys
import warnings

import numpy as np

N, DX, DY = 128, 24, 10
K_LIST, K_OVERLAP = 10, 30
SIGMAS = (1.0, 0.5, 0.1)
QS = (0.95, 0.7)
GAP = 5e-6
DUPLICATES, INVALID = 12, 20


def curved(rng, n=N):
    z = rng.standard_normal((n, 3))
    x = np.tanh(z @ rng.standard_normal((3, DX))) + 0.1 * rng.standard_normal((n, DX)) + 3.0
    y = np.sin(z @ rng.standard_normal((3, DY))) + 0.1 * rng.standard_normal((n, DY))
    return x, y


def unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def pairwise(a, fn):
    """[n, n] of fn(a_i, a_j) computed row by row on identical operations, so that
    identical rows give identical values."""
    return np.stack([fn(a[i][None, :], a) for i in range(len(a))])


def inner_products(a):
    return pairwise(unit(a), lambda u, v: np.sum(u * v, axis=1))


def sq_distances(a):
    return pairwise(a, lambda u, v: np.sum((u - v) ** 2, axis=1))


def stable_lists(score, k, self_first):
    """Rows of score [n, n] (smaller = nearer) ordered with ties to the lower index:
    the k nearest others, or (self_first) the point itself and then the k nearest."""
    s = score.copy()
    np.fill_diagonal(s, -np.inf if self_first else np.inf)
    return np.argsort(s, axis=1, kind="stable")[:, : k + int(self_first)]


def near_ties(score, places, relative, boundary_only):
    """True if, in some row of score [n, n] (smaller = nearer, diagonal excluded), two
    consecutive values among the first `places` + 1 (boundary_only: the places-th and
    the next) differ by more than 0 and less than GAP (relative to the larger, or
    absolute)."""
    s = score.copy()
    np.fill_diagonal(s, np.inf)
    s = np.sort(s, axis=1)[:, : places + 1]
    gap = np.diff(s, axis=1)[:, -1:] if boundary_only else np.diff(s, axis=1)
    scale = np.maximum(np.abs(s[:, -gap.shape[1] :]), 1e-300) if relative else 1.0
    return bool(np.any((gap > 0) & (gap < GAP * scale)))


def tie_free(*clouds):
    return not any(
        near_ties(-inner_products(c), K_LIST, False, False)
        or near_ties(sq_distances(c), K_OVERLAP, True, True)
        for c in clouds
    )


def draw(make, seed):
    """The first seed from `seed` on whose float32 points (valid rows) have no near-ties."""
    while True:
        out = make(np.random.default_rng(seed))
        x, y, mask = np.asarray(out[0], np.float32), np.asarray(out[1], np.float32), out[2]
        x64, y64 = x[mask].astype(np.float64), y[mask].astype(np.float64)
        if tie_free(x64, y64):
            return x, y, mask, seed
        seed += 1000


def make_gauss(rng):
    return rng.standard_normal((N, DX)), rng.standard_normal((N, DY)), np.ones(N, bool)


def make_curved(rng):
    x, y = curved(rng)
    return x, y, np.ones(N, bool)


def make_duplicates(rng):
    x, y = curved(rng)
    src = rng.choice(N - DUPLICATES, DUPLICATES, replace=False)
    x[N - DUPLICATES :], y[N - DUPLICATES :] = x[src], y[src]
    return x, y, np.ones(N, bool)


def make_masked(rng):
    x, y = curved(rng)
    mask = np.ones(N, bool)
    mask[rng.choice(N, INVALID, replace=False)] = False
    return x, y, mask


@contextlib.contextmanager
def replaced(module, name, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def list_values(metrics, torch, x, y):
    """platonic-rep's list metrics with its neighbour search replaced by stable lists,
    and whether its own search gives those lists."""
    import torch.nn.functional as F

    nx, ny = (F.normalize(torch.from_numpy(a), p=2, dim=-1) for a in (x, y))
    stable = {
        id(t): torch.from_numpy(stable_lists(-inner_products(a), K_LIST, False))
        for t, a in ((nx, x), (ny, y))
    }
    verbatim = all(
        torch.equal(metrics.compute_nearest_neighbors(t, K_LIST), stable[id(t)]) for t in (nx, ny)
    )

    def lists(feats, topk):
        assert topk == K_LIST
        return stable[id(feats)]

    am = metrics.AlignmentMetrics
    with replaced(metrics, "compute_nearest_neighbors", lists):
        return {
            "cycle_knn_xy": float(am.cycle_knn(nx, ny, K_LIST)),
            "cycle_knn_yx": float(am.cycle_knn(ny, nx, K_LIST)),
            "lcs_knn": float(am.lcs_knn(nx, ny, K_LIST)),
            "edit_distance_knn": float(am.edit_distance_knn(nx, ny, K_LIST)),
            "lists_verbatim": np.bool_(verbatim),
        }


def rbf_values(metrics, torch, x, y):
    import torch.nn.functional as F

    nx, ny = (F.normalize(torch.from_numpy(a), p=2, dim=-1) for a in (x, y))
    cka, hsic = np.zeros((len(SIGMAS), 2)), np.zeros((len(SIGMAS), 2, 3))
    for s, sigma in enumerate(SIGMAS):
        for u, unbiased in enumerate((False, True)):
            name = "hsic_unbiased" if unbiased else "hsic_biased"
            seen = []
            original = getattr(metrics, name)

            def record(kernel, other, original=original, seen=seen):
                value = original(kernel, other)
                seen.append(float(value))
                return value

            with replaced(metrics, name, record):
                cka[s, u] = metrics.AlignmentMetrics.cka(
                    nx, ny, kernel_metric="rbf", rbf_sigma=sigma, unbiased=unbiased
                )
            kk, ll, kl = seen  # cka's order: hsic_fn(K, K), hsic_fn(L, L), hsic_fn(K, L)
            hsic[s, u] = kl, kk, ll
    return {"cka_rbf": cka, "cka_rbf_hsic": hsic}


def overlap_values(x, y):
    from dadapy import Data

    auto = Data(coordinates=x, verbose=False).return_data_overlap(coordinates=y, k=K_OVERLAP)
    lists = [stable_lists(sq_distances(a), K_OVERLAP, True) for a in (x, y)]
    dist = np.take_along_axis(np.maximum(sq_distances(x), 0.0), lists[0], axis=1) ** 0.5
    base = Data(distances=(dist, lists[0]), maxk=K_OVERLAP, verbose=False)
    stable = base.return_data_overlap(dist_indices=lists[1], k=K_OVERLAP)
    return {"data_overlap": float(stable), "data_overlap_verbatim": np.bool_(auto == stable)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--platonic", required=True, help="a checkout of platonic-rep")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    sys.path.insert(0, args.platonic)
    import metrics  # platonic-rep's metrics.py
    import torch

    out = {
        "K_LIST": np.int64(K_LIST),
        "K_OVERLAP": np.int64(K_OVERLAP),
        "SIGMAS": np.array(SIGMAS),
        "QS": np.array(QS),
    }
    makers = {
        "gauss": (make_gauss, 1),
        "curved": (make_curved, 2),
        "duplicates": (make_duplicates, 3),
        "masked": (make_masked, 4),
    }
    for case, (make, seed) in makers.items():
        x, y, mask, used = draw(make, seed)
        x64, y64 = x[mask].astype(np.float64), y[mask].astype(np.float64)
        values = {"x": x, "y": y, "mask": mask}
        values.update(list_values(metrics, torch, x64, y64))
        values.update(rbf_values(metrics, torch, x64, y64))
        values["clamped_x"] = np.stack(
            [metrics.remove_outliers(torch.from_numpy(x64), q=q).numpy() for q in QS]
        )
        values.update(overlap_values(x64, y64))
        for field, value in values.items():
            out[f"{case}/{field}"] = value
        print(
            case,
            "seed",
            used,
            {k: v for k, v in values.items() if k not in ("x", "y", "mask", "clamped_x")},
        )
    np.savez_compressed(args.out, **out)


if __name__ == "__main__":
    main()
