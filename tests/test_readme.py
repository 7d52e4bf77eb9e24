"""The README's field tables are the declarations' (issue 21): regenerate them with
``python -c "from geom_jax import results; print(results.readme_tables())"``."""

import os

from geom_jax import results

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_readme_field_tables_are_generated_from_the_declarations():
    text = open(README, encoding="utf-8").read()
    paper, beyond = results.readme_tables().split("\n\n")
    assert paper in text
    assert beyond in text
    assert "| `gride_ids` | [P, L, S] |" in paper and "| `label_overlap` |" in beyond


def test_readme_shows_the_one_call_load():
    text = open(README, encoding="utf-8").read()
    assert "geom_jax.results.load(" in text and ".to_dataframe()" in text
