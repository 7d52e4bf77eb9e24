"""Prompt sources, length filtering and the block shuffle of Algorithm 1."""

import json

import numpy as np
import pytest

from geom_jax import data


class WordTokenizer:
    """One token per whitespace-separated word; BOS = 1."""

    bos_token_id = 1

    def __init__(self, vocab_offset=10, split_hyphens=False):
        self.vocab_offset = vocab_offset
        self.split_hyphens = split_hyphens
        self.calls = []

    def __call__(self, text, add_special_tokens=True):
        assert add_special_tokens is False
        self.calls.append(text)
        words = text.replace("-", " ").split() if self.split_hyphens else text.split()
        return {"input_ids": [self.vocab_offset + len(w) for w in words]}


# --- shuffle -----------------------------------------------------------------


@pytest.mark.parametrize("s", range(6))
def test_block_permutation_permutes_whole_blocks(s):
    t = 1024
    perm = data.block_permutation(t, s, seed=3, prompt_index=7)
    assert sorted(perm.tolist()) == list(range(t))
    size = t // 4**s
    blocks = perm.reshape(4**s, size)
    # Each block is a contiguous, aligned run of the original tokens.
    np.testing.assert_array_equal(blocks - blocks[:, :1], np.tile(np.arange(size), (4**s, 1)))
    assert np.all(blocks[:, 0] % size == 0)
    if s == 0:
        np.testing.assert_array_equal(perm, np.arange(t))
    elif s >= 2:
        assert not np.array_equal(perm, np.arange(t))


def test_block_permutation_is_seeded_per_prompt_and_level():
    a = data.block_permutation(256, 3, seed=0, prompt_index=5)
    np.testing.assert_array_equal(a, data.block_permutation(256, 3, seed=0, prompt_index=5))
    assert not np.array_equal(a, data.block_permutation(256, 3, seed=1, prompt_index=5))
    assert not np.array_equal(a, data.block_permutation(256, 3, seed=0, prompt_index=6))


@pytest.mark.parametrize("s", [1, 2, 3])
def test_blocks_are_no_coarser_than_4_pow_s(s):
    # A random order of B blocks keeps about one pair of blocks adjacent, so the
    # permutation breaks the sequence about B - 2 times; blocks of 4x the size
    # (one level too coarse) could break it at most B/4 - 1 times.
    t, blocks = 64, 4**s
    breaks = [
        int(np.sum(np.diff(data.block_permutation(t, s, seed=0, prompt_index=p)) != 1))
        for p in range(8)
    ]
    assert max(breaks) <= blocks - 1
    assert np.mean(breaks) > blocks / 4


def test_shuffle_tokens_keeps_prefix_and_multiset():
    ids = np.arange(100, 100 + 1 + 64)
    out = data.shuffle_tokens(ids, 2, seed=0, prompt_index=1, keep_first=1)
    assert out[0] == ids[0]
    assert sorted(out.tolist()) == sorted(ids.tolist())
    perm = data.block_permutation(64, 2, seed=0, prompt_index=1)
    np.testing.assert_array_equal(out[1:], ids[1:][perm])


def test_check_divisible_message():
    with pytest.raises(
        ValueError, match=r"max_tokens=1000 is not divisible by 4\*\*max_shuffle = 1024"
    ):
        data.check_divisible(1000, 5)
    data.check_divisible(2048, 5)


# --- filtering by length -----------------------------------------------------


def _prompts(lengths):
    return [
        data.Prompt(i, f"p{i}", "  " + " ".join(["word"] * n) + "\n") for i, n in enumerate(lengths)
    ]


def test_select_keeps_long_prompts_in_order_and_truncates():
    tok = WordTokenizer()
    sel = data.select_prompts(_prompts([3, 8, 12, 5, 9]), [tok], max_tokens=8, num_prompts=None)
    np.testing.assert_array_equal(sel.indices, [1, 2, 4])
    assert sel.keys == ("p1", "p2", "p4")
    assert sel.token_ids.shape == (3, 8) and sel.token_ids.dtype == np.int32
    assert all(not t.startswith(" ") and not t.endswith("\n") for t in tok.calls)  # stripped


def test_select_stops_after_num_prompts():
    tok = WordTokenizer()
    sel = data.select_prompts(_prompts([9, 9, 9, 9]), [tok], max_tokens=8, num_prompts=2)
    np.testing.assert_array_equal(sel.indices, [0, 1])
    assert sel.num_scanned == 2


def test_select_requires_every_tokenizer_of_a_comparison():
    texts = [
        data.Prompt(0, "a", " ".join(["w"] * 10)),
        data.Prompt(1, "b", " ".join(["w-w"] * 5)),  # 5 words, 10 with split hyphens
    ]
    coarse, fine = WordTokenizer(), WordTokenizer(split_hyphens=True)
    both = data.select_prompts(texts, [fine, coarse], max_tokens=8, num_prompts=None)
    np.testing.assert_array_equal(both.indices, [0])
    alone = data.select_prompts(texts, [fine], max_tokens=8, num_prompts=None)
    np.testing.assert_array_equal(alone.indices, [0, 1])


def test_select_add_bos():
    sel = data.select_prompts(
        _prompts([9]), [WordTokenizer()], max_tokens=8, num_prompts=1, add_bos=True
    )
    assert sel.token_ids.shape == (1, 9) and sel.token_ids[0, 0] == 1


def test_select_too_few_says_how_many_qualify():
    with pytest.raises(
        ValueError, match=r"num_prompts=5: only 2 of the 4 prompts of dataset 'toy'"
    ):
        data.select_prompts(
            _prompts([9, 1, 9, 2]),
            [WordTokenizer()],
            max_tokens=8,
            num_prompts=5,
            dataset_name="toy",
        )


# --- sources -----------------------------------------------------------------


def test_pydoc_source_sorted_keys():
    from pydoc_data import topics

    prompts = list(data.open_source("pydoc"))
    assert [p.key for p in prompts] == sorted(topics.topics)
    assert [p.index for p in prompts] == list(range(len(prompts)))
    assert prompts[3].text == topics.topics[prompts[3].key]


def test_txt_file_and_folder(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "b.txt").write_text("second prompt")
    (folder / "a.txt").write_text("first prompt")
    (folder / "notes.md").write_text("ignored")
    got = list(data.open_source(str(folder)))
    assert [(p.index, p.key, p.text) for p in got] == [
        (0, "a.txt", "first prompt"),
        (1, "b.txt", "second prompt"),
    ]
    single = list(data.open_source(str(folder / "b.txt")))
    assert [p.text for p in single] == ["second prompt"]


def test_jsonl_text_field(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"body": "one"}) + "\n\n" + json.dumps({"body": "two"}) + "\n")
    got = list(data.open_source(str(path), text_field="body"))
    assert [(p.index, p.text) for p in got] == [(0, "one"), (1, "two")]


def test_jsonl_missing_text_field_names_it(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"body": "one"}) + "\n")
    with pytest.raises(
        ValueError, match=r"text_field: record .*prompts.jsonl, line 1 has no field 'text'"
    ):
        list(data.open_source(str(path)))


def test_jsonl_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(ValueError, match=r"prompts.jsonl, line 2: not valid JSON"):
        list(data.open_source(str(path)))


def test_unknown_dataset_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'nonsense'"):
        data.open_source("nonsense")
    with pytest.raises(ValueError, match="does not exist"):
        data.open_source(str(tmp_path / "missing.jsonl"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="dataset: folder .*empty' is empty"):
        data.open_source(str(empty))


def _write_pile_like(root, texts):
    """A local copy laid out like the Hub repo NeelNanda/pile-10k (parquet shard)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    repo = root / "NeelNanda" / "pile-10k" / "data"
    repo.mkdir(parents=True)
    table = pa.table({"text": texts, "meta": [{"pile_set_name": "Pile-CC"} for _ in texts]})
    pq.write_table(table, repo / "train-00000-of-00001.parquet")
    return root / "NeelNanda" / "pile-10k"


def test_pile10k_records_from_local_dataset(tmp_path, monkeypatch):
    texts = [" ".join(["tok"] * n) for n in (3, 12, 20, 7, 15)]
    _write_pile_like(tmp_path, texts)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    source = data.open_source("NeelNanda/pile-10k")
    assert isinstance(source, data.HFDatasetSource)
    got = list(source)
    assert [p.text for p in got] == texts
    sel = data.select_prompts(source, [WordTokenizer()], max_tokens=10, num_prompts=None)
    np.testing.assert_array_equal(sel.indices, [1, 2, 4])
    streamed = list(data.open_source("NeelNanda/pile-10k", streaming=True))
    assert [p.text for p in streamed] == texts
