"""``sparsefab demo``: the project's main job (``make sim``).

The digits MLP end to end: prune (default 75 %, magnitude), fine-tune with the mask fixed,
quantize W8A8, encode every layer as a bitmap file (and check it decodes back), report its
golden integer-path accuracy and its storage in every format, then run every test sample
through the RTL sparse MAC array (both layers, requantization and ReLU in hardware) and check
the RTL agrees with the golden integer path sample by sample; print cycles and the speedup
over the dense baseline with the same lanes.  ``--table`` prints the accuracy table only.
"""

from __future__ import annotations

import json
import sys
import time

DEFAULT_PRUNE = "magnitude:0.75"


def register(commands) -> None:
    """Add this area's subcommands to commands (a :class:`sparsefab.cli.Commands`)."""
    p = commands.add(
        "demo", help="main job: digits MLP pruned, quantized, bitmap-encoded and run through the RTL",
        epilog="examples:\n  sparsefab demo                      # what `make sim` runs\n"
               "  sparsefab demo --no-rtl --json      # software half only, one JSON object\n"
               "  sparsefab demo --prune nm:2:4 --bits 4 --lanes 16\n"
               "  sparsefab demo --table              # dense/pruned x float/W8A8/W4A8 accuracy table")
    p.add_argument("--prune", default=DEFAULT_PRUNE, metavar="SPEC",
                   help=f"pruning spec for every layer (default {DEFAULT_PRUNE}; 'dense' for none)")
    p.add_argument("--bits", type=int, default=8, choices=(8, 4), help="weight bits (default 8)")
    p.add_argument("--lanes", type=int, default=8, help="multiplier lanes of the RTL array (default 8)")
    p.add_argument("--block", type=int, default=16, choices=(8, 16, 32, 64), help="bitmap block B (default 16)")
    p.add_argument("--bus", type=int, default=64, choices=(32, 64), help="bitmap bus width W (default 64)")
    p.add_argument("--samples", type=int, default=None, metavar="N",
                   help="run only the first N test samples (default: all 450)")
    p.add_argument("--finetune-epochs", type=int, default=None, metavar="E",
                   help="fine-tuning epochs after pruning, mask fixed (default 30; 0 = one-shot pruning)")
    p.add_argument("--simulator", default="verilator", choices=("verilator", "icarus"),
                   help="RTL simulator (default verilator)")
    p.add_argument("--no-rtl", action="store_true", help="software half only (no RTL simulation)")
    p.add_argument("--no-table", action="store_true", help="skip the accuracy table")
    p.add_argument("--table", action="store_true", help="print only the accuracy table")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run_demo)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False,
                disable=not enabled or not sys.stderr.isatty())


def _combined_storage(q, *, block: int, bus: int) -> list[dict]:
    """Storage of all layers in every format, summed over layers (formats.storage_table per layer)."""
    from sparsefab.compress import formats

    per_layer = [formats.storage_table(lay.W_codes, q.w_bits, block=block, bus_bits=bus, quant=lay.w_params)
                 for lay in q.layers]
    rows = []
    for i, first in enumerate(per_layer[0]):
        group = [t[i] for t in per_layer]
        if not all(r["applicable"] for r in group):
            bad = next(r for r in group if not r["applicable"])
            rows.append({"format": first["format"], "label": first["label"], "applicable": False,
                         "reason": bad["reason"]})
            continue
        labels = sorted({r["label"] for r in group})
        row = {"format": first["format"], "label": " / ".join(labels), "applicable": True,
               "per_layer_bytes": [r["bytes_total"] for r in group]}
        for key in ("bytes_total", "bytes_index", "bytes_values", "bytes_meta", "bytes_overhead"):
            row[key] = sum(r[key] for r in group)
        row["index_share"] = row["bytes_index"] / row["bytes_total"]
        rows.append(row)
    dense = next((r for r in rows if r["format"] == "dense" and r["applicable"]), None)
    for r in rows:
        if r["applicable"] and dense:
            r["ratio_vs_dense"] = r["bytes_total"] / dense["bytes_total"]
    return rows


def _check_args(args) -> None:
    from sparsefab.compress.errors import SparsefabError

    if args.samples is not None and not 1 <= args.samples <= 450:
        raise SparsefabError(f"--samples {args.samples}: expected 1..450 (the digits test set)")
    if not 1 <= args.lanes <= 64:
        raise SparsefabError(f"--lanes {args.lanes}: expected 1..64")
    if args.finetune_epochs is not None and not 0 <= args.finetune_epochs <= 1000:
        raise SparsefabError(f"--finetune-epochs {args.finetune_epochs}: expected 0..1000")
    if not args.no_rtl and args.simulator == "icarus":
        import shutil

        if shutil.which("iverilog") is None or shutil.which("vvp") is None:
            raise SparsefabError("--simulator icarus: iverilog/vvp not found on PATH (install Icarus Verilog "
                                 "or use the default verilator)")
    if args.prune != "dense":
        from sparsefab.compress.prune import parse_prune_spec

        parse_prune_spec(args.prune)


def software_half(*, prune: str = DEFAULT_PRUNE, bits: int = 8, block: int = 16, bus: int = 64,
                  lanes: int = 8, samples: int | None = None, finetune_epochs: int | None = None) -> tuple[dict, object, dict]:
    """Build, encode and evaluate the quantized digits MLP in the golden model.

    Returns
    -------
    (report, q, golden)
        ``report``: JSON-ready figures; ``q``: the :class:`~sparsefab.compress.mlp.QuantizedMLP`;
        ``golden``: ``{"codes": test input codes, "labels", "logits", "trace"}`` for the RTL check.
    """
    import numpy as np

    from sparsefab.compress import bitmap
    from sparsefab.compress.errors import SparsefabError
    from sparsefab.data import digits

    epochs = digits.FINETUNE_EPOCHS if finetune_epochs is None else finetune_epochs
    split = digits.load_split()
    n = len(split.y_test) if samples is None else samples
    codes, labels = split.X_test_codes[:n], split.y_test[:n]
    q = digits.quantized_mlp(prune=prune, w_bits=bits, finetune_epochs=epochs)
    logits, trace = q.forward_int(codes, trace=True)
    pred = np.argmax(logits, axis=1)
    float_dense = digits.forward_float(digits.load_mlp(), split.X_test[:n]).argmax(1)

    layers = []
    for i, lay in enumerate(q.layers):
        blob = bitmap.encode(lay.W_codes, bits=bits, block=block, bus_bits=bus, quant=lay.w_params)
        back, _ = bitmap.decode(blob)
        if not np.array_equal(back, lay.W_codes):
            raise SparsefabError(f"layer {i}: bitmap decode(encode(W)) differs from W (block {block}, bus {bus})")
        rows, cols = lay.W_codes.shape
        layers.append({"layer": i, "rows": rows, "cols": cols, "nnz": lay.nnz, "sparsity": lay.sparsity,
                       "ideal_cycles": -(-lay.nnz // lanes), "dense_ideal_cycles": rows * -(-cols // lanes),
                       "bitmap_bytes": len(blob), "dense_int8_bytes": rows * cols,
                       "relu": lay.relu, "requantized": lay.relu})
    report = {
        "model": "digits MLP 64-128-10 (scripts/train_digits.py)",
        "prune": q.prune, "finetune_epochs": epochs if prune not in (None, "dense") else 0,
        "w_bits": q.w_bits, "a_bits": q.a_bits, "block": block, "bus_bits": bus, "lanes": lanes,
        "samples": int(n),
        "sparsity": q.sparsity, "layers": layers,
        "float_dense_accuracy": float(np.mean(float_dense == labels)),
        "float_pruned_accuracy": float(np.mean(q.predict_float(split.X_test[:n]) == labels)),
        "golden_accuracy": float(np.mean(pred == labels)),
        "storage": _combined_storage(q, block=block, bus=bus),
    }
    return report, q, {"codes": codes, "labels": labels, "logits": logits, "pred": pred, "trace": trace}


def _print_software(rep: dict) -> None:
    from sparsefab.compress import formats

    ft = f", fine-tuned {rep['finetune_epochs']} epochs with the mask fixed" if rep["finetune_epochs"] else ""
    print(f"sparsefab demo: {rep['model']}, prune {rep['prune']}{ft}, "
          f"W{rep['w_bits']}A{rep['a_bits']}, bitmap B={rep['block']} W={rep['bus_bits']}")
    for lay in rep["layers"]:
        stage = "requantize + ReLU -> int8" if lay["requantized"] else "int32 logits (acc + bias) -> argmax"
        print(f"  layer {lay['layer']}: {lay['rows']}x{lay['cols']}, nnz {lay['nnz']} "
              f"({100 * lay['sparsity']:.1f} % sparse), bitmap {lay['bitmap_bytes']} B "
              f"(int8 dense {lay['dense_int8_bytes']} B), decode(encode) == codes; {stage}")
    ideal = sum(lay["ideal_cycles"] for lay in rep["layers"])
    dense = sum(lay["dense_ideal_cycles"] for lay in rep["layers"])
    print(f"ideal MAC cycles per sample with {rep['lanes']} lanes: sparse {ideal} (ceil(nnz/lanes) per layer), "
          f"dense {dense}, ideal speedup {dense / ideal:.2f}x")
    print(f"accuracy on {rep['samples']} test samples: float dense {100 * rep['float_dense_accuracy']:.2f} %, "
          f"float pruned {100 * rep['float_pruned_accuracy']:.2f} %, "
          f"golden integer path {100 * rep['golden_accuracy']:.2f} %")
    print("storage per format (both layers, each file with header and quant block):")
    print("  " + formats.format_table(rep["storage"]).replace("\n", "\n  "))


def _print_table(rows: list[dict]) -> None:
    from sparsefab.compress import mlp

    print("digits MLP test accuracy (450 samples), float and through the exact integer path:")
    print("  " + mlp.format_accuracy_table(rows).replace("\n", "\n  "))


def run_demo(args) -> int:
    from sparsefab.compress.mlp import single_thread_blas
    from sparsefab.data import digits

    _check_args(args)
    t0 = time.monotonic()
    show = not args.json
    epochs = digits.FINETUNE_EPOCHS if args.finetune_epochs is None else args.finetune_epochs

    if args.table:
        with _progress(10, "accuracy table", show) as bar:
            rows = digits.accuracy_table(finetune_epochs=epochs, progress=bar.update)
        if args.json:
            print(json.dumps({"accuracy_table": rows, "finetune_epochs": epochs}))
        else:
            _print_table(rows)
        return 0

    with single_thread_blas():
        rep, q, golden = software_half(prune=args.prune, bits=args.bits, block=args.block, bus=args.bus,
                                       lanes=args.lanes, samples=args.samples, finetune_epochs=args.finetune_epochs)
    if show:
        _print_software(rep)
        sys.stdout.flush()

    rep["rtl"] = None
    if not args.no_rtl:
        rep["rtl"] = rtl_half(q, golden, lanes=args.lanes, block=args.block, bus=args.bus,
                              simulator=args.simulator, show=show)
        if show:
            _print_rtl(rep["rtl"], rep["golden_accuracy"])
            sys.stdout.flush()

    if not args.no_table:
        with _progress(10, "accuracy table", show) as bar:
            rep["accuracy_table"] = digits.accuracy_table(finetune_epochs=epochs, progress=bar.update)
        if show:
            _print_table(rep["accuracy_table"])
    rep["wall_seconds"] = time.monotonic() - t0
    if args.json:
        print(json.dumps(rep))
    else:
        print(f"demo done in {rep['wall_seconds']:.1f} s")
    return 0


def _first_mismatch(got, want) -> tuple[int, int] | None:
    """(sample, row) of the first difference of two [n, rows] arrays, or None."""
    import numpy as np

    bad = np.argwhere(np.asarray(got) != np.asarray(want))
    return (int(bad[0][0]), int(bad[0][1])) if bad.size else None


def rtl_half(q, golden: dict, *, lanes: int = 8, block: int = 16, bus: int = 64, simulator: str = "verilator",
             show: bool = False) -> dict:
    """Run every sample through the RTL sparse MAC array and its dense baseline, both layers.

    Hidden layers are requantized (bias, multiplier, shift, zero point, ReLU) by the array's
    output stage; each layer consumes the previous layer's RTL outputs, not the golden ones.
    The last layer's RTL accumulators plus the integer bias are the logits.  Every layer's
    outputs and the predictions are compared with the golden integer path sample by sample:
    the first difference raises :class:`SparsefabError` naming the sample.

    Returns
    -------
    dict
        ``accuracy``, ``samples_equal``, per-layer ``layers`` (cycles, ideal, utilization, dense
        cycles, speedup), totals ``cycles``, ``dense_cycles``, ``speedup``, simulation speed.
    """
    import numpy as np

    from sparsefab.compress.errors import SparsefabError
    from sparsefab.sim.spmv_flow import Requant, run_spmv

    codes, labels, trace = golden["codes"], golden["labels"], golden["trace"]
    n = len(labels)
    t0 = time.monotonic()
    runs = {}
    steps = [(dense, k) for dense in (False, True) for k in range(len(q.layers))]
    with _progress(len(steps), "RTL", show) as bar:
        for dense, k in steps:
            lay = q.layers[k]
            bar.set_description(f"RTL {'dense' if dense else 'sparse'} layer {k}")
            x = codes if k == 0 else runs[(dense, k - 1)].out
            rq = Requant(multiplier=lay.qlayer.multiplier, shift=lay.qlayer.shift, bias=lay.qlayer.bias,
                         out_zero_point=lay.qlayer.out_zero_point, relu=lay.relu)
            r = run_spmv(lay.W_codes, x, lanes=lanes, bits=q.w_bits, block=block, bus_bits=bus,
                         acc_bits=q.acc_bits, requant=rq, dense=dense, simulator=simulator)
            runs[(dense, k)] = r
            what = "dense baseline" if dense else "sparse array"
            mm = _first_mismatch(r.y, trace[k]["acc"])
            if mm is None and lay.relu:
                mm = _first_mismatch(r.out, trace[k]["y"])
            if mm is not None:
                j, row = mm
                raise SparsefabError(
                    f"RTL {what} differs from the golden integer path at test sample {j} (layer {k}, row {row}): "
                    f"acc {int(np.asarray(r.y)[j, row])} vs {int(trace[k]['acc'][j, row])}, "
                    f"out {int(np.asarray(r.out)[j, row])} vs {int(trace[k]['y'][j, row])}")
            bar.update()
    last = len(q.layers) - 1
    logits = runs[(False, last)].y.astype(np.int64) + q.layers[last].qlayer.bias
    pred = np.argmax(logits, axis=1)
    mm = _first_mismatch(pred[:, None], golden["pred"][:, None])
    if mm is not None:
        raise SparsefabError(f"RTL prediction differs from the golden integer path at test sample {mm[0]}")
    layers = []
    for k in range(len(q.layers)):
        sp, de = runs[(False, k)], runs[(True, k)]
        layers.append({"layer": k, "cycles": sp.cycles, "ideal_cycles": sp.ideal_cycles,
                       "utilization": sp.utilization, "ideal_over_measured": sp.ideal_cycles / sp.cycles,
                       "dense_cycles": de.cycles, "dense_ideal_cycles": de.ideal_cycles,
                       "speedup": de.cycles / sp.cycles, "counters": dict(sp.counters)})
    cyc = sum(r.cycles for (dense, _), r in runs.items() if not dense)
    dcyc = sum(r.cycles for (dense, _), r in runs.items() if dense)
    ideal = sum(r.ideal_cycles for (dense, _), r in runs.items() if not dense)
    return {
        "available": True, "simulator": simulator, "lanes": lanes, "block": block, "bus_bits": bus,
        "samples": n, "samples_equal": n, "accuracy": float(np.mean(pred == labels)),
        "cycles": cyc, "ideal_cycles": ideal, "dense_cycles": dcyc, "speedup": dcyc / cyc,
        "cycles_per_sample": cyc / n, "dense_cycles_per_sample": dcyc / n, "layers": layers,
        "sim_cycles_per_s": (cyc + dcyc) / max(sum(r.wall_s for r in runs.values()), 1e-9),
        # One compiled model per (sparse|dense) configuration serves every layer: count each once.
        "build_seconds": sum(max(r.build_seconds for (d, _), r in runs.items() if d == dense) for dense in (False, True)),
        "wall_seconds": time.monotonic() - t0,
    }


def _print_rtl(rtl: dict, golden_acc: float) -> None:
    print(f"RTL ({rtl['simulator']}, sparse MAC array, {rtl['lanes']} lanes, B={rtl['block']} W={rtl['bus_bits']}; "
          f"requantization + ReLU in hardware, each layer fed by the previous layer's RTL outputs):")
    print(f"  accuracy {100 * rtl['accuracy']:.2f} % on {rtl['samples']} samples, equal to the golden "
          f"integer path ({100 * golden_acc:.2f} %) sample by sample: {rtl['samples_equal']}/{rtl['samples']}")
    print(f"  {'layer':<7}{'cycles':>10}{'ideal':>10}{'ideal/meas':>12}{'dense cyc':>11}{'speedup':>9}")
    for lay in rtl["layers"]:
        print(f"  {lay['layer']:<7}{lay['cycles']:>10}{lay['ideal_cycles']:>10}{lay['ideal_over_measured']:>12.3f}"
              f"{lay['dense_cycles']:>11}{lay['speedup']:>8.2f}x")
    print(f"  {'total':<7}{rtl['cycles']:>10}{rtl['ideal_cycles']:>10}{rtl['ideal_cycles'] / rtl['cycles']:>12.3f}"
          f"{rtl['dense_cycles']:>11}{rtl['speedup']:>8.2f}x   ({rtl['cycles_per_sample']:.1f} cycles/sample sparse, "
          f"{rtl['dense_cycles_per_sample']:.1f} dense)")
    print(f"  simulation {rtl['sim_cycles_per_s'] / 1e3:.0f}k cycles/s, RTL half {rtl['wall_seconds']:.1f} s "
          f"(builds {rtl['build_seconds']:.1f} s)")
