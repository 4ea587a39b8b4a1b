"""The digits MLP: float weights trained by ``scripts/train_digits.py`` and its fixed data split.

The network is 64 -> 128 (ReLU) -> 10 on scikit-learn's bundled ``load_digits`` (8x8 images,
pixels 0..16).  Float inputs are ``pixels / 16``; the integer path takes the raw pixels as int8
activation codes with scale ``1/16`` and zero point 0, which is exact (no input rounding).
Provenance (seed, versions, split, accuracy) is in ``data/digits_mlp.json``.
"""

from __future__ import annotations

import functools
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparsefab.compress.errors import SparsefabError

_DIR = Path(__file__).resolve().parent
WEIGHTS = _DIR / "digits_mlp.npz"
PROVENANCE = _DIR / "digits_mlp.json"

#: Float input = code * INPUT_SCALE; codes are the raw pixels 0..16 (zero point 0).
INPUT_SCALE = 1.0 / 16.0
INPUT_ZERO_POINT = 0


@dataclass(frozen=True)
class DigitsLayer:
    """One dense layer, ``y = W @ x + b``; ``W`` float32 ``[out, in]``, ``b`` float32 ``[out]``."""

    W: np.ndarray
    b: np.ndarray


@dataclass(frozen=True)
class DigitsSplit:
    """The fixed train/test split the MLP was trained and evaluated on.

    Attributes
    ----------
    X_train, X_test : float32 [n, 64]
        ``pixels / 16`` in [0, 1].
    y_train, y_test : int64 [n]
        Labels 0..9.
    X_train_codes, X_test_codes : int8 [n, 64]
        Activation codes (raw pixels 0..16), ``X = codes * input_scale``.
    input_scale : float
    input_zero_point : int
    train_idx, test_idx : int64 [n]
        Rows of ``sklearn.datasets.load_digits()`` in each part.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    X_train_codes: np.ndarray
    X_test_codes: np.ndarray
    input_scale: float
    input_zero_point: int
    train_idx: np.ndarray
    test_idx: np.ndarray


@functools.lru_cache(maxsize=1)
def _npz() -> dict:
    try:
        raw = WEIGHTS.read_bytes()
    except OSError as exc:
        raise SparsefabError(f"{WEIGHTS}: digits MLP weights missing ({exc.strerror}); "
                             "run `python scripts/train_digits.py`") from None
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile/ValueError variants
        raise SparsefabError(f"{WEIGHTS}: not a valid .npz file ({exc})") from None
    need = {"W1": 2, "b1": 1, "W2": 2, "b2": 1, "train_idx": 1, "test_idx": 1}
    for k, nd in need.items():
        if k not in d or d[k].ndim != nd:
            raise SparsefabError(f"{WEIGHTS}: array {k!r} missing or not {nd}-D")
    if d["W1"].shape[0] != d["b1"].shape[0] or d["W2"].shape != (d["b2"].shape[0], d["W1"].shape[0]) \
            or d["W1"].shape[1] != 64:
        raise SparsefabError(f"{WEIGHTS}: inconsistent layer shapes W1 {d['W1'].shape}, W2 {d['W2'].shape}")
    for k in ("W1", "b1", "W2", "b2"):
        if not np.isfinite(d[k]).all():
            raise SparsefabError(f"{WEIGHTS}: array {k!r} holds NaN or Inf")
        d[k] = d[k].astype(np.float32)
        d[k].flags.writeable = False
    return d


def load_mlp() -> list[DigitsLayer]:
    """The trained float layers ``[DigitsLayer(W1 [128, 64], b1), DigitsLayer(W2 [10, 128], b2)]``."""
    d = _npz()
    return [DigitsLayer(d["W1"], d["b1"]), DigitsLayer(d["W2"], d["b2"])]


def provenance() -> dict:
    """The training provenance recorded in ``data/digits_mlp.json``."""
    try:
        return json.loads(PROVENANCE.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SparsefabError(f"{PROVENANCE}: cannot read provenance ({exc})") from None


@functools.lru_cache(maxsize=1)
def load_split() -> DigitsSplit:
    """The stratified train/test split of ``load_digits`` used for training (indices are stored)."""
    from sklearn.datasets import load_digits

    d = _npz()
    digits = load_digits()
    pixels = digits.data.astype(np.int64)
    y = digits.target.astype(np.int64)
    tr, te = d["train_idx"].astype(np.int64), d["test_idx"].astype(np.int64)
    n = len(y)
    if tr.size + te.size != n or np.intersect1d(tr, te).size or tr.min() < 0 or te.max() >= n:
        raise SparsefabError(f"{WEIGHTS}: stored split indices do not partition the {n} digits images")
    if pixels.min() < 0 or pixels.max() > 16:
        raise SparsefabError(f"load_digits pixels in [{pixels.min()}, {pixels.max()}], expected [0, 16]")
    codes = pixels.astype(np.int8)

    def ro(a):
        a.flags.writeable = False
        return a

    return DigitsSplit(
        X_train=ro((pixels[tr] * INPUT_SCALE).astype(np.float32)), y_train=ro(y[tr]),
        X_test=ro((pixels[te] * INPUT_SCALE).astype(np.float32)), y_test=ro(y[te]),
        X_train_codes=ro(codes[tr]), X_test_codes=ro(codes[te]),
        input_scale=INPUT_SCALE, input_zero_point=INPUT_ZERO_POINT, train_idx=ro(tr), test_idx=ro(te),
    )


def forward_float(layers, X) -> np.ndarray:
    """Float32 logits ``[n, 10]`` of the MLP (ReLU between layers) on float inputs ``X [n, 64]``."""
    h = np.asarray(X, dtype=np.float32)
    for i, layer in enumerate(layers):
        h = h @ layer.W.T + layer.b
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    return h


#: Fine-tuning epochs after pruning used by the demo and the accuracy table (0 = one-shot pruning).
FINETUNE_EPOCHS = 30


def quantized_mlp(*, prune: str | None = "magnitude:0.75", w_bits: int = 8, a_bits: int = 8,
                  finetune_epochs: int = FINETUNE_EPOCHS, seed: int = 0, acc_bits: int = 32):
    """The digits MLP pruned, optionally fine-tuned with its mask fixed, and quantized.

    Calibration and fine-tuning use the training part of :func:`load_split` only.
    Returns a :class:`sparsefab.compress.mlp.QuantizedMLP` whose :meth:`forward_int` takes
    ``load_split().X_test_codes``.
    """
    from sparsefab.compress import mlp

    if not isinstance(finetune_epochs, int) or finetune_epochs < 0:
        raise SparsefabError(f"finetune_epochs={finetune_epochs!r}: expected an integer >= 0")
    s = load_split()
    ft = (s.X_train, s.y_train) if finetune_epochs and prune not in (None, "dense") else None
    with mlp.single_thread_blas():
        return mlp.QuantizedMLP.from_float(
            load_mlp(), prune=prune, w_bits=w_bits, a_bits=a_bits, calib=s.X_train,
            input_scale=s.input_scale, input_zero_point=s.input_zero_point, acc_bits=acc_bits,
            finetune=ft, finetune_options={"epochs": finetune_epochs, "seed": seed})


def accuracy_table(*, prunes=None, w_bits=(8, 4), finetune_epochs: int = FINETUNE_EPOCHS, seed: int = 0,
                   progress=None) -> list[dict]:
    """Test accuracy of the digits MLP: dense / pruned x float / W8A8 / W4A8 (exact integer path).

    See :func:`sparsefab.compress.mlp.accuracy_table`; with ``finetune_epochs > 0`` the pruned
    rows are also fine-tuned with their masks fixed (``ft_*`` keys).
    """
    from sparsefab.compress import mlp

    s = load_split()
    ft = (s.X_train, s.y_train) if finetune_epochs else None
    return mlp.accuracy_table(
        load_mlp(), X_calib=s.X_train, X_test=s.X_test, X_test_codes=s.X_test_codes, y_test=s.y_test,
        input_scale=s.input_scale, input_zero_point=s.input_zero_point,
        prunes=prunes or mlp.DEFAULT_PRUNES, w_bits=w_bits, finetune=ft,
        finetune_options={"epochs": finetune_epochs, "seed": seed}, progress=progress)
