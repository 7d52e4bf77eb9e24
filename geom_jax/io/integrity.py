"""Content hashes for checkpoint folders and result files.

A checkpoint step folder gets a manifest (``geom_jax_sha256.json``) listing
the size and SHA-256 of every file orbax wrote in it, written once the step
is committed. A step is trusted only when every listed file is present with
its size and hash: random bytes written into a data file, a truncated copy,
a half-synced folder or a step committed without its manifest (a kill
between the two) all fail the check, and the caller falls back to an older
step. ``results.npz`` gets a ``results.npz.sha256`` file in ``sha256sum``
format (``sha256sum -c results.npz.sha256`` checks it by hand).
"""

from __future__ import annotations

import json
import os

from geom_jax.io.files import atomic_write_bytes, file_sha256, write_json

MANIFEST = "geom_jax_sha256.json"
SIDECAR_SUFFIX = ".sha256"


def _files(folder: str) -> list[str]:
    out = []
    for root, _, files in os.walk(folder):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), folder)
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def write_manifest(folder: str) -> str:
    """Records size and SHA-256 of every file under ``folder``; returns the manifest path."""
    entries = {}
    for rel in _files(folder):
        path = os.path.join(folder, rel)
        entries[rel] = {"size": os.path.getsize(path), "sha256": file_sha256(path)}
    manifest = os.path.join(folder, MANIFEST)
    write_json(manifest, {"files": entries})
    return manifest


def manifest_problem(folder: str) -> str | None:
    """None when ``folder`` matches its manifest, else what is wrong, naming the file."""
    manifest = os.path.join(folder, MANIFEST)
    if not os.path.isfile(manifest):
        return f"it has no integrity record ({MANIFEST} missing: the save did not finish)"
    try:
        with open(manifest, encoding="utf-8") as fh:
            entries = json.load(fh)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"its integrity record {manifest} is unreadable ({type(e).__name__})"
    for rel, want in sorted(entries.items()):
        path = os.path.join(folder, rel)
        if not os.path.isfile(path):
            return f"file {path} is missing"
        size = os.path.getsize(path)
        if size != want["size"]:
            return f"file {path} has {size} bytes, {want['size']} were written"
        if file_sha256(path) != want["sha256"]:
            return f"file {path} does not match its SHA-256 (content changed since it was written)"
    return None


def write_sidecar(path: str) -> str:
    """Writes ``path + '.sha256'`` (``sha256sum`` format) for the file ``path``."""
    sidecar = path + SIDECAR_SUFFIX
    line = f"{file_sha256(path)}  {os.path.basename(path)}\n"
    atomic_write_bytes(sidecar, line.encode())
    return sidecar


def sidecar_problem(path: str) -> str | None:
    """None when ``path`` matches its ``.sha256`` file, else what is wrong."""
    sidecar = path + SIDECAR_SUFFIX
    if not os.path.isfile(sidecar):
        return f"{sidecar} is missing (the run ended before recording the hash)"
    try:
        with open(sidecar, encoding="utf-8") as fh:
            want = fh.read().split()[0]
    except (OSError, ValueError, IndexError):
        return f"{sidecar} is unreadable"
    if file_sha256(path) != want:
        return f"{path} does not match the SHA-256 in {sidecar} (the file is damaged)"
    return None
