"""Lens entropy / free energy / energy and the logits' intrinsic dimension against
float64 references: Hugging Face PyTorch on small random Llama and GPT-NeoX
checkpoints (final norm + lm_head / embed_out on output_hidden_states, the
model's logits last), and the float64 GRIDE oracle (DADApy's conventions) on
explicit logits (issue 15, acceptance 1 and 2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from helpers.models_helpers import save_random_hf  # noqa: E402
from reference import oracle  # noqa: E402

import geom_jax.models as gm  # noqa: E402
from geom_jax import lens  # noqa: E402
from geom_jax.models import decoder  # noqa: E402

SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3)
T = 80  # > 64, so GRIDE with range 64 has all six scales
CONFIGS = {
    # V = 216 splits into 8 vocabulary pieces; 211 (prime) into one
    "llama": lambda: transformers.LlamaConfig(
        **SMALL, vocab_size=216, num_attention_heads=8, num_key_value_heads=2
    ),
    "neox": lambda: transformers.GPTNeoXConfig(
        **SMALL, vocab_size=211, num_attention_heads=4, rotary_pct=0.25
    ),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_lens")
    out = {}
    for i, (name, make) in enumerate(CONFIGS.items()):
        path = str(root / name)
        out[name] = (path, save_random_hf(make(), path, seed=10 + i))
    return out


def _final_norm(hf):
    base = hf.base_model
    return base.norm if hasattr(base, "norm") else base.final_layer_norm


def _uncertainty64(z):
    """H, F, E [..., 3] of float64 logits z [..., V]."""
    z = z.double()
    top = z.max(-1, keepdim=True).values
    logp = torch.log_softmax(z, -1)
    p = logp.exp()
    h = -(p * logp).sum(-1)
    f = -torch.logsumexp(z - top, -1)
    e = (p * (top - z)).sum(-1)
    return torch.stack([h, f, e], -1).numpy()


def hf_lens_reference(hf, ids, mask):
    """[L+1, B, T, 3] float64 from HF's hidden states, and the float64 logits [B, T, V]."""
    ids_t = torch.as_tensor(ids, dtype=torch.long)
    mask_t = torch.as_tensor(mask, dtype=torch.long)
    with torch.no_grad():
        out = hf(ids_t, attention_mask=mask_t, output_hidden_states=True)
        norm = _final_norm(hf).double()
        head = hf.get_output_embeddings().double()
        stats = [_uncertainty64(head(norm(h.double()))) for h in out.hidden_states[:-1]]
        stats.append(_uncertainty64(out.logits))
        _final_norm(hf).float()
        hf.get_output_embeddings().float()
    return np.stack(stats), out.logits.double().numpy()


def _inputs(vocab, lengths=(T, 50)):
    rng = np.random.default_rng(3)
    ids = rng.integers(0, vocab, (len(lengths), T)).astype(np.int32)
    mask = (np.arange(T)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    return np.where(mask > 0, ids, 0).astype(np.int32), mask


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_lens_matches_hf_float64(checkpoints, name):
    path, hf = checkpoints[name]
    model, _ = gm.load(path)
    ids, mask = _inputs(model.config.vocab_size)
    out = model(ids, mask)
    ro = lens.readout(model)
    ref, _ = hf_lens_reference(hf, ids, mask)  # [L+1, B, T, 3]
    valid = mask.astype(bool)
    per = np.asarray(lens.lens_stats(out.hidden_states, ro))
    for b in range(len(mask)):
        assert _rel(per[:, b, valid[b]], ref[:, b, valid[b]]) < 1e-4
    np.testing.assert_allclose(per[..., 0], per[..., 2] - per[..., 1], rtol=1e-5, atol=1e-5)

    unc = lens.lens_uncertainty(out.hidden_states, ro, mask)
    count = valid.sum(-1)
    means = np.einsum("lbtk,bt->blk", np.where(valid[None, ..., None], ref, 0), np.ones_like(mask))
    means = means / count[:, None, None]
    for k, field in enumerate(["entropy", "free_energy", "energy"]):
        got = np.asarray(getattr(unc, field))
        assert got.shape == (2, model.config.num_layers + 1)
        assert _rel(got, means[..., k]) < 1e-4, field
    tok = np.asarray(unc.token_entropy)
    assert np.isnan(tok[~valid]).all()
    assert _rel(tok[valid], ref[-1, ..., 0][valid]) < 1e-4


def test_lens_in_sequence_chunks_equals_one_chunk(checkpoints, monkeypatch):
    """Several sequence chunks (and 8 vocabulary pieces) give the same numbers."""
    path, _ = checkpoints["llama"]
    model, _ = gm.load(path)
    ids, mask = _inputs(model.config.vocab_size)
    out = model(ids, mask)
    ro = lens.readout(model)
    whole = np.asarray(lens.lens_stats(out.hidden_states, ro))
    monkeypatch.setattr(decoder, "NLL_CHUNK_ELEMENTS", 2 * 7 * 216)  # chunks of 7 positions
    chunked = np.asarray(lens.lens_stats(out.hidden_states, ro))
    np.testing.assert_allclose(chunked, whole, rtol=2e-6, atol=2e-6)


def _avals(jaxpr):
    """Every variable's abstract value in a jaxpr and its sub-jaxprs."""
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            yield v.aval
        for p in eqn.params.values():
            for sub in p if isinstance(p, (tuple, list)) else (p,):
                inner = getattr(sub, "jaxpr", sub)
                if isinstance(inner, jax.extend.core.Jaxpr):
                    yield from _avals(inner)


def test_lens_never_holds_all_layers_logits():
    L1, B, n, D, V = 4, 2, 24, 16, 41  # V prime: one vocabulary piece
    cfg = gm.DecoderConfig(
        family="llama",
        vocab_size=V,
        hidden_size=D,
        num_layers=L1 - 1,
        num_heads=2,
        num_kv_heads=2,
        head_dim=8,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    ro = lens.readout(gm.init_random(cfg))
    hidden = jnp.zeros((L1, B, n, D))
    jaxpr = jax.make_jaxpr(lambda h: lens.lens_stats(h, ro))(hidden).jaxpr
    with_vocab = [a.shape for a in _avals(jaxpr) if V in getattr(a, "shape", ())]
    assert with_vocab and max(int(np.prod(s)) for s in with_vocab) <= B * n * V


def _logit_gride64(logits):
    ids, _, _ = oracle.gride(logits, range_max=64)
    return ids


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logit_id_matches_float64_logits(checkpoints, name):
    path, hf = checkpoints[name]
    model, _ = gm.load(path)
    ids, mask = _inputs(model.config.vocab_size, lengths=(T, T))
    out = model(ids, mask)
    ro = lens.readout(model)
    _, logits = hf_lens_reference(hf, ids, mask)
    got = lens.logit_id(out.hidden_states[-1], factor=lens.logit_factor(ro.vocab_rows))
    assert got.gride_ids.shape == (2, 6) and got.twonn.shape == (2,)
    for b in range(2):
        ref = _logit_gride64(logits[b])
        np.testing.assert_allclose(np.asarray(got.gride_ids[b]), ref, rtol=1e-3)
        np.testing.assert_allclose(float(got.twonn[b]), oracle.twonn(logits[b]), rtol=1e-3)


def test_logit_id_removes_duplicates_and_honours_mask(checkpoints):
    path, _ = checkpoints["llama"]
    model, _ = gm.load(path)
    ids, _ = _inputs(model.config.vocab_size, lengths=(T,))
    x = np.asarray(model(ids).hidden_states[-1][0])  # [T, D]
    x = np.concatenate([x, x[:9], np.zeros((5, x.shape[1]), np.float32)])  # 9 dups, 5 padding
    valid = np.arange(len(x)) < T + 9
    w = np.asarray(lens.readout(model).vocab_rows, np.float64)
    logits = x[valid].astype(np.float64) @ w.T
    got = lens.logit_id(x, valid, factor=lens.logit_factor(w.astype(np.float32)))
    np.testing.assert_allclose(np.asarray(got.gride_ids), _logit_gride64(logits), rtol=1e-3)


def test_logit_id_never_builds_n_by_v():
    """The jaxpr from hidden states and W_U to the IDs has no array with both
    the token axis N and the vocabulary axis V."""
    n, D, V = 70, 16, 300
    w = jnp.asarray(np.random.default_rng(0).standard_normal((V, D)), jnp.float32)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, n, D)), jnp.float32)

    def f(x, w):
        return lens.logit_id(x, factor=lens.logit_factor(w), validate=False, selection="xla")

    jaxpr = jax.make_jaxpr(f)(x, w).jaxpr
    shapes = [a.shape for a in _avals(jaxpr) if hasattr(a, "shape")]
    assert any(V in s for s in shapes) and any(n in s for s in shapes)
    assert not [s for s in shapes if V in s and n in s]


def test_logit_factor_refuses_softcap():
    with pytest.raises(ValueError, match="softcap=30.0: soft-capped logits are not"):
        lens.logit_factor(jnp.ones((8, 4)), softcap=30.0)


def test_softcap_uncertainty_matches_float64():
    rng = np.random.default_rng(5)
    h = rng.standard_normal((2, 9, 8)).astype(np.float32)
    w = (3 * rng.standard_normal((48, 8))).astype(np.float32)
    got = np.asarray(lens.logit_uncertainty(jnp.asarray(h), jnp.asarray(w), softcap=5.0))
    z = torch.as_tensor(h.astype(np.float64) @ w.astype(np.float64).T)
    ref = _uncertainty64(5.0 * torch.tanh(z / 5.0))
    assert _rel(got, ref) < 1e-5
    uncapped = np.asarray(lens.logit_uncertainty(jnp.asarray(h), jnp.asarray(w)))
    assert _rel(uncapped, ref) > 1e-2


@pytest.mark.parametrize(
    "name",
    ["llama", pytest.param("neox", marks=pytest.mark.slow)],  # ~30 s each on 2 busy cores
)
def test_pipeline_lens_and_logit_id_match_references(checkpoints, name):
    """GeometryPipeline(observables="paper,lens,logit_id") on a padded batch."""
    from geom_jax import pipeline

    path, hf = checkpoints[name]
    model, _ = gm.load(path)
    ids, mask = _inputs(model.config.vocab_size, lengths=(T, 70))
    pipe = pipeline.GeometryPipeline(
        model, range_max=16, max_k=8, observables="paper,lens,logit_id"
    )
    got = pipe.to_host(pipe(ids, mask))
    ref, logits = hf_lens_reference(hf, ids, mask)
    valid = mask.astype(bool)
    L1 = model.config.num_layers + 1
    for k, field in enumerate(["lens_entropy", "lens_free_energy", "lens_energy"]):
        assert got[field].shape == (2, L1)
        want = np.stack([ref[:, b, valid[b], k].mean(-1) for b in range(2)])
        assert _rel(got[field], want) < 1e-4, field
    assert got["token_entropy"].shape == (2, T)
    assert _rel(got["token_entropy"][valid], ref[-1, ..., 0][valid]) < 1e-4
    assert np.isnan(got["token_entropy"][~valid]).all()
    assert got["logit_gride_ids"].shape == (2, 6) and got["logit_twonn"].shape == (2,)
    for b in range(2):
        np.testing.assert_allclose(
            got["logit_gride_ids"][b], _logit_gride64(logits[b][valid[b]]), rtol=1e-3
        )
    paper = pipeline.GeometryPipeline(model, range_max=16, max_k=8)
    alone = paper.to_host(paper(ids, mask))
    # adding the lens observables leaves the paper's fields unchanged: the same float32
    # values through the same computation, so bit for bit (overlap, n_unique included)
    for k in alone:
        np.testing.assert_array_equal(got[k], alone[k], err_msg=k)
