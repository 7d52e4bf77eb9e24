"""Hub checkpoints at a revision (acceptance 5), resolved through a Hugging
Face cache laid out on disk with HF_HUB_OFFLINE=1, so huggingface_hub's own
resolution code (refs/<revision> -> snapshots/<commit>) runs. huggingface_hub
reads HF_HOME and HF_HUB_OFFLINE at import, hence the subprocesses."""

import json
import os
import subprocess
import sys

import pytest
from helpers.tiny_model import write_tiny_llama

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "token_geometry.py")
REPO = "geom-jax-test/tiny-llama"
COMMITS = {"main": "a" * 39 + "1", "step1000": "b" * 39 + "2"}


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("hf_home")
    repo = home / "hub" / ("models--" + REPO.replace("/", "--"))
    for seed, (ref, commit) in enumerate(COMMITS.items()):
        write_tiny_llama(str(repo / "snapshots" / commit), seed=seed)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return str(home)


def _env(hf_home):
    return dict(os.environ, HF_HOME=hf_home, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", HF_TOKEN="")


LOAD_SCRIPT = r"""
import json, sys
import numpy as np
import geom_jax.models as gm
from geom_jax import run as geom_run
repo, snapshots, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
ids = np.arange(1, 25, dtype=np.int32)[None]
report = {}
for rev in ("step1000", None):
    model, tok = gm.load(repo, revision=rev)
    local, _ = gm.load(snapshots[rev or "main"], tokenizer=False)
    report[str(rev)] = dict(
        checkpoint=model.config.checkpoint_id,
        tokenizer=type(tok).__name__,
        loss=float(model(ids).loss),
        same_as_snapshot=bool(np.array_equal(np.asarray(model(ids).hidden_states),
                                             np.asarray(local(ids).hidden_states))),
    )
try:
    gm.load(repo, revision="step9")
except gm.RevisionNotFoundError as e:
    report["unknown"] = str(e)
spec = geom_run.RunSpec(output_dir=out, model=repo, revision="step1000", method="structured",
                          max_tokens=32, num_prompts=2, batch_size=2, range_max=8, max_k=4,
                          progress=False)
geom_run.run(spec)
print("REPORT " + json.dumps(report))
"""


def test_revision_resolves_offline_and_is_recorded(hf_home, tmp_path):
    repo = os.path.join(hf_home, "hub", "models--" + REPO.replace("/", "--"), "snapshots")
    snapshots = {ref: os.path.join(repo, commit) for ref, commit in COMMITS.items()}
    out = str(tmp_path / "run")
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, REPO, json.dumps(snapshots), out],
        env=_env(hf_home),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = json.loads(proc.stdout.split("REPORT ", 1)[1])
    step, main = report["step1000"], report["None"]
    assert step["checkpoint"] == f"hf://{REPO}@{COMMITS['step1000']}"
    assert main["checkpoint"] == f"hf://{REPO}@{COMMITS['main']}"
    assert step["same_as_snapshot"] and main["same_as_snapshot"]
    assert step["tokenizer"] != "NoneType"
    assert abs(step["loss"] - main["loss"]) > 1e-3  # another revision, other weights
    assert (
        "revision 'step9' of geom-jax-test/tiny-llama is not in the Hugging Face cache"
        in (report["unknown"])
    )
    meta = json.load(open(os.path.join(out, "metadata.json")))
    assert meta["revision"] == "step1000" and meta["commit"] == COMMITS["step1000"]
    assert meta["flags"]["revision"] == "step1000"


def test_unknown_revision_is_a_one_line_cli_error(hf_home, tmp_path):
    args = [
        f"--model={REPO}",
        "--revision=step9",
        f"--output_dir={tmp_path / 'run'}",
        "--max_tokens=32",
        "--num_prompts=2",
        "--range_max=8",
        "--max_k=4",
    ]
    proc = subprocess.run(
        [sys.executable, SCRIPT, *args],
        env=_env(hf_home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.strip().splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "revision 'step9'" in lines[0], proc.stderr[-3000:]


def test_revision_of_a_local_folder_is_refused(tmp_path):
    import geom_jax.models as gm

    path = write_tiny_llama(str(tmp_path / "tiny"))
    with pytest.raises(ValueError, match=r"revision='step1000' applies to Hub ids"):
        gm.load(path, revision="step1000")
