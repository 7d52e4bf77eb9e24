"""An observable from another package, through the geom_jax.observables entry point only:
its flag, its field in the files, its option in metadata.json, its report section and its
named dims in geom_jax.results.load (issue 21, acceptance 2)."""

import json
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import run_helpers

from geom_jax import data, models, results
from geom_jax.metrics.declare import registry

PLUGIN = textwrap.dedent(
    '''
    """A toy observable package: the mean p-norm of the tokens, p an option."""
    import jax.numpy as jnp
    import numpy as np

    from geom_jax import plotting
    from geom_jax.metrics.declare.observable import Field, Observable, Option, ReportSection

    NORM_POWER = Option("norm_power", float, 2.0, "Power p of the toy mean p-norm.")


    def _compute(ctx):
        p = ctx.options["norm_power"]
        norm = jnp.sum(jnp.abs(ctx.x) ** p, -1) ** (1.0 / p)
        return {"toy_norm": jnp.sum(norm * ctx.valid, -1) / jnp.sum(ctx.valid, -1)}


    def _figure(runs, path, **_):
        fig, axes = plotting.figure(len(runs))
        for ax, run in zip(axes, runs):
            v = run.arrays["toy_norm"]
            plotting.band(ax, np.arange(1, v.shape[1] + 1), v, "toy")
        return plotting.save(fig, path)


    def _text(run, **_):
        v = np.nanmean(run.arrays["toy_norm"], 0)
        return ["", "Toy mean p-norm per layer:"] + plotting.layer_table("norm", v, "{:.4f}")


    OBSERVABLE = Observable(
        name="toy_norm",
        compute=_compute,
        fields=(Field("toy_norm", (), "mean p-norm of the tokens.", length=True),),
        options=(NORM_POWER,),
        report=(ReportSection("Toy p-norm", figure=_figure, text=_text, file="toy.png"),),
    )
    '''
)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """A folder holding the package and its dist-info (what pip install would write)."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "toy_geom").mkdir()
    (root / "toy_geom" / "__init__.py").write_text(PLUGIN)
    info = root / "toy_geom-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy_geom\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[geom_jax.observables]\ntoy_norm = toy_geom:OBSERVABLE\n"
    )
    return str(root)


def _run(args, plugin, script=run_helpers.SCRIPT):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=plugin)
    return subprocess.run(
        [sys.executable, script, *args], env=env, capture_output=True, text=True, timeout=600
    )


def test_help_lists_the_plugins_option(plugin):
    proc = _run(["--helpfull"], plugin)
    assert "--norm_power: Power p of the toy mean p-norm." in proc.stdout, proc.stderr[-2000:]
    without = _run(["--helpfull"], "")
    assert "--norm_power" not in without.stdout


def test_a_run_with_the_plugin_writes_its_field_option_section_and_dims(plugin, tiny, tmp_path):
    out, rep = tmp_path / "run", tmp_path / "rep"
    args = [
        f"--model={tiny}",
        "--max_tokens=64",
        "--num_prompts=2",
        "--range_max=16",
        "--max_k=8",
        "--observables=paper,toy_norm",
        "--norm_power=3",
        "--noprogress",
        f"--output_dir={out}",
    ]
    proc = _run(args, plugin)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((out / results.METADATA_FILE).read_text())
    assert (
        meta["flags"]["norm_power"] == 3.0
        and meta["flags"]["observables"] == "gride,cosine,overlap,toy_norm"
    )
    with np.load(out / results.RESULTS_FILE) as z:
        got = z["toy_norm"]
    # The same prompts through the model here, the p-norm computed with NumPy.
    model, tok = models.load(tiny)
    sel = data.select_prompts(data.open_source("pydoc"), [tok], max_tokens=64, num_prompts=2)
    hidden = np.asarray(model(jnp.asarray(sel.token_ids)).hidden_states, np.float64)[1:]
    want = (np.abs(hidden) ** 3).sum(-1) ** (1 / 3)  # [L, B, T]
    np.testing.assert_allclose(got, want.mean(-1).T, rtol=2e-5)
    readme = (out / results.README_FILE).read_text()
    assert "| `toy_norm` | [2, 3] | [P, L] mean p-norm of the tokens. |" in readme
    report = _run([f"--results={out}", f"--output_dir={rep}"], plugin, run_helpers.PLOT_SCRIPT)
    assert report.returncode == 0, report.stderr[-3000:]
    text = (rep / "report.md").read_text()
    table = " | ".join(f"{v:.4f}" for v in got.mean(0))
    assert "## Toy p-norm" in text and "Toy mean p-norm per layer:" in text and table in text
    assert (rep / "toy.png").read_bytes()[:4] == b"\x89PNG"
    registry.discover()  # geom-jax's own first, so the block below adds only the plugin
    sys.path.insert(0, plugin)
    try:
        with registry.registered():
            registry.discover(refresh=True)
            ds = results.load(str(out))
    finally:
        sys.path.remove(plugin)
    assert ds["toy_norm"].dims == ("row", "layer")
    np.testing.assert_array_equal(ds["toy_norm"].values, got)
    np.testing.assert_array_equal(ds["layer"].values, [1, 2, 3])
    assert "toy_norm" not in registry.REGISTRY


def test_the_declaration_modules_keep_their_former_paths():
    """Plugins written against geom_jax.metrics.observable / .options / .registry
    (before metrics/ was split by job) import the same modules."""
    import geom_jax.metrics.observable as former_observable
    from geom_jax.metrics.registry import resolve

    from geom_jax.metrics import declare
    from geom_jax.metrics import options as former_options

    assert former_observable is declare.observable
    assert former_options is declare.options
    assert resolve is declare.registry.resolve
