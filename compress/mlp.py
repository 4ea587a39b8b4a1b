"""A pruned, quantized multilayer perceptron run through the ONE integer path.

:class:`QuantizedMLP` takes float layers ``y = W x + b`` (``W`` as ``[out, in]``), prunes each
weight matrix (:func:`sparsefab.compress.prune.prune`), quantizes the weights symmetrically
(:func:`sparsefab.compress.quant.quantize`; zero point 0, so pruned weights stay code 0) and
calibrates int8 activation scales on float calibration inputs.  Inference then is exactly what
the hardware does, layer by layer, through :func:`sparsefab.compress.quant.linear_int`:

* hidden layers: ``spmv_int`` (wrapping int32 accumulation) then ``requantize`` (folded integer
  bias, fixed-point multiplier and shift, output zero point, ReLU, saturation to ``a_bits``);
* last layer: the int32 accumulators plus the folded integer bias are the logits; their argmax
  is the class.  The last layer's weights are quantized **per tensor** so every logit shares one
  scale ``w_scale * x_scale`` and integer logits compare directly (per-channel scales would need
  a per-row rescale before the argmax).

Nothing here re-derives the integer arithmetic: it lives in :mod:`sparsefab.compress.quant`.
:func:`accuracy_table` gives test accuracy for several pruning specs x (float, W8A8, W4A8).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np

from . import prune as _prune
from . import quant as _quant
from .errors import SparsefabError

__all__ = ["DEFAULT_PRUNES", "QuantizedLayer", "QuantizedMLP", "accuracy_table", "finetune_masked",
           "format_accuracy_table", "prune_layers", "single_thread_blas"]

def single_thread_blas():
    """Context manager limiting BLAS to one thread (if threadpoolctl, a scikit-learn dependency, exists).

    The matrices here are tiny; on a small shared machine a multi-threaded OpenBLAS spends
    its time spinning (measured: 28 s instead of 0.7 s for one fine-tuning run on 2 busy cores).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


#: Rows of the accuracy table: dense plus the pruning specs the project reports.
DEFAULT_PRUNES = ("dense", "magnitude:0.5", "magnitude:0.75", "magnitude:0.9", "nm:2:4")


@dataclass(frozen=True, eq=False)
class QuantizedLayer:
    """One pruned, quantized linear layer.

    Attributes
    ----------
    W_float : float32 [out, in]
        Pruned float weights (zeros where pruned): the "float" column of the table.
    b_float : float32 [out]
    W_codes : int8 [out, in]
        Symmetric weight codes (0 where pruned); what the bitmap format stores.
    w_params : QuantParams
        Weight scales (per channel for hidden layers, per tensor for the last one).
    qlayer : QLayer
        Integer bias (input zero point folded in), multiplier, shift, output zero point.
    relu : bool
        ReLU in the output stage (hidden layers); the last layer has none and is not requantized.
    x_scale, x_zero_point : float, int
        Input activation quantization of this layer.
    y_scale, y_zero_point : float, int
        Output activation quantization (the next layer's input) for hidden layers.
    sparsity : float
        Fraction of zero weight codes.
    """

    W_float: np.ndarray
    b_float: np.ndarray
    W_codes: np.ndarray
    w_params: _quant.QuantParams
    qlayer: _quant.QLayer
    relu: bool
    x_scale: float
    x_zero_point: int
    y_scale: float
    y_zero_point: int
    sparsity: float

    @property
    def nnz(self) -> int:
        """Number of nonzero weight codes."""
        return int(np.count_nonzero(self.W_codes))


def _check_layers(layers) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    try:
        items = list(layers)
    except TypeError:
        raise SparsefabError("layers: expected a list of (W, b) pairs or objects with .W and .b") from None
    if not items:
        raise SparsefabError("layers: empty, expected at least one (W, b) layer")
    for i, lay in enumerate(items):
        W, b = (lay.W, lay.b) if hasattr(lay, "W") else lay
        W = np.asarray(W)
        b = np.asarray(b)
        if W.ndim != 2 or W.dtype.kind != "f":
            raise SparsefabError(f"layers[{i}].W: expected a 2-D float array [out, in], got {W.dtype} {W.shape}")
        if b.shape != (W.shape[0],) or b.dtype.kind != "f":
            raise SparsefabError(f"layers[{i}].b: expected float shape ({W.shape[0]},), got {b.dtype} {b.shape}")
        if i and W.shape[1] != out[-1][0].shape[0]:
            raise SparsefabError(f"layers[{i}].W: {W.shape[1]} inputs, previous layer has {out[-1][0].shape[0]} outputs")
        if not (np.isfinite(W).all() and np.isfinite(b).all()):
            raise SparsefabError(f"layers[{i}]: weights or bias hold NaN or Inf")
        out.append((W.astype(np.float32), b.astype(np.float32)))
    return out


def _float_forward(pairs, X) -> np.ndarray:
    h = X
    for i, (W, b) in enumerate(pairs):
        h = h @ W.T + b
        if i < len(pairs) - 1:
            h = np.maximum(h, 0)
    return h


@dataclass(frozen=True, eq=False)
class QuantizedMLP:
    """A pruned + quantized MLP whose integer inference is the hardware's.

    Build with :meth:`from_float`.  :meth:`forward_int` takes int8 input activation codes;
    :meth:`forward_float` runs the pruned float network.

    Attributes
    ----------
    layers : tuple of QuantizedLayer
    input_scale, input_zero_point : float, int
        ``x_float = (x_codes - input_zero_point) * input_scale``.
    w_bits, a_bits, acc_bits : int
    prune : str
        The pruning spec (``"dense"`` for none).
    """

    layers: tuple
    input_scale: float
    input_zero_point: int
    w_bits: int
    a_bits: int
    acc_bits: int
    prune: str
    info: dict = field(default_factory=dict)

    @classmethod
    def from_float(cls, layers, *, prune: str | None = None, w_bits: int = 8, a_bits: int = 8,
                   calib=None, input_scale: float, input_zero_point: int = 0,
                   a_calib: str = "minmax", acc_bits: int = 32, finetune=None,
                   finetune_options: dict | None = None) -> QuantizedMLP:
        """Prune, quantize and calibrate float layers.

        Parameters
        ----------
        layers : list of (W [out, in], b [out]) or objects with ``.W``/``.b``
            Float layers; ReLU between them, none after the last.
        prune : str, optional
            A pruning spec for every layer (``"magnitude:0.75"``, ``"nm:2:4"``, ``"wanda:0.5"``...,
            see :func:`sparsefab.compress.prune.parse_prune_spec`); ``None``/``"dense"`` for none.
            Each layer is pruned on its own; Wanda uses the layer's float calibration inputs.
        w_bits : int
            Weight code width, 2..8 (symmetric: 8 -> [-127, 127], 4 -> [-7, 7]).
        a_bits : int
            Activation code width of the hidden layers' requantized outputs, 2..8.
        calib : float array [n, in]
            Calibration inputs (float, e.g. the training set) for activation scales (and Wanda).
        input_scale, input_zero_point : float, int
            How the first layer's integer input codes map to ``calib``'s float units.
        a_calib : str
            Calibration of hidden activation ranges: ``"minmax"``, ``"percentile:P"`` or ``"mse"``.
        acc_bits : int
            Accumulator width (wraps), as the hardware's.
        finetune : (X [n, in] float, y [n] int), optional
            Training data: after pruning, fine-tune the kept weights with the masks fixed
            (:func:`finetune_masked`), before quantization.
        finetune_options : dict, optional
            Keyword arguments of :func:`finetune_masked` (``epochs``, ``lr``, ``seed``...).
        """
        pairs = _check_layers(layers)
        w_bits = _quant._check_bits(w_bits, "w_bits", _quant.MIN_BITS, _quant.MAX_BITS)
        a_bits = _quant._check_bits(a_bits, "a_bits", _quant.MIN_BITS, _quant.MAX_BITS)
        acc_bits = _quant._check_bits(acc_bits, "acc_bits", 8, 64)
        if calib is None:
            raise SparsefabError("calib: calibration inputs [n, in] are required for activation scales")
        X = np.asarray(calib)
        if X.ndim != 2 or X.dtype.kind != "f" or X.shape[1] != pairs[0][0].shape[1] or X.shape[0] == 0:
            raise SparsefabError(f"calib: expected float [n, {pairs[0][0].shape[1]}] with n >= 1, got {X.dtype} {X.shape}")
        if not np.isfinite(X).all():
            raise SparsefabError("calib: holds NaN or Inf")
        xs = float(input_scale)
        if not np.isfinite(xs) or xs <= 0:
            raise SparsefabError(f"input_scale={input_scale!r}: expected a finite value > 0")
        lo, hi = _quant.code_range(a_bits)
        if not _quant._is_intlike(input_zero_point) or not lo <= int(input_zero_point) <= hi:
            raise SparsefabError(f"input_zero_point={input_zero_point!r}: expected an integer in [{lo}, {hi}]")
        spec = "dense" if prune in (None, "dense") else prune
        if spec != "dense":
            _prune.parse_prune_spec(spec)  # one-line error for a bad spec before any work

        # Phase 1: prune every layer (Wanda calibrates on the pruned float network's activations).
        pruned = prune_layers(pairs, spec, calib=X, bits=w_bits) if spec != "dense" else pairs
        # Phase 2 (optional): fine-tune the surviving weights with the pruning masks fixed.
        if finetune is not None:
            pruned = finetune_masked(pruned, *finetune, **(finetune_options or {}))

        # Phase 3: quantize weights, calibrate activations, build the integer output stages.
        h, xs, xzp = X.astype(np.float32), float(input_scale), int(input_zero_point)
        out, flushed = [], {}
        for i, (W, b) in enumerate(pruned):
            last = i == len(pruned) - 1
            hf = None
            if last:
                ys, yzp = 1.0, 0  # logits stay accumulators; y_scale only sets an unused multiplier
            else:
                hf = np.maximum(h @ W.T + b, 0)
                _, ys, yzp = _quant.quantize_activations(hf, bits=a_bits, symmetric=False, calib=a_calib)
                # Numerically dead rows (weights decayed to ~1e-14 by weight decay) would get a
                # per-channel scale so small that the folded integer bias overflows int32.  A row
                # whose contribution |W_r x| is provably below half an output LSB on every
                # calibration input cannot move its output code: flush it to exact zeros.
                bound = np.abs(W).max(axis=1) * float(np.abs(h).sum(axis=1).max())
                dead = (bound < 0.5 * ys) & (np.abs(W).max(axis=1) > 0)
                if dead.any():
                    W = np.where(dead[:, None], np.float32(0), W)
                    flushed[i] = int(dead.sum())
            codes, wp = _quant.quantize(W, bits=w_bits, granularity="tensor" if last else "channel",
                                        symmetric=True, calib="minmax")
            ws = np.asarray(wp.scale, np.float64)
            ql = _quant.layer_requant_params(ws if not last else float(ws[0]), xs, ys, b.astype(np.float64),
                                             W_codes=codes, x_zero_point=xzp, y_zero_point=yzp, out_bits=a_bits)
            out.append(QuantizedLayer(W, b, codes, wp, ql, not last, xs, xzp, float(ys), int(yzp),
                                      _prune.sparsity(codes)))
            if not last:
                h, xs, xzp = hf, float(ys), int(yzp)
        return cls(tuple(out), float(input_scale), int(input_zero_point), w_bits, a_bits, acc_bits,
                   spec + ("+ft" if finetune is not None and spec != "dense" else ""),
                   {"flushed_rows": flushed, "finetuned": finetune is not None})

    # ------------------------------------------------------------------ inference

    def _check_codes(self, x_codes) -> np.ndarray:
        x = np.asarray(x_codes)
        if x.dtype.kind not in "iu":
            raise SparsefabError(f"x_codes: expected integer activation codes, got dtype {x.dtype}")
        cols = self.layers[0].W_codes.shape[1]
        if x.ndim not in (1, 2) or x.shape[-1] != cols:
            raise SparsefabError(f"x_codes: expected shape ({cols},) or (n, {cols}), got {x.shape}")
        lo, hi = _quant.code_range(self.a_bits)
        if x.size and (int(x.min()) < lo or int(x.max()) > hi):
            pos = tuple(int(i) for i in np.argwhere((x < lo) | (x > hi))[0])
            raise SparsefabError(f"x_codes: value {int(x[pos])} at index {pos} outside the {self.a_bits}-bit range [{lo}, {hi}]")
        return x.astype(np.int64)

    def forward_int(self, x_codes, *, trace: bool = False):
        """Integer inference, exactly as the hardware: ``linear_int`` layer by layer.

        Parameters
        ----------
        x_codes : integer array [in] or [n, in]
            Input activation codes in the ``a_bits`` range.
        trace : bool
            Also return every layer's accumulators and outputs.

        Returns
        -------
        logits : int64 array [out] or [n, out]
            Last layer's ``acc + bias`` (one shared scale: the last layer is per tensor).
        trace : list of dict, only with ``trace=True``
            Per layer ``{"x": input codes, "acc": wrapped accumulators, "y": output codes (hidden
            layers) or logits (last layer)}``.
        """
        h = self._check_codes(x_codes)
        steps = []
        for layer in self.layers:
            acc = None
            if layer.relu:
                y = _quant.linear_int(layer.W_codes, h, layer.qlayer, relu=True, acc_bits=self.acc_bits)
            else:
                acc = _quant.spmv_int(layer.W_codes, h, acc_bits=self.acc_bits)
                y = acc + layer.qlayer.bias
            if trace and acc is None:
                acc = _quant.spmv_int(layer.W_codes, h, acc_bits=self.acc_bits)
            if trace:
                steps.append({"x": h, "acc": acc, "y": y})
            h = y.astype(np.int64)
        return (h, steps) if trace else h

    def predict_int(self, x_codes) -> np.ndarray:
        """Class indices (argmax of the integer logits; ties go to the lowest index)."""
        return np.argmax(self.forward_int(x_codes), axis=-1)

    def forward_float(self, X) -> np.ndarray:
        """Float32 logits of the pruned (unquantized) network on float inputs ``X``."""
        X = np.asarray(X, dtype=np.float32)
        return _float_forward([(lay.W_float, lay.b_float) for lay in self.layers], X)

    def predict_float(self, X) -> np.ndarray:
        """Class indices of the pruned float network."""
        return np.argmax(self.forward_float(X), axis=-1)

    @property
    def sparsity(self) -> float:
        """Fraction of zero weight codes over all layers."""
        total = sum(lay.W_codes.size for lay in self.layers)
        return 1.0 - sum(lay.nnz for lay in self.layers) / total


def prune_layers(layers, spec: str, *, calib, bits: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    """Prune every layer of a float MLP with :func:`sparsefab.compress.prune.prune`.

    Each layer is pruned on its own at the spec's sparsity; Wanda (``wanda:S``) scores each
    layer with its float inputs on ``calib`` through the already-pruned earlier layers.
    ``bits`` only matters for quantization-aware specs (``qa:S``).

    Returns
    -------
    list of (W float32 with zeros where pruned, b float32)
    """
    pairs = _check_layers(layers)
    h = np.asarray(calib, dtype=np.float32)
    out = []
    for i, (W, b) in enumerate(pairs):
        res = _prune.prune(W, spec, calib=h, bits=bits)
        W = np.where(np.asarray(res.weights) != 0, W, np.float32(0)).astype(np.float32)
        out.append((W, b))
        if i < len(pairs) - 1:
            h = np.maximum(h @ W.T + b, 0)
    return out


def finetune_masked(layers, X, y, *, epochs: int = 30, lr: float = 1e-3, batch: int = 64,
                    weight_decay: float = 1e-4, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fine-tune a pruned MLP with its sparsity pattern fixed (zero weights stay exactly zero).

    Softmax cross-entropy, Adam (beta1 0.9, beta2 0.999), L2 weight decay, mini-batches drawn
    from a seeded permutation each epoch; ReLU between layers.  Deterministic for a given seed
    (up to the platform's float32 BLAS rounding).

    Parameters
    ----------
    layers : list of (W [out, in], b [out]) float
        Pruned layers; the mask is ``W != 0``.
    X : float [n, in]
    y : int [n]
        Class labels in ``[0, out_last)``.

    Returns
    -------
    list of (W float32, b float32)
    """
    pairs = _check_layers(layers)
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y)
    n_cls = pairs[-1][0].shape[0]
    if X.ndim != 2 or X.shape[1] != pairs[0][0].shape[1] or X.shape[0] == 0:
        raise SparsefabError(f"finetune X: expected [n, {pairs[0][0].shape[1]}], got {X.shape}")
    if y.shape != (X.shape[0],) or y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= n_cls:
        raise SparsefabError(f"finetune y: expected {X.shape[0]} integer labels in [0, {n_cls}), got {y.dtype} {y.shape}")
    for name, v in (("epochs", epochs), ("batch", batch), ("seed", seed)):
        if not _quant._is_intlike(v) or v < (0 if name != "batch" else 1):
            raise SparsefabError(f"{name}={v!r}: expected a non-negative integer")
    with single_thread_blas():
        return _finetune(pairs, X, y, n_cls, epochs=epochs, lr=lr, batch=batch, weight_decay=weight_decay,
                         seed=seed)


def _finetune(pairs, X, y, n_cls, *, epochs, lr, batch, weight_decay, seed):
    rng = np.random.default_rng(seed)
    params = [a.copy() for W, b in pairs for a in (W, b)]
    masks = [(W != 0).astype(np.float32) for W, _ in pairs]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    onehot = np.eye(n_cls, dtype=np.float32)[y]
    step = 0
    L = len(pairs)
    for _ in range(epochs):
        order = rng.permutation(X.shape[0])
        for s0 in range(0, X.shape[0], batch):
            idx = order[s0:s0 + batch]
            acts = [X[idx]]
            for i in range(L):
                z = acts[-1] @ params[2 * i].T + params[2 * i + 1]
                acts.append(np.maximum(z, 0) if i < L - 1 else z)
            z = acts[-1] - acts[-1].max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            g = (p - onehot[idx]) / len(idx)
            grads = [None] * (2 * L)
            for i in range(L - 1, -1, -1):
                grads[2 * i] = (g.T @ acts[i] + weight_decay * params[2 * i]) * masks[i]
                grads[2 * i + 1] = g.sum(axis=0)
                if i:
                    g = (g @ params[2 * i]) * (acts[i] > 0)
            step += 1
            c1, c2 = 1 - 0.9 ** step, 1 - 0.999 ** step
            for k, gk in enumerate(grads):
                m[k] = 0.9 * m[k] + 0.1 * gk
                v[k] = 0.999 * v[k] + 0.001 * gk * gk
                params[k] = params[k] - np.float32(lr) * (m[k] / c1) / (np.sqrt(v[k] / c2) + np.float32(1e-8))
            for i in range(L):
                params[2 * i] *= masks[i]
    return [(params[2 * i].astype(np.float32), params[2 * i + 1].astype(np.float32)) for i in range(L)]


def accuracy_table(layers, *, X_calib, X_test, X_test_codes, y_test, input_scale: float,
                   input_zero_point: int = 0, prunes=DEFAULT_PRUNES, w_bits=(8, 4), a_bits: int = 8,
                   a_calib: str = "minmax", finetune=None, finetune_options: dict | None = None,
                   progress=None) -> list[dict]:
    """Test accuracy for each pruning spec x (float, W{b}A{a} for b in ``w_bits``).

    Float columns run the pruned float network on ``X_test``; integer columns run
    :meth:`QuantizedMLP.forward_int` on ``X_test_codes``.  Pruning depends only on the float
    weights (and calibration inputs for Wanda), so every column of a row uses the same mask.
    With ``finetune=(X_train, y_train)`` each pruned row is also fine-tuned with its mask fixed
    (:func:`finetune_masked`) and measured again (keys prefixed ``ft_``; the dense row is not
    fine-tuned and repeats its one-shot figures there, as do ``qa:`` specs).

    Returns
    -------
    list of dict
        One per spec: ``prune``, ``sparsity`` (of the W8 codes, over all layers), ``float``,
        ``w{b}a{a}`` and, with ``finetune``, ``ft_float`` and ``ft_w{b}a{a}``; accuracies in [0, 1].
    """
    with single_thread_blas():
        return _accuracy_table(layers, X_calib, X_test, X_test_codes, y_test, input_scale, input_zero_point,
                               prunes, w_bits, a_bits, a_calib, finetune, finetune_options, progress)


def _accuracy_table(layers, X_calib, X_test, X_test_codes, y_test, input_scale, input_zero_point,
                    prunes, w_bits, a_bits, a_calib, finetune, finetune_options, progress):
    y = np.asarray(y_test)
    rows = []
    kw = dict(a_bits=a_bits, calib=X_calib, input_scale=input_scale, input_zero_point=input_zero_point,
              a_calib=a_calib)
    for spec in prunes:
        dense = spec in (None, "dense")
        qa = not dense and _prune.parse_prune_spec(spec)["method"] == "qa"
        row = {"prune": "dense" if dense else spec}
        base = None if dense or qa else prune_layers(layers, spec, calib=X_calib)
        variants = [("", base)]
        if finetune is not None and not dense and not qa:
            variants.append(("ft_", finetune_masked(base, *finetune, **(finetune_options or {}))))
        for prefix, pairs in variants:
            for wb in w_bits:
                if pairs is None:  # dense, or quantization-aware pruning (depends on the bits)
                    q = QuantizedMLP.from_float(layers, prune=None if dense else spec, w_bits=wb, **kw)
                else:
                    q = QuantizedMLP.from_float(pairs, prune=None, w_bits=wb, **kw)
                if prefix + "float" not in row:
                    row.setdefault("sparsity", q.sparsity)
                    row[prefix + "float"] = float(np.mean(q.predict_float(X_test) == y))
                row[f"{prefix}w{wb}a{a_bits}"] = float(np.mean(q.predict_int(X_test_codes) == y))
                if progress is not None:
                    progress()
        if finetune is not None and (dense or qa):
            row.update({f"ft_{k}": v for k, v in list(row.items()) if k not in ("prune", "sparsity")})
        rows.append(row)
    return rows


def format_accuracy_table(rows: list[dict]) -> str:
    """Plain-text table of :func:`accuracy_table` rows (accuracies in percent)."""
    cols = [k for k in rows[0] if k not in ("prune", "sparsity")]

    def name(c):
        ft = c.startswith("ft_")
        c = c[3:] if ft else c
        c = "float" if c == "float" else c.upper()
        return ("ft " if ft else "") + c

    head = f"{'pruning':<16}{'sparsity':>9}" + "".join(f"{name(c):>11}" for c in cols)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['prune']:<16}{100 * r['sparsity']:>8.1f}%" + "".join(f"{100 * r[c]:>10.2f}%" for c in cols))
    if any(c.startswith("ft_") for c in cols):
        lines.append("ft = fine-tuned after pruning with the mask fixed; W/A = weight/activation bits, "
                     "integer columns through the exact integer path")
    return "\n".join(lines)
