"""``sparsefab compress | decompress | info | compare``: the weight formats from the shell.

The command lines are a contract (issue 2, section 3): scripts outside the project call
exactly these.  Byte layouts: docs/FORMATS.md.
"""

from __future__ import annotations

import json
import sys

from sparsefab.compress.errors import SparsefabError

FORMAT_CHOICES = ("bitmap", "csr", "rle", "nm", "dense", "coo")


def _nm_spec(txt: str) -> tuple[int, int]:
    parts = txt.split(":")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise SparsefabError(f"--nm {txt!r}: expected N:M with integers 1 <= N < M, e.g. 2:4")
    n, m = int(parts[0]), int(parts[1])
    if not 1 <= n < m:
        raise SparsefabError(f"--nm {txt!r}: expected 1 <= N < M")
    return n, m


def _load_codes(args):
    """Read IN.npy and turn it into ``(codes, quant, note)`` as the CLI contract says.

    Float input: optional pruning (``--prune``, ``--calib``), then symmetric quantization
    (``--quant``, default per-channel) to ``--bits``.  Integer input: the codes as they
    are (every value must fit ``--bits``), optionally pruned; no scale.
    """
    import numpy as np

    from sparsefab.compress import container
    from sparsefab.compress.fileio import check_finite, load_npy
    from sparsefab.compress.prune import parse_prune_spec, prune
    from sparsefab.compress.quant import parse_quant_spec, quantize

    w = load_npy(args.input, what="weight matrix")
    if w.ndim != 2:
        raise SparsefabError(f"{args.input}: expected a 2-D matrix (rows, cols), got shape {w.shape}")
    if w.dtype == np.bool_ or w.dtype.kind not in "iuf":
        raise SparsefabError(f"{args.input}: expected an integer or float array, got dtype {w.dtype}")
    container.check_shape(w.shape[0], w.shape[1], str(args.input))
    bits = args.bits
    if bits not in container.BITS:
        raise SparsefabError(f"--bits {bits}: expected 2, 4 or 8")
    spec = parse_prune_spec(args.prune) if args.prune else None
    calib = None
    if args.calib:
        if not spec or spec["method"] != "wanda":
            raise SparsefabError("--calib is only used by --prune wanda:S")
        calib = load_npy(args.calib, what="calibration activations")
        if calib.dtype.kind not in "iuf" or calib.dtype == np.bool_:
            raise SparsefabError(f"{args.calib}: expected a numeric array, got dtype {calib.dtype}")
        check_finite(calib, str(args.calib))
    elif spec and spec["method"] == "wanda":
        raise SparsefabError("--prune wanda:S needs --calib X.npy (activations, shape (n, cols))")
    note = []
    if w.dtype.kind in "iu":
        if args.quant:
            raise SparsefabError(f"{args.input}: integer input is taken as codes; --quant does not apply")
        if spec and spec["method"] == "qa":
            raise SparsefabError(f"{args.input}: integer input is taken as codes; --prune qa needs float weights")
        codes = container.as_codes(w, bits, str(args.input))
        if spec:
            pr = prune(codes, spec, calib, bits=bits)
            codes = np.ascontiguousarray(pr.weights, dtype=np.int8)
            note.append(f"pruned {args.prune}: sparsity {pr.sparsity:.4f}")
        return codes, None, note
    check_finite(w, str(args.input))
    qspec = parse_quant_spec(args.quant or "per-channel")
    if not qspec["symmetric"]:
        raise SparsefabError(f"--quant {args.quant}: weights are quantized symmetrically (code 0 = pruned); drop ',asym'")
    if spec:
        pr = prune(w, spec, calib, bits=bits, quant={k: qspec[k] for k in ("granularity", "group_size")})
        note.append(f"pruned {args.prune}: sparsity {pr.sparsity:.4f}")
        if pr.quant is not None:  # quantization-aware pruning returns codes already
            return np.ascontiguousarray(pr.weights, dtype=np.int8), pr.quant, note
        w = pr.weights
    codes, quant = quantize(w, bits=bits, granularity=qspec["granularity"], group_size=qspec["group_size"],
                            symmetric=True)
    note.append(f"quantized {args.quant or 'per-channel'} to {bits} bits")
    return codes, quant, note


def _format_params(args, fmt: str, prune_spec: str | None) -> dict:
    if fmt == "bitmap":
        return {"block": args.block, "bus_bits": args.bus}
    if fmt == "csr":
        return {"index_bits": args.index_bits, "ptr_bits": args.ptr_bits}
    if fmt == "coo":
        return {"index_bits": args.index_bits}
    if fmt == "rle":
        return {"run_bits": args.run_bits, "ptr_bits": args.ptr_bits}
    if fmt == "nm":
        if args.nm:
            n, m = _nm_spec(args.nm)
        elif prune_spec and prune_spec.startswith("nm:"):
            _, n, m = prune_spec.split(":")
            n, m = int(n), int(m)
        else:
            n, m = 2, 4
        return {"n": n, "m": m}
    return {}


def _add_format_options(p, *, with_format: bool) -> None:
    if with_format:
        p.add_argument("--format", required=True, choices=FORMAT_CHOICES, help="storage format")
    p.add_argument("--bits", type=int, default=8, help="code width: 2, 4 or 8 (default 8)")
    p.add_argument("--block", type=int, default=16, help="bitmap mask block B: 8, 16, 32 or 64 (default 16)")
    p.add_argument("--bus", type=int, default=64, help="bitmap bus width W: 32 or 64 (default 64)")
    p.add_argument("--quant", metavar="SPEC",
                   help="per-channel (default), per-tensor or group:G; float input only")
    p.add_argument("--prune", metavar="SPEC",
                   help="magnitude:S[:row], wanda:S, nm:N:M, rows:S, cols:S, blocks:S:RxC or qa:S[:B]")
    p.add_argument("--calib", metavar="X.npy", help="calibration activations (n, cols) for --prune wanda:S")
    p.add_argument("--nm", metavar="N:M", help="N:M pattern of the nm format (default: from --prune nm:N:M, else 2:4)")
    p.add_argument("--run-bits", type=int, default=4, help="rle run-length bits (default 4, as EIE)")
    p.add_argument("--index-bits", type=int, help="csr/coo column-index bits 8, 16 or 32 (default: smallest that fits)")
    p.add_argument("--ptr-bits", type=int, help="csr/rle row-pointer bits 8, 16 or 32 (default: smallest that fits)")


def _compress(args) -> int:
    from sparsefab.compress import formats
    from sparsefab.compress.fileio import atomic_write_bytes

    if args.nm and args.format != "nm":
        raise SparsefabError(f"--nm {args.nm} only applies to --format nm")
    codes, quant, note = _load_codes(args)
    params = _format_params(args, args.format, args.prune)
    try:
        data = formats.encode(codes, args.format, bits=args.bits, quant=quant, **params)
    except SparsefabError as exc:
        raise SparsefabError(f"{args.input}: {exc}") from None
    atomic_write_bytes(args.output, data)
    d = formats.info(data)
    if args.json:
        print(json.dumps({"output": str(args.output), **d, "notes": note}))
    else:
        for line in note:
            print(line, file=sys.stderr)
        print(f"wrote {args.output}: {d['format']} {d['shape'][0]}x{d['shape'][1]} bits={d['bits']} "
              f"nnz={d['nnz']} ({100 * d['sparsity']:.1f}% zero), {d['bytes_total']} bytes "
              f"(index {d['bytes_index']}, values {d['bytes_values']}, meta {d['bytes_meta']})")
    return 0


def _decompress(args) -> int:
    from sparsefab.compress import formats
    from sparsefab.compress.fileio import read_bytes, save_npy
    from sparsefab.compress.quant import dequantize

    data = read_bytes(args.input, "weight")
    try:
        codes, quant = formats.decode(data)
    except SparsefabError as exc:
        raise SparsefabError(f"{args.input}: {exc}") from None
    save_npy(args.output, codes if args.codes else dequantize(codes, quant))
    return 0


def _info(args) -> int:
    from sparsefab.compress import formats
    from sparsefab.compress.fileio import read_bytes

    data = read_bytes(args.input, "weight")
    try:
        d = formats.info(data)
    except SparsefabError as exc:
        raise SparsefabError(f"{args.input}: {exc}") from None
    if args.json:
        print(json.dumps(d))
        return 0
    params = " ".join(f"{k}={v}" for k, v in d["params"].items())
    print(f"{args.input}: sparsefab weight file v{d['version']}, format {d['format']} {params}".rstrip())
    print(f"  shape {d['shape'][0]}x{d['shape'][1]}, {d['bits']}-bit codes, nnz {d['nnz']} "
          f"({100 * d['sparsity']:.2f}% zero), quantization {d['quant']}")
    print(f"  bytes: total {d['bytes_total']} = header {d['bytes_header']} + meta {d['bytes_meta']} "
          f"(quant {d['bytes_quant']}) + index {d['bytes_index']} + values {d['bytes_values']} "
          f"+ padding {d['bytes_padding']}; index share {100 * d['index_share']:.1f}%")
    return 0


def _compare(args) -> int:
    import numpy as np

    from sparsefab.compress import formats

    codes, quant, note = _load_codes(args)
    nm = _nm_spec(args.nm) if args.nm else None
    if nm is None and args.prune and args.prune.startswith("nm:"):
        _, n, m = args.prune.split(":")
        nm = (int(n), int(m))
    table = formats.storage_table(codes, args.bits, block=args.block, bus_bits=args.bus, run_bits=args.run_bits,
                                  nm=nm, quant=quant)
    nnz = int(np.count_nonzero(codes))
    summary = {"input": str(args.input), "shape": list(codes.shape), "bits": args.bits, "nnz": nnz,
               "sparsity": 1 - nnz / codes.size, "prune": args.prune, "quant": quant.granularity if quant else "none",
               "formats": table}
    if args.json:
        print(json.dumps(summary))
        return 0
    for line in note:
        print(line, file=sys.stderr)
    print(f"{args.input}: {codes.shape[0]}x{codes.shape[1]}, {args.bits}-bit codes, nnz {nnz} "
          f"({100 * summary['sparsity']:.1f}% zero)")
    print(formats.format_table(table))
    return 0


def register(commands) -> None:
    """Add compress, decompress, info and compare (a :class:`sparsefab.cli.Commands`)."""
    p = commands.add("compress", help="prune, quantize and encode a weight matrix (.npy) into a weight file",
                     epilog="examples:\n"
                            "  sparsefab compress W.npy -o W.sfw --format bitmap --bits 4 --prune magnitude:0.75\n"
                            "  sparsefab compress codes_int8.npy -o W.sfw --format csr   # integer input = codes")
    p.add_argument("input", metavar="IN.npy", help="2-D float weights, or integer codes")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="weight file to write")
    _add_format_options(p, with_format=True)
    p.add_argument("--json", action="store_true", help="print the file's info as one JSON object")
    p.set_defaults(func=_compress)

    p = commands.add("decompress", help="decode a weight file to .npy (dequantized float32, or --codes)")
    p.add_argument("input", metavar="IN", help="weight file")
    p.add_argument("-o", "--output", required=True, metavar="OUT.npy", help=".npy file to write")
    p.add_argument("--codes", action="store_true", help="write the integer codes (int8) exactly as encoded")
    p.set_defaults(func=_decompress)

    p = commands.add("info", help="describe a weight file: format, shape, bits, nnz, bytes per section")
    p.add_argument("input", metavar="IN", help="weight file")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=_info)

    p = commands.add("compare", help="bytes and index share of every format for one matrix, side by side",
                     epilog="example:\n  sparsefab compare W.npy --bits 4 --prune magnitude:0.75")
    p.add_argument("input", metavar="IN.npy", help="2-D float weights, or integer codes")
    _add_format_options(p, with_format=False)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=_compare)
