"""The README's field tables are the declarations' (issue 21): regenerate them with
``python -c "from geom_jax import results; print(results.readme_tables())"``."""

import os

import pytest

from geom_jax import results
from geom_jax import run as geom_run

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_readme_field_tables_are_generated_from_the_declarations():
    text = open(README, encoding="utf-8").read()
    paper, beyond = results.readme_tables().split("\n\n")
    assert paper in text
    assert beyond in text
    assert "| `gride_ids` | [P, L, S] |" in paper and "| `label_overlap` |" in beyond


def test_readme_measure_table_is_generated_from_the_declarations():
    from geom_jax.metrics.similarity import registry

    text = open(README, encoding="utf-8").read()
    assert registry.readme_table() in text
    assert "| `procrustes` | none |" in registry.readme_table()


def test_readme_shows_the_one_call_load():
    text = open(README, encoding="utf-8").read()
    assert "geom_jax.results.load(" in text and ".to_dataframe()" in text


RUNNABLE = "<!-- runnable"
"""The line before a README code block that this suite runs as written."""


def runnable_blocks(text: str) -> list[tuple[int, str, str]]:
    """(line, language, code) of every fenced block preceded by a ``<!-- runnable`` line."""
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines[:-1]):
        if line.startswith(RUNNABLE) and lines[i + 1].startswith("```"):
            end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
            out.append((i + 2, lines[i + 1][3:].strip(), "\n".join(lines[i + 2 : end])))
    return out


def test_runnable_blocks_are_found():
    text = "a\n<!-- runnable -->\n```python\nx = 1\n```\n```python\ny = 2\n```\n"
    assert runnable_blocks(text) == [(3, "python", "x = 1")]


@pytest.fixture(scope="module")
def make_run_dir(tmp_path_factory):
    """A folder holding the run the README's blocks read (``make run``'s shuffled run,
    smaller: SmolLM2-135M, one pydoc prompt of 64 tokens at s = 0 and 1)."""
    cwd = tmp_path_factory.mktemp("readme")
    geom_run.run(
        geom_run.RunSpec(
            model="smollm2-135m",
            dataset="pydoc",
            method="shuffled",
            max_tokens=64,
            max_shuffle=1,
            num_prompts=1,
            range_max=32,
            max_k=16,
            progress=False,
            output_dir=str(cwd / "results" / "smollm2-135m_pydoc" / "shuffled"),
        )
    )
    return cwd


def test_runnable_blocks_run_as_written(make_run_dir, monkeypatch):
    blocks = runnable_blocks(open(README, encoding="utf-8").read())
    assert [lang for _, lang, _ in blocks] == ["python"]
    monkeypatch.chdir(make_run_dir)
    for line, _, code in blocks:
        namespace: dict = {}
        exec(compile(code, f"README.md, line {line}", "exec"), namespace)
    ds, df = namespace["ds"], namespace["df"]
    assert ds.gride_ids.dims == ("row", "layer", "scale")
    assert {"prompt_key", "shuffle_index", "gride_n1"} <= set(ds.coords)
    assert {"row", "layer", "twonn", "prompt_key"} <= set(df.columns)
    assert len(df) == ds.sizes["row"] * ds.sizes["layer"]
