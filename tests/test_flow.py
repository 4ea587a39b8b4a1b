"""Tests of sparsefab.sim.flow: the compiled Verilator stream harness (no Python per cycle)."""

import random

import numpy as np
import pytest
from amaranth import Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from sparsefab.compress.errors import SparsefabError
from sparsefab.sim.flow import (
    FlowHarness,
    field_from_words,
    ints_from_words,
    verilator_name,
    words_from_bytes,
    words_from_ints,
)
from sparsefab.sim.streams import PayloadCodec

SEED = 31


class OutPayload(data.Struct):
    sum: signed(100)
    idx: unsigned(16)


class WideJoin(wiring.Component):
    """Join of two streams: ``o_y.sum = a + b * k``, ``o_y.idx`` = output index.

    Ports: ``i_a`` (in, stream, 96-bit unsigned: a VlWide port), ``i_b`` (in, stream, signed 20),
    ``k`` (in, 8, constant), ``o_y`` (out, stream of OutPayload, 116 bits), ``o_count`` (out, 32,
    outputs delivered).  Latency 1; full throughput; backpressure from ``o_y.ready``.
    """

    def __init__(self):
        super().__init__({"i_a": In(stream.Signature(unsigned(96))), "i_b": In(stream.Signature(signed(20))),
                          "k": In(8), "o_y": Out(stream.Signature(OutPayload)), "o_count": Out(32)})

    def elaborate(self, platform):
        m = Module()
        free = ~self.o_y.valid | self.o_y.ready
        both = self.i_a.valid & self.i_b.valid
        fire = free & both
        m.d.comb += [self.i_a.ready.eq(free & self.i_b.valid), self.i_b.ready.eq(free & self.i_a.valid)]
        idx = Signal(16)
        with m.If(self.o_y.valid & self.o_y.ready):
            m.d.sync += self.o_count.eq(self.o_count + 1)
        with m.If(free):
            m.d.sync += self.o_y.valid.eq(both)
        with m.If(fire):
            m.d.sync += [self.o_y.payload.sum.eq(self.i_a.payload + self.i_b.payload * self.k),
                         self.o_y.payload.idx.eq(idx), idx.eq(idx + 1)]
        return m


@pytest.fixture(scope="module")
def harness():
    h = FlowHarness(WideJoin(), toplevel="wide_join")
    h.build()
    return h


def _items(n, seed):
    rng = random.Random(seed)
    a = [rng.getrandbits(96) for _ in range(n)] + [2**96 - 1, 0]
    b = [rng.randint(-(2**19), 2**19 - 1) for _ in range(n)] + [-(2**19), 2**19 - 1]
    return a, b


def _raw(b):
    """Payload ints of the signed(20) stream (the harness takes raw payload bits)."""
    return [x & (2**20 - 1) for x in b]


def _check(res, a, b, k):
    codec = PayloadCodec.from_layout(OutPayload)
    got = [codec.unpack(x) for x in res.ints("o_y")]
    assert len(got) == len(a), f"seed {SEED}"
    for i, g in enumerate(got):
        assert g == {"sum": a[i] + b[i] * k, "idx": i}, f"item {i}, seed {SEED}"
    idx = res.field("o_y", codec.field("idx").offset, 16)
    assert idx.tolist() == list(range(len(a)))


def test_flow_full_rate_exact_cycles(harness):
    a, b = _items(500, SEED)
    res = harness.run({"i_a": a, "i_b": _raw(b)}, expect={"o_y": len(a)}, consts={"k": 201})
    assert res.done and not res.timed_out
    _check(res, a, b, 201)
    # one item per cycle, one cycle of latency: output i leaves at cycle i + 1
    assert res.cycles == len(a) + 1
    assert res.streams["i_a"] == {"fired": len(a), "first": 0, "last": len(a) - 1}
    assert res.streams["o_y"]["first"] == 1 and res.streams["o_y"]["last"] == len(a)
    assert res.counters == {"o_count": len(a)}
    assert res.cycles_per_s > 0


def test_flow_stalls_and_backpressure_are_seeded(harness):
    a, b = _items(400, SEED + 1)
    kw = dict(expect={"o_y": len(a)}, consts={"k": 7}, stall_in={"i_a": 0.3, "i_b": 0.5}, stall_out=0.4)
    r1 = harness.run({"i_a": a, "i_b": _raw(b)}, seed=5, **kw)
    r2 = harness.run({"i_a": a, "i_b": _raw(b)}, seed=5, **kw)
    r3 = harness.run({"i_a": a, "i_b": _raw(b)}, seed=6, **kw)
    for r in (r1, r3):
        _check(r, a, b, 7)
        assert r.counters["o_count"] == len(a)
    assert r1.cycles == r2.cycles > len(a) * 1.5
    assert r3.cycles != r1.cycles


def test_flow_never_hangs(harness):
    a, b = _items(20, SEED)
    res = harness.run({"i_a": a, "i_b": _raw(b[:10])}, expect={"o_y": 20}, consts={"k": 1}, max_cycles=5000)
    assert res.timed_out and res.cycles == 5000
    assert res.streams["o_y"]["fired"] == 10 and len(res.ints("o_y")) == 10
    # completion needs every input consumed (cycle 22 here) besides the expected outputs;
    # drain cycles after completion still collect outputs (the last one leaves in cycle 22)
    res = harness.run({"i_a": a, "i_b": _raw(b)}, expect={"o_y": 5}, consts={"k": 1}, drain=50)
    assert res.done and res.cycles == len(a) and res.total_cycles == len(a) + 50
    assert len(res.ints("o_y")) == len(a) and res.streams["o_y"]["last"] == len(a)


def test_flow_bad_input_one_line(harness):
    with pytest.raises(SparsefabError, match="item #1 = .* does not fit 20 bits"):
        harness.run({"i_b": [1, 2**20]})
    with pytest.raises(SparsefabError, match="no input stream 'i_q'"):
        harness.run({"i_q": [1]})
    with pytest.raises(SparsefabError, match="k = 256 does not fit 8 bits"):
        harness.run({"i_a": [1]}, consts={"k": 256})
    with pytest.raises(SparsefabError, match="probability"):
        harness.run({"i_a": [1]}, stall_in=1.5)


def test_ports_classified():
    h = FlowHarness(WideJoin(), toplevel="wide_join")
    assert [(s.name, s.width, s.words) for s in h.sources] == [("i_a", 96, 3), ("i_b", 20, 1)]
    assert [(s.name, s.width) for s in h.sinks] == [("o_y", 116)]
    assert h.consts == {"k": 8} and h.counters == {"o_count": 32}


def test_word_helpers():
    rng = np.random.default_rng(SEED)
    vals = [int(x) for x in rng.integers(0, 2**62, 50)] + [2**64 - 1, 0]
    w = words_from_ints(vals, 64)
    assert ints_from_words(w) == vals
    big = [random.Random(SEED).getrandbits(150) for _ in range(20)]
    wb = words_from_ints(big, 150)
    assert wb.shape == (20, 5) and ints_from_words(wb) == big
    for off, width in [(0, 7), (30, 20), (61, 40), (95, 55), (120, 30)]:
        f = field_from_words(wb, off, width, signed=True)
        exp = [((x >> off) & ((1 << width) - 1)) for x in big]
        exp = [e - (1 << width) if e >> (width - 1) else e for e in exp]
        assert f.tolist() == exp, (off, width)
    raw = bytes(range(1, 20))
    wd = words_from_bytes(raw, 64)
    assert wd.shape == (3, 2) and ints_from_words(wd) == [
        int.from_bytes(raw[0:8], "little"), int.from_bytes(raw[8:16], "little"), int.from_bytes(raw[16:], "little")]
    assert np.array_equal(words_from_ints(np.array([3, 5], np.int64), 8), [[3], [5]])


def test_verilator_name():
    assert verilator_name("i_x__valid") == "i_x___05Fvalid"
    assert verilator_name("o_res__payload") == "o_res___05Fpayload"
    assert verilator_name("clk") == "clk"
