"""GGUF reading: every supported ggml type decoded against an independent
NumPy transcription of ggml's block formats, llama.cpp's q/k row
permutation undone, and unsupported types named."""

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402

import geom_jax.models as gm  # noqa: E402
from geom_jax.models.loading import gguf_file  # noqa: E402

QK_K = 256


def _f16(b):
    return np.frombuffer(np.ascontiguousarray(b).tobytes(), np.float16).astype(np.float32)


def ref_q8_0(raw):  # block: f16 d, int8 q[32]
    b = raw.reshape(-1, 34)
    return (_f16(b[:, :2]).reshape(-1, 1) * b[:, 2:].view(np.int8)).reshape(-1)


def ref_q4_0(raw):  # block: f16 d, 16 bytes: low nibbles = q[0:16], high = q[16:32]; (q - 8) d
    b = raw.reshape(-1, 18)
    q = np.concatenate([b[:, 2:] & 15, b[:, 2:] >> 4], axis=1).astype(np.float32)
    return ((q - 8) * _f16(b[:, :2]).reshape(-1, 1)).reshape(-1)


def ref_q4_1(raw):  # block: f16 d, f16 m, 16 bytes of nibbles; q d + m
    b = raw.reshape(-1, 20)
    q = np.concatenate([b[:, 4:] & 15, b[:, 4:] >> 4], axis=1).astype(np.float32)
    return (q * _f16(b[:, :2]).reshape(-1, 1) + _f16(b[:, 2:4]).reshape(-1, 1)).reshape(-1)


def ref_q4_k(raw):  # block: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
    out = []
    for blk in raw.reshape(-1, 144):
        d, dmin = _f16(blk[0:2])[0], _f16(blk[2:4])[0]
        sc, qs = blk[4:16].astype(np.int32), blk[16:]
        y = np.empty(QK_K, np.float32)
        for j in range(8):
            if j < 4:
                s, m = sc[j] & 63, sc[j + 4] & 63
            else:
                s = (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4)
                m = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4)
            chunk = qs[32 * (j // 2) : 32 * (j // 2) + 32]
            q = (chunk & 0xF) if j % 2 == 0 else (chunk >> 4)
            y[32 * j : 32 * j + 32] = d * s * q - dmin * m
        out.append(y)
    return np.concatenate(out)


def ref_q6_k(raw):  # block: 128 bytes low 4 bits, 64 bytes high 2 bits, int8 scales[16], f16 d
    out = []
    for blk in raw.reshape(-1, 210):
        ql, qh = blk[:128].astype(np.int32), blk[128:192].astype(np.int32)
        sc, d = blk[192:208].view(np.int8).astype(np.float32), _f16(blk[208:210])[0]
        y = np.empty(QK_K, np.float32)
        for half in range(2):
            L, H, S, base = ql[64 * half :], qh[32 * half :], sc[8 * half :], 128 * half
            for j in range(32):
                i = j // 16
                q1 = ((L[j] & 0xF) | (((H[j] >> 0) & 3) << 4)) - 32
                q2 = ((L[j + 32] & 0xF) | (((H[j] >> 2) & 3) << 4)) - 32
                q3 = ((L[j] >> 4) | (((H[j] >> 4) & 3) << 4)) - 32
                q4 = ((L[j + 32] >> 4) | (((H[j] >> 6) & 3) << 4)) - 32
                y[base + j] = d * S[i] * q1
                y[base + j + 32] = d * S[i + 2] * q2
                y[base + j + 64] = d * S[i + 4] * q3
                y[base + j + 96] = d * S[i + 6] * q4
        out.append(y)
    return np.concatenate(out)


def _random_k_blocks(rng, n_blocks, size, f16_at):
    raw = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    for off in f16_at:
        raw[:, off : off + 2] = (
            rng.uniform(0.01, 0.1, n_blocks).astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
        )
    return raw


def _write(path, tensors):
    """tensors: name -> (array as stored, ggml type, logical shape); quantised
    arrays are bytes [rows, row bytes], from which the writer infers the shape."""
    w = gguf.GGUFWriter(str(path), "llama")
    for name, (data, kind, _shape) in tensors.items():
        w.add_tensor(name, data, raw_dtype=None if kind in (Q.F32, Q.F16) else kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _read(path):
    return {t.name: gguf_file.dequantize(t) for t in gguf.GGUFReader(str(path)).tensors}


def test_every_supported_type_decodes(tmp_path):
    rng = np.random.default_rng(0)
    rows, cols = 3, 512
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    tensors, expected, tol = {}, {}, {}
    tensors["f32"] = (x, Q.F32, None)
    expected["f32"], tol["f32"] = x, 0
    tensors["f16"] = (x.astype(np.float16), Q.F16, None)
    expected["f16"], tol["f16"] = x.astype(np.float16).astype(np.float32), 0
    bf16 = gguf.quants.quantize(x, Q.BF16)
    tensors["bf16"] = (bf16, Q.BF16, [rows, cols])
    bits = bf16.view(np.uint16).astype(np.uint32) << 16
    expected["bf16"], tol["bf16"] = bits.view(np.float32).reshape(rows, cols), 0
    for kind, ref in [(Q.Q8_0, ref_q8_0), (Q.Q4_0, ref_q4_0), (Q.Q4_1, ref_q4_1)]:
        raw = gguf.quants.quantize(x, kind)
        tensors[kind.name] = (raw, kind, [rows, cols])
        expected[kind.name] = ref(raw.reshape(-1)).reshape(rows, cols)
        tol[kind.name] = 1e-6
        assert np.abs(expected[kind.name] - x).max() < (0.05 if kind == Q.Q8_0 else 0.5)
    for kind, ref, size, f16_at in [
        (Q.Q4_K, ref_q4_k, 144, (0, 2)),
        (Q.Q6_K, ref_q6_k, 210, (208,)),
    ]:
        raw = _random_k_blocks(rng, rows * cols // QK_K, size, f16_at).reshape(rows, -1)
        tensors[kind.name] = (raw, kind, [rows, cols])
        expected[kind.name], tol[kind.name] = ref(raw.reshape(-1)).reshape(rows, cols), 1e-6
    path = tmp_path / "types.gguf"
    _write(path, tensors)
    got = _read(path)
    assert set(got) == set(tensors)
    for name, want in expected.items():
        assert got[name].shape == (rows, cols) and got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], want, atol=tol[name], rtol=tol[name], err_msg=name)


def test_unpermute_inverts_llama_cpp_permutation():
    rng = np.random.default_rng(1)
    heads, hd, d = 3, 8, 5
    w = rng.standard_normal((heads * hd, d))
    permuted = w.reshape(heads, 2, hd // 2, d).swapaxes(1, 2).reshape(w.shape)  # convert_hf_to_gguf
    np.testing.assert_array_equal(gguf_file.unpermute_rows(permuted, heads), w)


def _llama_gguf_from_hf(hf, path, kind_of=lambda name: Q.F32):
    """A llama-architecture GGUF written as llama.cpp's converter does."""
    cfg = hf.config
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in hf.state_dict().items()}
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    per_layer = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    for key, x in sd.items():
        if key == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if key in names:
            name = names[key]
        else:
            i, rest = key.split(".", 3)[2], key.split(".", 3)[3]
            name = f"blk.{i}.{per_layer[rest]}"
        heads = {"attn_q.weight": cfg.num_attention_heads, "attn_k.weight": cfg.num_key_value_heads}
        h = heads.get(name.split(".", 2)[-1])
        if h:
            x = x.reshape(h, 2, x.shape[0] // h // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)
        kind = kind_of(name) if x.ndim == 2 else Q.F32
        if kind == Q.F32:
            w.add_tensor(name, x)
        else:
            w.add_tensor(name, gguf.quants.quantize(x, kind), raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from helpers.models_helpers import save_random_hf

    path = tmp_path_factory.mktemp("gguf") / "hf"
    cfg = transformers.LlamaConfig(
        vocab_size=160,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    return path, save_random_hf(cfg, str(path), seed=3)


def test_gguf_llama_matches_hf(tiny_llama, tmp_path):
    from helpers.models_helpers import hf_reference, layer_rel_err

    _, hf = tiny_llama
    path = tmp_path / "tiny.gguf"
    _llama_gguf_from_hf(hf, path)
    model, tok = gm.load(str(path), tokenizer=False)
    assert tok is None
    cfg = model.config
    assert (cfg.family, cfg.num_kv_heads, cfg.tie_word_embeddings) == ("llama", 2, False)
    assert cfg.checkpoint_id.startswith(str(path)) and "#sha256:" in cfg.checkpoint_id
    ids = np.random.default_rng(0).integers(0, 160, (1, 19)).astype(np.int32)
    out = model(ids)
    hs, nll, loss, _ = hf_reference(hf, ids)
    assert layer_rel_err(out.hidden_states, hs).max() < 1e-4
    assert abs(float(out.loss) - loss) < 1e-5 * loss


def test_quantized_gguf_loads(tiny_llama, tmp_path):
    _, hf = tiny_llama
    path = tmp_path / "q.gguf"
    _llama_gguf_from_hf(hf, path, kind_of=lambda name: Q.Q8_0 if "ffn" in name else Q.F16)
    model, _ = gm.load(str(path), tokenizer=False)
    wq = np.asarray(model.blocks.wq[...])[0].reshape(64, -1)
    ref = hf.model.layers[0].self_attn.q_proj.weight.detach().numpy().T
    np.testing.assert_allclose(wq, ref.astype(np.float16).astype(np.float32), atol=1e-7)


def test_unsupported_quantization_is_named(tiny_llama, tmp_path):
    _, hf = tiny_llama
    path = tmp_path / "q5.gguf"
    _llama_gguf_from_hf(
        hf, path, kind_of=lambda name: Q.Q5_0 if name == "blk.1.ffn_up.weight" else Q.F32
    )
    with pytest.raises(gm.UnsupportedQuantizationError, match="Q5_0"):
        gm.load(str(path), tokenizer=False)


def test_unsupported_gguf_architecture_is_named(tmp_path):
    path = tmp_path / "falcon.gguf"
    w = gguf.GGUFWriter(str(path), "falcon")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(gm.UnsupportedArchitectureError, match="falcon"):
        gm.load(str(path), tokenizer=False)
