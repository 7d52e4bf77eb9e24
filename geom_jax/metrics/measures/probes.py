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

The observable ``probes`` (a pooled run's row labels, ``layer_geometry(...,
observables="probes", inputs={"labels": ...})``) gives ``probe_accuracy`` and
``probe_accuracy_std`` per layer with the same kernel (`clouds_fold_counts`),
options ``probe_kind``, ``probe_folds``, ``probe_seed``, ``probe_alpha``,
``probe_C``, ``probe_max_iter``, ``probe_tol`` (always stratified; negative labels
are unlabelled rows). Its folds and one-hot classes are derived on the host from
the concrete labels before the jitted call (``Observable.host_inputs``); its fit is
the one on the input's points, whatever the power-of-two scale the engine measures
the cloud at.

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
from geom_jax.metrics.declare.observable import (
    POOLED,
    Field,
    HostInputs,
    Observable,
    Option,
    ReportSection,
)
from geom_jax.metrics.measures.sections import probes as sections
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


def _check_seed(v, name):
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 0 <= v < 2**32:
        raise ArgumentError("{" + name + "} must be an integer in [0, 2^32), got {v!r}", name, v=v)


def _check_finite(v, name, positive):
    ok = validation.is_number(v) and math.isfinite(v) and (v > 0 if positive else v >= 0)
    if not ok:
        raise ArgumentError(
            "{" + name + "} must be a finite number {bound}, got {v!r}",
            name,
            bound="> 0" if positive else ">= 0",
            v=v,
        )


CHECKS = {
    "kind": lambda v, name: validation.check_choice(v, name, KINDS),
    "folds": lambda v, name: validation.check_int(v, name, 2),
    "seed": _check_seed,
    "stratify": validation.check_flag,
    "alpha": lambda v, name: _check_finite(v, name, positive=False),
    "C": lambda v, name: _check_finite(v, name, positive=True),
    "max_iter": lambda v, name: validation.check_int(v, name, 1),
    "tol": lambda v, name: _check_finite(v, name, positive=True),
}
"""argument -> check(value, name): raises ArgumentError naming ``name`` (the keyword of
linear_probe, or the observable's option)."""


def _check_options(**values):
    for name, v in values.items():
        CHECKS[name](v, name)


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


def class_width(n_classes):
    """The one-hot width of n_classes classes: the power of two >= max(n_classes, 2),
    so that batches with different class counts share few compiled shapes (a column
    of a class absent from every training set takes no part)."""
    return 1 << (max(int(n_classes), 2) - 1).bit_length()


def _plan(labels, valid, batch, folds, seed, stratify, folds_name="folds"):
    """Per cloud (flattened batch): the class index of each row among the cloud's
    distinct valid labels (ascending; -1 invalid) [B, N], its test fold [B, N], and the
    one-hot width (`class_width` of the largest number of classes). Checks every cloud
    before anything is computed; errors name the folds as ``folds_name``."""
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
                "{" + folds_name + "}={value} is more than the {count} valid rows of class "
                "{label} at {where} (stratified folds need every class in every fold)",
                folds_name,
                value=folds,
                count=int(counts.min()),
                label=classes[np.argmin(counts)].item(),
                where=_where(b, batch),
            )
        if int(val[b].sum()) < folds:
            raise ArgumentError(
                "{" + folds_name + "}={value} is more than the {count} valid rows at {where}",
                folds_name,
                value=folds,
                count=int(val[b].sum()),
                where=_where(b, batch),
            )
        enc[b, val[b]] = inverse.reshape(-1)
        fold[b] = fold_ids_host(lab[b], val[b], folds, seed, stratify)
        n_classes = max(n_classes, len(classes))
    return enc, fold, class_width(n_classes)


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


def cloud_fold_counts(x, targets, fold, alpha, C, *, kind, folds, max_iter, tol):
    """(correct float32, tested int32) [F] of one cloud: held-out rows classified
    correctly (NaN where a held-out decision is not finite: a singular or overflowing
    fit) and held-out rows per fold.

    Args:
      x: [N, D] points (any values at invalid rows).
      targets: [N, K] one-hot class of each row (any numeric or bool dtype; zeros at
        unlabelled rows; a column no training row has takes no part).
      fold: int [N] test fold of each row, -1 at rows taking no part.
      alpha, C: scalars (ridge penalty, inverse logistic penalty), in x's units.
      kind, folds, max_iter, tol: as :func:`linear_probe` (static).
    """
    valid = fold >= 0
    x = jnp.where(valid[:, None], x, 0.0)
    targets = jnp.where(valid[:, None], targets.astype(x.dtype), 0.0)
    label = jnp.argmax(targets, axis=-1)

    def one_fold(f):
        train = valid & (fold != f)
        test = fold == f
        seen = jnp.sum(jnp.where(train[:, None], targets, 0.0), axis=0) > 0
        if kind == "ridge":
            scores = _ridge_scores(x, targets, train, alpha)
        else:
            scores = _logistic_scores(x, targets, train, seen, C, max_iter, tol)
        pred = jnp.argmax(jnp.where(seen, scores, -jnp.inf), axis=-1)
        correct = jnp.sum(test & (pred == label), dtype=jnp.int32).astype(jnp.float32)
        finite = jnp.all(jnp.where(test[:, None] & seen, jnp.isfinite(scores), True))
        return jnp.where(finite, correct, jnp.nan), jnp.sum(test, dtype=jnp.int32)

    return jax.vmap(one_fold)(jnp.arange(folds))


def clouds_fold_counts(x, targets, fold, alpha, C, *, kind, folds, max_iter=None, tol=None):
    """`cloud_fold_counts` of clouds x [B, N, D], targets [B, N, K], fold [B, N],
    alpha and C [B], one after another (lax.map): (correct, tested) [B, F]. What
    :func:`fold_counts` and the ``probes`` observable both run."""

    def cloud(args):
        return cloud_fold_counts(*args, kind=kind, folds=folds, max_iter=max_iter, tol=tol)

    return lax.map(cloud, (x, targets, fold, alpha, C))


@functools.partial(jax.jit, static_argnames=("kind", "folds", "n_classes", "max_iter", "tol"))
def _fold_counts(x, enc, fold, alpha, C, *, kind, folds, n_classes, max_iter, tol):
    targets = jax.nn.one_hot(enc, n_classes, dtype=jnp.bool_)
    return clouds_fold_counts(
        x, targets, fold, alpha, C, kind=kind, folds=folds, max_iter=max_iter, tol=tol
    )


@jax.jit
def summarise(correct, tested):
    """(mean, std) [...] over the last axis of the per-fold held-out accuracy
    correct / tested [..., F] (std with ddof = 0, as ``np.std``). Jitted, so that the
    public functions round as the engine does (XLA multiplies by 1 / F where an
    op-by-op division would divide)."""
    accuracy = correct.astype(jnp.float32) / tested.astype(jnp.float32)
    return jnp.mean(accuracy, axis=-1), jnp.std(accuracy, axis=-1)


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
    _check_options(
        kind=kind,
        folds=folds,
        seed=seed,
        stratify=stratify,
        alpha=alpha,
        C=C,
        max_iter=max_iter,
        tol=tol,
    )
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
    flat = x.reshape((-1,) + x.shape[-2:])
    logistic = kind == "logistic"
    correct, tested = _fold_counts(
        flat,
        jnp.asarray(enc),
        jnp.asarray(fold),
        jnp.full(flat.shape[:1], alpha, flat.dtype),
        jnp.full(flat.shape[:1], C, flat.dtype),
        kind=kind,
        folds=int(folds),
        n_classes=n_classes,
        max_iter=int(max_iter) if logistic else None,
        tol=float(tol) if logistic else None,
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
    return summarise(correct, tested)


# -- the observable ---------------------------------------------------------------------

CLASSES_INPUT, FOLD_INPUT = "probe_classes", "probe_fold"


def _option(name, kind, default, doc, check_as, **kw):
    return Option(name, kind, default, doc, check=lambda v: CHECKS[check_as](v, name), **kw)


PROBE_OPTIONS = (
    _option(
        "probe_kind",
        str,
        "ridge",
        "Linear probe: ridge (RidgeClassifier) or logistic (LogisticRegression, L2).",
        "kind",
        choices=KINDS,
    ),
    _option("probe_folds", int, 5, "Stratified folds of the probes' cross-validation.", "folds"),
    _option("probe_seed", int, 0, "random_state of the probes' shuffled folds.", "seed"),
    _option("probe_alpha", float, 1.0, "Ridge probe penalty (RidgeClassifier's alpha).", "alpha"),
    _option("probe_C", float, 1.0, "Logistic probe inverse penalty (LogisticRegression's C).", "C"),
    _option("probe_max_iter", int, 1000, "Logistic probe: L-BFGS steps at most.", "max_iter"),
    _option("probe_tol", float, 1e-6, "Logistic probe: stop below this gradient norm.", "tol"),
)


def _host_inputs(inputs, valid, options):
    """The probes' host inputs from labels [B, N] and valid [B, N]: the one-hot class
    of each labelled valid row [B, N, K] (bool, K = `class_width` of the batch's
    largest class count, zeros elsewhere) and its stratified test fold [B, N] (-1
    elsewhere). Negative labels are unlabelled rows, and so are the rows of a class with
    fewer valid rows than probe_folds in their cloud (stratified folds need every
    class in every fold; ``probe_classes`` counts the classes kept); the checks of
    `_plan` refuse a cloud left with fewer than two classes."""
    labels = np.asarray(inputs["labels"])
    if not np.issubdtype(labels.dtype, np.integer):
        raise ArgumentError(
            "{labels} must be an integer array [B, N], got dtype {dtype}",
            "labels",
            dtype=labels.dtype,
        )
    valid = valid & (labels >= 0)
    folds = options["probe_folds"]
    for b in range(labels.shape[0]):
        classes, counts = np.unique(labels[b][valid[b]], return_counts=True)
        if np.sum(counts >= folds) < 2:
            raise ArgumentError(
                "{labels} must have at least 2 classes of >= {probe_folds}={folds} valid rows "
                "in each cloud (smaller classes are left out), {where} has {count}",
                ("labels", "probe_folds"),
                folds=folds,
                where=_where(b, (labels.shape[0],)),
                count=int(np.sum(counts >= folds)),
            )
        valid[b] &= ~np.isin(labels[b], classes[counts < folds])
    enc, fold, width = _plan(
        labels,
        valid,
        (labels.shape[0],),
        options["probe_folds"],
        options["probe_seed"],
        True,
        folds_name="probe_folds",
    )
    return {CLASSES_INPUT: enc[..., None] == np.arange(width), FOLD_INPUT: fold}


def _compute(ctx):
    """probe_accuracy and probe_accuracy_std [C] of the chunk's clouds: the penalties
    carried into the units of ctx.x (the input times 2**-exponent) so that the fit is
    the one on the input's points (alpha * 4**-e, C * 4**e: exact in binary floats)."""
    o = ctx.options
    two_e = 2 * ctx.exponent
    ones = jnp.ones(two_e.shape, ctx.x.dtype)
    logistic = o["probe_kind"] == "logistic"
    correct, tested = clouds_fold_counts(
        ctx.x,
        ctx.input(CLASSES_INPUT),
        jnp.where(ctx.valid, ctx.input(FOLD_INPUT), -1),
        jnp.ldexp(o["probe_alpha"] * ones, -two_e),
        jnp.ldexp(o["probe_C"] * ones, two_e),
        kind=o["probe_kind"],
        folds=o["probe_folds"],
        max_iter=o["probe_max_iter"] if logistic else None,
        tol=o["probe_tol"] if logistic else None,
    )
    mean, std = summarise(correct, tested)
    kept = jnp.any(ctx.input(CLASSES_INPUT), axis=-2)
    return {
        "probe_accuracy": mean,
        "probe_accuracy_std": std,
        "probe_classes": jnp.sum(kept, axis=-1, dtype=jnp.int32),
    }


OBSERVABLE = Observable(
    name="probes",
    compute=_compute,
    fields=(
        Field(
            "probe_accuracy",
            (),
            "stratified k-fold cross-validated accuracy of a linear probe of the row "
            "labels (mean over the folds).",
        ),
        Field(
            "probe_accuracy_std",
            (),
            "spread (std, ddof = 0) over the folds of the probe's held-out accuracy.",
        ),
        Field(
            "probe_classes",
            (),
            "classes probed: those with at least probe_folds valid rows in the cloud.",
            dtype="int32",
        ),
    ),
    consumes=("points", "labels"),
    host_inputs=HostInputs(
        _host_inputs,
        {
            CLASSES_INPUT: "[B, N, K] bool one-hot class of each labelled row (probes)",
            FOLD_INPUT: "[B, N] int32 stratified test fold of each labelled row, -1: none",
        },
    ),
    doc=__doc__,
    reference="Alain & Bengio 2016, arXiv 1610.01644; Cheng et al. 2025, arXiv 2405.15471",
    reduce="accuracy over held-out rows, mean over folds",
    options=PROBE_OPTIONS,
    in_all=False,
    report=(
        ReportSection(
            "Linear probes across layers",
            figure=sections.plot,
            text=sections.text,
            file="probes.png",
            kinds=(POOLED,),
        ),
    ),
)
