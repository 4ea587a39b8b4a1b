"""Registry of buildable designs: name -> factory ``build(**params) -> wiring.Component``.

The FPGA flow (``sparsefab fpga build --design NAME``) and the ``fpga`` bench section look
designs up here.  Entries are ``"module:callable"`` strings, imported only when a design is
built, so a module that has not landed yet makes only its own entry unavailable (see
:func:`available`).  To add a design, add ONE line to :data:`DESIGNS`; the callable takes
keyword parameters (validated, one-line errors) and returns a fresh component whose ports are
``stream`` ports and plain configuration signals.

Also here: :class:`MacSmoke`, a small pipelined multiply-accumulate used to test the flow.
"""

from __future__ import annotations

import importlib
import inspect

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from sparsefab.compress.errors import SparsefabError

# name -> "module:callable"
DESIGNS: dict[str, str] = {
    "mac": "sparsefab.gen.designs:build_mac",
    "spmv": "sparsefab.gen.designs:build_spmv",
    "spmv-dense": "sparsefab.gen.designs:build_spmv_dense",
    "spmv-cluster": "sparsefab.gen.spmv_multi:build_cluster",
    "bitmap-decoder": "sparsefab.gen.designs:build_bitmap_decoder",
    "chunk-decoder": "sparsefab.gen.chunk_decoder:build_decoder",
    "kv-compress": "sparsefab.gen.kv_compress:build",
    "crossbar": "sparsefab.gen.tile_controller:build_crossbar",
    "kv-decompress": "sparsefab.gen.kv_decompress:build",
}


def names() -> list[str]:
    """Registered design names, sorted."""
    return sorted(DESIGNS)


def factory(name: str):
    """The factory callable of design ``name`` (imports its module).

    Raises
    ------
    SparsefabError
        Unknown name, or its module/callable cannot be imported (one line naming it).
    """
    if name not in DESIGNS:
        raise SparsefabError(f"unknown design {name!r}; choose from {', '.join(names())}")
    target = DESIGNS[name]
    module, _, attr = target.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
        # a factory may name the module it wraps (``fn.requires``): it must import too
        if getattr(fn, "requires", None):
            importlib.import_module(fn.requires)
    except (ImportError, AttributeError) as exc:
        raise SparsefabError(f"design {name!r}: cannot load {target} ({type(exc).__name__}: {exc})") from None
    return fn


def available(name: str) -> bool:
    """True if design ``name`` is registered and its factory imports."""
    try:
        factory(name)
    except SparsefabError:
        return False
    return True


def parameters(name: str) -> list[str]:
    """Keyword parameters the factory of ``name`` accepts (empty list if it takes ``**kwargs``)."""
    sig = inspect.signature(factory(name))
    return [p.name for p in sig.parameters.values()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def board_defaults(name: str, board: str) -> dict:
    """Parameters design ``name`` should take on ``board`` unless given (``factory.board_defaults``).

    E.g. the spmv array computes its requantization multiply in logic on the iCE40UP5K, whose 8
    DSPs all go to 8 lanes.
    """
    return dict(getattr(factory(name), "board_defaults", {}).get(board, {}))


def build(name: str, **params) -> wiring.Component:
    """Build design ``name`` with ``params``; a bad or unknown parameter is a one-line SparsefabError."""
    fn = factory(name)
    sig = inspect.signature(fn)
    if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        accepted = parameters(name)
        for key in params:
            if key not in accepted:
                raise SparsefabError(f"design {name!r} has no parameter {key!r}; it takes {', '.join(accepted) or 'none'}")
    try:
        comp = fn(**params)
    except SparsefabError:
        raise
    except (TypeError, ValueError) as exc:
        raise SparsefabError(f"design {name!r} with {params}: {exc}") from None
    if not isinstance(comp, wiring.Component):
        raise SparsefabError(f"design {name!r}: factory returned {type(comp).__name__}, not a wiring.Component")
    return comp


# ---------------------------------------------------------------- smoke design

class MacSmoke(wiring.Component):
    """A small pipelined dot-product accumulator, the FPGA flow's smoke design.

    Each accepted beat carries ``lanes`` pairs (a, b) of signed ``bits``-bit integers; the
    products are summed and accumulated; a beat with ``last`` set closes the dot product, whose
    value (wrapped to ``acc_bits`` two's complement) is emitted on ``o_acc``.

    Parameters
    ----------
    lanes : int
        Multipliers, 1..64.
    bits : int
        Operand width, 2..18.
    acc_bits : int
        Accumulator width, 2*bits..64.

    Ports
    -----
    i_data : In(stream.Signature(Struct{a: signed(bits)[lanes], b: signed(bits)[lanes], last: 1}))
        Operand beats.
    o_acc : Out(stream.Signature(signed(acc_bits)))
        One dot product per ``last`` beat.

    Latency: 3 cycles from the accepted ``last`` beat to ``o_acc.valid``.  The whole pipeline
    stalls while ``o_acc`` holds a result that is not taken (``i_data.ready = ~o_acc.valid |
    o_acc.ready``).
    """

    LATENCY = 3

    def __init__(self, *, lanes: int = 1, bits: int = 8, acc_bits: int = 32):
        self._MustUse__silence = True  # a rejected instance is not an "unused elaboratable"
        for key, val, lo, hi in (("lanes", lanes, 1, 64), ("bits", bits, 2, 18)):
            if not isinstance(val, int) or isinstance(val, bool) or not lo <= val <= hi:
                raise SparsefabError(f"MacSmoke: {key}={val!r}, expected an integer in [{lo}, {hi}]")
        if not isinstance(acc_bits, int) or not 2 * bits <= acc_bits <= 64:
            raise SparsefabError(f"MacSmoke: acc_bits={acc_bits!r}, expected an integer in [{2 * bits}, 64]")
        self._MustUse__silence = False
        self.lanes, self.bits, self.acc_bits = lanes, bits, acc_bits
        beat = data.StructLayout({
            "a": data.ArrayLayout(signed(bits), lanes),
            "b": data.ArrayLayout(signed(bits), lanes),
            "last": 1,
        })
        super().__init__({
            "i_data": In(stream.Signature(beat)),
            "o_acc": Out(stream.Signature(signed(acc_bits))),
        })

    def elaborate(self, platform):
        m = Module()
        lanes, acc_bits = self.lanes, self.acc_bits
        adv = Signal()
        m.d.comb += [adv.eq(~self.o_acc.valid | self.o_acc.ready), self.i_data.ready.eq(adv)]
        with m.If(self.o_acc.ready):
            m.d.sync += self.o_acc.valid.eq(0)

        # stage 1: products
        prods = [Signal(signed(2 * self.bits), name=f"p{i}") for i in range(lanes)]
        v1, l1 = Signal(), Signal()
        # stage 2: sum of the products
        s2 = Signal(signed(acc_bits))
        v2, l2 = Signal(), Signal()
        acc = Signal(signed(acc_bits))
        with m.If(adv):
            p = self.i_data.payload
            m.d.sync += [prods[i].eq(p.a[i] * p.b[i]) for i in range(lanes)]
            m.d.sync += [v1.eq(self.i_data.valid), l1.eq(p.last)]
            total = prods[0]
            for x in prods[1:]:
                total = total + x
            m.d.sync += [s2.eq(total), v2.eq(v1), l2.eq(l1)]
            with m.If(v2):
                nxt = (acc + s2)[:acc_bits].as_signed()
                with m.If(l2):
                    m.d.sync += [self.o_acc.payload.eq(nxt), self.o_acc.valid.eq(1), acc.eq(0)]
                with m.Else():
                    m.d.sync += acc.eq(nxt)
        return m


def build_mac(*, lanes: int = 1, bits: int = 8, acc_bits: int = 32) -> MacSmoke:
    """The ``mac`` smoke design (:class:`MacSmoke`)."""
    return MacSmoke(lanes=lanes, bits=bits, acc_bits=acc_bits)


def _spmv_config(*, lanes, bits, block, acc_bits, bus_bits, max_cols, mask_words, value_words, mul_steps,
                 window_beats=3, decoder="window"):
    from sparsefab.gen.spmv_config import SpmvConfig

    return SpmvConfig(lanes=lanes, weight_bits=bits, block=block, acc_bits=acc_bits, bus_bits=bus_bits,
                      max_cols=max_cols, mask_words=mask_words, value_words=value_words, mul_steps=mul_steps,
                      window_beats=window_beats, decoder=decoder)


def build_spmv(*, lanes: int = 8, bits: int = 8, block: int = 16, acc_bits: int = 32, bus_bits: int = 64,
               max_cols: int = 1024, mask_words: int | None = None, value_words: int | None = None,
               mul_steps: int = 1, window_beats: int = 3, decoder: str = "window"):
    """The ``spmv`` design: :class:`sparsefab.gen.sparse_mac.SparseMacArray` (see :class:`SpmvConfig`;
    ``bits`` is the weight width).

    iCEBreaker defaults (``board_defaults``): ``mul_steps=4`` (the lanes take the UP5K's 8 DSPs, so
    the requantization multiply is done in logic over 4 cycles); ``bus_bits=32`` (an activation
    buffer copy of 1024 columns is then 2 EBR, 16 for 8 lanes; at 64 bits it is 4, 32 > 30);
    ``mask_words=2``: a 64-bit mask beat (at most 64 mask bits per cycle: about 6.4 nonzeros per
    cycle at 90 % sparsity, full rate at 75 % and below); ``decoder="compact"``: the small front
    end (:class:`sparsefab.gen.compact_decoder.CompactDecoder`, two 32-bit word slots).
    ULX3S: ``window_beats=2``."""
    from sparsefab.gen.sparse_mac import SparseMacArray

    return SparseMacArray(_spmv_config(lanes=lanes, bits=bits, block=block, acc_bits=acc_bits, bus_bits=bus_bits,
                                       max_cols=max_cols, mask_words=mask_words, value_words=value_words,
                                       mul_steps=mul_steps, window_beats=window_beats, decoder=decoder))


build_spmv.requires = "sparsefab.gen.sparse_mac"
build_spmv.board_defaults = {
    "icebreaker": {"mul_steps": 4, "bus_bits": 32, "mask_words": 2, "decoder": "compact"},
    "ulx3s-85f": {"window_beats": 2},
}


def build_spmv_dense(*, lanes: int = 8, bits: int = 8, acc_bits: int = 32, bus_bits: int = 64,
                     max_cols: int = 1024, mul_steps: int = 1):
    """The dense baseline of ``spmv``: :class:`sparsefab.gen.dense_mac.DenseMacArray` (same lanes)."""
    from sparsefab.gen.dense_mac import DenseMacArray

    return DenseMacArray(_spmv_config(lanes=lanes, bits=bits, block=16, acc_bits=acc_bits, bus_bits=bus_bits,
                                      max_cols=max_cols, mask_words=None, value_words=None,
                                      mul_steps=mul_steps).replace(dense=True))


build_spmv_dense.requires = "sparsefab.gen.dense_mac"
build_spmv_dense.board_defaults = {"icebreaker": {"mul_steps": 4}}


def build_bitmap_decoder(*, lanes: int = 8, bits: int = 8, block: int = 16, bus_bits: int = 64,
                         max_cols: int = 1024, mask_words: int | None = None, value_words: int | None = None,
                         window_beats: int = 3, decoder: str = "window"):
    """The front end of ``spmv`` alone: :class:`sparsefab.gen.bitmap_decoder.BitmapDecoder`, or
    :class:`sparsefab.gen.compact_decoder.CompactDecoder` with ``decoder="compact"``."""
    from sparsefab.gen.bitmap_decoder import BitmapDecoder

    cfg = _spmv_config(lanes=lanes, bits=bits, block=block, acc_bits=32, bus_bits=bus_bits, max_cols=max_cols,
                       mask_words=mask_words, value_words=value_words, mul_steps=1, window_beats=window_beats,
                       decoder=decoder)
    if cfg.decoder == "compact":
        from sparsefab.gen.compact_decoder import CompactDecoder
        return CompactDecoder(cfg)
    return BitmapDecoder(cfg)


build_bitmap_decoder.board_defaults = {
    "icebreaker": {"bus_bits": 32, "mask_words": 2, "decoder": "compact"},
    "ulx3s-85f": {"window_beats": 2},
}
