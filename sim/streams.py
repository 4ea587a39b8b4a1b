"""Reusable cocotb components for Amaranth ``stream`` ports.

An Amaranth ``stream.Signature`` port ``i_x`` appears in the Verilog as ``i_x__valid``,
``i_x__ready`` and ``i_x__payload`` (the whole ``data.Struct`` payload as one vector).
This module drives and watches such ports:

* :class:`StreamDriver` drives ``valid``/``payload`` of an input stream, with seeded
  random idle cycles between items;
* :class:`StreamMonitor` applies seeded random backpressure on ``ready`` of an output
  stream and collects the payloads (optionally feeding a :class:`Scoreboard`);
* :class:`Scoreboard` compares received items with the golden model's expected items
  and reports the first mismatch with its index, expected, got and the seed;
* :class:`PayloadCodec` packs/unpacks payload integers from field values, with the
  field offsets read from the Amaranth layout or a JSON sidecar, never hard-coded;
* :func:`start_clock_and_reset` starts the clock and pulses the synchronous reset.

**Timing discipline (simulator independent).** Every component drives its inputs right
after a falling clock edge and samples handshakes in the ``ReadOnly`` phase of that
same time step, i.e. with every combinational path settled half a cycle before the
rising edge that performs the transfer.  A transfer is counted iff ``valid`` and
``ready`` are both 1 at that point.  This gives the same results under Verilator and
Icarus (no reliance on pre/post-edge read semantics), provided all testbench code drives
DUT inputs only after falling edges (the components here do).

**Seeds.** :func:`get_seed` reads ``SPARSEFAB_SEED`` (default :data:`DEFAULT_SEED`);
each component derives its own generator from the seed and its port name, so adding a
component does not change the others' random streams.  The seed appears in every
failure message.
"""

from __future__ import annotations

import json
import os
import random
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_SEED = 20260522

__all__ = ["DEFAULT_SEED", "get_seed", "rng_for", "PayloadCodec", "Field", "StreamDriver",
           "StreamMonitor", "Scoreboard", "ScoreboardMismatch", "start_clock_and_reset",
           "layout_json", "params_from_env", "cocotb_test", "read_case", "write_result"]


def get_seed() -> int:
    """The test seed: ``$SPARSEFAB_SEED`` (decimal or 0x-hex) or :data:`DEFAULT_SEED`."""
    raw = os.environ.get("SPARSEFAB_SEED", "").strip()
    if not raw:
        return DEFAULT_SEED
    try:
        return int(raw, 0)
    except ValueError:
        raise ValueError(f"SPARSEFAB_SEED={raw!r}: expected an integer") from None


def rng_for(name: str, seed: int | None = None) -> random.Random:
    """A ``random.Random`` for component ``name``, derived from ``seed`` (default :func:`get_seed`)."""
    s = get_seed() if seed is None else seed
    return random.Random((s << 32) ^ zlib.crc32(name.encode()))


def cocotb_test(func: Callable) -> Callable:
    """Mark ``func`` as a cocotb test when cocotb is importable.

    Bench modules are imported both by the simulator process (where cocotb runs them)
    and by pytest or the CLI (which only call their ``run_*`` helpers); there the
    function is returned unchanged.
    """
    try:
        import cocotb
    except ImportError:  # pragma: no cover - only the simulator process needs cocotb
        return func
    return cocotb.test()(func)


def read_case(env_var: str) -> dict[str, Any]:
    """The JSON test case whose path the pytest side put in ``$env_var``."""
    with open(os.environ[env_var]) as fh:
        return json.load(fh)


def write_result(env_var: str, result: Any) -> None:
    """Write ``result`` as JSON to the path in ``$env_var``, for the pytest side to read."""
    with open(os.environ[env_var], "w") as fh:
        json.dump(result, fh)


def params_from_env() -> dict[str, Any]:
    """The design-point parameters :func:`sparsefab.sim.runner.run_cocotb` passed (``SPARSEFAB_PARAMS``)."""
    return json.loads(os.environ.get("SPARSEFAB_PARAMS", "{}"))


# ----------------------------------------------------------------------------- payloads

@dataclass(frozen=True)
class Field:
    """One leaf field of a payload: bit ``offset``, ``width``, ``signed``."""

    name: str
    offset: int
    width: int
    signed: bool


def _layout_fields(layout: Any, prefix: str, base: int, out: list[Field]) -> None:
    from amaranth.hdl import Shape
    from amaranth.lib import data

    if isinstance(layout, data.StructLayout | data.UnionLayout):
        for name, fld in layout:
            _layout_fields(fld.shape, f"{prefix}{name}.", base + fld.offset, out)
        return
    if isinstance(layout, data.ArrayLayout):
        elem = data.Layout.cast(layout.elem_shape) if not isinstance(layout.elem_shape, Shape) \
            else layout.elem_shape
        width = Shape.cast(layout.elem_shape).width
        for i in range(layout.length):
            _layout_fields(elem, f"{prefix}{i}.", base + i * width, out)
        return
    if isinstance(layout, data.Layout):  # FlexibleLayout and friends
        for name, fld in layout:
            _layout_fields(fld.shape, f"{prefix}{name}.", base + fld.offset, out)
        return
    shape = Shape.cast(layout)
    out.append(Field(prefix[:-1] if prefix else "", base, shape.width, shape.signed))


def layout_json(layout: Any) -> list[dict[str, Any]]:
    """The leaf fields of an Amaranth payload shape as JSON-ready dicts
    (``name``, ``offset``, ``width``, ``signed``), e.g. for a generator's sidecar.
    Nested structs and arrays give dotted names (``pairs.0.col``)."""
    return [f.__dict__.copy() for f in PayloadCodec.from_layout(layout).fields]


class PayloadCodec:
    """Pack field values into a payload integer and back.

    Build it from the Amaranth shape (``PayloadCodec.from_layout(MyStruct)``, any
    ``data.Layout``/``data.Struct`` or plain ``unsigned``/``signed`` shape), or from a
    JSON sidecar description (``PayloadCodec.from_json(fields)``, a list of
    ``{"name", "offset", "width", "signed"}`` as :func:`layout_json` writes).

    ``pack({"a": -3, "b": 7})`` -> int; ``unpack(int)`` -> ``{"a": -3, "b": 7}``.
    Dotted names address nested fields.  A plain (non-struct) shape has one field named
    ``""``: ``pack(5)`` and ``unpack(x)`` then take and give plain ints.
    """

    def __init__(self, fields: Sequence[Field], width: int | None = None):
        self.fields = tuple(fields)
        self.width = width if width is not None else max((f.offset + f.width for f in self.fields), default=0)
        self._by_name = {f.name: f for f in self.fields}
        for f in self.fields:
            if f.offset < 0 or f.width < 0 or f.offset + f.width > self.width:
                raise ValueError(f"payload field {f.name!r} (offset {f.offset}, width {f.width}) "
                                 f"does not fit in {self.width} bits")

    @classmethod
    def from_layout(cls, layout: Any) -> PayloadCodec:
        from amaranth.hdl import Shape
        from amaranth.lib import data

        if isinstance(layout, type) and issubclass(layout, data.View):
            layout = data.Layout.cast(layout)
        fields: list[Field] = []
        _layout_fields(layout, "", 0, fields)
        width = data.Layout.cast(layout).size if isinstance(layout, data.Layout) else Shape.cast(layout).width
        return cls(fields, width)

    @classmethod
    def from_json(cls, spec: Iterable[Mapping[str, Any]] | Mapping[str, Any], width: int | None = None) -> PayloadCodec:
        if isinstance(spec, Mapping):
            if "fields" in spec:
                return cls.from_json(spec["fields"], spec.get("width", width))
            spec = [{"name": k, **v} for k, v in spec.items()]
        fields = [Field(str(d["name"]), int(d["offset"]), int(d["width"]), bool(d.get("signed", False)))
                  for d in spec]
        return cls(fields, width)

    @property
    def scalar(self) -> bool:
        return len(self.fields) == 1 and self.fields[0].name == ""

    def field(self, name: str) -> Field:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"payload has no field {name!r}; fields: {', '.join(self._by_name)}") from None

    def pack(self, value: Any) -> int:
        """Payload integer from a dict of field values (nested dicts/lists allowed), or an int."""
        if isinstance(value, int) and not isinstance(value, bool):
            if self.scalar:
                return self._put(0, self.fields[0], value)
            return value & ((1 << self.width) - 1)
        flat = _flatten(value)
        word = 0
        for name, v in flat.items():
            word = self._put(word, self.field(name), v)
        return word

    @staticmethod
    def _put(word: int, f: Field, v: int) -> int:
        v = int(v)
        lo, hi = (-(1 << (f.width - 1)), (1 << (f.width - 1)) - 1) if f.signed else (0, (1 << f.width) - 1)
        if not lo <= v <= hi:
            raise ValueError(f"payload field {f.name or 'value'!r} = {v} does not fit "
                             f"{'signed' if f.signed else 'unsigned'}({f.width})")
        mask = (1 << f.width) - 1
        return (word & ~(mask << f.offset)) | ((v & mask) << f.offset)

    def get(self, word: int, name: str) -> int:
        f = self.field(name)
        v = (int(word) >> f.offset) & ((1 << f.width) - 1)
        if f.signed and f.width and v >> (f.width - 1):
            v -= 1 << f.width
        return v

    def unpack(self, word: int) -> Any:
        """Dict of field values (nested for dotted names; lists for arrays), or an int for a plain shape."""
        if self.scalar:
            return self.get(word, "")
        out: dict[str, Any] = {}
        for f in self.fields:
            node = out
            parts = f.name.split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = self.get(word, f.name)
        return _lists(out)


def _flatten(value: Any, prefix: str = "") -> dict[str, int]:
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return {prefix[:-1]: value}
    out: dict[str, int] = {}
    for k, v in items:
        out.update(_flatten(v, f"{prefix}{k}."))
    return out


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    node = {k: _lists(v) for k, v in node.items()}
    if node and all(k.isdigit() for k in node) and sorted(int(k) for k in node) == list(range(len(node))):
        return [node[str(i)] for i in range(len(node))]
    return node


def _identity(x: Any) -> Any:
    return x


# ----------------------------------------------------------------------------- clock / reset

async def start_clock_and_reset(dut: Any, *, clk: str = "clk", rst: str | None = "rst", period_ns: int = 10,
                                reset_cycles: int = 2) -> Any:
    """Start a clock on ``dut.<clk>`` and hold the synchronous reset ``dut.<rst>`` high for
    ``reset_cycles`` rising edges (Amaranth's ``rst`` is active high, synchronous).  The other
    top-level inputs named by the runner (``SPARSEFAB_INPUTS``) start at 0, in every simulator.
    Returns after the falling edge that follows the release: drivers may start at once."""
    import cocotb
    from cocotb.clock import Clock
    from cocotb.triggers import FallingEdge

    clock = getattr(dut, clk)
    for name in json.loads(os.environ.get("SPARSEFAB_INPUTS", "[]")):
        if name not in (clk, rst):     # undriven inputs read 0 in Verilator but Z in Icarus
            getattr(dut, name).value = 0
    cocotb.start_soon(Clock(clock, period_ns, unit="ns").start())
    if rst is not None:
        reset = getattr(dut, rst)
        reset.value = 1
        for _ in range(reset_cycles):
            await FallingEdge(clock)
        reset.value = 0
    await FallingEdge(clock)
    return clock


# ----------------------------------------------------------------------------- driver / monitor

class _StreamPort:
    def __init__(self, dut: Any, port: str, clk: str):
        self.dut = dut
        self.port = port
        try:
            self.valid = getattr(dut, f"{port}__valid")
            self.ready = getattr(dut, f"{port}__ready", None)
            self.payload = getattr(dut, f"{port}__payload", None)
            self.clock = getattr(dut, clk)
        except AttributeError as exc:
            raise AttributeError(f"DUT has no stream port {port!r} ({exc})") from None


class StreamDriver(_StreamPort):
    """Drive an Amaranth input stream ``<port>__valid/__payload``; the DUT drives ``__ready``.

    Parameters
    ----------
    dut : cocotb handle
    port : str
        Stream port name, e.g. ``"i_x"``.
    codec : PayloadCodec, optional
        Packs queued items; without it items must be payload integers.
    idle : float
        Probability of an idle cycle (``valid`` low) before each item (seeded).
    seed : int, optional
        Default :func:`get_seed`.
    clk : str
        Clock signal name.

    Use ``driver.send(items)`` (queue, returns at once) and ``await driver.wait_idle()``;
    or ``await driver.send_and_wait(items)``.  :attr:`sent` counts accepted items,
    :attr:`cycles` the cycles the driver ran.
    """

    def __init__(self, dut: Any, port: str, *, codec: PayloadCodec | None = None, idle: float = 0.0,
                 seed: int | None = None, clk: str = "clk"):
        super().__init__(dut, port, clk)
        if not 0.0 <= idle < 1.0:
            raise ValueError(f"idle={idle}: expected a probability in [0, 1)")
        if self.ready is None:
            raise AttributeError(f"stream {port!r} has no ready signal")
        self.codec = codec
        self.idle = idle
        self.seed = get_seed() if seed is None else seed
        self._rng = rng_for(port, self.seed)
        self._queue: deque[Any] = deque()
        self.sent = 0
        self.cycles = 0
        self.valid.value = 0
        self._idle_event: Any = None
        import cocotb

        self._task = cocotb.start_soon(self._run())

    def send(self, items: Iterable[Any]) -> None:
        """Queue ``items`` (field dicts if a codec was given, else payload integers)."""
        for item in items:
            self._queue.append(self.codec.pack(item) if self.codec is not None else int(item))

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def wait_idle(self, timeout_cycles: int | None = None) -> None:
        """Wait until every queued item was accepted (``timeout_cycles``: fail if longer)."""
        from cocotb.triggers import FallingEdge

        n = 0
        while self._queue or self._holding:
            await FallingEdge(self.clock)
            n += 1
            if timeout_cycles is not None and n > timeout_cycles:
                raise AssertionError(f"{self.port}: {len(self._queue)} items still pending after "
                                     f"{timeout_cycles} cycles (seed {self.seed})")

    async def send_and_wait(self, items: Iterable[Any], timeout_cycles: int | None = None) -> None:
        self.send(items)
        await self.wait_idle(timeout_cycles)

    _holding = False  # an item is on the bus and not yet accepted: valid must stay high

    async def _run(self) -> None:
        from cocotb.triggers import FallingEdge, ReadOnly

        await FallingEdge(self.clock)
        while True:
            if self._queue and (self._holding or self._rng.random() >= self.idle):
                self._holding = True
                self.valid.value = 1
                self.payload.value = self._queue[0]
                await ReadOnly()
                fired = bool(self.ready.value)
                await FallingEdge(self.clock)
                self.cycles += 1
                if fired:
                    self._queue.popleft()
                    self.sent += 1
                    self._holding = False
                    if not self._queue:
                        self.valid.value = 0
            else:
                self.valid.value = 0
                await FallingEdge(self.clock)
                self.cycles += 1


class StreamMonitor(_StreamPort):
    """Collect the payloads of an Amaranth output stream; drive ``<port>__ready`` with
    seeded random backpressure.

    Parameters
    ----------
    dut : cocotb handle
    port : str
        Stream port name, e.g. ``"o_y"``.
    codec : PayloadCodec, optional
        Unpack each payload (to a field dict) before storing it.
    backpressure : float
        Probability that ``ready`` is low in a cycle (seeded); 0 = always ready.
    callback : callable, optional
        Called with each received item (e.g. :meth:`Scoreboard.add`).
    drive_ready : bool
        False for a passive monitor (someone else drives ``ready``, or the stream has none).
    seed : int, optional
        Default :func:`get_seed`.

    :attr:`items` holds what was received, in order; :attr:`cycles_at` the cycle index
    (counted from the monitor's start) of each transfer.
    """

    def __init__(self, dut: Any, port: str, *, codec: PayloadCodec | None = None, backpressure: float = 0.0,
                 callback: Callable[[Any], None] | None = None, drive_ready: bool = True,
                 seed: int | None = None, clk: str = "clk"):
        super().__init__(dut, port, clk)
        if not 0.0 <= backpressure < 1.0:
            raise ValueError(f"backpressure={backpressure}: expected a probability in [0, 1)")
        self.codec = codec
        self.backpressure = backpressure
        self.callback = callback
        self.drive_ready = drive_ready and self.ready is not None
        self.seed = get_seed() if seed is None else seed
        self._rng = rng_for(port, self.seed)
        self.items: list[Any] = []
        self.cycles_at: list[int] = []
        self.cycles = 0
        if self.drive_ready:
            self.ready.value = 0
        import cocotb

        self._task = cocotb.start_soon(self._run())

    async def wait_for(self, count: int, timeout_cycles: int = 100_000) -> list[Any]:
        """Wait until ``count`` items arrived; fail (with the seed) after ``timeout_cycles``."""
        from cocotb.triggers import FallingEdge

        n = 0
        while len(self.items) < count:
            await FallingEdge(self.clock)
            n += 1
            if n > timeout_cycles:
                raise AssertionError(f"{self.port}: got {len(self.items)} of {count} items after "
                                     f"{timeout_cycles} cycles (seed {self.seed})")
        return self.items

    async def _run(self) -> None:
        from cocotb.triggers import FallingEdge, ReadOnly

        await FallingEdge(self.clock)
        while True:
            if self.drive_ready:
                self.ready.value = int(self._rng.random() >= self.backpressure)
            await ReadOnly()
            ready = True if self.ready is None else bool(self.ready.value)
            if ready and bool(self.valid.value):
                word = int(self.payload.value) if self.payload is not None else 0
                item = self.codec.unpack(word) if self.codec is not None else word
                self.items.append(item)
                self.cycles_at.append(self.cycles)
                if self.callback is not None:
                    self.callback(item)
            await FallingEdge(self.clock)
            self.cycles += 1


# ----------------------------------------------------------------------------- scoreboard

class ScoreboardMismatch(AssertionError):
    """The DUT produced something other than the golden model's expectation."""


class Scoreboard:
    """Compare received items with the golden model's expected items, in order.

    Parameters
    ----------
    expected : iterable
        The golden model's items (computed by ``sparsefab.compress``, never re-derived).
    name : str
        Shown in messages (usually the port).
    seed : int, optional
        Shown in messages (default :func:`get_seed`).
    key : callable, optional
        Applied to both sides before comparing (e.g. pick fields).

    Use :meth:`add` as a monitor callback (checks at once, remembers the first mismatch)
    and :meth:`finish` at the end (raises on a mismatch or a count difference), or
    :meth:`compare` on a complete list.
    """

    def __init__(self, expected: Iterable[Any], *, name: str = "stream", seed: int | None = None,
                 key: Callable[[Any], Any] | None = None):
        self.expected = list(expected)
        self.name = name
        self.seed = get_seed() if seed is None else seed
        self.key = key or _identity
        self.received = 0
        self.first_error: str | None = None

    def add(self, item: Any) -> None:
        i = self.received
        self.received += 1
        if self.first_error is not None:
            return
        if i >= len(self.expected):
            self.first_error = (f"{self.name}: unexpected extra item #{i}: got {item!r} "
                                f"(expected only {len(self.expected)} items; seed {self.seed})")
        elif _norm(self.key(item)) != _norm(self.key(self.expected[i])):
            self.first_error = (f"{self.name}: mismatch at item #{i}: expected {self.expected[i]!r}, "
                                f"got {item!r} (seed {self.seed})")

    def finish(self) -> None:
        """Raise :class:`ScoreboardMismatch` on the first mismatch or a missing/extra item."""
        if self.first_error is not None:
            raise ScoreboardMismatch(self.first_error)
        if self.received != len(self.expected):
            raise ScoreboardMismatch(f"{self.name}: received {self.received} items, expected "
                                     f"{len(self.expected)} (seed {self.seed})")

    def compare(self, got: Iterable[Any]) -> None:
        for item in got:
            self.add(item)
        self.finish()


def _norm(x: Any) -> Any:
    """Make NumPy scalars/arrays comparable with plain ints and lists."""
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Mapping):
        return {k: _norm(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_norm(v) for v in x]
    return x
