"""Registry of the weight formats: one entry point to encode, decode, inspect and compare.

========  ==  ===========================================  ==========================
format    id  parameters (keyword, header field)            module
========  ==  ===========================================  ==========================
dense     0   --                                            :mod:`.dense`
bitmap    1   ``block`` (p0), ``bus_bits`` (p1)             :mod:`.bitmap`
csr       2   ``index_bits`` (p0), ``ptr_bits`` (p1)        :mod:`.csr`
rle       3   ``run_bits`` (p0), ``ptr_bits`` (p1)          :mod:`.rle`
nm        4   ``m`` (p0), ``n`` (p1)                        :mod:`.nm`
coo       5   ``index_bits`` (p0), ``row_bits`` (p1)        :mod:`.coo`
========  ==  ===========================================  ==========================

Byte layouts: docs/FORMATS.md.
"""

from __future__ import annotations

import importlib

import numpy as np

from . import container
from .errors import SparsefabError

#: format name -> (module, encode keyword parameters, header names of p0 and p1)
FORMATS: dict[str, tuple[str, tuple[str, ...], tuple[str, str]]] = {
    "dense": ("dense", (), ("", "")),
    "bitmap": ("bitmap", ("block", "bus_bits"), ("block", "bus_bits")),
    "csr": ("csr", ("index_bits", "ptr_bits"), ("index_bits", "ptr_bits")),
    "rle": ("rle", ("run_bits", "ptr_bits"), ("run_bits", "ptr_bits")),
    "nm": ("nm", ("n", "m"), ("m", "n")),
    "coo": ("coo", ("index_bits", "row_bits"), ("index_bits", "row_bits")),
}
#: The formats `compare` and the CLI offer (coo is decodable and comparable too).
NAMES = tuple(FORMATS)


def _module(name: str):
    if name not in FORMATS:
        raise SparsefabError(f"format {name!r}: expected one of {', '.join(FORMATS)}")
    return importlib.import_module(f"{__package__}.{FORMATS[name][0]}")


def encode(codes, format: str, *, bits: int = 8, quant=None, **params) -> bytes:
    """Encode a code matrix in ``format``.

    Parameters
    ----------
    codes : array_like of int, shape (rows, cols)
        Signed codes fitting ``bits``-bit two's complement (zero = pruned).
    format : str
        One of :data:`NAMES`.
    bits : int
        2, 4 or 8.
    quant : QuantParams or None
        Stored in the meta section; None = the "none" kind (integer codes, no scale).
    **params
        The format's parameters (see the module table); ``None`` values are dropped so
        the format's defaults apply.

    Returns
    -------
    bytes
        The container (docs/FORMATS.md).
    """
    mod = _module(format)
    allowed = FORMATS[format][1]
    for k in params:
        if k not in allowed:
            raise SparsefabError(f"format {format!r}: unknown parameter {k!r} "
                                 f"(takes {', '.join(allowed) or 'no parameters'})")
    return mod.encode(codes, bits=bits, quant=quant, **{k: v for k, v in params.items() if v is not None})


def params_of(h: container.Header) -> dict:
    """The encode keyword parameters a header records (``encode(..., **params_of(h))``)."""
    p0_name, p1_name = FORMATS[h.format_name][2]
    out = {}
    if p0_name:
        out[p0_name] = h.p0
    if p1_name:
        out[p1_name] = h.p1
    return out


def format_of(data) -> str:
    """The format name of a container (checks header and size, not the CRC)."""
    return container.parse_header(data).format_name


def decode(data) -> tuple[np.ndarray, object]:
    """Decode any container: ``(codes int8 (rows, cols), QuantParams)``; FormatError if invalid."""
    return _module(format_of(data)).decode(data)


def info(data) -> dict:
    """Describe a container after validating header, lengths, CRC and quant block.

    Returns a dict with ``format shape bits nnz bytes_total bytes_index bytes_values
    bytes_meta`` (meta = quant block + format metadata) plus ``bytes_header``,
    ``bytes_padding``, ``bytes_quant``, ``index_share`` (= bytes_index / bytes_total),
    ``sparsity``, the format parameters and the quantization granularity.
    """
    h = container.parse_header(data)
    mod = _module(h.format_name)
    h, quant, rest, _, _ = container.open_container(data, h.format_name, mod._check_header)
    total = len(data)
    params = params_of(h)
    if h.format_name == "bitmap":
        params["stride_bits"] = mod.stride_bits(h.cols, block=h.p0, bus_bits=h.p1)
    used = h.meta_len + h.index_len + h.values_len
    return {
        "format": h.format_name,
        "format_id": h.format,
        "version": container.VERSION,
        "shape": [h.rows, h.cols],
        "bits": h.bits,
        "nnz": h.nnz,
        "sparsity": 1.0 - h.nnz / (h.rows * h.cols),
        "params": params,
        "quant": quant.granularity,
        "bytes_total": total,
        "bytes_header": container.HEADER_SIZE,
        "bytes_meta": h.meta_len,
        "bytes_quant": h.meta_len - len(rest),
        "bytes_index": h.index_len,
        "bytes_values": h.values_len,
        "bytes_padding": total - container.HEADER_SIZE - used,
        "index_share": h.index_len / total,
    }


def storage_table(codes, bits: int, *, block: int = 16, bus_bits: int = 64, run_bits: int = 4,
                  nm: tuple[int, int] | None = None, quant=None, formats=NAMES) -> list[dict]:
    """Encode ``codes`` in every format and report each one's byte split.

    Parameters
    ----------
    codes : array_like of int, shape (rows, cols)
    bits : int
        Code width.
    block, bus_bits : int
        Bitmap parameters.
    run_bits : int
        RLE run width.
    nm : (n, m), optional
        N:M pattern; default ``m = 4`` with the smallest ``n`` the matrix satisfies.  If
        no ``n < m`` fits, the nm row reports ``applicable = False`` and the reason.
    quant : QuantParams or None
        Included in every file (so the meta column is comparable).
    formats : sequence of str

    Returns
    -------
    list of dict
        One per format: ``format label applicable bytes_total bytes_index bytes_values
        bytes_meta bytes_overhead index_share ratio_vs_dense`` (overhead = header + padding).
    """
    c = container.as_codes(codes, bits)
    rows_out = []
    dense_total = None
    from . import nm as nm_mod

    for name in formats:
        params: dict = {}
        label = name
        if name == "bitmap":
            params = {"block": block, "bus_bits": bus_bits}
            label = f"bitmap B={block} W={bus_bits}"
        elif name == "rle":
            params = {"run_bits": run_bits}
            label = f"rle r={run_bits}"
        elif name == "nm":
            if nm is None:
                m = 4
                n = max(1, nm_mod.max_group_nonzeros(c, m=m))
            else:
                n, m = nm
            label = f"nm {n}:{m}"
            if n >= m:
                rows_out.append({"format": name, "label": label, "applicable": False,
                                 "reason": f"a group of {m} holds {n} nonzeros: not N:M with N < M"})
                continue
            params = {"n": n, "m": m}
        try:
            data = encode(c, name, bits=bits, quant=quant, **params)
        except SparsefabError as exc:
            rows_out.append({"format": name, "label": label, "applicable": False, "reason": str(exc)})
            continue
        d = info(data)
        if name == "csr":
            label = f"csr ci={d['params']['index_bits']} rp={d['params']['ptr_bits']}"
        row = {"format": name, "label": label, "applicable": True, "params": d["params"],
               "bytes_total": d["bytes_total"], "bytes_index": d["bytes_index"],
               "bytes_values": d["bytes_values"], "bytes_meta": d["bytes_meta"],
               "bytes_overhead": d["bytes_header"] + d["bytes_padding"], "index_share": d["index_share"]}
        if name == "dense":
            dense_total = d["bytes_total"]
        rows_out.append(row)
    for row in rows_out:
        if row["applicable"] and dense_total:
            row["ratio_vs_dense"] = row["bytes_total"] / dense_total
    return rows_out


def format_table(table: list[dict]) -> str:
    """Render :func:`storage_table` rows as an aligned text table."""
    head = f"{'format':<22}{'total B':>11}{'index B':>11}{'values B':>11}{'meta B':>9}{'ovh B':>7}" \
           f"{'index %':>9}{'vs dense':>10}"
    lines = [head, "-" * len(head)]
    for r in table:
        if not r["applicable"]:
            lines.append(f"{r['label']:<22}  n/a: {r['reason']}")
            continue
        ratio = f"{r['ratio_vs_dense']:.3f}" if "ratio_vs_dense" in r else "-"
        lines.append(f"{r['label']:<22}{r['bytes_total']:>11}{r['bytes_index']:>11}{r['bytes_values']:>11}"
                     f"{r['bytes_meta']:>9}{r['bytes_overhead']:>7}{100 * r['index_share']:>8.1f}%{ratio:>10}")
    return "\n".join(lines)
