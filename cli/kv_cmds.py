"""``sparsefab kv train | compress | decompress | info``: the KV-cache codec from the shell.

Formats: docs/FORMATS_KV.md.  Inputs are .npy arrays of float16 (FP16), uint16 (BF16 bit
patterns) or float32/64 (rounded to FP16, or to BF16 with ``--dtype bf16``), shaped
``[tokens, channels]`` or ``[layers, tokens, heads, dim]`` (1 to 4 dimensions).
NaN/Inf are refused with the index of the first one.
"""

from __future__ import annotations

import json
import sys

from sparsefab.compress.errors import SparsefabError


def _geometry(p) -> None:
    p.add_argument("--block-bytes", type=int, default=63, metavar="B",
                   help="fixed compressed block size in bytes (default 63: 4.06x for 128 FP16 values)")
    p.add_argument("--group", type=int, default=128, metavar="G", help="values per block (default 128)")
    p.add_argument("--lanes", type=int, default=2, choices=(1, 2, 4, 8), help="code lanes per block (default 2)")
    p.add_argument("--axis", default="token", choices=("token", "channel"),
                   help="token: a group is G channels of one token (default); channel: G tokens of one channel")
    p.add_argument("--offset-bits", type=int, default=0, metavar="N",
                   help="signed per-block offset field width, 0..12 (default 0)")


def _params(args):
    from sparsefab.compress.kv import KVParams
    return KVParams(group=args.group, block_bytes=args.block_bytes, lanes=args.lanes, axis=args.axis,
                    obits=args.offset_bits)


def _load(path, what):
    from sparsefab.compress.fileio import load_npy
    return load_npy(path, what=what)


def _train_args(p) -> None:
    p.add_argument("--codebooks-k", type=int, default=3, metavar="K",
                   help="trained Huffman codebooks (default 3; + 1 fixed-rate fallback)")
    p.add_argument("--alphabet", type=int, default=24, metavar="S", help="symbols per codebook (default 24)")
    p.add_argument("--max-len", type=int, default=8, metavar="L", help="longest code in bits (default 8)")
    p.add_argument("--kmeans", action="store_true", help="non-uniform (k-means) centroid tables")
    p.add_argument("--iters", type=int, default=4, help="training iterations (default 4)")


def _train_cb(calib, args, params):
    from sparsefab.compress import kv
    return kv.train(calib, params=params, n_huffman=args.codebooks_k, alphabet=args.alphabet,
                    max_len=args.max_len, iters=args.iters,
                    centroids="kmeans" if args.kmeans else "uniform")


def _train(args) -> int:
    from sparsefab.compress.fileio import atomic_write_bytes
    params = _params(args)
    cb = _train_cb(_load(args.calib, "calibration tensor"), args, params)
    atomic_write_bytes(args.output, cb.to_bytes())
    print(f"wrote {args.output}: {cb.k} codebooks ({cb.k - 1} Huffman + fallback), S={cb.s}, "
          f"max_len={cb.max_len}, {len(cb.to_bytes())} bytes", file=sys.stderr)
    return 0


def _compress(args) -> int:
    from sparsefab.compress import kv
    from sparsefab.compress.fileio import atomic_write_bytes, read_bytes
    params = _params(args)
    x = _load(args.input, "KV tensor")
    if args.codebooks:
        cb = kv.Codebooks.from_bytes(read_bytes(args.codebooks, "codebook"), str(args.codebooks))
    else:
        cb = _train_cb(x, args, params)   # self-calibrated; the codebooks are embedded either way
    if args.rtl and (args.policy == "search" or (args.policy == "auto" and params.obits)):
        raise SparsefabError("--rtl runs the hardware policy: use --policy hw (or auto) and no --offset-bits")
    if args.rtl and args.dtype == "bf16":
        raise SparsefabError("--rtl: the RTL compressor takes FP16, not --dtype bf16")
    data, st = kv.compress(x, codebooks=cb, params=params, dtype=args.dtype, policy=args.policy)
    if args.rtl:
        from sparsefab.sim.kv_flow import rtl_compress
        st["rtl"] = rtl_compress(x, data)   # raises before anything is written if a block differs
    atomic_write_bytes(args.output, data)
    st = {"input": str(args.input), "output": str(args.output), "input_bytes": 2 * int(x.size), **st}
    if args.json:
        print(json.dumps(st))
    else:
        print(f"{args.input} -> {args.output}: {st['input_bytes']} -> {st['file_bytes']} bytes, "
              f"ratio {st['ratio']:.4f}, SQNR {st['sqnr_db']:.3f} dB, max |err| {st['max_abs_err']:.6g}, "
              f"{st['blocks']} blocks ({st['fallback_blocks']} fallback, {st['escape_blocks']} with escapes, "
              f"{st['clipped_values']} clipped values), per codebook {st['per_codebook']}, "
              f"policy {st['policy']}")
        if args.rtl:
            r = st["rtl"]
            print(f"RTL compressor: {r['blocks']} blocks identical to the file, {r['cycles']} cycles "
                  f"({r['values_per_cycle']:.3f} values/cycle)")
    return 0


def _decompress(args) -> int:
    import numpy as np

    from sparsefab.compress import kv
    from sparsefab.compress.fileio import read_bytes, save_npy
    data = read_bytes(args.input, "compressed KV")
    out, info = kv.decompress(data, str(args.input))
    if args.rtl:
        from sparsefab.sim.kv_flow import rtl_decompress
        rtl, counters = rtl_decompress(data)
        if rtl.dtype != out.dtype or not (rtl.view(np.uint16) == out.view(np.uint16)).all():
            raise SparsefabError(f"{args.input}: RTL decompressor output differs from the golden model")
        info["rtl"] = counters
    save_npy(args.output, out)
    msg = {"input": str(args.input), "output": str(args.output), **{k: v for k, v in info.items()}}
    if args.json:
        print(json.dumps(msg, default=list))
    else:
        extra = ""
        if args.rtl:
            c = info["rtl"]
            extra = (f"; RTL identical: {c['values']} values in {c['cycles']} cycles "
                     f"({c['values_per_cycle']:.3f} values/cycle), {c['errors']} malformed blocks")
        print(f"{args.input} -> {args.output}: {info['dtype']} {tuple(info['shape'])}, "
              f"{info['blocks']} blocks{extra}")
    return 0


def _info(args) -> int:
    import dataclasses

    import numpy as np

    from sparsefab.compress import kv
    from sparsefab.compress.fileio import read_bytes
    data = read_bytes(args.input, "compressed KV")
    hdr, cb = kv.read_header(data, str(args.input))
    d = {"dtype": hdr.dtype, "shape": list(hdr.shape), "blocks": hdr.nblocks, "ebias": hdr.ebias,
         "file_bytes": len(data), "ratio": 2 * int(np.prod(hdr.shape)) / len(data),
         "params": dataclasses.asdict(hdr.params), "codebooks": cb.k, "alphabet": cb.s,
         "header_bits": hdr.params.header_bits(cb.k)}
    print(json.dumps(d) if args.json else "\n".join(f"{k}: {v}" for k, v in d.items()))
    return 0


def register(commands) -> None:
    """Add ``kv train|compress|decompress|info`` (a :class:`sparsefab.cli.Commands`)."""
    p = commands.add("train", group="kv", help="train K Huffman codebooks + centroid tables on calibration data")
    p.add_argument("calib", metavar="CALIB.npy")
    p.add_argument("-o", "--output", required=True, metavar="CB", help="codebook file to write (.sfkc)")
    _geometry(p)
    _train_args(p)
    p.set_defaults(func=_train)

    p = commands.add("compress", group="kv", help="compress an FP16/BF16 tensor into fixed-size entropy-coded blocks")
    p.add_argument("input", metavar="IN.npy")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="compressed file to write (.sfk)")
    p.add_argument("--codebooks", metavar="CB", help="trained codebooks (default: train on IN itself)")
    p.add_argument("--dtype", choices=("fp16", "bf16"), help="round float32/64 input to this (default fp16)")
    p.add_argument("--policy", choices=("auto", "hw", "search"), default="auto",
                   help="encoder: hw = one-pass policy of the RTL compressor (byte-identical blocks), "
                        "search = multi-pass step search + rate-distortion fill; auto (default) = hw "
                        "unless --offset-bits > 0")
    p.add_argument("--json", action="store_true", help="print one JSON object with the statistics")
    p.add_argument("--rtl", action="store_true",
                   help="also run the groups through the RTL compressor in simulation (FP16, hw policy, "
                        "1-2 lanes); its blocks must equal the file's byte for byte")
    _geometry(p)
    _train_args(p)
    p.set_defaults(func=_compress)

    p = commands.add("decompress", group="kv", help="decompress a .sfk file to .npy (FP16, or BF16 as uint16)")
    p.add_argument("input", metavar="IN")
    p.add_argument("-o", "--output", required=True, metavar="OUT.npy")
    p.add_argument("--rtl", action="store_true",
                   help="also run the blocks through the RTL decompressor in simulation; must match bit for bit")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_decompress)

    p = commands.add("info", group="kv", help="print the header of a .sfk file")
    p.add_argument("input", metavar="IN")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_info)
