"""Token windows (issue 22: dataset-scale clouds) and their re-tokenisation by
another model's tokenizer (issue 23: --window_tokenizer)."""

import json
import os
from pydoc_data import topics

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
from tokenizers import models as tok_models
from transformers import PreTrainedTokenizerFast

from geom_jax import data, models

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "pydoc_windows_reference.npz")


class WordTokenizer:
    """One token per whitespace-separated word, id = 10 + len(word); BOS = 1."""

    bos_token_id = 1

    def __call__(self, text, add_special_tokens=True):
        assert add_special_tokens is False
        return {"input_ids": [10 + len(w) for w in text.split()]}


def _docs(*texts, labels=None):
    labels = labels or [None] * len(texts)
    return [data.Prompt(i, f"d{i}", t, lab) for i, (t, lab) in enumerate(zip(texts, labels))]


def _words(n, size=1):
    return " ".join("x" * size for _ in range(n))


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    return models.load_tokenizer("smollm2-135m")


@pytest.fixture(scope="module")
def other_tokenizer():
    """A byte-level BPE of 400 tokens trained on pydoc: another model's tokenizer,
    with windows of other lengths than SmolLM2's."""
    tok = Tokenizer(tok_models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<bos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(topics.topics.values()), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>")


# --- cutting and sampling -----------------------------------------------------


def test_pydoc_windows_reproduce_the_reference_cloud(smollm2_tokenizer):
    ref = np.load(FIXTURE)
    sel = data.select_windows(
        data.PydocSource(), smollm2_tokenizer, window_tokens=20, num_windows=2000, seed=32
    )
    np.testing.assert_array_equal(sel.token_ids, ref["input_ids"])
    np.testing.assert_array_equal(sel.labels, ref["labels"])
    assert sel.num_available == 5607 and sel.num_scanned == 79
    assert sel.class_names[:2] == ("assert", "assignment")
    # 5 windows of "for" repeat windows of "compound" (the fixture holds 1995 distinct rows).
    assert len(np.unique(sel.token_ids, axis=0)) == 1995
    assert int(np.sum(sel.first_copy != np.arange(2000))) == 5
    line = data.duplicate_summary(sel)
    assert line.startswith("5 of the 2000 windows repeat") and "'for:w12' = 'compound:w59'" in line
    assert data.window_summary(sel).startswith("5607 windows of 20 tokens cut from 79 documents")


def test_windows_are_consecutive_from_token_0_tail_dropped():
    tok = WordTokenizer()
    docs = _docs("a bb ccc dddd eeeee ffffff g", "short", "h ii jjj kkkk")
    sel = data.select_windows(docs, tok, window_tokens=3, num_windows=None)
    # Document 0 has 7 tokens: windows [0, 3) and [3, 6), token 6 dropped; document 1
    # (1 token) gives none; document 2 (4 tokens) gives one.
    np.testing.assert_array_equal(sel.token_ids, [[11, 12, 13], [14, 15, 16], [11, 12, 13]])
    assert sel.keys == ("d0:w0", "d0:w1", "d2:w0")
    np.testing.assert_array_equal(sel.indices, [0, 1, 2])
    np.testing.assert_array_equal(sel.documents, [0, 0, 2])
    np.testing.assert_array_equal(sel.positions, [0, 1, 0])
    np.testing.assert_array_equal(sel.labels, [0, 0, 2])
    assert sel.class_names == ("d0", "d1", "d2")
    assert sel.token_ids.dtype == np.int32 and sel.attention_mask.min() == 1
    # Window d2:w0 repeats d0:w0.
    np.testing.assert_array_equal(sel.first_copy, [0, 1, 0])
    assert sel.num_available == 3 and sel.num_source_tokens == 12


def test_add_bos_prefixes_every_window():
    sel = data.select_windows(_docs(_words(8)), WordTokenizer(), window_tokens=4, num_windows=None)
    bos = data.select_windows(
        _docs(_words(8)), WordTokenizer(), window_tokens=4, num_windows=None, add_bos=True
    )
    assert bos.token_ids.shape == (2, 5)
    np.testing.assert_array_equal(bos.token_ids[:, 0], 1)
    np.testing.assert_array_equal(bos.token_ids[:, 1:], sel.token_ids)


def test_sample_is_seeded_sorted_and_independent_of_anything_else():
    docs = _docs(*[" ".join("x" * (1 + (i * 7 + j) % 9) for j in range(40)) for i in range(10)])
    tok = WordTokenizer()
    full = data.select_windows(docs, tok, window_tokens=4, num_windows=None)
    a = data.select_windows(docs, tok, window_tokens=4, num_windows=25, seed=5)
    b = data.select_windows(docs, tok, window_tokens=4, num_windows=25, seed=5)
    c = data.select_windows(docs, tok, window_tokens=4, num_windows=25, seed=6)
    assert full.num_available == 100
    want = np.sort(np.random.default_rng(5).choice(100, 25, replace=False))
    np.testing.assert_array_equal(a.indices, want)
    assert np.all(np.diff(a.indices) > 0)
    np.testing.assert_array_equal(a.token_ids, b.token_ids)
    assert not np.array_equal(a.indices, c.indices)
    # Each sampled window is the same window as in the full cut: ids, key, label.
    np.testing.assert_array_equal(a.token_ids, full.token_ids[a.indices])
    assert a.keys == tuple(full.keys[i] for i in a.indices)
    np.testing.assert_array_equal(a.labels, full.labels[a.indices])


def test_errors_are_one_line_and_name_the_problem():
    tok = WordTokenizer()
    with pytest.raises(ValueError, match="window_tokens must be at least 2, got 1"):
        data.select_windows(_docs(_words(5)), tok, window_tokens=1, num_windows=None)
    with pytest.raises(ValueError, match="num_windows must be positive, got 0"):
        data.select_windows(_docs(_words(5)), tok, window_tokens=2, num_windows=0)
    with pytest.raises(ValueError) as e:
        data.select_windows(
            _docs(_words(9), _words(3)), tok, window_tokens=4, num_windows=5, dataset_name="toy"
        )
    assert str(e.value) == (
        "num_windows=5: the 2 documents of dataset 'toy' (12 tokens) yield only 2 windows of "
        "4 tokens"
    )
    with pytest.raises(ValueError, match=r"window_tokens=20: the 1 documents .* yield only 0"):
        data.select_windows(_docs(_words(5)), tok, window_tokens=20, num_windows=None)


# --- labels -------------------------------------------------------------------


def _jsonl(tmp_path, records):
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_jsonl_label_field_gives_sorted_class_ids(tmp_path):
    path = _jsonl(
        tmp_path,
        [
            {"text": _words(6), "topic": "zoo"},
            {"text": _words(1), "topic": "art"},  # no window, but its class exists
            {"text": _words(4), "topic": "math"},
            {"text": _words(4), "topic": "zoo"},
        ],
    )
    source = data.open_source(path, label_field="topic")
    assert source.describe()["label_field"] == "topic"
    sel = data.select_windows(source, WordTokenizer(), window_tokens=2, num_windows=None)
    assert sel.class_names == ("art", "math", "zoo")
    np.testing.assert_array_equal(sel.labels, [2, 2, 2, 1, 1, 2, 2])
    assert sel.keys[0] == "line1:w0" and sel.keys[3] == "line3:w0"


def test_integer_labels_sort_numerically(tmp_path):
    path = _jsonl(tmp_path, [{"text": _words(2), "y": y} for y in (10, 2, 33, 2)])
    sel = data.select_windows(
        data.open_source(path, label_field="y"), WordTokenizer(), window_tokens=2, num_windows=None
    )
    assert sel.class_names == ("2", "10", "33")
    np.testing.assert_array_equal(sel.labels, [1, 0, 2, 0])


def test_missing_label_field_names_record_and_field(tmp_path):
    path = _jsonl(tmp_path, [{"text": _words(4), "y": "a"}, {"text": _words(4), "z": "b"}])
    source = data.open_source(path, label_field="y")
    with pytest.raises(ValueError) as e:
        data.select_windows(source, WordTokenizer(), window_tokens=2, num_windows=None)
    assert str(e.value) == (
        f"label_field: record {path}, line 2 has no field 'y' (it has ['text', 'z'])"
    )


def test_bad_labels_are_refused(tmp_path):
    path = _jsonl(tmp_path, [{"text": _words(4), "y": "a"}, {"text": _words(4), "y": 3}])
    with pytest.raises(ValueError, match=r"record line2 has label 3 \(int\) but record line1"):
        data.select_windows(
            data.open_source(path, label_field="y"),
            WordTokenizer(),
            window_tokens=2,
            num_windows=None,
        )
    path = _jsonl(tmp_path, [{"text": _words(4), "y": [1]}])
    with pytest.raises(ValueError, match=r"line 1\['y'\] is list \(\[1\]\), not a string"):
        list(data.open_source(path, label_field="y"))
    with pytest.raises(ValueError, match="label_field='y' applies to .jsonl files"):
        data.open_source("pydoc", label_field="y")


def test_hf_dataset_label_field(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    folder = tmp_path / "ds"
    folder.mkdir()
    table = pa.table({"text": [_words(4), _words(2)], "label": [1, 0]})
    pq.write_table(table, folder / "train-00000-of-00001.parquet")
    folder = str(folder)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    sel = data.select_windows(
        data.open_source(folder, label_field="label"),
        WordTokenizer(),
        window_tokens=2,
        num_windows=None,
    )
    assert sel.keys == ("0:w0", "0:w1", "1:w0")
    np.testing.assert_array_equal(sel.labels, [1, 1, 0])
    with pytest.raises(ValueError, match=r"label_field: record .*\[0\] has no field 'topic'"):
        list(data.open_source(folder, label_field="topic"))


# --- re-tokenisation by another model's tokenizer --------------------------------


def test_retokenized_windows_are_the_same_text(smollm2_tokenizer, other_tokenizer):
    sel = data.select_windows(
        data.PydocSource(), smollm2_tokenizer, window_tokens=20, num_windows=300, seed=1
    )
    other, texts = data.retokenize_windows(sel, smollm2_tokenizer, other_tokenizer)
    assert other.keys == sel.keys
    np.testing.assert_array_equal(other.indices, sel.indices)
    np.testing.assert_array_equal(other.labels, sel.labels)
    lengths = other.attention_mask.sum(axis=1)
    assert other.token_ids.shape == (300, lengths.max()) and lengths.min() < lengths.max()
    # Right padding: each row's mask is 1 then 0.
    np.testing.assert_array_equal(
        other.attention_mask, np.arange(lengths.max())[None, :] < lengths[:, None]
    )
    for i in range(300):
        valid = other.token_ids[i, : lengths[i]].tolist()
        b_text = other_tokenizer.decode(valid, clean_up_tokenization_spaces=False)
        a_text = smollm2_tokenizer.decode(
            sel.token_ids[i].tolist(), clean_up_tokenization_spaces=False
        )
        assert b_text == a_text == texts[i]
    # The window tokenizer's own run re-tokenises the same texts.
    own, _ = data.retokenize_windows(sel, smollm2_tokenizer, smollm2_tokenizer)
    own_len = own.attention_mask.sum(axis=1)
    for i in range(300):
        assert (
            smollm2_tokenizer.decode(
                own.token_ids[i, : own_len[i]].tolist(), clean_up_tokenization_spaces=False
            )
            == texts[i]
        )


def test_retokenize_with_bos_and_static_length(smollm2_tokenizer, other_tokenizer):
    sel = data.select_windows(
        data.PydocSource(),
        smollm2_tokenizer,
        window_tokens=8,
        num_windows=40,
        seed=0,
        add_bos=True,
    )
    other, texts = data.retokenize_windows(
        sel, smollm2_tokenizer, other_tokenizer, add_bos=True, length=64
    )
    assert other.token_ids.shape == (40, 64)
    np.testing.assert_array_equal(other.token_ids[:, 0], other_tokenizer.bos_token_id)
    assert not any(t.startswith(smollm2_tokenizer.bos_token) for t in texts)
    pad = other_tokenizer.pad_token_id
    assert np.all(other.token_ids[other.attention_mask == 0] == pad)
    with pytest.raises(ValueError, match=r"length=3 is shorter than row '.*:w\d+', which has"):
        data.retokenize(texts, other_tokenizer, length=3, keys=sel.keys)


def test_partial_characters_are_dropped_from_the_text(smollm2_tokenizer, other_tokenizer):
    text = "naïve café: ☃ ☃☃ 日本語のテキスト ∮ E⋅da = Q, n → ∞, ∑ f(i) = ∏ g(i)"
    # Windows of 10 tokens (at least 10 bytes) always hold a complete character.
    doc = text * 3
    sel = data.select_windows(_docs(doc), smollm2_tokenizer, window_tokens=10, num_windows=None)
    texts, cut = data.window_texts(sel.token_ids, smollm2_tokenizer)
    assert cut.any() and not cut.all()
    # Only the pieces at a window's edges go: what is left is a piece of the document.
    for t in texts:
        assert "\ufffd" not in t and t in doc
    other, _ = data.retokenize_windows(sel, smollm2_tokenizer, other_tokenizer)
    n = other.attention_mask.sum(axis=1)
    for i, t in enumerate(texts):
        assert other_tokenizer.decode(other.token_ids[i, : n[i]].tolist()) == t
