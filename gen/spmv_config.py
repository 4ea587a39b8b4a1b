"""The one frozen configuration of the sparse MAC array (and its dense baseline).

:class:`SpmvConfig` feeds the RTL generators (:mod:`sparsefab.gen.sparse_mac`,
:mod:`sparsefab.gen.dense_mac`, :mod:`sparsefab.gen.bitmap_decoder`), the golden-model
calls of the testbenches and the JSON sidecar written by :func:`sparsefab.gen.emit.emit`.
Widths and latencies are read from it, never written twice.

Top-level interface of ``SparseMacArray`` (Verilog names; all streams are Amaranth
``stream.Signature`` ports: ``<name>__valid``, ``<name>__ready``, ``<name>__payload``; a
``data.Struct`` payload is one vector, first field in the low bits):

==============  ===  =========================================  =====================================
port            dir  payload (low bits first)                   meaning
==============  ===  =========================================  =====================================
``clk``         in   1                                          clock
``rst``         in   1                                          synchronous reset, active high; may be
                                                                asserted at any time (mid row): the
                                                                block returns to idle, FIFOs empty
``i_cmd``       in   ``rows``: 16, ``cols``: ``col_bits``       one command per matrix; queued
                                                                commands wait (back to back is fine)
``i_act``       in   ``bus_bits``                               activations, ``bus_bits/8`` int8 per
                                                                word, first in the low byte;
                                                                ``ceil(cols / (bus_bits/8))`` words
                                                                per command (last word zero padded)
``i_mask``      in   ``mask_bus`` = ``mask_words*bus_bits``     the bitmap index section (CONTRACTS C)
                                                                as ``mask_words`` consecutive W-bit
                                                                words per beat, first in the low bits;
                                                                ``ceil(rows*stride_bits/mask_bus)``
                                                                beats per matrix, the last zero padded
``i_value``     in   ``data``: ``value_bus``, ``last``: 1       the values section as ``value_words``
                                                                W-bit words per beat,
                                                                ``max(1, ceil(nnz*b/value_bus))``
                                                                beats per matrix, ``last`` on the
                                                                final one (nnz = 0: one zero beat)
``i_rq``        in   ``bias``: s32, ``multiplier``: u16,        requantization parameters, one per
                     ``shift``: u6, ``zero_point``: s8,         row, in row order (CONTRACTS A)
                     ``relu``: 1
``o_res``       out  ``acc``: s``acc_bits``, ``out``: s8,       one per row: the accumulator before
                     ``last``: 1                                requantization (wrapped to acc_bits)
                                                                and the requantized int8; ``last`` on
                                                                the matrix's final row
``o_error``     out  1                                          sticky (until reset): malformed input
``o_error_flags`` out 4                                         sticky causes, see :data:`ERRORS`
``o_busy``      out  1                                          a matrix is in progress
``o_cycles``    out  32                                         busy cycles since reset
``o_stalls``    out  32                                         busy cycles in which no lane fired
``o_nnz``       out  32                                         nonzeros multiplied since reset
==============  ===  =========================================  =====================================

Order of work per matrix: ``i_cmd`` is accepted when the array is idle; then the
activation words are loaded (``ceil(cols/(bus_bits/8))`` cycles at full rate); then mask
and value beats are consumed and results are produced; rows finish in order.  The
``i_rq`` entry of a row is consumed when that row's accumulator reaches the output stage.
After ``o_error`` rises the current matrix is abandoned (the array returns to idle and never
hangs); apply ``rst`` before further use.

The dense baseline (``DenseMacArray``) has the same ports except ``i_mask``, and its
``i_value.data`` is ``lanes*weight_bits`` wide: row ``r`` is sent as ``ceil(cols/lanes)``
beats of ``lanes`` codes (column ``j*lanes + i`` in lane ``i`` of beat ``j``, codes beyond
``cols`` are zero), ``last`` on the matrix's final beat.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from sparsefab.compress.errors import SparsefabError, check_int

#: Bits of ``o_error_flags`` (sticky causes).
ERRORS = {
    "bad_command": 0,    # rows == 0, cols == 0 or cols > max_cols
    "values_short": 1,   # the masks need more values than arrive before the value stream's last
    "values_extra": 2,   # value beats (or a missing last) beyond the ones the masks need
    "mask_padding": 3,   # a mask bit set at a column >= cols (row padding)
}

ROWS_BITS = 16
COUNTER_BITS = 32
SHIFT_BITS = 6
MULTIPLIER_BITS = 16
BIAS_BITS = 32
OUT_BITS = 8

_WEIGHT_BITS = (2, 4, 8)
_BLOCKS = (8, 16, 32, 64)
_BUSES = (32, 64)
_MUL_STEPS = (1, 2, 4, 8, 16)
_DECODERS = ("window", "compact")


def _check_int(name: str, value, lo: int, hi: int) -> int:
    return check_int(name, value, lo, hi, owner="SpmvConfig")


def _check_choice(name: str, value, choices) -> int:
    if isinstance(value, bool) or value not in choices:
        raise SparsefabError(f"SpmvConfig: {name}={value!r}, expected one of {', '.join(map(str, choices))}")
    return int(value)


@dataclass(frozen=True, kw_only=True)
class SpmvConfig:
    """Parameters of the sparse MAC array; frozen, keyword-only, validated.

    Parameters
    ----------
    lanes : int
        Multipliers (nonzeros per cycle), 1..64.
    weight_bits : int
        Weight code width ``b``: 8, 4 (or 2).
    act_bits : int
        Activation width; 8 (fixed).
    acc_bits : int
        Accumulator width (wraps like :func:`sparsefab.compress.quant.spmv_int`), 16..40.
    block : int
        Mask block ``B`` of the bitmap format, 8, 16, 32 or 64.
    bus_bits : int
        Bus word ``W`` of the bitmap format and the activation stream, 32 or 64.
    max_cols : int
        Largest ``cols`` a command may ask for (activation buffer depth), 1..65535.
    mask_words : int or None
        Mask beat width in W-bit words; at most one beat enters per cycle, so a row costs at
        least ``stride_bits / mask_bus`` cycles however few nonzeros it has.  None:
        ``ceil(20 * lanes / bus_bits)``, twice ``lanes`` nonzeros per beat at 90 % sparsity
        (real matrices pruned globally have rows far sparser than the average).  1..16.
    window_beats : int
        Mask beats the decoder's window holds (2..4): it looks at ``window_beats * mask_bus``
        bits per cycle starting anywhere in the first beat, so at least
        ``(window_beats - 1) * mask_bus`` bits ahead.  3 keeps lanes full at 90 % sparsity on
        real matrices; 2 is smaller (small FPGAs).  The decoder's per-lane logic grows with the
        window (a lane compares and muxes ``window_beats * mask_bus / C`` coarse groups, C = 8,
        or 16 from 128 bits): on iCE40 a lane costs about 290 logic cells at a 128-bit window.
    value_words : int or None
        Value beat width in W-bit words.  None: ``ceil(lanes * weight_bits / bus_bits)``.
    mul_steps : int
        Cycles per requantization multiply: 1 (one ``a*b``, maps to DSPs) or 2, 4, 8, 16
        (shift-and-add over 16/mul_steps multiplier bits per cycle, in logic: for chips whose
        DSPs are all taken by the lanes, e.g. iCE40UP5K).
    decoder : str
        Front end: ``"window"`` (:class:`~sparsefab.gen.bitmap_decoder.BitmapDecoder`, the
        general form) or ``"compact"`` (:class:`~sparsefab.gen.compact_decoder.CompactDecoder`,
        the small form for iCE40: two 32-bit word slots, mask beats of 32 or 64 bits, up to 16
        lanes; ``window_beats`` is not used).
    act_banks : int
        Activation buffer banks: 1 (a matrix's activations load while the array waits) or 2
        (double buffering: the next matrix's activations load into the other bank while this
        one runs, at twice the buffer depth; on the ECP5 a 64-bit copy of up to 4,096
        activations stays in two DP16KD either way).
    dense : bool
        True for the dense baseline (:class:`~sparsefab.gen.dense_mac.DenseMacArray`).
    """

    lanes: int = 8
    weight_bits: int = 8
    act_bits: int = 8
    acc_bits: int = 32
    block: int = 16
    bus_bits: int = 64
    max_cols: int = 1024
    mask_words: int | None = None
    window_beats: int = 3
    value_words: int | None = None
    mul_steps: int = 1
    decoder: str = "window"
    act_banks: int = 1
    dense: bool = False

    def __post_init__(self):
        s = object.__setattr__
        s(self, "lanes", _check_int("lanes", self.lanes, 1, 64))
        s(self, "weight_bits", _check_choice("weight_bits", self.weight_bits, _WEIGHT_BITS))
        s(self, "act_bits", _check_choice("act_bits", self.act_bits, (8,)))
        s(self, "acc_bits", _check_int("acc_bits", self.acc_bits, 16, 40))
        s(self, "block", _check_choice("block", self.block, _BLOCKS))
        s(self, "bus_bits", _check_choice("bus_bits", self.bus_bits, _BUSES))
        s(self, "max_cols", _check_int("max_cols", self.max_cols, 1, 65535))
        if self.mask_words is None:
            s(self, "mask_words", max(1, -(-20 * self.lanes // self.bus_bits)))
        s(self, "mask_words", _check_int("mask_words", self.mask_words, 1, 16))
        s(self, "window_beats", _check_int("window_beats", self.window_beats, 2, 4))
        if self.value_words is None:
            s(self, "value_words", max(1, -(-self.lanes * self.weight_bits // self.bus_bits)))
        s(self, "value_words", _check_int("value_words", self.value_words, 1, 16))
        if self.value_words * self.bus_bits < self.lanes * self.weight_bits:
            raise SparsefabError(
                f"SpmvConfig: value_words={self.value_words} gives {self.value_words * self.bus_bits} bits "
                f"per beat, fewer than lanes*weight_bits={self.lanes * self.weight_bits}")
        s(self, "mul_steps", _check_choice("mul_steps", self.mul_steps, _MUL_STEPS))
        if self.decoder not in _DECODERS:
            raise SparsefabError(f"SpmvConfig: decoder={self.decoder!r}, expected one of {', '.join(_DECODERS)}")
        if self.decoder == "compact":
            if self.mask_words * self.bus_bits > 64:
                raise SparsefabError(
                    f"SpmvConfig: decoder='compact' takes mask beats of 32 or 64 bits, got mask_words="
                    f"{self.mask_words} x bus_bits={self.bus_bits}")
            if self.lanes > 16:
                raise SparsefabError(f"SpmvConfig: decoder='compact' supports lanes <= 16, got lanes={self.lanes}")
        s(self, "act_banks", _check_choice("act_banks", self.act_banks, (1, 2)))
        if not isinstance(self.dense, (bool, np.bool_)):
            raise SparsefabError(f"SpmvConfig: dense={self.dense!r}, expected a bool")
        s(self, "dense", bool(self.dense))

    # ------------------------------------------------------------------ derived widths
    @property
    def mask_bus(self) -> int:
        """Bits per ``i_mask`` beat."""
        return self.mask_words * self.bus_bits

    @property
    def value_bus(self) -> int:
        """Bits of ``i_value.data`` (dense baseline: ``lanes * weight_bits``)."""
        if self.dense:
            return self.lanes * self.weight_bits
        return self.value_words * self.bus_bits

    @property
    def col_bits(self) -> int:
        """Width of ``i_cmd.cols`` (holds ``max_cols``)."""
        return max(1, int(self.max_cols).bit_length())

    @property
    def acts_per_word(self) -> int:
        """Activations per ``i_act`` word."""
        return self.bus_bits // self.act_bits

    @property
    def act_depth(self) -> int:
        """Words of each activation buffer copy."""
        return -(-self.max_cols // self.acts_per_word)

    @property
    def name(self) -> str:
        """Verilog module name of this configuration."""
        kind = "dense" if self.dense else "spmv"
        tail = "_compact" if self.decoder == "compact" and not self.dense else ""
        tail += "_ab2" if self.act_banks == 2 else ""
        return (f"{kind}_l{self.lanes}_w{self.weight_bits}_b{self.block}_bus{self.bus_bits}"
                f"_c{self.max_cols}{tail}")

    # Pipeline depths, shared by the RTL and the testbenches.
    #: cycles from a lane bundle accepted by the MAC back end to its row result in the row FIFO
    BACKEND_LATENCY = 5
    #: row FIFO depth (the decoder issues only while the FIFO can take every row in flight)
    ROW_FIFO_DEPTH = 8

    @property
    def requant_latency(self) -> int:
        """Cycles from a row accumulator entering the output stage to ``o_res.valid``."""
        return 3 + self.mul_steps

    @property
    def latency(self) -> int:
        """Minimum cycles from the decoder emitting a row's final lanes to that row on ``o_res``
        (no backpressure): back end + row FIFO (1) + output stage."""
        return self.BACKEND_LATENCY + 1 + self.requant_latency

    def replace(self, **changes) -> SpmvConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready parameters plus the derived widths (for the sidecar)."""
        d = dataclasses.asdict(self)
        d.update(mask_bus=self.mask_bus, value_bus=self.value_bus, col_bits=self.col_bits,
                 rows_bits=ROWS_BITS, counter_bits=COUNTER_BITS, acts_per_word=self.acts_per_word,
                 act_depth=self.act_depth, latency=self.latency, requant_latency=self.requant_latency)
        return d

    # ------------------------------------------------------------------ stream images
    def stride_bits(self, cols: int) -> int:
        """Mask bits per row for ``cols`` columns (CONTRACTS C)."""
        from sparsefab.compress.bitmap import stride_bits
        return stride_bits(cols, block=self.block, bus_bits=self.bus_bits)

    def act_words(self, x) -> list[int]:
        """The ``i_act`` words of one activation vector ``x`` (int8 codes, shape (cols,))."""
        x = np.asarray(x)
        if x.ndim != 1 or not 1 <= x.shape[0] <= self.max_cols:
            raise SparsefabError(f"x: expected shape (cols,) with 1 <= cols <= {self.max_cols}, got {x.shape}")
        if x.size and (int(x.min()) < -128 or int(x.max()) > 127):
            raise SparsefabError("x: activation codes must be int8 (in [-128, 127])")
        return _beats(x.astype(np.int8).tobytes(), self.bus_bits)

    def mask_beats(self, image) -> list[int]:
        """The ``i_mask`` beats of a :class:`~sparsefab.compress.bitmap.BitmapImage`."""
        self._check_image(image)
        return _beats(image.index_bytes, self.mask_bus)

    def value_beats(self, image) -> list[tuple[int, int]]:
        """The ``i_value`` beats ``(data, last)`` of a bitmap image (one zero beat when nnz = 0)."""
        self._check_image(image)
        beats = _beats(image.values_bytes, self.value_bus) or [0]
        return [(b, int(i == len(beats) - 1)) for i, b in enumerate(beats)]

    def dense_value_beats(self, codes) -> list[tuple[int, int]]:
        """The dense baseline's ``i_value`` beats ``(data, last)`` of a code matrix."""
        from sparsefab.compress.bitstream import pack_signed
        c = np.asarray(codes)
        if c.ndim != 2:
            raise SparsefabError(f"codes: expected a 2-D array, got shape {c.shape}")
        rows, cols = c.shape
        per = -(-cols // self.lanes)
        padded = np.zeros((rows, per * self.lanes), np.int64)
        padded[:, :cols] = c
        raw = pack_signed(padded.reshape(-1), self.weight_bits)
        beats = _beats(raw, self.lanes * self.weight_bits, rows * per)
        return [(b, int(i == len(beats) - 1)) for i, b in enumerate(beats)]

    def _check_image(self, image) -> None:
        if (image.bits, image.block, image.bus_bits) != (self.weight_bits, self.block, self.bus_bits):
            raise SparsefabError(
                f"bitmap image has bits={image.bits}, block={image.block}, bus_bits={image.bus_bits}; "
                f"the array expects {self.weight_bits}, {self.block}, {self.bus_bits}")
        if not 1 <= image.cols <= self.max_cols:
            raise SparsefabError(f"bitmap image: cols={image.cols} outside [1, max_cols={self.max_cols}]")
        if not 1 <= image.rows < (1 << ROWS_BITS):
            raise SparsefabError(f"bitmap image: rows={image.rows} outside [1, {(1 << ROWS_BITS) - 1}]")


def _beats(raw: bytes, width: int, count: int | None = None) -> list[int]:
    """Split a little-endian byte string into ``width``-bit integers (last one zero padded);
    ``count`` beats if given, else as many as the bytes need."""
    total = int.from_bytes(raw, "little")
    n = -(-len(raw) * 8 // width) if count is None else count
    mask = (1 << width) - 1
    return [(total >> (i * width)) & mask for i in range(n)]
