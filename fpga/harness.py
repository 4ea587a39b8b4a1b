"""A generic board top that wraps ANY ``wiring.Component`` for synthesis and timing.

Why: a component's ports are far wider than a board's pins, and logic whose outputs go
nowhere (or whose inputs are constant) is optimised away, so building a bare core measures
nothing.  :class:`Harness` keeps every bit of the core alive with few pins and without
shaping its timing:

* **Inputs.**  Every input bit of the core (stream payloads, ``valid`` of input streams,
  ``ready`` of output streams, configuration words) is a distinct flip-flop of one long shift
  register.  Its serial input is a 32-bit maximal-length Galois LFSR XOR an input pin (a
  button), so no input is constant and no two input bits are provably equal: Yosys cannot
  propagate or merge them.  Every core input is driven straight from a flip-flop.
* **Outputs.**  Every output bit of the core is folded by a pipelined XOR tree: each level
  XORs up to 4 bits (one LUT4) into a register, until at most ``len(out_pins)`` bits remain;
  those toggle registers drive the LEDs.  Every core output therefore feeds exactly one LUT
  before a flip-flop, and the fold never sets the critical path (one LUT level per stage).
* **Cost**, by construction (reported by :func:`harness_cost` and subtracted in reports as
  the harness share): one FF per core input bit, 32 FFs of LFSR, and about one FF + one LUT
  per 3 core output bits.

The core runs in the ``sync`` domain, which the platform creates from the board clock
(constrained at the build's target frequency, see :mod:`sparsefab.fpga.boards`).
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Elaboratable, Module, Mux, Signal, Value
from amaranth.lib import io, wiring

from sparsefab.compress.errors import SparsefabError

#: Galois feedback mask of a maximal-length 32-bit LFSR (x^32 + x^22 + x^2 + x + 1).
LFSR_TAPS = 0x80200003
FOLD_ARITY = 4


def core_ports(core: wiring.Component) -> tuple[list[tuple[str, Signal]], list[tuple[str, Signal]]]:
    """Flattened ``(name, value)`` lists of the core's input and output ports, each as a plain ``Value``."""
    if not isinstance(core, wiring.Component):
        raise SparsefabError(f"harness: expected an amaranth wiring.Component, got {type(core).__name__}")
    ins, outs = [], []
    for path, member, value in core.signature.flatten(core):
        name = "__".join(str(p) for p in path)
        # data.View payloads (structs, arrays) as plain bit vectors
        (ins if member.flow == wiring.In else outs).append((name, Value.cast(value)))
    return ins, outs


@dataclass(frozen=True)
class HarnessCost:
    """Flip-flops and LUTs the harness adds around a core (exact by construction)."""

    in_bits: int
    out_bits: int
    ffs: int
    luts: int


def _fold_levels(n: int, leaves: int) -> list[int]:
    """Widths of the XOR-fold levels reducing ``n`` bits to at most ``leaves`` bits."""
    widths = []
    while n > leaves:
        n = -(-n // FOLD_ARITY)
        widths.append(max(n, 1))
    return widths


def harness_cost(core: wiring.Component, *, n_out_pins: int) -> HarnessCost:
    """FFs and LUTs :class:`Harness` adds around ``core`` with ``n_out_pins`` output pins."""
    ins, outs = core_ports(core)
    n_in = sum(len(v) for _, v in ins)
    n_out = sum(len(v) for _, v in outs)
    levels = _fold_levels(n_out, n_out_pins)
    leds = min(n_out_pins, levels[-1] if levels else max(n_out, 1))
    ffs = n_in + 32 + sum(levels) + leds
    # the LFSR needs a few LUTs for its taps and the serial input's XOR with the pin;
    # every fold register and every LED toggle register has one LUT in front.
    luts = 4 + sum(levels) + leds
    return HarnessCost(in_bits=n_in, out_bits=n_out, ffs=ffs, luts=luts)


class Harness(Elaboratable):
    """Board top around ``core``: shift-register stimulus in, pipelined XOR fold out.

    Parameters
    ----------
    core : wiring.Component
        Any component with ``sync``-domain logic; every port is connected.
    in_pins : sequence of (resource, number)
        Board input resources that seed the stimulus (XORed into the LFSR bit). May be empty.
    out_pins : sequence of (resource, number)
        Board output resources (LEDs) driven by the folded outputs; at least one.

    Attributes (after elaboration without a platform, for simulation)
    ----------
    pin_in : Signal(len(in_pins)), in
        Stands for the input pins when elaborated with ``platform=None``.
    pin_out : Signal(len(out_pins)), out
        Stands for the output pins when elaborated with ``platform=None``.

    Latency: a core output bit reaches ``pin_out`` after ``len(fold levels) + 1`` cycles.
    """

    def __init__(self, core: wiring.Component, *, in_pins=(), out_pins=(("led", 0),)):
        core_ports(core)  # validates
        if not out_pins:
            raise SparsefabError("harness: out_pins must name at least one output resource")
        self.core = core
        self.in_pins = tuple(in_pins)
        self.out_pins = tuple(out_pins)
        self.pin_in = Signal(max(len(self.in_pins), 1))
        self.pin_out = Signal(len(self.out_pins))

    def cost(self) -> HarnessCost:
        return harness_cost(self.core, n_out_pins=len(self.out_pins))

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        ins, outs = core_ports(core)

        pin_in = self.pin_in
        if platform is not None:
            for i, (res, num) in enumerate(self.in_pins):
                m.submodules[f"pin_in_{i}"] = buf = io.Buffer("i", platform.request(res, num, dir="-"))
                m.d.comb += pin_in[i].eq(buf.i)

        # stimulus: LFSR ^ pins -> one shift register as wide as all core inputs
        lfsr = Signal(32, init=1)
        m.d.sync += lfsr.eq(Mux(lfsr[0], (lfsr >> 1) ^ LFSR_TAPS, lfsr >> 1))
        n_in = sum(len(v) for _, v in ins)
        if n_in:
            sr = Signal(n_in, init=0x5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A & ((1 << n_in) - 1))
            feed = lfsr[0] ^ pin_in.xor()
            m.d.sync += sr.eq(Cat(feed, sr[:-1]) if n_in > 1 else feed)
            pos = 0
            for _, value in ins:
                m.d.comb += value.eq(sr[pos:pos + len(value)])
                pos += len(value)

        # fold: pipelined XOR tree, FOLD_ARITY bits per LUT, a register after every level
        n_leds = len(self.out_pins)
        bits = Cat(*[v for _, v in outs]) if outs else Const(0, 1)
        level = 0
        while len(bits) > n_leds:
            n = -(-len(bits) // FOLD_ARITY)
            nxt = Signal(n, name=f"fold{level}")
            for i in range(n):
                m.d.sync += nxt[i].eq(bits[i * FOLD_ARITY:(i + 1) * FOLD_ARITY].xor())
            bits, level = nxt, level + 1
        leds = Signal(len(bits), name="led_q")
        m.d.sync += leds.eq(leds ^ bits)
        m.d.comb += self.pin_out.eq(leds)
        if platform is not None:
            for i, (res, num) in enumerate(self.out_pins):
                m.submodules[f"pin_out_{i}"] = buf = io.Buffer("o", platform.request(res, num, dir="-"))
                m.d.comb += buf.o.eq(self.pin_out[i] if i < len(leds) else 0)
        return m
