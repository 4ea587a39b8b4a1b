"""Verilog + JSON sidecar emission."""

import dataclasses
import hashlib
import json

from amaranth import Module, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from sparsefab.gen.emit import emit, port_table, to_verilog


class _Square(wiring.Component):
    """A tiny registered squarer with one stream in and one stream out."""

    i_x: In(stream.Signature(signed(8)))
    o_y: Out(stream.Signature(signed(16)))

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.i_x.ready.eq(~self.o_y.valid | self.o_y.ready)
        with m.If(self.i_x.valid & self.i_x.ready):
            m.d.sync += [self.o_y.payload.eq(self.i_x.payload * self.i_x.payload), self.o_y.valid.eq(1)]
        with m.Elif(self.o_y.ready):
            m.d.sync += self.o_y.valid.eq(0)
        return m


@dataclasses.dataclass(frozen=True)
class _Cfg:
    width: int = 8
    latency: int = 1


def test_emit_writes_verilog_and_sidecar(tmp_path):
    v, j = emit(_Square(), name="square", config=_Cfg(), out_dir=tmp_path / "out", extra={"latency": 1})
    text = v.read_text()
    side = json.loads(j.read_text())
    assert "module square(" in text
    assert side["top"] == "square" and side["verilog"] == "square.v"
    assert side["verilog_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert side["config"] == {"width": 8, "latency": 1}
    assert side["latency"] == 1
    ports = {p["name"]: p for p in side["ports"]}
    assert ports["i_x__payload"] == {"name": "i_x__payload", "dir": "in", "width": 8}
    assert ports["o_y__payload"]["width"] == 16 and ports["o_y__payload"]["dir"] == "out"
    # every port named in the sidecar exists in the Verilog module
    for name in ports:
        assert f" {name};" in text or f"] {name};" in text, name


def test_port_table_lists_clock_and_reset_first():
    square = _Square()
    names = [p["name"] for p in port_table(square)]
    assert "module sq(" in to_verilog(square, name="sq")
    assert names[:2] == ["clk", "rst"]
    assert set(names) >= {"i_x__valid", "i_x__ready", "o_y__valid", "o_y__ready"}
