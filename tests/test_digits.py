"""Tests of sparsefab.data.digits: the committed digits MLP, its provenance and its split."""

from __future__ import annotations

import numpy as np

from sparsefab.data import digits


def test_layers_shapes_and_dtypes():
    layers = digits.load_mlp()
    assert [lay.W.shape for lay in layers] == [(128, 64), (10, 128)]
    assert [lay.b.shape for lay in layers] == [(128,), (10,)]
    assert all(lay.W.dtype == np.float32 and np.isfinite(lay.W).all() for lay in layers)


def test_split_is_a_stratified_partition():
    s = digits.load_split()
    assert len(s.y_train) == 1347 and len(s.y_test) == 450
    assert np.intersect1d(s.train_idx, s.test_idx).size == 0
    # Stratified: each class's test share is within one image of 25 %.
    per_class = np.bincount(np.concatenate([s.y_train, s.y_test]), minlength=10)
    assert np.all(np.abs(np.bincount(s.y_test, minlength=10) - 0.25 * per_class) <= 1)
    assert s.X_test.shape == (450, 64) and s.X_test.dtype == np.float32
    assert s.X_test_codes.dtype == np.int8 and s.X_test_codes.min() >= 0 and s.X_test_codes.max() <= 16
    # The codes are exact: float inputs are codes * scale.
    np.testing.assert_array_equal(s.X_test, s.X_test_codes.astype(np.float32) * np.float32(s.input_scale))
    np.testing.assert_array_equal(s.X_train, s.X_train_codes.astype(np.float32) * np.float32(s.input_scale))


def test_float_accuracy_matches_provenance():
    prov = digits.provenance()
    s = digits.load_split()
    acc = float(np.mean(digits.forward_float(digits.load_mlp(), s.X_test).argmax(1) == s.y_test))
    assert acc == prov["accuracy"]["test_float32_numpy"]
    assert acc > 0.95
    assert prov["split"]["n_test"] == 450 and prov["seed"] == 0
    assert {"numpy", "sklearn", "python"} <= set(prov["versions"])


def test_split_matches_load_digits_rows():
    from sklearn.datasets import load_digits

    s = digits.load_split()
    d = load_digits()
    np.testing.assert_array_equal(s.y_test, d.target[s.test_idx])
    np.testing.assert_array_equal(s.X_test_codes, d.data[s.test_idx].astype(np.int8))
