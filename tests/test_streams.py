"""Unit tests of sparsefab.sim.streams that need no simulator (payload codec, scoreboard, seeds).

The driver/monitor are exercised under cocotb+Verilator by tests/test_runner.py.
"""

import random

import pytest
from amaranth import signed, unsigned
from amaranth.lib import data

from sparsefab.sim.streams import (
    DEFAULT_SEED,
    PayloadCodec,
    Scoreboard,
    ScoreboardMismatch,
    get_seed,
    layout_json,
    rng_for,
)


class Pair(data.Struct):
    col: unsigned(6)
    val: signed(8)


class Beat(data.Struct):
    first: unsigned(1)
    pairs: data.ArrayLayout(Pair, 3)
    acc: signed(32)


def test_offsets_come_from_layout():
    codec = PayloadCodec.from_layout(Beat)
    assert codec.width == Beat.as_shape().size == 1 + 3 * 14 + 32
    offs = {f.name: (f.offset, f.width, f.signed) for f in codec.fields}
    assert offs["first"] == (0, 1, False)
    assert offs["pairs.0.col"] == (1, 6, False)
    assert offs["pairs.0.val"] == (7, 8, True)
    assert offs["pairs.2.val"] == (1 + 2 * 14 + 6, 8, True)
    assert offs["acc"] == (43, 32, True)


def test_pack_unpack_roundtrip_random():
    seed = 7
    rng = random.Random(seed)
    codec = PayloadCodec.from_layout(Beat)
    json_codec = PayloadCodec.from_json(layout_json(Beat))
    for _ in range(200):
        item = {"first": rng.randint(0, 1),
                "pairs": [{"col": rng.randint(0, 63), "val": rng.randint(-128, 127)} for _ in range(3)],
                "acc": rng.randint(-2**31, 2**31 - 1)}
        word = codec.pack(item)
        assert 0 <= word < 1 << codec.width
        assert codec.unpack(word) == item, f"seed {seed}"
        assert json_codec.pack(item) == word and json_codec.unpack(word) == item


def test_pack_matches_amaranth_const():
    # cross-check against Amaranth's own packing of a constant of the layout
    item = {"col": 5, "val": -3}
    const = Pair.as_shape().const(item)
    assert PayloadCodec.from_layout(Pair).pack(item) == const.as_value().value
    beat = {"first": 1, "pairs": [{"col": 63, "val": -128}, {"col": 0, "val": 127}, {"col": 9, "val": -1}],
            "acc": -(2**31)}
    assert PayloadCodec.from_layout(Beat).pack(beat) == Beat.as_shape().const(beat).as_value().value


def test_scalar_and_range_errors():
    codec = PayloadCodec.from_layout(signed(12))
    assert codec.scalar and codec.unpack(codec.pack(-5)) == -5
    with pytest.raises(ValueError, match="does not fit"):
        codec.pack(2048)
    with pytest.raises(ValueError, match="'val' = 200"):
        PayloadCodec.from_layout(Pair).pack({"col": 1, "val": 200})
    with pytest.raises(KeyError, match="no field 'nope'"):
        PayloadCodec.from_layout(Pair).pack({"nope": 1})
    assert PayloadCodec.from_layout(unsigned(4)).pack(15) == 15


def test_scoreboard_reports_first_mismatch_with_seed():
    sb = Scoreboard([1, 2, 3, 4], name="o_y", seed=42)
    for x in [1, 2, 9, 8]:
        sb.add(x)
    with pytest.raises(ScoreboardMismatch, match=r"item #2: expected 3, got 9 \(seed 42\)"):
        sb.finish()
    sb = Scoreboard([1, 2], seed=1)
    with pytest.raises(ScoreboardMismatch, match="received 1 items, expected 2"):
        sb.compare([1])
    sb = Scoreboard([1], seed=1)
    with pytest.raises(ScoreboardMismatch, match="extra item #1"):
        sb.compare([1, 5])
    Scoreboard([{"a": 1}], seed=1).compare([{"a": 1}])


def test_seed_from_env(monkeypatch):
    monkeypatch.delenv("SPARSEFAB_SEED", raising=False)
    assert get_seed() == DEFAULT_SEED
    monkeypatch.setenv("SPARSEFAB_SEED", "0x10")
    assert get_seed() == 16
    a, b = rng_for("i_x").random(), rng_for("i_x").random()
    assert a == b and rng_for("i_y").random() != a
    monkeypatch.setenv("SPARSEFAB_SEED", "abc")
    with pytest.raises(ValueError, match="SPARSEFAB_SEED"):
        get_seed()
