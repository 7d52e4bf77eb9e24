"""Linear probes per layer (issue 29): k-fold cross-validated accuracy of a linear
classifier of row labels from each cloud's points.

For every cloud of x [..., N, D] (a layer of a pooled run, [L, N, D], or a prompt's
tokens) the valid rows are split into ``folds`` test folds; a linear classifier is
fitted on the other folds' rows and scored on the held-out fold; the result is the
mean over the folds of the held-out accuracy and its spread (NumPy's ``std``,
ddof = 0, of the per-fold accuracies: what ``np.std(cross_val_score(...))`` gives).

Folds (computed on the host in NumPy, so the labels and the mask must be concrete):

* ``stratify=True`` (the default): scikit-learn's
  ``StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)`` over the valid
  rows in index order (`stratified_folds_host`, its algorithm transcribed: every
  class spread over the folds as evenly as its count allows). It is what
  ``cross_val_score`` uses for a classifier given ``cv=folds`` (without shuffling
  there), and it keeps every class in every training set once each class has at
  least ``folds`` valid rows (refused otherwise).
* ``stratify=False``: ``KFold(n_splits=folds, shuffle=True, random_state=seed)``
  (`linear_predictivity.fold_groups_host`). A training set can then lack a class:
  that class is never predicted in that fold (as scikit-learn, which only knows the
  classes it was fitted on).

Classifiers (classes: the distinct valid labels of the cloud, ascending; a decision
tied between classes goes to the lower one, as ``np.argmax``):

* ``kind="ridge"``: scikit-learn's ``RidgeClassifier(alpha=alpha)``: targets +1 for
  the row's class and -1 for the others (one-vs-rest), an intercept (the training
  rows' means of points and targets are removed, the intercept is not penalised),
  W = (Xc^T Xc + alpha I)^{-1} Xc^T Yc by a float32 Cholesky solve (the N x N
  kernel form Xc^T (Xc Xc^T + alpha I)^{-1} Yc when N < D, as scikit-learn's
  solver), prediction the class of the largest decision. With two classes
  scikit-learn fits one column and predicts the second class where its decision is
  > 0: the two columns here are exact negatives (rounding is symmetric), so the
  argmax is the same rule.
* ``kind="logistic"``: scikit-learn's ``LogisticRegression(C=C)`` (L2 penalty,
  lbfgs): the minimiser of ``C * sum_i CE_i + |W|^2 / 2`` over the training rows
  (multinomial cross-entropy, intercepts not penalised), with two classes the
  binomial form scikit-learn then fits (the same as the multinomial one with C / 2).
  Minimised by ``optax.lbfgs`` (zoom line search) in float32, on the points centred
  on the training mean and divided by their RMS (the penalty rescaled to match: the
  minimiser is the same, the problem well scaled) until the gradient's Euclidean
  norm falls below ``tol``, the objective stops decreasing (`STALL_STEPS`), or after
  ``max_iter`` steps. scikit-learn stops at its
  ``max_iter=100`` by default, often before convergence; compare with a larger one.

Cost (ridge; N rows, D dims, F folds, per cloud): F (2 N D min(N, D) + min(N, D)^3 / 3)
FLOPs, and F N D floats of centred training rows in flight. Logistic: about 4 N D K
FLOPs per objective evaluation (K classes), a few per L-BFGS step, all folds of a
cloud optimised together (vmap). Clouds run one after another (``lax.map``) in one
jitted call.

References: Alain & Bengio 2016, Understanding intermediate layers using linear
classifier probes (arXiv 1610.01644); probes per layer against intrinsic dimension:
Cheng et al. 2025, Emergence of a high-dimensional abstraction phase in language
transformers (ICLR 2025). Checked against scikit-learn's StratifiedKFold,
RidgeClassifier and LogisticRegression (tests/test_probes.py).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.scipy.linalg import cho_factor, cho_solve

from geom_jax.errors import ArgumentError
from geom_jax.metrics import validation
from geom_jax.metrics.similarity.linear_predictivity import fold_groups_host

HIGHEST = lax.Precision.HIGHEST
KINDS = ("ridge", "logistic")
STALL_STEPS = 10
STALL_EPS = 4 * float(np.finfo(np.float32).eps)
"""L-BFGS also stops after STALL_STEPS steps that lower the objective by no more than
STALL_EPS of its value: float32 cannot resolve a better minimiser (the gradient's
floor, about 1e-7 to 1e-6 here, can sit above tol)."""


# -- folds (host) ---------------------------------------------------------------------


def stratified_folds_host(labels, valid, folds, seed):
    """NumPy int32 [N]: the test fold of each row under scikit-learn's
    ``StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)`` over the valid
    rows of valid [N] (in index order) with labels [N]; -1 at invalid rows.

    Transcribed from ``StratifiedKFold._make_test_folds``: classes numbered by first
    appearance; the rows sorted by class dealt round-robin to the folds give each
    fold's count of each class; per class in that order, the fold numbers (repeated
    by those counts) are shuffled by one ``np.random.RandomState(seed)`` and assigned
    to the class's rows in index order."""
    valid = np.asarray(valid, bool)
    where = np.flatnonzero(valid)
    y = np.asarray(labels)[where]
    out = np.full(valid.shape, -1, np.int32)
    if y.size == 0:
        return out
    rng = np.random.RandomState(seed)
    _, first, inverse = np.unique(y, return_index=True, return_inverse=True)
    _, by_appearance = np.unique(first, return_inverse=True)
    encoded = by_appearance[inverse.reshape(-1)]
    n_classes = len(first)
    in_order = np.sort(encoded)
    allocation = np.asarray(
        [np.bincount(in_order[i::folds], minlength=n_classes) for i in range(folds)]
    )
    test = np.empty(len(y), np.int32)
    for k in range(n_classes):
        fold_of = np.arange(folds).repeat(allocation[:, k])
        rng.shuffle(fold_of)
        test[encoded == k] = fold_of
    out[where] = test
    return out


def kfold_folds_host(valid, folds, seed):
    """NumPy int32 [N]: the test fold of each row under ``KFold(n_splits=folds,
    shuffle=True, random_state=seed)`` over the valid rows; -1 at invalid rows."""
    valid = np.asarray(valid, bool)
    out = np.full(valid.shape, -1, np.int32)
    for f, group in enumerate(fold_groups_host(valid, folds, seed)):
        out[group[group >= 0]] = f
    return out


def fold_ids_host(labels, valid, folds, seed, stratify=True):
    """`stratified_folds_host` or `kfold_folds_host` of one cloud."""
    if stratify:
        return stratified_folds_host(labels, valid, folds, seed)
    return kfold_folds_host(valid, folds, seed)


# -- checks ---------------------------------------------------------------------------


def _check_options(kind, folds, seed, stratify, alpha, C, max_iter, tol):
    validation.check_choice(kind, "kind", KINDS)
    validation.check_int(folds, "folds", 2)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ArgumentError("{seed} must be an integer in [0, 2^32), got {v!r}", "seed", v=seed)
    validation.check_flag(stratify, "stratify")
    if not validation.is_number(alpha) or not (math.isfinite(alpha) and alpha >= 0):
        raise ArgumentError("{alpha} must be a finite number >= 0, got {v!r}", "alpha", v=alpha)
    if not validation.is_number(C) or not (math.isfinite(C) and C > 0):
        raise ArgumentError("{C} must be a finite number > 0, got {v!r}", "C", v=C)
    validation.check_int(max_iter, "max_iter", 1)
    if not validation.is_number(tol) or not (math.isfinite(tol) and tol > 0):
        raise ArgumentError("{tol} must be a finite number > 0, got {v!r}", "tol", v=tol)


def _as_labels(labels, shape):
    """labels as a concrete NumPy integer array broadcast to shape (batch + (N,))."""
    labels = validation.as_array(labels, "labels")
    if not validation.is_concrete(labels):
        raise ArgumentError(
            "{labels} must be concrete (the folds are computed on the host): call "
            "linear_probe outside jit",
            "labels",
        )
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ArgumentError(
            "{labels} must be an integer array [..., N], got dtype {dtype}",
            "labels",
            dtype=labels.dtype,
        )
    if labels.ndim == 0 or labels.shape[-1] != shape[-1]:
        raise ArgumentError(
            "{labels} must have shape [..., N] with N = {n}, got {got}",
            "labels",
            n=shape[-1],
            got=tuple(labels.shape),
        )
    try:
        return np.broadcast_to(labels, shape)
    except ValueError:
        raise ArgumentError(
            "{labels} of shape {got} does not broadcast to the points' {shape}",
            "labels",
            got=tuple(labels.shape),
            shape=shape,
        ) from None


def _where(index, batch):
    return f"cloud {tuple(int(i) for i in np.unravel_index(index, batch)) if batch else ()}"


def _plan(labels, valid, batch, folds, seed, stratify):
    """Per cloud (flattened batch): the class index of each row among the cloud's
    distinct valid labels (ascending; -1 invalid) [B, N], its test fold [B, N], and the
    largest number of classes K. Checks every cloud before anything is computed."""
    n = labels.shape[-1]
    lab = labels.reshape(-1, n)
    val = valid.reshape(-1, n)
    enc = np.full(lab.shape, -1, np.int32)
    fold = np.full(lab.shape, -1, np.int32)
    done = {}
    n_classes = 2
    for b in range(lab.shape[0]):
        key = (lab[b].tobytes(), val[b].tobytes())
        if key in done:
            enc[b], fold[b] = enc[done[key]], fold[done[key]]
            continue
        done[key] = b
        classes, inverse, counts = np.unique(
            lab[b][val[b]], return_inverse=True, return_counts=True
        )
        if len(classes) < 2:
            raise ArgumentError(
                "{labels} must have at least 2 classes among the valid rows of each cloud, "
                "{where} has {count}",
                "labels",
                where=_where(b, batch),
                count=len(classes),
            )
        if stratify and counts.min() < folds:
            raise ArgumentError(
                "{folds}={value} is more than the {count} valid rows of class {label} at "
                "{where} (stratified folds need every class in every fold)",
                "folds",
                value=folds,
                count=int(counts.min()),
                label=classes[np.argmin(counts)].item(),
                where=_where(b, batch),
            )
        if int(val[b].sum()) < folds:
            raise ArgumentError(
                "{folds}={value} is more than the {count} valid rows at {where}",
                "folds",
                value=folds,
                count=int(val[b].sum()),
                where=_where(b, batch),
            )
        enc[b, val[b]] = inverse.reshape(-1)
        fold[b] = fold_ids_host(lab[b], val[b], folds, seed, stratify)
        n_classes = max(n_classes, len(classes))
    return enc, fold, n_classes


# -- classifiers (one cloud, one fold) ------------------------------------------------


def _ridge_scores(x, targets, train, alpha):
    """Decisions [N, K] of the ridge classifier fitted on the rows where train is True
    (x [N, D] zero at invalid rows, targets [N, K] one-hot)."""
    n, d = x.shape
    t = train.astype(x.dtype)[:, None]
    count = jnp.sum(t)
    y = 2.0 * targets - 1.0
    mu = jnp.sum(t * x, axis=0) / count
    ybar = jnp.sum(t * y, axis=0) / count
    xc = x - mu
    xt = t * xc
    yt = t * (y - ybar)
    if d <= n:
        a = jnp.matmul(xt.T, xt, precision=HIGHEST) + alpha * jnp.eye(d, dtype=x.dtype)
        w = cho_solve(cho_factor(a, lower=True), jnp.matmul(xt.T, yt, precision=HIGHEST))
    else:
        # Rows outside the training set get a unit diagonal (their targets are 0, so
        # their dual coefficients are 0). Centring leaves the training rows' indicator
        # t an eigenvector of the kernel with eigenvalue alpha; the targets are
        # orthogonal to it, so lifting that eigenvalue to alpha + the mean diagonal
        # (c t t^T) changes no coefficient and keeps a small alpha solvable in float32.
        k = jnp.matmul(xt, xt.T, precision=HIGHEST)
        lift = jnp.trace(k) / (count * count)
        g = k + jnp.diag(alpha * t[:, 0] + (1.0 - t[:, 0])) + lift * (t * t.T)
        dual = cho_solve(cho_factor(g, lower=True), yt)
        w = jnp.matmul(xt.T, dual, precision=HIGHEST)
    return jnp.matmul(xc, w, precision=HIGHEST) + ybar


def _logistic_scores(x, targets, train, seen, C, max_iter, tol):
    """Logits [N, K] of the L2-penalised logistic regression fitted on the training rows
    (classes not seen in training take no part: -inf logits)."""
    d = x.shape[-1]
    t = train.astype(x.dtype)
    count = jnp.sum(t)
    mu = jnp.sum(t[:, None] * x, axis=0) / count
    xc = x - mu
    scale = jnp.sqrt(jnp.sum(t[:, None] * xc * xc) / (count * d))
    scale = jnp.where(scale > 0, scale, 1.0)
    xs = xc / scale
    # scikit-learn fits the binomial model to two classes: the multinomial one at C / 2.
    c_eff = jnp.where(jnp.sum(seen) == 2, 0.5 * C, C)
    # C * sum CE + |W|^2 / 2 in x's units, divided by C * count, in xs's units (W' = s W).
    lam = 1.0 / (c_eff * count * scale * scale)

    def logits_of(params, points):
        w, b = params
        z = jnp.matmul(points, w, precision=HIGHEST) + b
        return jnp.where(seen, z, -jnp.inf)

    def objective(params):
        z = logits_of(params, xs)
        own = jnp.sum(jnp.where(targets > 0, z, 0.0), axis=-1)
        ce = jax.nn.logsumexp(z, axis=-1) - own
        return jnp.sum(t * ce) / count + 0.5 * lam * jnp.sum(params[0] * params[0])

    k = targets.shape[-1]
    params = (jnp.zeros((d, k), x.dtype), jnp.zeros((k,), x.dtype))
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry):
        params, state, best, stalled = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(
            grad, state, params, value=value, grad=grad, value_fn=objective
        )
        new = optax.tree.get(state, "value")
        better = new < best - STALL_EPS * jnp.abs(best)
        stalled = jnp.where(better, 0, stalled + 1)
        return optax.apply_updates(params, updates), state, jnp.minimum(best, new), stalled

    def going(carry):
        _, state, _, stalled = carry
        count_ = optax.tree.get(state, "count")
        norm = optax.tree.norm(optax.tree.get(state, "grad"))
        return (count_ == 0) | ((count_ < max_iter) & (norm >= tol) & (stalled < STALL_STEPS))

    state = solver.init(params)
    carry = (params, state, jnp.asarray(jnp.inf, x.dtype), jnp.asarray(0, jnp.int32))
    params = lax.while_loop(going, step, carry)[0]
    return logits_of(params, xs)


@functools.partial(jax.jit, static_argnames=("kind", "folds", "n_classes", "options"))
def _fold_counts(x, enc, fold, *, kind, folds, n_classes, options):
    """(correct float32, tested int32) [B, F]: held-out rows classified correctly (NaN
    where a held-out decision is not finite: a singular or overflowing fit) and
    held-out rows, per cloud of x [B, N, D] and fold."""
    opts = dict(options)

    def cloud(args):
        xb, eb, fb = args
        valid = fb >= 0
        xb = jnp.where(valid[:, None], xb, 0.0)
        targets = jax.nn.one_hot(eb, n_classes, dtype=xb.dtype)

        def one_fold(f):
            train = valid & (fb != f)
            test = fb == f
            seen = jnp.sum(jnp.where(train[:, None], targets, 0.0), axis=0) > 0
            if kind == "ridge":
                scores = _ridge_scores(xb, targets, train, opts["alpha"])
            else:
                scores = _logistic_scores(
                    xb, targets, train, seen, opts["C"], opts["max_iter"], opts["tol"]
                )
            pred = jnp.argmax(jnp.where(seen, scores, -jnp.inf), axis=-1)
            correct = jnp.sum(test & (pred == eb), dtype=jnp.int32).astype(jnp.float32)
            finite = jnp.all(jnp.where(test[:, None] & seen, jnp.isfinite(scores), True))
            return jnp.where(finite, correct, jnp.nan), jnp.sum(test, dtype=jnp.int32)

        return jax.vmap(one_fold)(jnp.arange(folds))

    return lax.map(cloud, (x, enc, fold))


# -- public ---------------------------------------------------------------------------


def fold_counts(
    x,
    labels,
    mask=None,
    *,
    kind="ridge",
    folds=5,
    seed=0,
    stratify=True,
    alpha=1.0,
    C=1.0,
    max_iter=1000,
    tol=1e-6,
):
    """Per fold: (correct, tested) [..., F]: held-out rows classified correctly
    (float32, a whole number, NaN where a held-out decision is not finite) and held-out
    rows (int32). The arguments are those of :func:`linear_probe`."""
    _check_options(kind, folds, seed, stratify, alpha, C, max_iter, tol)
    x = validation.as_points(x, "x")
    batch, n = tuple(x.shape[:-2]), x.shape[-2]
    labels = _as_labels(labels, batch + (n,))
    mask = validation.as_mask(mask, batch, n)
    if mask is not None and not validation.is_concrete(mask):
        raise ArgumentError(
            "{mask} must be concrete (the folds are computed on the host): call "
            "linear_probe outside jit",
            "mask",
        )
    valid = np.ones(batch + (n,), bool) if mask is None else np.asarray(mask)
    enc, fold, n_classes = _plan(labels, valid, batch, int(folds), int(seed), bool(stratify))
    if validation.is_concrete(x):
        validation.check_finite(x, valid, "x")
    if kind == "ridge":
        options = {"alpha": float(alpha)}
    else:
        options = {"C": float(C), "max_iter": int(max_iter), "tol": float(tol)}
    correct, tested = _fold_counts(
        x.reshape((-1,) + x.shape[-2:]),
        jnp.asarray(enc),
        jnp.asarray(fold),
        kind=kind,
        folds=int(folds),
        n_classes=n_classes,
        options=tuple(sorted(options.items())),
    )
    return correct.reshape(batch + (folds,)), tested.reshape(batch + (folds,))


def linear_probe(
    x,
    labels,
    mask=None,
    *,
    kind="ridge",
    folds=5,
    seed=0,
    stratify=True,
    alpha=1.0,
    C=1.0,
    max_iter=1000,
    tol=1e-6,
):
    """Cross-validated accuracy of a linear probe of the row labels, per cloud.

    Args:
      x: float [..., N, D] point clouds; a stack [L, N, D] with labels [N] probes
        every layer, [L], in one call.
      labels: integer [..., N] class of each row (broadcast against x's leading axes
        as NumPy does: a per-prompt stack [P, L, N, D] takes [P, 1, N]); any integer
        values, the classes of a cloud being its distinct valid labels. Read on the
        host (concrete, not traced).
      mask: bool [..., N] valid rows (None: all); only they are fitted, tested and
        counted. Read on the host.
      kind: "ridge" (scikit-learn's RidgeClassifier) or "logistic" (its
        LogisticRegression, multinomial, L2).
      folds: number of folds (>= 2; stratified: at most the smallest class's valid
        rows in every cloud).
      seed: the folds' random_state (an integer in [0, 2^32)).
      stratify: StratifiedKFold (True) or KFold (False), both shuffled.
      alpha: ridge penalty (RidgeClassifier's alpha; kind="ridge").
      C: inverse L2 penalty (LogisticRegression's C; kind="logistic").
      max_iter: L-BFGS steps at most (kind="logistic").
      tol: L-BFGS stops once the Euclidean norm of the gradient of the objective
        (mean cross-entropy plus penalty, on the rescaled points) is below it.

    Returns:
      (mean, std): float32 [...] each, the mean over the folds of the held-out
      accuracy and its standard deviation over the folds with ddof = 0 (as
      ``np.mean`` and ``np.std`` of scikit-learn's ``cross_val_score``). NaN where a
      fold's held-out decisions are not finite (a singular ridge system at alpha = 0).

    Raises:
      ValueError (:class:`~geom_jax.errors.ArgumentError`): naming the argument, before
      anything is computed: a kind not in ("ridge", "logistic"), folds < 2, folds above
      a class's (stratified) or a cloud's valid rows, a cloud with fewer than two
      classes, labels or mask not of shape [..., N], non-finite points at valid rows.

    References: Alain & Bengio 2016 (arXiv 1610.01644), linear classifier probes;
    Cheng et al., ICLR 2025 (arXiv 2405.15471), probes per layer against intrinsic
    dimension.
    """
    correct, tested = fold_counts(
        x,
        labels,
        mask,
        kind=kind,
        folds=folds,
        seed=seed,
        stratify=stratify,
        alpha=alpha,
        C=C,
        max_iter=max_iter,
        tol=tol,
    )
    accuracy = correct.astype(jnp.float32) / tested.astype(jnp.float32)
    return jnp.mean(accuracy, axis=-1), jnp.std(accuracy, axis=-1)
