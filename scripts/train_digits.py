#!/usr/bin/env python3
"""Train the digits MLP that sparsefab compresses and runs in RTL (``make sim``).

Data: scikit-learn's bundled ``load_digits`` (1797 8x8 images, pixels 0..16, no download),
a stratified 75/25 train/test split with a fixed seed.  Inputs are ``pixels / 16`` in [0, 1].
Model: 64 -> 128 (ReLU) -> 10, scikit-learn ``MLPClassifier`` (Adam, fixed seed).

Writes ``data/digits_mlp.npz`` (float32 ``W1 [128, 64]``, ``b1``, ``W2 [10, 128]``, ``b2``, each
``W`` as ``[out, in]``, plus the split's ``train_idx``/``test_idx`` so the split does not depend
on the scikit-learn version) and ``data/digits_mlp.json`` (provenance: script, seed, versions,
split, accuracy).  Deterministic: running it again reproduces the same files on the same versions.

Usage: ``python scripts/train_digits.py [--out-dir data] [--seed 0]``
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default=str(Path(__file__).resolve().parent.parent / "data"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--test-size", type=float, default=0.25)
    args = ap.parse_args(argv)

    import sklearn
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    X = digits.data.astype(np.float64) / 16.0
    y = digits.target.astype(np.int64)
    idx = np.arange(len(y))
    train_idx, test_idx = train_test_split(idx, test_size=args.test_size, stratify=y, random_state=args.seed)
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)

    clf = MLPClassifier(hidden_layer_sizes=(args.hidden,), activation="relu", solver="adam",
                        alpha=1e-3, batch_size=64, learning_rate_init=1e-3, max_iter=300,
                        tol=1e-6, n_iter_no_change=30, random_state=args.seed)
    clf.fit(X[train_idx], y[train_idx])
    train_acc = float(clf.score(X[train_idx], y[train_idx]))
    test_acc = float(clf.score(X[test_idx], y[test_idx]))

    W1, W2 = (c.T.astype(np.float32) for c in clf.coefs_)
    b1, b2 = (b.astype(np.float32) for b in clf.intercepts_)
    # The float32 forward pass that sparsefab uses must agree with scikit-learn's float64 one.
    h = np.maximum(X[test_idx].astype(np.float32) @ W1.T + b1, 0)
    f32_acc = float(np.mean((h @ W2.T + b2).argmax(1) == y[test_idx]))

    out = Path(args.out_dir)
    buf = io.BytesIO()
    np.savez_compressed(buf, W1=W1, b1=b1, W2=W2, b2=b2,
                        train_idx=train_idx.astype(np.int32), test_idx=test_idx.astype(np.int32))
    (out / "digits_mlp.npz").write_bytes(buf.getvalue())
    prov = {
        "model": f"MLP 64 -> {args.hidden} ReLU -> 10, weights [out, in] float32",
        "script": "scripts/train_digits.py",
        "dataset": "sklearn.datasets.load_digits (bundled, 1797 images 8x8, pixels 0..16)",
        "input": "pixels / 16 (float in [0, 1]); int8 codes = raw pixels 0..16 with scale 1/16, zero point 0",
        "split": {"method": "sklearn.model_selection.train_test_split, stratified", "test_size": args.test_size,
                  "random_state": args.seed, "n_train": int(len(train_idx)), "n_test": int(len(test_idx))},
        "trainer": {"class": "sklearn.neural_network.MLPClassifier", "solver": "adam", "alpha": 1e-3,
                    "batch_size": 64, "learning_rate_init": 1e-3, "max_iter": 300, "tol": 1e-6,
                    "n_iter_no_change": 30, "random_state": args.seed, "epochs_run": int(clf.n_iter_)},
        "seed": args.seed,
        "accuracy": {"train": train_acc, "test": test_acc, "test_float32_numpy": f32_acc},
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "sklearn": sklearn.__version__},
    }
    (out / "digits_mlp.json").write_text(json.dumps(prov, indent=2) + "\n", encoding="utf-8")
    print(f"train accuracy {train_acc:.4f}, test accuracy {test_acc:.4f} (float32 NumPy {f32_acc:.4f}), "
          f"{clf.n_iter_} epochs -> {out / 'digits_mlp.npz'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
