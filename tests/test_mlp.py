"""Tests of sparsefab.compress.mlp: the pruned, quantized MLP through the integer path."""

from __future__ import annotations

import numpy as np
import pytest

from sparsefab.compress import mlp, quant
from sparsefab.compress.errors import SparsefabError
from sparsefab.data import digits


@pytest.fixture(scope="module")
def split():
    return digits.load_split()


@pytest.fixture(scope="module")
def layers():
    return digits.load_mlp()


def _build(layers, split, **kw):
    return mlp.QuantizedMLP.from_float(layers, calib=split.X_train, input_scale=split.input_scale, **kw)


def _acc(pred, y):
    return float(np.mean(pred == y))


def test_trace_is_linear_int_layer_by_layer(layers, split):
    q = _build(layers, split, prune="magnitude:0.75")
    x = split.X_test_codes[:40]
    logits, steps = q.forward_int(x, trace=True)
    assert len(steps) == 2
    h = x.astype(np.int64)
    for lay, st in zip(q.layers, steps, strict=True):
        np.testing.assert_array_equal(st["x"], h)
        np.testing.assert_array_equal(st["acc"], quant.spmv_int(lay.W_codes, h))
        if lay.relu:
            expect = quant.linear_int(lay.W_codes, h, lay.qlayer, relu=True)
            assert expect.min() >= lay.y_zero_point  # ReLU clamps at the output zero point
        else:
            expect = quant.spmv_int(lay.W_codes, h) + lay.qlayer.bias
        np.testing.assert_array_equal(st["y"], expect)
        h = st["y"].astype(np.int64)
    np.testing.assert_array_equal(logits, h)
    # One sample at a time gives the same result as the batch.
    np.testing.assert_array_equal(q.forward_int(x[7]), logits[7])


def test_integer_path_tracks_float(layers, split):
    q = _build(layers, split, prune="magnitude:0.5")
    _, steps = q.forward_int(split.X_test_codes, trace=True)
    hid = q.layers[0]
    h_float = np.maximum(split.X_test @ hid.W_float.T + hid.b_float, 0)
    h_deq = (steps[0]["y"] - hid.y_zero_point) * hid.y_scale
    top = (127 - hid.y_zero_point) * hid.y_scale  # test inputs may exceed the calibrated range
    inside = h_float <= top
    assert inside.mean() > 0.99
    # Requantized hidden codes are within a couple of output LSBs of the float activations,
    # and saturate at the top code outside the calibrated range.
    assert np.max(np.abs(h_deq - h_float)[inside]) <= 2.5 * hid.y_scale
    assert np.all(steps[0]["y"][~inside] >= 126)
    out = q.layers[1]
    logit_float = h_float @ out.W_float.T + out.b_float
    logit_deq = steps[1]["y"] * (out.w_params.scale[0] * out.x_scale)
    assert np.corrcoef(logit_float.ravel(), logit_deq.ravel())[0, 1] > 0.999


def test_dense_w8a8_matches_float(layers, split):
    q = _build(layers, split)
    f = _acc(q.predict_float(split.X_test), split.y_test)
    i = _acc(q.predict_int(split.X_test_codes), split.y_test)
    assert f > 0.97 and abs(f - i) <= 0.005, (f, i)


@pytest.mark.parametrize("spec, target", [("magnitude:0.75", 0.75), ("magnitude:0.9", 0.9), ("nm:2:4", 0.5)])
def test_pruned_codes_follow_the_spec(layers, split, spec, target):
    q = _build(layers, split, prune=spec, w_bits=4)
    for lay in q.layers:
        assert lay.W_codes.dtype == np.int8 and lay.W_codes.min() >= -8 and lay.W_codes.max() <= 7
        assert np.all(lay.W_codes[lay.W_float == 0] == 0)  # pruned weights are code 0 (symmetric)
        assert lay.sparsity >= target - 1e-9
    if spec == "nm:2:4":
        groups = (q.layers[0].W_codes != 0).reshape(128, -1, 4).sum(-1)
        assert groups.max() <= 2
    assert q.layers[1].w_params.granularity == "tensor"
    assert q.layers[0].w_params.granularity == "channel"


def test_finetune_keeps_mask_and_is_seeded(layers, split):
    pruned = mlp.prune_layers(layers, "magnitude:0.75", calib=split.X_train)
    a = mlp.finetune_masked(pruned, split.X_train, split.y_train, epochs=3, seed=5)
    b = mlp.finetune_masked(pruned, split.X_train, split.y_train, epochs=3, seed=5)
    for (W0, _), (W1, _), (W2, _) in zip(pruned, a, b, strict=True):
        np.testing.assert_array_equal(W1 != 0, W0 != 0)
        np.testing.assert_array_equal(W1, W2)
    q0 = _build(pruned, split)
    q1 = _build(a, split)
    assert _acc(q1.predict_int(split.X_test_codes), split.y_test) > _acc(q0.predict_int(split.X_test_codes), split.y_test)


def test_accuracy_table_figures(layers, split):
    rows = mlp.accuracy_table(layers, X_calib=split.X_train, X_test=split.X_test, X_test_codes=split.X_test_codes,
                              y_test=split.y_test, input_scale=split.input_scale,
                              prunes=("dense", "magnitude:0.75"), finetune=(split.X_train, split.y_train))
    dense, m75 = rows
    assert dense["prune"] == "dense" and dense["ft_w8a8"] == dense["w8a8"]
    assert dense["w8a8"] > 0.97 and dense["w4a8"] > 0.96
    assert abs(m75["sparsity"] - 0.75) < 0.01
    assert m75["ft_w8a8"] > 0.97 and m75["ft_w4a8"] > 0.96  # fine-tuning recovers the one-shot loss
    text = mlp.format_accuracy_table(rows)
    assert "magnitude:0.75" in text and "W4A8" in text


def test_dead_rows_are_flushed_not_overflowing():
    rng = np.random.default_rng(3)
    W1 = rng.standard_normal((16, 8)).astype(np.float32)
    W1[4] = 1e-14  # a unit killed by weight decay, with a large negative bias
    b1 = np.zeros(16, np.float32)
    b1[4] = -0.5
    W2 = rng.standard_normal((3, 16)).astype(np.float32)
    X = rng.random((50, 8)).astype(np.float32)
    q = mlp.QuantizedMLP.from_float([(W1, b1), (W2, np.zeros(3, np.float32))], calib=X, input_scale=1 / 127)
    assert q.info["flushed_rows"] == {0: 1}
    assert np.all(q.layers[0].W_codes[4] == 0)
    codes = np.rint(X * 127).astype(np.int8)
    agree = _acc(q.predict_int(codes), q.predict_float(codes * np.float32(1 / 127)))
    assert agree > 0.9, "seed 3"


def test_accumulator_wraps_like_hardware(layers, split):
    q = _build(layers, split, acc_bits=12)
    _, steps = q.forward_int(split.X_test_codes[:5], trace=True)
    assert steps[0]["acc"].min() >= -2048 and steps[0]["acc"].max() <= 2047
    np.testing.assert_array_equal(steps[0]["acc"], quant.spmv_int(q.layers[0].W_codes, split.X_test_codes[:5], acc_bits=12))


@pytest.mark.parametrize("kwargs, match", [
    ({"prune": "magnitude:2"}, "--prune"),
    ({"w_bits": 9}, "w_bits=9"),
    ({"calib": None}, "calib"),
    ({"calib": np.zeros((3, 5), np.float32)}, "calib: expected float"),
    ({"input_scale": 0.0}, "input_scale"),
])
def test_from_float_rejects(layers, split, kwargs, match):
    kw = {"calib": split.X_train, "input_scale": split.input_scale} | kwargs
    with pytest.raises(SparsefabError, match=match):
        mlp.QuantizedMLP.from_float(layers, **kw)


def test_layers_rejected():
    with pytest.raises(SparsefabError, match="inputs, previous layer"):
        mlp.QuantizedMLP.from_float([(np.ones((4, 3), np.float32), np.zeros(4, np.float32)),
                                     (np.ones((2, 5), np.float32), np.zeros(2, np.float32))],
                                    calib=np.ones((2, 3), np.float32), input_scale=1.0)
    with pytest.raises(SparsefabError, match="NaN"):
        mlp.QuantizedMLP.from_float([(np.full((2, 3), np.nan, np.float32), np.zeros(2, np.float32))],
                                    calib=np.ones((2, 3), np.float32), input_scale=1.0)


def test_forward_int_rejects_bad_codes(layers, split):
    q = _build(layers, split)
    with pytest.raises(SparsefabError, match="integer activation codes"):
        q.forward_int(split.X_test[:2])
    with pytest.raises(SparsefabError, match="value 200"):
        q.forward_int(np.full((1, 64), 200, np.int16))
    with pytest.raises(SparsefabError, match="expected shape"):
        q.forward_int(np.zeros((2, 63), np.int8))
