"""Write tests/fixtures/null_reference.npz: permutation-null calibration by the reference.

Runs in the ``make bench-env`` environment (calibrated-similarity 0.1.1, torch), never
imports geom_jax:

  .bench-venv/bin/python tests/reference/null_reference.py tests/fixtures/null_reference.npz

Gröger, Wen, Brbić 2026 (arXiv 2602.14486), ``calibrated_similarity.calibrate`` (Algorithm
1) and ``calibrate_layers(agg="max")`` (Algorithm 2), with the similarity linear CKA
(biased HSIC) in float64 and the permutations given (``perm_fn`` returns them in order), so
a test can feed geom-jax the same ones. alpha = 0.05, s_max = 1. Keys:

* ``perms`` [99, 60] int64: the permutations (NumPy ``default_rng(7)``);
* ``CASE/x`` [60, 8], ``CASE/y`` [60, 5] float32 for CASE ``shared`` (y a noisy nonlinear
  map of x's first coordinates) and ``independent`` (unrelated Gaussian clouds);
  ``CASE/raw``, ``CASE/calibrated``, ``CASE/p_value``, ``CASE/tau``: ``calibrate``'s
  observed CKA and its three outputs;
* ``layers/x`` [3, 60, 8], ``layers/y`` [2, 60, 5]: three layers against two (the first
  y layer shares structure with x's second layer); ``layers/max_calibrated``,
  ``layers/max_p_value``, ``layers/max_tau``: ``calibrate_layers(agg="max")``.
"""

import argparse

import numpy as np
import torch
from calibrated_similarity import calibrate, calibrate_layers

N, P = 60, 99


def cka(x, y):
    x = x - x.mean(0)
    y = y - y.mean(0)
    return (x.T @ y).square().sum() / ((x.T @ x).square().sum() * (y.T @ y).square().sum()).sqrt()


def given(perms):
    it = iter(perms)
    return lambda n, device: torch.as_tensor(next(it))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("output")
    out_path = parser.parse_args().output
    rng = np.random.default_rng(7)
    perms = np.stack([rng.permutation(N) for _ in range(P)])
    base = rng.normal(size=(N, 8)).astype(np.float32)
    cases = {
        "shared": (
            base,
            (np.tanh(base[:, :5] @ rng.normal(size=(5, 5))) + 0.3 * rng.normal(size=(N, 5))),
        ),
        "independent": (rng.normal(size=(N, 8)), rng.normal(size=(N, 5))),
    }
    out = {"perms": perms}
    t = lambda a: torch.as_tensor(np.asarray(a, np.float32), dtype=torch.float64)
    for name, (x, y) in cases.items():
        x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
        scal, p, tau = calibrate(t(x), t(y), cka, K=P, alpha=0.05, smax=1.0, perm_fn=given(perms))
        out.update({f"{name}/x": x, f"{name}/y": y, f"{name}/raw": float(cka(t(x), t(y)))})
        out.update({f"{name}/calibrated": float(scal), f"{name}/p_value": float(p)})
        out[f"{name}/tau"] = float(tau)
    xl = np.stack([rng.normal(size=(N, 8)), base, rng.normal(size=(N, 8))]).astype(np.float32)
    yl = np.stack([cases["shared"][1], rng.normal(size=(N, 5))]).astype(np.float32)
    cal, p, tau = calibrate_layers(
        [t(a) for a in xl],
        [t(b) for b in yl],
        cka,
        agg="max",
        K=P,
        alpha=0.05,
        smax=1.0,
        perm_fn=given(perms),
    )
    out.update({"layers/x": xl, "layers/y": yl, "layers/max_calibrated": float(cal)})
    out.update({"layers/max_p_value": float(p), "layers/max_tau": float(tau)})
    np.savez_compressed(out_path, **out)


if __name__ == "__main__":
    main()
