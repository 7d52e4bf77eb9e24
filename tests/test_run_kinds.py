"""The kind of a run is one object (issue 28, item 3): per-prompt and pooled runs implement
geom_jax.run.run_kind.RunKind; the files and the report read a kind only through it."""

import os
import re

import numpy as np
import pytest

from geom_jax import results
from geom_jax import run as geom_run
from geom_jax.metrics.declare import registry
from geom_jax.metrics.declare.observable import IMPORTED, PER_PROMPT, POOLED, Field, Observable
from geom_jax.run import RunSpec, run_kind
from geom_jax.run.kinds import IMPORTED_RUN, PER_PROMPT_RUN, POOLED_RUN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sources(*paths):
    for path in paths:
        full = os.path.join(ROOT, path)
        names = (
            [full]
            if full.endswith(".py")
            else [os.path.join(full, n) for n in sorted(os.listdir(full)) if n.endswith(".py")]
        )
        for name in names:
            yield os.path.relpath(name, ROOT), open(name).read()


def test_files_and_report_hold_no_kind_branch_or_field_sniffing():
    found = [
        f"{path}:{i}: {line.strip()}"
        for path, text in _sources("geom_jax/results.py", "geom_jax/report")
        for i, line in enumerate(text.splitlines(), 1)
        if re.search(r"cloud_shuffle|kind ==|kind !=|CLOUDS|TOKENS\b", line)
    ]
    assert found == []


def test_the_pool_chooses_the_kind_and_its_default_observables():
    assert [k.name for k in run_kind.kinds()] == [PER_PROMPT, POOLED, IMPORTED]
    assert RunSpec(output_dir="o").kind is PER_PROMPT_RUN
    for pool in ("last", "mean"):
        spec = RunSpec(output_dir="o", pool=pool)
        assert spec.kind is POOLED_RUN
        assert set(registry.resolve(spec.observables)) == set(registry.resolve("pooled"))
    assert RunSpec(output_dir="o").observables == "paper"
    assert run_kind.of_metadata({}) is PER_PROMPT_RUN
    assert run_kind.of_metadata({"flags": {"pool": "mean"}}) is POOLED_RUN
    assert run_kind.of_metadata({"flags": {"pool": "imported"}}) is IMPORTED_RUN
    with pytest.raises(ValueError, match="pool must be one of"):
        run_kind.of_pool("max")


def test_a_kind_whose_name_or_pool_is_taken_is_refused():
    class Twin(type(POOLED_RUN)):
        name = "twin"

    with pytest.raises(ValueError, match="clashes with <run kind pooled>"):
        run_kind.register(Twin())
    assert [k.name for k in run_kind.kinds()] == [PER_PROMPT, POOLED, IMPORTED]


def test_an_imported_run_reads_as_pooled_but_is_not_run():
    """Imported runs (experiments/import_representations.py) have the pooled files but no
    measured fields, and no run makes one."""
    assert isinstance(IMPORTED_RUN, type(POOLED_RUN)) and IMPORTED_RUN.keys_only
    assert not POOLED_RUN.keys_only
    assert IMPORTED_RUN.fields("pooled") == list(POOLED_RUN.row_fields)
    assert "input_ids" not in IMPORTED_RUN.tokens_fields("pooled")
    with pytest.raises(geom_run.UserError, match="import_representations.py"):
        IMPORTED_RUN.check(RunSpec(output_dir="o"))
    with pytest.raises(geom_run.UserError, match="pool must be one of"):
        geom_run.run(RunSpec(output_dir="o", pool="imported"))


def test_declarations_name_only_registered_kinds():
    names = {k.name for k in run_kind.kinds()}
    for obs in registry.REGISTRY.values():
        for section in obs.report:
            assert set(section.kinds) <= names, (obs.name, section.title)


def test_each_kind_declares_its_files():
    obs = registry.resolve("pooled")
    per_prompt = [f.name for f in PER_PROMPT_RUN.fields("paper")]
    assert per_prompt[:4] == ["prompt_index", "prompt_key", "shuffle_index", "shuffle_repeat"]
    assert PER_PROMPT_RUN.tokens_fields("paper") == set()
    assert PER_PROMPT_RUN.tokens_fields("all") == {"local_id"}  # per token, float16
    pooled = [f.name for f in POOLED_RUN.fields(obs)]
    assert pooled[:4] == ["cloud_shuffle", "cloud_repeat", "cloud_partition", "n_points"]
    assert not any(f.tokens for f in POOLED_RUN.fields(obs))
    # a per-point field of a pooled run (mle_id's local_id) is stored per row
    assert POOLED_RUN.tokens_fields(obs) == {f.name for f in POOLED_RUN.point_fields} | {"local_id"}
    assert set(POOLED_RUN.point_coordinates) <= POOLED_RUN.tokens_fields(obs)
    docs = results.field_docs(obs, POOLED_RUN)
    assert docs["gride_ids"].startswith("[C, L, S]") and docs["row_loss"].startswith("[R]")
    assert results.field_docs(obs, POOLED_RUN)["local_id"].startswith("[R, L]")
    assert "local_id" not in {f.name for f in POOLED_RUN.fields(obs)}
    assert results.field_docs("paper")["gride_ids"].startswith("[P, L, S]")


def test_the_report_reads_a_pooled_cloud_as_a_row():
    arrays = {
        "cloud_shuffle": np.array([0, -1]),
        "cloud_partition": np.array([0, 1]),
        "cloud_repeat": np.array([0, 2]),
    }
    rows = POOLED_RUN.report_arrays(arrays)
    np.testing.assert_array_equal(rows["shuffle_index"], [0, -1])
    np.testing.assert_array_equal(rows["prompt_index"], [0, 1])
    np.testing.assert_array_equal(rows["shuffle_repeat"], [0, 2])
    assert PER_PROMPT_RUN.report_arrays(arrays) == arrays
    meta = {"model": "m", "flags": {"pool": "last"}}
    assert POOLED_RUN.report_label(meta, "f") == "m (one point per window, last token)"


def test_former_dataset_names_still_work_deprecated():
    with pytest.warns(DeprecationWarning, match="dataset= is deprecated; use pooled="):
        obs = Observable(
            "x", (Field("x"),), compute=lambda ctx: {"x": ctx.x[..., 0, 0]}, dataset=True
        )
    assert obs.pooled
    with pytest.warns(DeprecationWarning, match="'dataset' is deprecated"):
        spec = RunSpec(output_dir="o", pool="last", observables="dataset")
    assert spec.observables == RunSpec(output_dir="o", pool="last").observables
