"""The same windows for models with different tokenizers (``window_tokenizer``).

Windows are cut by one model's tokenizer A (:func:`geom_jax.data.windows.select_windows`);
each window (or a shuffled copy of it, shuffled on A's tokens) is decoded by A
to its text, and every model of the comparison, A included, tokenises that text
with its own tokenizer (without special tokens, the text not stripped). Both
models therefore see the same text, each in its own natural tokenisation, and
the pooled point of a row (its last token: the end of the text; or its mean)
stands for the same text in both runs. (A's tokenisation of the decoded text
differs from the cut ids where the window boundary split a merge: 85 of
pydoc's 5,607 SmolLM2 windows of 20 tokens end in two "\\n" tokens that
re-encode as one "\\n\\n".)

Rows keep A's keys and window numbers, so the two runs' rows match by key.
Their lengths differ by row and by tokenizer: rows are right-padded to one
static length (the longest row, or a given ``length``) with an attention mask;
a causal decoder's valid tokens do not see right padding, and pooling uses the
valid tokens only (:func:`geom_jax.models.pooling.pool_hidden`). A row piece
of a multi-byte character (at a window's edge, or anywhere in a shuffled row)
is dropped from the text (:func:`window_texts`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from geom_jax.data.tokenize import bos_id
from geom_jax.data.windows import WindowSelection, first_copies


@dataclasses.dataclass(frozen=True)
class Retokenized:
    """Texts tokenised by one model's tokenizer, right-padded.

    Attributes:
      token_ids: [N, T] int32 ids (``pad_id`` after each row's end).
      attention_mask: [N, T] int32, 1 on the row's tokens.
      lengths: [N] int64 valid tokens per row (BOS included).
    """

    token_ids: np.ndarray
    attention_mask: np.ndarray
    lengths: np.ndarray


def window_texts(
    token_ids: np.ndarray, tokenizer, *, keep_first: int = 0
) -> tuple[list[str], np.ndarray]:
    """The text of each row of ``token_ids`` under ``tokenizer`` (the one that cut them).

    A byte-level tokenizer's window can begin or end inside a multi-byte
    character (and a shuffled row can put such pieces anywhere); the pieces
    decode to U+FFFD, which is removed, so the text is the row's complete
    characters (every model then reads the same text).

    Args:
      token_ids: [N, T] ids from the window tokenizer.
      tokenizer: that tokenizer.
      keep_first: leading tokens (a BOS) left out of the text.

    Returns:
      (N strings, decoded with special tokens kept and no clean-up of spaces;
      [N] bool, True where U+FFFD was removed).
    """
    rows = np.asarray(token_ids)[:, keep_first:].tolist()
    texts = tokenizer.batch_decode(
        rows, skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    cut = np.asarray(["\ufffd" in t for t in texts], bool)
    return [t.replace("\ufffd", "") for t in texts], cut


def retokenize(
    texts: Sequence[str],
    tokenizer,
    *,
    length: int | None = None,
    add_bos: bool = False,
    pad_id: int = 0,
    keys: Sequence[str] | None = None,
) -> Retokenized:
    """Tokenises each text (no special tokens, not stripped), right-padded.

    Args:
      texts: N texts (e.g. :func:`window_texts`).
      tokenizer: the model's tokenizer.
      length: the static row length T; None: the longest row.
      add_bos: prepend the tokenizer's BOS token to every row.
      pad_id: id written after each row's end (masked out).
      keys: the rows' keys, named in errors (default: row numbers).

    Returns:
      :class:`Retokenized` with [N, T] arrays.

    Raises:
      ValueError: a text gives no token, or more than ``length`` tokens (naming
        the row and its length).
    """
    prefix = [bos_id(tokenizer)] if add_bos else []
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    rows = [prefix + list(ids) for ids in encoded]
    name = (lambda i: repr(keys[i])) if keys is not None else str
    lengths = np.asarray([len(r) for r in rows], np.int64)
    for i, ids in enumerate(encoded):
        if not ids:
            raise ValueError(
                f"window_tokenizer: row {name(i)} has no text to tokenise (empty, or only "
                "pieces of multi-byte characters)"
            )
    width = int(lengths.max(initial=0)) if length is None else int(length)
    if lengths.size and lengths.max() > width:
        i = int(np.argmax(lengths))
        raise ValueError(
            f"length={width} is shorter than row {name(i)}, which has {int(lengths[i])} tokens "
            "under the model's tokenizer"
        )
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return Retokenized(token_ids=ids, attention_mask=mask, lengths=lengths)


def retokenize_windows(
    selection: WindowSelection,
    window_tokenizer,
    model_tokenizer,
    *,
    add_bos: bool = False,
    length: int | None = None,
) -> tuple[WindowSelection, list[str]]:
    """The windows of ``selection`` (cut by ``window_tokenizer``) as the model's
    tokenizer reads their text; keys, window numbers and labels unchanged.

    Args:
      selection: from :func:`select_windows` with ``window_tokenizer``.
      window_tokenizer: the tokenizer that cut them.
      model_tokenizer: the tokenizer of the model to run.
      add_bos: prepend the model's BOS (``selection`` may or may not hold
        ``window_tokenizer``'s: pass the same ``add_bos`` as to select_windows).
      length: static row length; None: the longest row.

    Returns:
      (the selection with token_ids, attention_mask and first_copy of the model's
      tokenisation, right-padded; the N window texts).
    """
    texts, _ = window_texts(selection.token_ids, window_tokenizer, keep_first=int(add_bos))
    out = retokenize(
        texts,
        model_tokenizer,
        length=length,
        add_bos=add_bos,
        pad_id=_pad_id(model_tokenizer),
        keys=selection.keys,
    )
    return (
        dataclasses.replace(
            selection,
            token_ids=out.token_ids,
            attention_mask=out.attention_mask,
            first_copy=first_copies(out.token_ids, out.attention_mask),
        ),
        texts,
    )


def _pad_id(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        tok_id = getattr(tokenizer, name, None)
        if tok_id is not None:
            return int(tok_id)
    return 0
