r"""Added cost of the lens and logit_id observables per prompt, measured in one
process against the paper's set on the same prompts (issue 15, acceptance 5).

  python -m benchmarks.bench_lens --model=smollm2-135m --max_tokens=256 --repeats=3

Both pipelines are compiled first; then each prompt runs through both,
alternating, and the median seconds per prompt are printed.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags

_MODEL = flags.DEFINE_string("model", "smollm2-135m", "Model alias, folder or .gguf file.")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 256, "Tokens per prompt.")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 3, "Prompts timed.")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Passes over the prompts.")
_RANGE_MAX = flags.DEFINE_integer("range_max", 64, "GRIDE range of the paper's set.")
_MAX_K = flags.DEFINE_integer("max_k", 32, "Overlap neighbourhood size.")
_EXTRA = flags.DEFINE_string("extra", "lens,logit_id", "Observables added to 'paper'.")


def main(argv):
    del argv
    from geom_jax import data, models, pipeline  # noqa: PLC0415

    model, tok = models.load(_MODEL.value)
    sel = data.select_prompts(
        data.open_source(data.PYDOC),
        [tok],
        max_tokens=_MAX_TOKENS.value,
        num_prompts=_NUM_PROMPTS.value,
    )
    settings = dict(range_max=_RANGE_MAX.value, max_k=_MAX_K.value)
    pipes = {
        "paper": pipeline.GeometryPipeline(model, **settings),
        f"paper,{_EXTRA.value}": pipeline.GeometryPipeline(
            model, observables=f"paper,{_EXTRA.value}", **settings
        ),
    }
    times = {name: [] for name in pipes}
    for name, pipe in pipes.items():
        t0 = time.perf_counter()
        jax.block_until_ready(pipe(sel.token_ids[:1]))
        print(f"{name}: first call (compile + run) {time.perf_counter() - t0:.1f} s", flush=True)
    for _ in range(_REPEATS.value):
        for ids in sel.token_ids:
            for name, pipe in pipes.items():
                t0 = time.perf_counter()
                jax.block_until_ready(pipe(ids[None]))
                times[name].append(time.perf_counter() - t0)
    base, more = (np.median(t) for t in times.values())
    print(
        f"{_MODEL.value}, T = {_MAX_TOKENS.value}, {len(times['paper'])} prompts each: "
        f"paper {base:.2f} s/prompt, paper,{_EXTRA.value} {more:.2f} s/prompt: "
        f"+{more - base:.2f} s ({more / base:.2f}x)"
    )


if __name__ == "__main__":
    app.run(main)
