"""The files a run leaves: ``results.npz``, ``metadata.json``, ``RESULTS.md``.

``np.load(os.path.join(output_dir, "results.npz"))`` gives every array of
:data:`FIELDS`; ``metadata.json`` records what produced them. Files are
written to a temporary name and renamed, so a killed run never leaves a
half-written file. ``results.npz.sha256`` holds its SHA-256: a damaged
file is refused on load, and ``--resume`` rebuilds it from the checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Mapping

import numpy as np

RESULTS_FILE = "results.npz"
METADATA_FILE = "metadata.json"
RUN_CONFIG_FILE = "run_config.json"
README_FILE = "RESULTS.md"

FIELDS = {
    "prompt_index": "[P] index of the row's prompt in the dataset (see prompt_key).",
    "prompt_key": "[P] stable id of the prompt (pydoc topic, file name, line or row).",
    "shuffle_index": "[P] shuffle level s: 4**s blocks permuted (0 = structured prompt).",
    "gride_ids": "[P, L, S] GRIDE intrinsic dimension of layer l (1..L) at scale n1 = 2**j.",
    "gride_errs": "[P, L, S] its standard error, 1/sqrt(Fisher information).",
    "gride_scales": "[P, L, S] mean distance (r_n1 + r_n2)/2 of the neighbours used.",
    "gride_n1": "[S] the neighbour rank n1 = 2**j of each scale (n2 = 2 n1).",
    "twonn": "[P, L] TwoNN intrinsic dimension (90% linear fit), layers 1..L.",
    "overlap": "[P, L-1, K] chi_k between layers l and l+1 (l = 1..L-1), k = index + 1.",
    "cos_mean": "[P, L+1] mean cosine similarity between tokens, embedding output first.",
    "cos_std": "[P, L+1] its standard deviation over token pairs.",
    "loss": "[P] mean next-token negative log-likelihood (nats).",
    "token_nll": "[P, T-1] per-token negative log-likelihood (nats).",
    "n_unique": "[P, L] distinct tokens of layer l's cloud (near-duplicates merged), the N of "
    "the ID estimators; 0 where the layer is not finite.",
    "finite": "[P, L] True where layer l's hidden states are finite (else all its observables "
    "are NaN).",
    "status": "[P, L] bit flags, 0 = healthy: 1 NaN/inf hidden states (all NaN), 2 fewer "
    "distinct tokens than the largest GRIDE scale needs (NaN there), 4 tokens merged as "
    "(near-)duplicates.",
}

DTYPES = {"n_unique": np.int32, "finite": bool, "status": np.int32}
"""Fields stored as integers or booleans (computed as float32 like the rest)."""


def atomic_write_bytes(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


class DamagedResultsError(ValueError):
    """``results.npz`` does not match the hash recorded when it was written."""


def save_results(output_dir: str, arrays: Mapping[str, np.ndarray]) -> str:
    """Writes ``results.npz`` (uncompressed, one array per field) atomically,
    then its SHA-256 (``results.npz.sha256``)."""
    import io  # pylint: disable=g-import-not-at-top

    from geom_jax import checkpoint_integrity  # pylint: disable=g-import-not-at-top

    unknown = set(arrays) - set(FIELDS)
    if unknown:
        raise ValueError(f"save_results: undocumented fields {sorted(unknown)}")
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v, DTYPES.get(k)) for k, v in arrays.items()})
    path = os.path.join(output_dir, RESULTS_FILE)
    atomic_write_bytes(path, buf.getvalue())
    checkpoint_integrity.write_sidecar(path)
    atomic_write_bytes(os.path.join(output_dir, README_FILE), _readme(arrays).encode())
    return path


def results_problem(output_dir: str) -> str | None:
    """None when ``results.npz`` matches its recorded SHA-256, else what is wrong."""
    from geom_jax import checkpoint_integrity  # pylint: disable=g-import-not-at-top

    return checkpoint_integrity.sidecar_problem(os.path.join(output_dir, RESULTS_FILE))


def load_results(output_dir: str) -> dict[str, np.ndarray]:
    """All arrays of a finished run, plus its metadata under ``"metadata"``.

    Raises:
      FileNotFoundError: no ``results.npz`` in ``output_dir``.
      DamagedResultsError: the file does not match its ``results.npz.sha256``
        (files of runs that predate the hash load unchecked).
    """
    from geom_jax import checkpoint_integrity  # pylint: disable=g-import-not-at-top

    path = os.path.join(output_dir, RESULTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no results here (has the run finished?)")
    if os.path.isfile(path + checkpoint_integrity.SIDECAR_SUFFIX):
        problem = results_problem(output_dir)
        if problem:
            raise DamagedResultsError(problem)
    with np.load(path) as z:
        out = {k: z[k] for k in z.files}
    meta_path = os.path.join(output_dir, METADATA_FILE)
    out["metadata"] = read_json(meta_path) if os.path.isfile(meta_path) else {}
    return out


def _readme(arrays: Mapping[str, np.ndarray]) -> str:
    lines = [
        "# Results of a geom-jax run",
        "",
        "```python",
        "import numpy as np",
        'r = np.load("results.npz")',
        "```",
        "",
        "P rows (prompt x shuffle level), L transformer layers, S GRIDE scales,",
        "K overlap neighbourhood sizes, T tokens. `metadata.json` records the model,",
        "its checkpoint, the flags, package versions, git commit, device and wall time.",
        "",
        "| field | shape here | meaning |",
        "| --- | --- | --- |",
    ]
    for name, doc in FIELDS.items():
        if name in arrays:
            lines.append(f"| `{name}` | {list(np.shape(arrays[name]))} | {doc} |")
    return "\n".join(lines) + "\n"


def git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=here,
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    from importlib import metadata  # pylint: disable=g-import-not-at-top

    versions = {"python": platform.python_version()}
    for pkg in ("geom_jax", "jax", "jaxlib", "flax", "numpy", "transformers", "orbax-checkpoint"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return versions


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
