"""The files a run leaves: ``results.npz``, ``tokens.npz``, ``metadata.json``, ``RESULTS.md``.

``np.load(os.path.join(output_dir, "results.npz"))`` gives every array of
:func:`field_docs` (derived from the observables' declarations; per-token
fields in ``tokens.npz``); ``metadata.json`` records what produced them. Files are
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

TOKENS_FILE = "tokens.npz"

RUN_FIELDS = {
    "prompt_index": "[P] index of the row's prompt in the dataset (see prompt_key).",
    "prompt_key": "[P] stable id of the prompt (pydoc topic, file name, line or row).",
    "shuffle_index": "[P] shuffle level s: 4**s blocks permuted (0 = structured prompt; "
    "-1 = every token permuted, --method=permuted).",
    "shuffle_repeat": "[P] repeat r = 0..R-1 of the row's shuffle (--shuffle_repeats=R; "
    "0 for the structured prompt).",
}
GRIDE_N1 = "[S] the neighbour rank n1 = 2**j of each scale (n2 = 2 n1)."


def field_docs(observables="paper") -> dict[str, str]:
    """Field name -> "[shape] meaning" of a run measuring ``observables``, derived
    from the observables' declarations (per-token fields live in tokens.npz)."""
    from geom_jax import pipeline  # pylint: disable=g-import-not-at-top

    docs = dict(RUN_FIELDS)
    for f in pipeline.result_fields(observables):
        docs[f.name] = f"{f.shape()} {f.doc}" + (f" ({TOKENS_FILE}, float16)" if f.tokens else "")
        if f.name == "gride_ids":
            docs["gride_n1"] = GRIDE_N1
    return docs


def token_fields(observables="paper") -> set[str]:
    from geom_jax import pipeline  # pylint: disable=g-import-not-at-top

    return {f.name for f in pipeline.result_fields(observables) if f.tokens}


def __getattr__(name):
    if name == "FIELDS":  # the paper's set, computed on first use (imports jax)
        return field_docs("paper")
    raise AttributeError(name)


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


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    import io  # pylint: disable=g-import-not-at-top

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


class DamagedResultsError(ValueError):
    """``results.npz`` or ``tokens.npz`` does not match the hash recorded when it was written."""


def save_results(output_dir: str, arrays: Mapping[str, np.ndarray], observables="paper") -> str:
    """Writes ``results.npz`` (uncompressed, one array per field), the per-token
    fields as float16 in ``tokens.npz``, and ``RESULTS.md``, each atomically;
    each npz is followed by its SHA-256 (``results.npz.sha256``)."""
    from geom_jax import checkpoint_integrity  # pylint: disable=g-import-not-at-top

    docs = field_docs(observables)
    unknown = set(arrays) - set(docs)
    if unknown:
        raise ValueError(f"save_results: undocumented fields {sorted(unknown)}")
    per_token = token_fields(observables)
    main = {k: np.asarray(v, DTYPES.get(k)) for k, v in arrays.items() if k not in per_token}
    tokens = {k: np.asarray(v, np.float16) for k, v in arrays.items() if k in per_token}
    path = os.path.join(output_dir, RESULTS_FILE)
    atomic_write_bytes(path, _npz_bytes(main))
    checkpoint_integrity.write_sidecar(path)
    if tokens:
        tokens_path = os.path.join(output_dir, TOKENS_FILE)
        atomic_write_bytes(tokens_path, _npz_bytes(tokens))
        checkpoint_integrity.write_sidecar(tokens_path)
    readme = _readme(arrays, docs, observables)
    atomic_write_bytes(os.path.join(output_dir, README_FILE), readme.encode())
    return path


def results_problem(output_dir: str) -> str | None:
    """None when ``results.npz`` (and ``tokens.npz``, when written) match their
    recorded SHA-256, else what is wrong."""
    from geom_jax import checkpoint_integrity  # pylint: disable=g-import-not-at-top

    for name in (RESULTS_FILE, TOKENS_FILE):
        path = os.path.join(output_dir, name)
        if name == TOKENS_FILE and not os.path.isfile(path):
            continue
        problem = checkpoint_integrity.sidecar_problem(path)
        if problem:
            return problem
    return None


def load_results(output_dir: str) -> dict[str, np.ndarray]:
    """All arrays of a finished run, plus its metadata under ``"metadata"``.

    Raises:
      FileNotFoundError: no ``results.npz`` in ``output_dir``.
      DamagedResultsError: results.npz or tokens.npz does not match its
        ``.sha256`` (files of runs that predate the hash load unchecked).
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
    tokens_path = os.path.join(output_dir, TOKENS_FILE)
    if os.path.isfile(tokens_path):
        with np.load(tokens_path) as z:
            out.update({k: z[k].astype(np.float32) for k in z.files})
    meta_path = os.path.join(output_dir, METADATA_FILE)
    out["metadata"] = read_json(meta_path) if os.path.isfile(meta_path) else {}
    return out


def _readme(arrays: Mapping[str, np.ndarray], docs: Mapping[str, str], observables) -> str:
    from geom_jax import metrics  # pylint: disable=g-import-not-at-top

    lines = [
        "# Results of a geom-jax run",
        "",
        "```python",
        "import numpy as np",
        'r = np.load("results.npz")',
        "```",
        "",
        "P rows (prompt x shuffle level), L transformer layers, S GRIDE scales,",
        "K neighbourhood sizes, T tokens. `metadata.json` records the model,",
        "its checkpoint, the flags, package versions, git commit, device and wall time.",
        f"Per-token fields are in `{TOKENS_FILE}` (float16): `np.load` it the same way.",
        "",
        "| field | shape here | meaning |",
        "| --- | --- | --- |",
    ]
    for name, doc in docs.items():
        if name in arrays:
            lines.append(f"| `{name}` | {list(np.shape(arrays[name]))} | {doc} |")
    names = metrics.registry.resolve(observables)
    lines += ["", f"Observables measured: `{metrics.registry.canonical(names)}`.", ""]
    lines.append(metrics.registry.describe(names))
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
