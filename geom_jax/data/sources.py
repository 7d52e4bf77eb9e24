"""Prompt sources behind one interface.

A source yields :class:`Prompt` records in a fixed, documented order so that
prompt indices are stable across runs and machines:

* ``pydoc``: CPython's ``pydoc_data.topics`` in sorted key order (offline);
* a Hugging Face dataset by name (``NeelNanda/pile-10k``, the paper's corpus)
    through ``datasets.load_dataset``, streaming or cached;
* a local ``.txt`` file (one prompt), a folder of ``.txt`` files (sorted by
    name) or a ``.jsonl`` file (one record a line, text under ``text_field``).

A ``.jsonl`` file or a Hugging Face dataset opened with ``label_field`` also
gives each prompt the record's value under that field (``Prompt.label``: a
string, integer or boolean), the class of the windows cut from it
(:mod:`geom_jax.data.windows`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import urllib.parse
from collections.abc import Iterator
from pydoc_data import topics

from huggingface_hub import constants

from geom_jax.errors import ArgumentError, about

PYDOC = "pydoc"


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One raw prompt: its position in the source, a stable id, its text, and
    its record's ``label_field`` value (None when the source has no label field)."""

    index: int
    key: str
    text: str
    label: str | int | bool | None = None


class PromptSource:
    """An ordered, re-iterable collection of prompts."""

    name: str = ""

    def __iter__(self) -> Iterator[Prompt]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"dataset": self.name}


class PydocSource(PromptSource):
    """CPython's ``pydoc_data.topics``: long English prose shipped with Python."""

    name = PYDOC

    def __iter__(self):

        for i, key in enumerate(sorted(topics.topics)):
            yield Prompt(i, key, topics.topics[key])


class TextFilesSource(PromptSource):
    """A ``.txt`` file (one prompt) or a folder of them, in sorted name order."""

    def __init__(self, path: str):
        self.name = path
        if os.path.isdir(path):
            self._files = sorted(
                os.path.join(path, f) for f in os.listdir(path) if f.endswith(".txt")
            )
            if not self._files:
                raise about("dataset", f"folder {path!r} holds no .txt files")
        else:
            self._files = [path]

    def __iter__(self):
        for i, f in enumerate(self._files):
            with open(f, "rb") as fh:
                yield Prompt(i, os.path.basename(f), _utf8(fh.read(), f))


class JsonlSource(PromptSource):
    """A ``.jsonl`` file: one JSON record a line, the prompt under ``text_field``
    (and its label under ``label_field``, when given)."""

    def __init__(self, path: str, text_field: str = "text", label_field: str | None = None):
        self.name = path
        self.text_field = text_field
        self.label_field = label_field

    def __iter__(self):
        with open(self.name, "rb") as fh:
            index = 0
            offset = 0
            for lineno, raw in enumerate(fh, start=1):
                line = _utf8(raw, self.name, offset, lineno)
                offset += len(raw)
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise about(
                        "dataset", f"{self.name}, line {lineno}: not valid JSON ({e})"
                    ) from None
                where = f"{self.name}, line {lineno}"
                yield Prompt(
                    index,
                    f"line{lineno}",
                    _text_of(record, self.text_field, where),
                    _label_of(record, self.label_field, where),
                )
                index += 1

    def describe(self):
        return _with_label_field(
            {"dataset": self.name, "text_field": self.text_field}, self.label_field
        )


class HFDatasetSource(PromptSource):
    """A Hugging Face dataset (hub id or local dataset folder), in its row order."""

    def __init__(
        self,
        name: str,
        *,
        split: str = "train",
        text_field: str = "text",
        streaming: bool = False,
        revision: str | None = None,
        label_field: str | None = None,
    ):
        self.name = name
        self.split = split
        self.text_field = text_field
        self.streaming = streaming
        self.revision = revision
        self.label_field = label_field

    def _load(self):
        import datasets  # noqa: PLC0415  (2 s to import: only for Hub/local datasets)

        local = os.path.isdir(self.name)
        why = None if local else hub_unreachable()
        try:
            with hub_offline(why is not None):
                return datasets.load_dataset(
                    self.name, split=self.split, streaming=self.streaming, revision=self.revision
                )
        except FileNotFoundError as e:
            raise about("dataset", f"cannot find dataset {self.name!r}: {e}") from e
        except (ConnectionError, OSError) as e:
            if local:
                raise
            why = why or str(e).strip().splitlines()[0]
            raise about(
                "dataset",
                f"cannot fetch the Hugging Face dataset {self.name!r}: the network is "
                f"unavailable ({why}) and it is not in the local cache; pass a local path "
                "instead (a .txt or .jsonl file, a folder of .txt files, or a folder written "
                "by datasets' save_to_disk)",
            ) from None

    def __iter__(self):
        for i, record in enumerate(self._load()):
            where = f"{self.name}[{i}]"
            yield Prompt(
                i,
                str(i),
                _text_of(record, self.text_field, where),
                _label_of(record, self.label_field, where),
            )

    def describe(self):
        return _with_label_field(
            {
                "dataset": self.name,
                "split": self.split,
                "text_field": self.text_field,
                "revision": self.revision,
            },
            self.label_field,
        )


def _utf8(raw: bytes, path: str, offset: int = 0, lineno: int | None = None) -> str:
    """``raw`` decoded as UTF-8; a ValueError naming the file and byte offset if it is not."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = f", line {lineno}" if lineno is not None else ""
        raise about(
            "dataset",
            f"{path} is not UTF-8 text: byte 0x{raw[e.start]:02x} at offset "
            f"{offset + e.start}{line} ({e.reason}); convert it, e.g. with "
            f"iconv -f latin1 -t utf-8",
        ) from None


def hub_unreachable(timeout_s: float = 3.0) -> str | None:
    """None when the Hugging Face Hub answers a TCP connection within
    ``timeout_s``, else why not (offline mode set, no route, no DNS), so that
    an offline run fails in seconds instead of after the Hub client's retries."""

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urllib.parse.urlparse(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        return f"cannot connect to {host}:{port}: {e.strerror or type(e).__name__}"
    return None


@contextlib.contextmanager
def hub_offline(enabled: bool):
    """Puts huggingface_hub and datasets in offline mode (cache only) for the block."""
    if not enabled:
        yield
        return
    import datasets  # noqa: PLC0415  (2 s to import: only for Hub/local datasets)

    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def _text_of(record, field: str, where: str) -> str:
    if not isinstance(record, dict) or field not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise about("text_field", f"record {where} has no field {field!r} (it has {keys})")
    text = record[field]
    if not isinstance(text, str):
        raise about("text_field", f"{where}[{field!r}] is {type(text).__name__}, not a string")
    return text


def _label_of(record, field: str | None, where: str) -> str | int | bool | None:
    """``record[field]`` (None when ``field`` is None); a ValueError naming the
    record and the field when it is missing or not a string, integer or boolean."""
    if field is None:
        return None
    if not isinstance(record, dict) or field not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise about("label_field", f"record {where} has no field {field!r} (it has {keys})")
    label = record[field]
    if not isinstance(label, (str, int, bool)):
        raise about(
            "label_field",
            f"{where}[{field!r}] is {type(label).__name__} ({label!r}), not a string, integer "
            "or boolean",
        )
    return label


def _with_label_field(described: dict, label_field: str | None) -> dict:
    return described if label_field is None else {**described, "label_field": label_field}


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(p and not p.startswith(".") for p in parts)


def _no_label_field(label_field: str | None, why: str) -> None:
    if label_field is not None:
        raise ArgumentError(
            "{label_field}={value!r} applies to .jsonl files and Hugging Face datasets "
            "(records with fields); {why}",
            "label_field",
            value=label_field,
            why=why,
        )


def open_source(
    spec: str,
    *,
    text_field: str = "text",
    split: str = "train",
    streaming: bool = False,
    revision: str | None = None,
    label_field: str | None = None,
) -> PromptSource:
    """Resolves a ``dataset`` value to a :class:`PromptSource`.

    ``label_field`` (``.jsonl`` files and Hugging Face datasets only) names
    the record field that labels each prompt (``Prompt.label``).

    Raises:
        ValueError: when ``spec`` names no known corpus, file, folder or dataset
          id, or ``label_field`` is given for a source without records (pydoc,
          .txt files).
    """
    if spec == PYDOC:
        _no_label_field(label_field, "pydoc is labelled by topic")
        return PydocSource()
    if spec.endswith(".jsonl"):
        if not os.path.isfile(spec):
            raise about("dataset", f"file {spec!r} does not exist")
        return JsonlSource(spec, text_field, label_field)
    if spec.endswith(".txt"):
        if not os.path.isfile(spec):
            raise about("dataset", f"file {spec!r} does not exist")
        _no_label_field(label_field, "a .txt file is one document")
        return TextFilesSource(spec)
    if os.path.isdir(spec):
        entries = [e for e in os.listdir(spec) if not e.startswith(".")]
        if not entries:
            raise about("dataset", f"folder {spec!r} is empty")
        if any(e.endswith(".txt") for e in entries) and not any(
            e.endswith((".parquet", ".arrow", ".json", ".jsonl", ".csv")) or e == "data"
            for e in entries
        ):
            _no_label_field(label_field, "a folder of .txt files is labelled by file")
            return TextFilesSource(spec)
        return HFDatasetSource(
            spec,
            split=split,
            text_field=text_field,
            streaming=streaming,
            revision=revision,
            label_field=label_field,
        )
    if _looks_like_hub_id(spec):
        return HFDatasetSource(
            spec,
            split=split,
            text_field=text_field,
            streaming=streaming,
            revision=revision,
            label_field=label_field,
        )
    raise about(
        "dataset",
        f"unknown dataset {spec!r}; expected 'pydoc', a Hugging Face "
        "dataset id such as 'NeelNanda/pile-10k', a local dataset folder, a .txt "
        "file or folder of .txt files, or a .jsonl file",
    )
