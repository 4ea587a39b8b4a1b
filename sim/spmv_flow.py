"""SpMV through the RTL: the sparse MAC array (or its dense baseline) in the compiled flow harness.

:func:`run_spmv` feeds the golden model's bitmap sections
(:func:`sparsefab.compress.bitmap.bitmap_sections`) to ``SparseMacArray`` as bus beats,
one matrix command per activation vector (weights re-streamed for every vector, as the
hardware reads them from memory), with per-row requantization parameters, and returns the
accumulators, the requantized int8 outputs, the cycle count and the array's counters.  It
checks nothing against the golden model itself: callers compare (tests, the CLI, the
bench, ``make sim``).  :func:`run_mlp` chains layers (requantization + ReLU in hardware,
each layer's int8 outputs feeding the next) over many samples.

Python never steps a cycle: all streams are written to files and driven by the C++
harness of :mod:`sparsefab.sim.flow` (millions of cycles per second).  Payload field
offsets come from the component's own ``data.Struct`` layouts, never hard-coded.

The cycle count is the harness's: from the first cycle after reset to the last result,
including activation loading and pipeline latency; ``ideal_cycles`` is
``sum over vectors of ceil(nnz / lanes)`` (the dense baseline's ideal is
``rows * ceil(cols / lanes)`` per vector).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparsefab.compress.errors import SparsefabError

__all__ = ["SpmvResult", "run_spmv", "run_mlp", "spmv_config", "harness_for", "verilog_for", "Requant"]

MAX_LANES = 64


@dataclass
class SpmvResult:
    """One :func:`run_spmv` run.

    Attributes
    ----------
    y : ndarray of int64, shape (rows,) or (n, rows)
        Accumulators before requantization (``acc_bits`` two's complement), shaped like X.
    out : ndarray of int32, same shape
        Requantized outputs (int8 range).
    cycles : int
        Harness cycles from reset release to the last result (all vectors).
    ideal_cycles : int
        ``n * ceil(nnz / lanes)`` (dense: ``n * rows * ceil(cols / lanes)``).
    nnz : int
        Nonzero weights of the matrix (dense: ``rows * cols``, what the dense array multiplies).
    lanes, rows, cols, n : int
    utilization : float
        ``n * nnz / (lanes * cycles)``.
    counters : dict
        The array's own counters at the end (``o_cycles`` busy, ``o_stalls``, ``o_nnz``, ...).
    sim_cycles_per_s : float
        Simulated cycles per second of the compiled model (wall time of the C++ loop alone).
    wall_s, cpu_s : float
        Wall and CPU time of that loop (CPU time is not inflated on a shared machine).
    row_cycles : ndarray or None
        Not measured per row by the harness (None); see ``sparsefab.sim.bench_spmv``.
    """

    y: np.ndarray
    out: np.ndarray
    cycles: int
    ideal_cycles: int
    nnz: int
    lanes: int
    rows: int
    cols: int
    n: int
    dense: bool
    counters: dict[str, int]
    sim_cycles_per_s: float
    wall_s: float
    build_seconds: float = 0.0
    cpu_s: float = 0.0
    streams: dict[str, Any] = field(default_factory=dict)

    @property
    def utilization(self) -> float:
        return self.n * self.nnz / (self.lanes * self.cycles) if self.cycles else 0.0


@dataclass(frozen=True)
class Requant:
    """Per-row requantization parameters (CONTRACTS A); scalars broadcast over rows."""

    multiplier: Any = 1
    shift: Any = 0
    bias: Any = 0
    out_zero_point: int = 0
    relu: bool = False


# ----------------------------------------------------------------------------- validation

def _codes(a: Any, name: str, ndims: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype == object or arr.dtype.kind not in "iub":
        raise SparsefabError(f"{name}: expected integer codes, got dtype {arr.dtype}")
    if arr.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise SparsefabError(f"{name}: expected a {want} array, got shape {arr.shape}")
    if 0 in arr.shape:
        raise SparsefabError(f"{name}: empty array of shape {arr.shape}")
    return arr.astype(np.int64)


def _check_range(a: np.ndarray, lo: int, hi: int, name: str, what: str) -> None:
    bad = (a < lo) | (a > hi)
    if bad.any():
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        raise SparsefabError(f"{name}: code {int(a[pos])} at {pos} is outside {what} [{lo}, {hi}]")


def spmv_config(*, lanes: int, bits: int, block: int, cols: int, dense: bool = False, bus_bits: int = 64,
                acc_bits: int = 32, max_cols: int | None = None, mask_words: int | None = None,
                window_beats: int = 3, mul_steps: int = 1, decoder: str = "window"):
    """The :class:`~sparsefab.gen.spmv_config.SpmvConfig` used for a matrix of ``cols`` columns.

    ``max_cols`` defaults to the next power of two >= max(cols, 1024), so one compiled
    binary serves every matrix up to that width.  ``mask_words``, ``window_beats``, ``mul_steps``
    and ``decoder`` select e.g. the iCEBreaker form (``designs.build_spmv.board_defaults``).
    """
    from sparsefab.gen.spmv_config import SpmvConfig

    if max_cols is None:
        max_cols = min(65535, 1 << max(10, (int(cols) - 1).bit_length()))
    return SpmvConfig(lanes=lanes, weight_bits=bits, block=block, bus_bits=bus_bits, acc_bits=acc_bits,
                      max_cols=max_cols, dense=dense, mask_words=mask_words, window_beats=window_beats,
                      mul_steps=mul_steps, decoder="window" if dense else decoder)


def _top_class(config):
    if config.dense:
        from sparsefab.gen.dense_mac import DenseMacArray as Top
    else:
        from sparsefab.gen.sparse_mac import SparseMacArray as Top
    return Top


@functools.lru_cache(maxsize=4)
def _generator_hash(module: str) -> str:
    """Hash of the Amaranth version and the source of ``module`` and every ``sparsefab.gen``
    module it imports, transitively (found by parsing the import statements): the Verilog
    of a config can only change when one of these does."""
    import ast
    import hashlib
    import importlib.util
    from pathlib import Path

    import amaranth

    h = hashlib.sha256(amaranth.__version__.encode())
    todo, seen = [module], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        src = Path(spec.origin).read_bytes()
        h.update(name.encode() + b"\0" + src)
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.ImportFrom) and node.module:
                base = node.module if not node.level else f"sparsefab.gen.{node.module}"
                todo.append(base)
            elif isinstance(node, ast.Import):
                todo.extend(a.name for a in node.names)
        todo = [t for t in todo if t.startswith("sparsefab.gen")]
    return h.hexdigest()


def verilog_for(config, build_root: str | None = None) -> str:
    """Verilog of the array for ``config``, converted once and cached on disk.

    Converting the lanes-16 array takes about a minute on a loaded 2-core machine, so the
    text is kept in ``<build_root>/verilog/<hash>.v``, keyed by the config and a hash of the
    generator sources it is built from (:func:`_generator_hash`); editing them converts again.
    """
    import hashlib
    import json
    from pathlib import Path

    from sparsefab.compress.fileio import atomic_write_bytes
    from sparsefab.sim.runner import default_build_root, verilog_text

    root = Path(build_root).absolute() if build_root is not None else default_build_root()
    key = hashlib.sha256(json.dumps({"config": config.to_dict(), "gen": _generator_hash(_top_class(config).__module__)},
                                    sort_keys=True, default=str).encode()).hexdigest()[:24]
    path = root / "verilog" / f"{config.name}-{key}.v"
    if path.is_file():
        return path.read_text()
    text = verilog_text(_top_class(config)(config), toplevel=config.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode())
    return text


@functools.lru_cache(maxsize=16)
def harness_for(config, build_root: str | None = None):
    """The (cached) :class:`~sparsefab.sim.flow.FlowHarness` and payload codecs of a config."""
    from sparsefab.sim.flow import FlowHarness, _ports_from
    from sparsefab.sim.streams import PayloadCodec

    top = _top_class(config)(config)
    top._MustUse__silence = True  # only its signature is used here (ports, payload layouts)
    codecs = {}
    for name, member in top.signature.members.items():
        if member.is_signature and "payload" in member.signature.members:
            codecs[name] = PayloadCodec.from_layout(member.signature.members["payload"].shape)
    h = FlowHarness(verilog_for(config, build_root), toplevel=config.name, ports=_ports_from(top, None),
                    build_root=build_root)
    return h, codecs


# ----------------------------------------------------------------------------- bit matrices

def _bits_of_bytes(raw: bytes, width: int, count: int) -> np.ndarray:
    """``[count, width]`` bit matrix (uint8 0/1) of consecutive ``width``-bit items of ``raw``."""
    need = count * width
    bits = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")[:need]
    if bits.size < need:
        bits = np.concatenate([bits, np.zeros(need - bits.size, np.uint8)])
    return bits.reshape(count, width)


def _bits_of_ints(v: np.ndarray, width: int) -> np.ndarray:
    """``[n, width]`` bit matrix of int64 values (two's complement, low ``width`` bits)."""
    u = np.asarray(v, dtype=np.int64).reshape(-1).view(np.uint64)
    shifts = np.arange(width, dtype=np.uint64)
    if width > 64:
        raise ValueError("field wider than 64 bits must come from bytes")
    return ((u[:, None] >> shifts[None, :]) & np.uint64(1)).astype(np.uint8)


def _payload_words(codec, fields: dict[str, np.ndarray]) -> np.ndarray:
    """Assemble ``[n, ceil(width/32)]`` payload words from per-field bit matrices
    (fields not given are zero), at the codec's (the layout's) offsets."""
    n = next(iter(fields.values())).shape[0]
    nw = max(1, -(-codec.width // 32))
    mat = np.zeros((n, nw * 32), np.uint8)
    for name, bits in fields.items():
        f = codec.field(name)
        if bits.shape != (n, f.width):
            raise ValueError(f"field {name}: bit matrix {bits.shape}, expected {(n, f.width)}")
        mat[:, f.offset:f.offset + f.width] = bits
    return np.packbits(mat, axis=1, bitorder="little").view("<u4").reshape(n, nw).astype(np.uint32)


def _field_bits(codec, name: str, values: np.ndarray) -> np.ndarray:
    return _bits_of_ints(values, codec.field(name).width)


# ----------------------------------------------------------------------------- run

def _requant_arrays(requant: Requant | dict | None, rows: int) -> dict[str, np.ndarray]:
    if requant is None:
        requant = Requant()
    elif isinstance(requant, dict):
        unknown = set(requant) - {"multiplier", "shift", "bias", "out_zero_point", "relu"}
        if unknown:
            raise SparsefabError(f"requant: unknown parameter {sorted(unknown)[0]!r}")
        requant = Requant(**requant)
    out = {}
    for name, lo, hi in (("multiplier", 0, 2**16 - 1), ("shift", 0, 47), ("bias", -(2**31), 2**31 - 1)):
        v = np.asarray(getattr(requant, name))
        if v.dtype.kind not in "iub":
            raise SparsefabError(f"requant {name}: expected integers, got dtype {v.dtype}")
        v = np.broadcast_to(v.astype(np.int64), (rows,)) if v.ndim == 0 else v.astype(np.int64)
        if v.shape != (rows,):
            raise SparsefabError(f"requant {name}: expected a scalar or {rows} values (one per row), got shape {v.shape}")
        _check_range(v, lo, hi, f"requant {name}", "the RTL range")
        out[name] = v
    zp = int(requant.out_zero_point)
    if not -128 <= zp <= 127:
        raise SparsefabError(f"requant out_zero_point={zp}: expected an int8 value")
    out["zero_point"] = np.full(rows, zp, np.int64)
    out["relu"] = np.full(rows, int(bool(requant.relu)), np.int64)
    return out


def run_spmv(W_codes, X_codes, *, lanes: int = 8, bits: int = 8, block: int = 16, bus_bits: int = 64,
             acc_bits: int = 32, requant: Requant | dict | None = None, dense: bool = False,
             stalls: bool | float = False, seed: int = 1, max_cols: int | None = None,
             simulator: str = "verilator", engine: str | None = None,
             build_root: str | None = None, mask_words: int | None = None, window_beats: int = 3,
             mul_steps: int = 1, decoder: str = "window") -> SpmvResult:
    """Run ``y = W @ x`` for every row ``x`` of ``X_codes`` on the RTL and return what it produced.

    Parameters
    ----------
    W_codes : int array, shape (rows, cols)
        Weight codes in the signed ``bits``-bit range (0 = pruned).
    X_codes : int array, shape (cols,) or (n, cols)
        int8 activation codes; one matrix command per vector (weights reused).
    lanes, bits, block, bus_bits, acc_bits : int
        Array parameters (:class:`~sparsefab.gen.spmv_config.SpmvConfig`).
    requant : Requant or dict, optional
        Per-row ``multiplier``, ``shift``, ``bias`` (scalars or arrays of ``rows``),
        ``out_zero_point``, ``relu``.  Default: multiplier 1, shift 0 (``out`` = saturated acc).
    dense : bool
        Run the dense baseline (same lanes) instead.
    stalls : bool or float
        Random idle cycles on every input and backpressure on the output, with this
        probability (True = 0.2); seeded by ``seed``.
    max_cols : int, optional
        Activation buffer size of the generated array (default: see :func:`spmv_config`).
    mask_words, window_beats, mul_steps : int, optional
        Decoder mask beat / window and requantization steps (:class:`SpmvConfig`; default the
        array's defaults).
    decoder : {"window", "compact"}
        The array's front end (:class:`SpmvConfig`; ``compact`` is the iCE40 form).
    simulator : {"verilator", "icarus"}
        ``icarus`` runs through the cocotb runner (needs ``iverilog``).
    engine : {"flow", "cocotb"}, optional
        ``flow`` (the compiled C++ harness; Verilator only, the default for it) or
        ``cocotb`` (stream driver/monitor of :mod:`sparsefab.sim.streams` under the cocotb
        runner; the default for Icarus).  Both give the same results and cycle counts.

    Returns
    -------
    SpmvResult

    Raises
    ------
    SparsefabError
        Bad shapes, dtypes or code ranges (one line).
    SimulationFailed
        The array raised its error flag, timed out, or delivered the wrong number of results.
    """
    from sparsefab.compress.bitmap import bitmap_sections
    from sparsefab.compress.bitstream import pack_signed
    from sparsefab.sim.flow import words_from_bytes
    from sparsefab.sim.runner import SimulationFailed

    if simulator not in ("verilator", "icarus"):
        raise SparsefabError(f"simulator={simulator!r}: expected 'verilator' or 'icarus'")
    engine = engine or ("flow" if simulator == "verilator" else "cocotb")
    if engine not in ("flow", "cocotb") or (engine == "flow" and simulator != "verilator"):
        raise SparsefabError(f"engine={engine!r} with simulator={simulator!r}: the flow harness needs "
                             "verilator; use engine='cocotb' for icarus")
    if engine == "cocotb":
        from sparsefab.sim.runner import available_simulators

        if simulator not in available_simulators():
            raise SparsefabError(f"simulator {simulator!r} is not available on this machine "
                                 f"({'iverilog/vvp' if simulator == 'icarus' else simulator} not found on PATH)")
    W = _codes(W_codes, "W_codes", (2,))
    X = _codes(X_codes, "X_codes", (1, 2))
    if not isinstance(lanes, int) or not 1 <= lanes <= MAX_LANES:
        raise SparsefabError(f"lanes={lanes!r}: expected an integer in [1, {MAX_LANES}]")
    if bits not in (2, 4, 8):
        raise SparsefabError(f"bits={bits!r}: expected 2, 4 or 8")
    rows, cols = W.shape
    if X.shape[-1] != cols:
        raise SparsefabError(f"X_codes: last axis {X.shape[-1]} does not match W_codes cols {cols}")
    _check_range(W, -(1 << (bits - 1)), (1 << (bits - 1)) - 1, "W_codes", f"the {bits}-bit code range")
    _check_range(X, -128, 127, "X_codes", "int8")
    squeeze = X.ndim == 1
    Xs = X.reshape(1, cols) if squeeze else X
    n = Xs.shape[0]
    rq = _requant_arrays(requant, rows)
    p_stall = 0.2 if stalls is True else float(stalls or 0.0)

    cfg = spmv_config(lanes=lanes, bits=bits, block=block, cols=cols, dense=dense, bus_bits=bus_bits,
                      acc_bits=acc_bits, max_cols=max_cols, mask_words=mask_words, window_beats=window_beats,
                      mul_steps=mul_steps, decoder=decoder)
    if cols > cfg.max_cols:
        raise SparsefabError(f"W_codes: cols={cols} exceeds the array's max_cols={cfg.max_cols}")
    if rows >= 1 << 16:
        raise SparsefabError(f"W_codes: rows={rows} exceeds the array's limit {2**16 - 1}")
    h, codecs = harness_for(cfg, build_root)

    # --- one matrix command, activation words, weight beats and rq entries per vector
    cmd = _payload_words(codecs["i_cmd"], {"rows": _field_bits(codecs["i_cmd"], "rows", np.array([rows])),
                                          "cols": _field_bits(codecs["i_cmd"], "cols", np.array([cols]))})
    act_codec = codecs["i_act"]
    apw = cfg.acts_per_word
    act_per_vec = -(-cols // apw)
    xpad = np.zeros((n, act_per_vec * apw), np.int8)
    xpad[:, :cols] = Xs
    act_words = words_from_bytes(xpad.tobytes(), act_codec.width)  # [n*act_per_vec, nw]

    v_codec = codecs["i_value"]
    data_w = v_codec.field("data").width
    if dense:
        per = -(-cols // lanes)
        padded = np.zeros((rows, per * lanes), np.int64)
        padded[:, :cols] = W
        nbeats = rows * per
        vbits = _bits_of_bytes(pack_signed(padded.reshape(-1), bits), data_w, nbeats)
        nnz = rows * cols
        ideal_per_vec = rows * per
    else:
        img = bitmap_sections(W, bits=bits, block=block, bus_bits=bus_bits)
        nnz = img.nnz
        nbeats = max(1, -(-(nnz * bits) // data_w))
        vbits = _bits_of_bytes(img.values_bytes, data_w, nbeats)
        mask_codec = codecs["i_mask"]
        mask_w = mask_codec.width
        nmask = -(-(rows * img.stride_bits) // mask_w)
        mask_words = _payload_words(mask_codec, {"": _bits_of_bytes(img.index_bytes, mask_w, nmask)}) \
            if mask_codec.scalar else None
        if mask_words is None:
            raise SparsefabError("i_mask payload is a struct; this flow expects a plain word")
        ideal_per_vec = -(-nnz // lanes)
    last = np.zeros(nbeats, np.int64)
    last[-1] = 1
    value_words = _payload_words(v_codec, {"data": vbits, "last": _field_bits(v_codec, "last", last)})

    rq_codec = codecs["i_rq"]
    rq_words = _payload_words(rq_codec, {k: _field_bits(rq_codec, k, v) for k, v in rq.items()})

    inputs = {"i_cmd": np.tile(cmd, (n, 1)), "i_act": act_words, "i_value": np.tile(value_words, (n, 1)),
              "i_rq": np.tile(rq_words, (n, 1))}
    if not dense:
        inputs["i_mask"] = np.tile(mask_words, (n, 1))
    ideal = n * ideal_per_vec
    max_cycles = 4 * (ideal + n * (rows * 4 + act_per_vec + 64)) + 10_000
    stall_in = {name: p_stall for name in inputs}
    if engine == "flow":
        res = h.run(inputs, expect={"o_res": n * rows}, max_cycles=max_cycles, drain=8,
                    stall_in=stall_in, stall_out=p_stall, seed=seed)
    else:
        res = _run_cocotb_engine(cfg, inputs, expect=n * rows, max_cycles=max_cycles, stall=p_stall,
                                 seed=seed, simulator=simulator, counters=list(h.counters),
                                 build_root=build_root)
    err = res.counters.get("o_error", 0)
    if err:
        raise SimulationFailed(f"{cfg.name}: the array raised o_error (flags "
                               f"{res.counters.get('o_error_flags', 0):#x}) on a well-formed input")
    if res.timed_out:
        raise SimulationFailed(f"{cfg.name}: no completion within {max_cycles} cycles "
                               f"({res.streams['o_res']['fired']} of {n * rows} results)")
    got = res.outputs["o_res"]
    if got.shape[0] != n * rows:
        raise SimulationFailed(f"{cfg.name}: {got.shape[0]} results, expected {n * rows}")
    oc = codecs["o_res"]
    acc = res.field("o_res", oc.field("acc").offset, oc.field("acc").width, signed=True)
    out = res.field("o_res", oc.field("out").offset, oc.field("out").width, signed=True).astype(np.int32)
    lastf = res.field("o_res", oc.field("last").offset, 1)
    expect_last = np.zeros(n * rows, np.int64)
    expect_last[rows - 1::rows] = 1
    if not np.array_equal(lastf, expect_last):
        bad = int(np.flatnonzero(lastf != expect_last)[0])
        raise SimulationFailed(f"{cfg.name}: o_res.last wrong at result {bad} (row {bad % rows} of vector {bad // rows})")
    shape = (rows,) if squeeze else (n, rows)
    return SpmvResult(y=acc.reshape(shape), out=out.reshape(shape), cycles=res.cycles, ideal_cycles=ideal,
                      nnz=nnz, lanes=lanes, rows=rows, cols=cols, n=n, dense=dense, counters=res.counters,
                      sim_cycles_per_s=res.cycles_per_s, wall_s=res.wall_s, cpu_s=res.cpu_s,
                      build_seconds=h.build_seconds,
                      streams=res.streams)


def run_mlp(layers, X_codes, *, lanes: int = 8, bits: int = 8, block: int = 16, dense: bool = False,
            stalls: bool | float = False, seed: int = 1, build_root: str | None = None) -> list[SpmvResult]:
    """Run an integer MLP layer after layer on the array, every sample of ``X_codes``.

    Parameters
    ----------
    layers : sequence
        Per layer: a mapping or object with ``W_codes`` [rows, cols] and the requantization
        ``multiplier``, ``shift``, ``bias`` (per row or scalar), ``out_zero_point``, ``relu``;
        or a :class:`sparsefab.compress.mlp.QuantizedLayer` (parameters from its ``qlayer``).
        The last layer's ``y`` (accumulators) is what a classifier reads (``y + bias`` are the
        logits); its ``out`` is requantized with whatever parameters it has.
    X_codes : int array, shape (n, cols0)
        int8 input codes.

    Returns
    -------
    list of SpmvResult, one per layer; layer ``k+1`` consumed layer ``k``'s ``out``.
    """
    def get(layer, name, default=None):
        if isinstance(layer, dict):
            return layer.get(name, default)
        q = getattr(layer, "qlayer", None)
        if q is not None and name in ("multiplier", "shift", "bias", "out_zero_point"):
            return getattr(q, name)
        return getattr(layer, name, default)

    if not len(layers):
        raise SparsefabError("run_mlp: no layers")
    x = np.asarray(X_codes)
    results = []
    for k, layer in enumerate(layers):
        W = get(layer, "W_codes")
        if W is None:
            raise SparsefabError(f"run_mlp: layer {k} has no W_codes")
        rq = Requant(multiplier=get(layer, "multiplier", 1), shift=get(layer, "shift", 0),
                     bias=get(layer, "bias", 0), out_zero_point=int(get(layer, "out_zero_point", 0)),
                     relu=bool(get(layer, "relu", False)))
        max_cols = max(int(np.asarray(get(lay, "W_codes")).shape[1]) for lay in layers)
        r = run_spmv(W, x, lanes=lanes, bits=bits, block=block, requant=rq, dense=dense, stalls=stalls,
                     seed=seed + k, max_cols=min(65535, 1 << max(10, (max_cols - 1).bit_length())),
                     build_root=build_root)
        results.append(r)
        x = r.out
    return results


# ----------------------------------------------------------------------------- cocotb engine

def _run_cocotb_engine(cfg, inputs: dict[str, np.ndarray], *, expect: int, max_cycles: int, stall: float,
                       seed: int, simulator: str, counters: list[str], build_root: str | None):
    """Run the same streams through the cocotb runner; returns a FlowResult-like object."""
    import json
    import tempfile
    from pathlib import Path

    from sparsefab.sim.flow import FlowResult
    from sparsefab.sim.runner import available_simulators, run_cocotb

    if simulator not in available_simulators():
        raise SparsefabError(f"simulator {simulator!r} is not available on this machine "
                             f"({'iverilog/vvp' if simulator == 'icarus' else simulator} not found on PATH)")

    with tempfile.TemporaryDirectory(prefix="sfspmv-") as tmp:
        work = Path(tmp)
        np.savez(work / "streams.npz", **inputs)
        (work / "meta.json").write_text(json.dumps({"expect": expect, "max_cycles": max_cycles, "stall": stall,
                                                    "counters": counters}))
        run_cocotb(verilog_for(cfg, build_root), toplevel=cfg.name, test_module="sparsefab.sim.spmv_flow",
                   testcase="cocotb_spmv_streams", simulator=simulator, parameters=cfg.to_dict(),
                   extra_env={"SPARSEFAB_SPMV_DIR": str(work), "SPARSEFAB_SEED": str(seed)},
                   build_root=build_root)
        meta = json.loads((work / "result.json").read_text())
        words = np.load(work / "o_res.npy")
    return FlowResult(done=meta["done"], cycles=meta["cycles"], total_cycles=meta["cycles"],
                      wall_s=meta["wall_s"], streams=meta["streams"],
                      counters={k: int(v) for k, v in meta["counters"].items()}, outputs={"o_res": words})


try:  # the cocotb test the engine above runs (module imported inside the simulator)
    import cocotb as _cocotb
except ImportError:  # pragma: no cover - cocotb is a core dependency
    _cocotb = None

if _cocotb is not None:
    @_cocotb.test()
    async def cocotb_spmv_streams(dut):
        """Drive the stream files of SPARSEFAB_SPMV_DIR into the array, collect o_res."""
        import json
        import os
        import time
        from pathlib import Path

        from sparsefab.sim.flow import ints_from_words, words_from_ints
        from sparsefab.sim.streams import StreamDriver, StreamMonitor, get_seed, start_clock_and_reset

        work = Path(os.environ["SPARSEFAB_SPMV_DIR"])
        meta = json.loads((work / "meta.json").read_text())
        data = np.load(work / "streams.npz")
        seed = get_seed()
        await start_clock_and_reset(dut)
        t0 = time.perf_counter()
        drivers = {}
        for name in data.files:
            drv = StreamDriver(dut, name, idle=meta["stall"], seed=seed)
            drv.send(ints_from_words(data[name]))
            drivers[name] = drv
        mon = StreamMonitor(dut, "o_res", backpressure=meta["stall"], seed=seed)
        await mon.wait_for(meta["expect"], timeout_cycles=meta["max_cycles"])
        wall = time.perf_counter() - t0
        o_res_width = len(dut.o_res__payload)
        np.save(work / "o_res.npy", words_from_ints(mon.items, o_res_width))
        streams = {name: {"fired": d.sent} for name, d in drivers.items()}
        streams["o_res"] = {"fired": len(mon.items), "first": mon.cycles_at[0] if mon.cycles_at else -1,
                            "last": mon.cycles_at[-1] if mon.cycles_at else -1}
        counters = {c: int(getattr(dut, c).value) for c in meta["counters"]}
        (work / "result.json").write_text(json.dumps({
            "done": True, "cycles": (mon.cycles_at[-1] + 1) if mon.cycles_at else 0, "wall_s": wall,
            "streams": streams, "counters": counters}))
