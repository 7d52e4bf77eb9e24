"""Dataset-scale clouds: every document cut into fixed-length token windows.

Cheng et al. (ICLR 2025, "Emergence of a high-dimensional abstraction phase in
language transformers", arXiv 2405.15471) take thousands of 20-token sequences
and measure the cloud of one point per sequence at every layer. Here:

* each document is stripped and tokenised without special tokens
  (:func:`geom_jax.data.tokenize.encode`, as for whole prompts);
* it is cut into consecutive, non-overlapping windows of ``window_tokens``
  tokens from token 0 (tokens ``[j w, (j + 1) w)`` for window ``j``); the tail
  of fewer than ``w`` tokens is dropped, so a document shorter than ``w``
  gives no window;
* the windows of all documents, in source order, are numbered ``0 .. N - 1``:
  the window number is the window's ``indices`` entry (the ``prompt_index``
  that seeds its shuffles), its key is ``"<document key>:w<j>"``;
* ``num_windows`` below ``N`` keeps a seeded sample,
  ``np.sort(np.random.default_rng(seed).choice(N, num_windows, replace=False))``,
  in source order: it depends only on ``seed`` and ``N`` (so a resumed run, or
  a run of another model on the same windows, draws the same sample);
* with ``add_bos`` the tokenizer's BOS token is prepended to every window.

Each window is labelled: by its document (pydoc: the topic's index in sorted
key order, the topic names as ``class_names``) or, for sources opened with a
``label_field``, by the record's value of that field, mapped to class ids
``0 .. C - 1`` in sorted order of the distinct values over all documents read
(so the ids do not depend on the sample).

Identical windows (the same token ids, e.g. a sentence repeated in two pydoc
topics) are kept: their points coincide, and the estimators merge them as they
merge any duplicate points. ``first_copy`` maps each window to the first
window of the selection with the same ids; :func:`duplicate_summary` counts
them in one line.

CPython's ``pydoc_data.topics`` (79 topics, 112,951 SmolLM2 tokens) gives 5,607
windows of 20 tokens; with ``seed=32`` and ``num_windows=2000`` this is the
cloud of ``clouds_reference.npz``'s ``smollm2_last_token`` case, row for row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from geom_jax.data.sources import Prompt
from geom_jax.data.tokenize import PromptSelection, bos_id, encode


@dataclasses.dataclass(frozen=True)
class WindowSelection(PromptSelection):
    """The windows kept for a run (rows in source order).

    Attributes (beyond :class:`PromptSelection`'s, whose ``indices`` here are
    window numbers over all windows of the source and ``num_scanned`` the
    documents read):
      documents: [W] int64 index of each window's document in the source.
      positions: [W] int64 window number within its document (its first token
        is ``positions * window_tokens``).
      labels: [W] int32 class id of each window (see ``class_names``).
      class_names: [C] the class of each id: document keys, or the distinct
        ``label_field`` values as strings.
      attention_mask: [W, T] int32, 1 on valid tokens (all ones for windows cut
        here; re-tokenised windows are right-padded, see
        :mod:`geom_jax.data.retokenize`).
      first_copy: [W] int64 position in this selection of the first window with
        the same token ids and mask (itself when it has no earlier copy).
      num_available: N, the windows of the whole source before sampling.
      num_source_tokens: tokens of all documents read (without BOS).
      window_tokens: tokens per window (without BOS).
      seed: the sampling seed.
    """

    documents: np.ndarray
    positions: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    attention_mask: np.ndarray
    first_copy: np.ndarray
    num_available: int
    num_source_tokens: int
    window_tokens: int
    seed: int


def sample_windows(num_available: int, num_windows: int | None, seed: int) -> np.ndarray:
    """Window numbers kept out of ``num_available``, in increasing order.

    Args:
      num_available: N, the windows of the source.
      num_windows: how many to keep; None (or N) keeps all.
      seed: seeds ``np.random.default_rng``.

    Returns:
      [num_windows] int64: ``np.sort(default_rng(seed).choice(N, num_windows,
      replace=False))``, or ``arange(N)`` when all are kept.
    """
    if num_windows is None or num_windows == num_available:
        return np.arange(num_available, dtype=np.int64)
    chosen = np.random.default_rng(seed).choice(num_available, num_windows, replace=False)
    return np.sort(chosen).astype(np.int64)


def first_copies(token_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
    """For each row, the first row with the same ids (and mask): [W] int64.

    Args:
      token_ids: [W, T] integer ids.
      attention_mask: [W, T] or None; rows equal in ids but not in mask differ.

    Returns:
      [W] int64, ``first[i] <= i``, ``first[i] == i`` for a row's first copy.
    """
    rows = np.asarray(token_ids)
    if attention_mask is not None:
        rows = np.concatenate([rows, np.asarray(attention_mask, rows.dtype)], axis=1)
    if rows.shape[0] == 0:
        return np.zeros(0, np.int64)
    _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    return first[inverse.reshape(-1)].astype(np.int64)


def class_ids(labels: list, keys: list[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Maps record labels to class ids 0..C-1 in sorted order of the distinct values.

    Args:
      labels: one value per document: all strings, all integers or all booleans.
      keys: the documents' keys, named in the error.

    Returns:
      ([D] int32 class id per document, [C] the values as strings, sorted).

    Raises:
      ValueError: the labels mix kinds (naming the first record of another kind).
    """
    kind = _kind(labels[0]) if labels else None
    for label, key in zip(labels, keys):
        if _kind(label) != kind:
            raise ValueError(
                f"label_field: record {key} has label {label!r} ({type(label).__name__}) "
                f"but record {keys[0]} has {labels[0]!r} ({type(labels[0]).__name__}); the "
                "labels must be all strings, all integers or all booleans"
            )
    values = sorted(set(labels))
    of = {v: i for i, v in enumerate(values)}
    return np.asarray([of[v] for v in labels], np.int32), tuple(str(v) for v in values)


def _kind(label) -> type:
    return bool if isinstance(label, bool) else type(label)


def select_windows(
    prompts: Iterable[Prompt],
    tokenizer,
    *,
    window_tokens: int,
    num_windows: int | None,
    add_bos: bool = False,
    seed: int = 0,
    dataset_name: str = "",
) -> WindowSelection:
    """Cuts every document into windows of ``window_tokens`` tokens and keeps a
    seeded sample of ``num_windows`` of them (module docstring: the rules).

    Args:
      prompts: the source's documents, in order (a :class:`PromptSource`); a
        source opened with ``label_field`` labels the windows by record.
      tokenizer: cuts the windows (its ids are returned; see
        :mod:`geom_jax.data.retokenize` for another model's tokenizer).
      window_tokens: tokens per window (without BOS), at least 2.
      num_windows: how many windows to keep (a seeded sample); None keeps all.
      add_bos: prepend the tokenizer's BOS token to every window.
      seed: seeds the sample.
      dataset_name: named in errors.

    Returns:
      A :class:`WindowSelection`, token_ids [W, window_tokens (+1 with add_bos)].

    Raises:
      ValueError: window_tokens < 2 or num_windows < 1; the source yields fewer
        than num_windows windows (or none); a record lacks the label field
        (raised by the source, naming the record and the field); labels of
        mixed kinds.
    """
    if window_tokens < 2:
        raise ValueError(f"window_tokens must be at least 2, got {window_tokens}")
    if num_windows is not None and num_windows < 1:
        raise ValueError(f"num_windows must be positive, got {num_windows}")
    prefix = [bos_id(tokenizer)] if add_bos else []
    keys, labels = [], []
    starts = []  # per document: its first window number
    pieces = []  # per document: [n_windows, window_tokens] ids
    total_tokens = 0
    for prompt in prompts:
        ids = np.asarray(encode(tokenizer, prompt.text), np.int64)
        total_tokens += ids.size
        n = ids.size // window_tokens
        starts.append(sum(len(p) for p in pieces))
        pieces.append(ids[: n * window_tokens].reshape(n, window_tokens))
        keys.append(prompt.key)
        labels.append(prompt.label)
    num_docs = len(keys)
    num_available = sum(len(p) for p in pieces)
    if num_available < (num_windows or 1):
        asked = f"num_windows={num_windows}" if num_windows else f"window_tokens={window_tokens}"
        raise ValueError(
            f"{asked}: the {num_docs} documents of dataset {dataset_name!r} ({total_tokens} "
            f"tokens) yield only {num_available} windows of {window_tokens} tokens"
        )
    if all(label is None for label in labels):
        doc_labels, class_names = np.arange(num_docs, dtype=np.int32), tuple(keys)
    else:
        doc_labels, class_names = class_ids(labels, keys)
    kept = sample_windows(num_available, num_windows, seed)
    doc_of_window = np.repeat(np.arange(num_docs), [len(p) for p in pieces])
    documents = doc_of_window[kept]
    positions = kept - np.asarray(starts, np.int64)[documents]
    all_ids = np.concatenate([p for p in pieces if len(p)], axis=0)[kept]
    token_ids = np.concatenate(
        [np.full((len(kept), len(prefix)), prefix, np.int64), all_ids], axis=1
    ).astype(np.int32)
    mask = np.ones_like(token_ids)
    return WindowSelection(
        indices=kept,
        keys=tuple(f"{keys[d]}:w{j}" for d, j in zip(documents, positions)),
        token_ids=token_ids,
        num_scanned=num_docs,
        documents=documents.astype(np.int64),
        positions=positions.astype(np.int64),
        labels=doc_labels[documents],
        class_names=class_names,
        attention_mask=mask,
        first_copy=first_copies(token_ids, mask),
        num_available=num_available,
        num_source_tokens=total_tokens,
        window_tokens=window_tokens,
        seed=seed,
    )


def window_summary(selection: WindowSelection) -> str:
    """One line: how many windows were cut, kept and sampled (for the log and metadata)."""
    w = len(selection.indices)
    how = (
        "all kept"
        if w == selection.num_available
        else f"a sample of {w} kept (seed {selection.seed})"
    )
    return (
        f"{selection.num_available} windows of {selection.window_tokens} tokens cut from "
        f"{selection.num_scanned} documents ({selection.num_source_tokens} tokens, the tail "
        f"of each dropped); {how}; {len(selection.class_names)} classes"
    )


def duplicate_summary(selection: WindowSelection, examples: int = 3) -> str | None:
    """One line counting the windows identical to an earlier one, or None.

    Args:
      selection: the windows.
      examples: how many ``copy = first`` key pairs to name.

    Returns:
      e.g. "5 of the 2000 windows repeat an earlier window's tokens exactly
      (kept; their points coincide and the estimators merge them as duplicates):
      'b:w3' = 'a:w3', ...", or None when every window is distinct.
    """
    first = np.asarray(selection.first_copy)
    copies = np.flatnonzero(first != np.arange(first.size))
    if copies.size == 0:
        return None
    keys = selection.keys
    named = ", ".join(f"{keys[i]!r} = {keys[first[i]]!r}" for i in copies[:examples])
    more = ", ..." if copies.size > examples else ""
    return (
        f"{copies.size} of the {first.size} windows repeat an earlier window's tokens exactly "
        f"(kept; their points coincide and the estimators merge them as duplicates): "
        f"{named}{more}"
    )
