"""Prompt sources behind one interface.

A source yields :class:`Prompt` records in a fixed, documented order so that
prompt indices are stable across runs and machines:

* ``pydoc``: CPython's ``pydoc_data.topics`` in sorted key order (offline);
* a Hugging Face dataset by name (``NeelNanda/pile-10k``, the paper's corpus)
    through ``datasets.load_dataset``, streaming or cached;
* a local ``.txt`` file (one prompt), a folder of ``.txt`` files (sorted by
    name) or a ``.jsonl`` file (one record a line, text under ``text_field``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator

PYDOC = "pydoc"


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One raw prompt: its position in the source, a stable id, and its text."""

    index: int
    key: str
    text: str


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
        from pydoc_data import topics  # pylint: disable=g-import-not-at-top

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
                raise ValueError(f"--dataset: folder {path!r} holds no .txt files")
        else:
            self._files = [path]

    def __iter__(self):
        for i, f in enumerate(self._files):
            with open(f, encoding="utf-8") as fh:
                yield Prompt(i, os.path.basename(f), fh.read())


class JsonlSource(PromptSource):
    """A ``.jsonl`` file: one JSON record a line, the prompt under ``text_field``."""

    def __init__(self, path: str, text_field: str = "text"):
        self.name = path
        self.text_field = text_field

    def __iter__(self):
        with open(self.name, encoding="utf-8") as fh:
            index = 0
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(
                        f"--dataset: {self.name}, line {lineno}: not valid JSON ({e})"
                    ) from None
                yield Prompt(
                    index,
                    f"line{lineno}",
                    _text_of(record, self.text_field, f"{self.name}, line {lineno}"),
                )
                index += 1

    def describe(self):
        return {"dataset": self.name, "text_field": self.text_field}


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
    ):
        self.name = name
        self.split = split
        self.text_field = text_field
        self.streaming = streaming
        self.revision = revision

    def _load(self):
        import datasets  # pylint: disable=g-import-not-at-top

        try:
            return datasets.load_dataset(
                self.name, split=self.split, streaming=self.streaming, revision=self.revision
            )
        except FileNotFoundError as e:
            raise ValueError(f"--dataset: cannot find dataset {self.name!r}: {e}") from e

    def __iter__(self):
        for i, record in enumerate(self._load()):
            yield Prompt(i, str(i), _text_of(record, self.text_field, f"{self.name}[{i}]"))

    def describe(self):
        return {
            "dataset": self.name,
            "split": self.split,
            "text_field": self.text_field,
            "revision": self.revision,
        }


def _text_of(record, field: str, where: str) -> str:
    if not isinstance(record, dict) or field not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"--text_field: record {where} has no field {field!r} (it has {keys})")
    text = record[field]
    if not isinstance(text, str):
        raise ValueError(f"--text_field: {where}[{field!r}] is {type(text).__name__}, not a string")
    return text


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(p and not p.startswith(".") for p in parts)


def open_source(
    spec: str,
    *,
    text_field: str = "text",
    split: str = "train",
    streaming: bool = False,
    revision: str | None = None,
) -> PromptSource:
    """Resolves a ``--dataset`` value to a :class:`PromptSource`.

    Raises:
        ValueError: when ``spec`` names no known corpus, file, folder or dataset id.
    """
    if spec == PYDOC:
        return PydocSource()
    if spec.endswith(".jsonl"):
        if not os.path.isfile(spec):
            raise ValueError(f"--dataset: file {spec!r} does not exist")
        return JsonlSource(spec, text_field)
    if spec.endswith(".txt"):
        if not os.path.isfile(spec):
            raise ValueError(f"--dataset: file {spec!r} does not exist")
        return TextFilesSource(spec)
    if os.path.isdir(spec):
        entries = [e for e in os.listdir(spec) if not e.startswith(".")]
        if not entries:
            raise ValueError(f"--dataset: folder {spec!r} is empty")
        if any(e.endswith(".txt") for e in entries) and not any(
            e.endswith((".parquet", ".arrow", ".json", ".jsonl", ".csv")) or e == "data"
            for e in entries
        ):
            return TextFilesSource(spec)
        return HFDatasetSource(
            spec, split=split, text_field=text_field, streaming=streaming, revision=revision
        )
    if _looks_like_hub_id(spec):
        return HFDatasetSource(
            spec, split=split, text_field=text_field, streaming=streaming, revision=revision
        )
    raise ValueError(
        f"--dataset: unknown dataset {spec!r}; expected 'pydoc', a Hugging Face "
        "dataset id such as 'NeelNanda/pile-10k', a local dataset folder, a .txt "
        "file or folder of .txt files, or a .jsonl file"
    )
