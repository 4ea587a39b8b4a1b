"""Bench section ``kv``: the entropy-aware KV-cache codec on real MiniLM keys and values.

Data: the key and value activations of all-MiniLM-L6-v2 (:func:`sparsefab.data.minilm.kv_activations`)
on the project's real English paragraphs; codebooks are trained on the first half of the
paragraphs (calibration) and every figure is measured on the other half (held out).

Printed and returned:

- the codec at its default geometry (128 FP16 values -> one 63-byte block): ratio (input bytes /
  file bytes, header and codebooks included), SQNR on keys and values separately, max |error|,
  fallback / escape / clipped counts, and the entropy bound of its symbols;
- baselines on the same data: min-max INT4 / INT3 / INT2 per group of 128 with FP16 scale and
  minimum, KIVI-style (keys per channel with the last tokens that do not fill a group kept in FP16,
  values per token), each with the entropy bound of its
  codes (the ratio an ideal entropy coder would reach at the same distortion);
- the rate-distortion curve of the codec (block sizes) and the baselines, as a table and a PNG;
- both encoder policies at the default geometry: ``hw`` (one pass, the RTL compressor's, the
  default of ``kv compress``) and ``search`` (multi-pass step search + rate-distortion fill);
- the RTL decompressor measured in simulation (values/cycle, block latency) when available;
- the RTL compressor measured in simulation (sustained values/cycle without stalls, byte-identical to
  the ``hw`` policy, checked block by block by the scoreboard); skipped with ``--quick`` (its Verilator
  build takes minutes).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from sparsefab.compress.errors import SparsefabError

TARGET_RATIO = 4.0
TARGET_SQNR = 21.0
TARGET_COMPRESS_VPC = 4.0
RD_BLOCKS = (40, 48, 56, 63, 72, 80, 96)
RD_BLOCKS_QUICK = (48, 63, 80)
PNG = Path("build/bench/kv_rd.png")


def _data(quick: bool):
    from sparsefab.data import minilm

    if not minilm.available():
        raise SparsefabError(f"bench kv needs the real MiniLM weights: {minilm.INSTALL_HINT}")
    texts = minilm.load_texts()
    half = len(texts) // 2
    cal = texts[:half] if not quick else texts[:2]
    ev = texts[half:] if not quick else texts[half:half + 2]
    kc, vc = minilm.kv_activations(cal)
    ke, ve = minilm.kv_activations(ev)
    f = np.float16
    return {"keys": (kc.astype(f), ke.astype(f)), "values": (vc.astype(f), ve.astype(f))}


def _codec(calib, x, block_bytes: int, quick: bool, cb=None) -> dict:
    from sparsefab.compress import kv

    p = kv.KVParams(block_bytes=block_bytes)
    if cb is None:
        cb = kv.train(calib, params=p, iters=3 if quick else 4, max_blocks=2048 if quick else 8192)
    data, st = kv.compress(x, codebooks=cb, params=p)
    st["entropy_bound"] = kv.codec_entropy(data)
    st["data"] = data
    st["codebooks"] = cb
    return st


def _rtl(data: bytes, quick: bool) -> dict | None:
    try:
        from sparsefab.sim.kv_flow import rtl_decompress
    except ImportError:
        return None
    from sparsefab.compress import kv

    hdr, _ = kv.read_header(data)
    nb = 64 if quick else 512
    # the first nb blocks, as a file of their own (same codebooks and geometry)
    sub = kv.subset_file(data, nb)
    out, counters = rtl_decompress(sub, stalls=False)
    ref, _ = kv.decompress(sub)
    counters["identical"] = bool((out.view(np.uint16) == ref.view(np.uint16)).all())
    return counters


def run(quick: bool = False) -> dict:
    """Run the section; print the tables; return the figures (and write the PNG)."""
    from sparsefab.compress import kv

    t0 = time.perf_counter()
    sets = _data(quick)
    res: dict = {"targets": {"ratio": TARGET_RATIO, "sqnr_db": TARGET_SQNR}}
    print(f"data: MiniLM K/V, calibration {tuple(sets['keys'][0].shape)}, evaluation "
          f"{tuple(sets['keys'][1].shape)} [layers, tokens, heads, dim] (held-out paragraphs)")
    # -- codec at the default geometry
    print(f"\n{'tensor':8} {'ratio':>7} {'SQNR dB':>8} {'max|err|':>9} {'blocks':>7} {'fallbk':>6} "
          f"{'esc blk':>7} {'clipped':>7} {'bits/val':>8} {'H bound':>8} {'ratio bd':>8}  per codebook")
    default = {}
    for name, (cal, ev) in sets.items():
        st = _codec(cal, ev, 63, quick)
        eb = st["entropy_bound"]
        print(f"{name:8} {st['ratio']:7.4f} {st['sqnr_db']:8.3f} {st['max_abs_err']:9.4g} {st['blocks']:7d} "
              f"{st['fallback_blocks']:6d} {st['escape_blocks']:7d} {st['clipped_values']:7d} "
              f"{st['bits_per_value']:8.4f} {eb['entropy']:8.4f} {eb['ratio_bound']:8.4f}  {st['per_codebook']}")
        default[name] = {k: v for k, v in st.items() if k not in ("data", "codebooks")}
        default[name]["_data"] = st["data"]
        default[name]["_cb"] = st["codebooks"]
    ok = all(default[n]["ratio"] >= TARGET_RATIO and default[n]["sqnr_db"] >= TARGET_SQNR for n in default)
    print(f"target ratio >= {TARGET_RATIO} and SQNR >= {TARGET_SQNR} dB on keys and values: "
          f"{'MET' if ok else 'NOT MET'}")
    res["codec"] = {n: {k: v for k, v in d.items() if not k.startswith("_")} for n, d in default.items()}
    res["target_met"] = ok
    # -- encoder policies on the same codebooks and data
    print(f"\n{'policy':8} {'tensor':8} {'ratio':>7} {'SQNR dB':>8} {'max|err|':>9} {'fallbk':>6} {'esc blk':>7}")
    pol = {}
    for name, (_, ev) in sets.items():
        for policy in ("hw", "search"):
            _, st = kv.compress(ev, codebooks=default[name]["_cb"], params=kv.KVParams(), policy=policy)
            pol[f"{policy}/{name}"] = {k: st[k] for k in ("ratio", "sqnr_db", "max_abs_err", "fallback_blocks",
                                                         "escape_blocks", "policy")}
            print(f"{policy:8} {name:8} {st['ratio']:7.4f} {st['sqnr_db']:8.3f} {st['max_abs_err']:9.4g} "
                  f"{st['fallback_blocks']:6d} {st['escape_blocks']:7d}")
    res["policies"] = pol
    # -- baselines
    print(f"\n{'baseline':26} {'tensor':8} {'ratio':>7} {'SQNR dB':>8} {'H codes':>8} {'ratio bd':>8}")
    base = {}
    for bits in (4, 3, 2):
        for name, (_, ev) in sets.items():
            for label, axis in ((f"minmax INT{bits} g128", "token"),
                                (f"KIVI INT{bits} g128", "channel" if name == "keys" else "token")):
                r = kv.minmax_baseline(ev, bits=bits, axis=axis, residual_fp16=label.startswith("KIVI"))
                r.pop("recon")
                base[f"{label}/{name}"] = r
                print(f"{label:26} {name:8} {r['ratio']:7.4f} {r['sqnr_db']:8.3f} {r['entropy']:8.4f} "
                      f"{r['entropy_ratio']:8.4f}")
    res["baselines"] = base
    # -- rate-distortion curve
    rd = {"codec": {n: [] for n in sets}, "minmax": {n: [] for n in sets}, "kivi": {n: [] for n in sets}}
    for bb in (RD_BLOCKS_QUICK if quick else RD_BLOCKS):
        for name, (cal, ev) in sets.items():
            st = default[name] if bb == 63 else _codec(cal, ev, bb, quick)
            rd["codec"][name].append((st["ratio"], st["sqnr_db"], bb))
    for bits in (2, 3, 4, 5, 6, 8):
        for name, (_, ev) in sets.items():
            r = kv.minmax_baseline(ev, bits=bits, axis="token")
            rd["minmax"][name].append((r["ratio"], r["sqnr_db"], bits))
            r = kv.minmax_baseline(ev, bits=bits, axis="channel" if name == "keys" else "token",
                                   residual_fp16=True)
            rd["kivi"][name].append((r["ratio"], r["sqnr_db"], bits))
    print("\nrate-distortion (ratio, SQNR dB): codec by block bytes; baselines by bits")
    for kind, per in rd.items():
        for name, pts in per.items():
            print(f"  {kind:7} {name:7} " + "  ".join(f"{p[2]}:{p[0]:.3f}x/{p[1]:.2f}dB" for p in pts))
    res["rd"] = rd
    res["png"] = _plot(rd)
    print(f"plot: {res['png']}")
    # -- RTL decompressor
    rtl = _rtl(default["keys"]["_data"], quick)
    if rtl is None:
        print("\nRTL decompressor: not available")
    else:
        print(f"\nRTL decompressor ({rtl['decoder']} decoder, {rtl['blocks']} blocks in simulation): "
              f"{rtl['values_per_cycle']:.3f} values/cycle sustained (ideal {rtl['ideal_values_per_cycle']}), "
              f"block latency {rtl['latency_cycles']} cycles (last input word -> last value; "
              f"{rtl['latency_first_word_cycles']} from its first word), identical to golden: {rtl['identical']}")
    res["rtl"] = rtl
    # -- RTL compressor
    comp = None if quick else _rtl_compress()
    if comp is None:
        print("RTL compressor: " + ("skipped (--quick)" if quick else "not available"))
    else:
        print(f"RTL compressor ({comp['count_blocks']} MiniLM blocks in simulation, byte-identical to policy hw): "
              f"{comp['sustained_values_per_cycle']:.3f} values/cycle sustained (target >= {TARGET_COMPRESS_VPC}, "
              f"measured/target {comp['sustained_values_per_cycle'] / TARGET_COMPRESS_VPC:.3f}), "
              f"{comp['values_per_cycle']:.3f} including the pipeline fill, first block after "
              f"{comp['latency_first_block']} cycles")
    res["rtl_compress"] = comp
    res["seconds"] = time.perf_counter() - t0
    return res


def _rtl_compress() -> dict | None:
    try:
        from sparsefab.sim.tb_kv_compress import measure
    except ImportError:
        return None
    return measure(n_groups=48)


def _plot(rd) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, name in zip(axes, ("keys", "values"), strict=True):
        for kind, style in (("codec", "o-"), ("minmax", "s--"), ("kivi", "^:")):
            pts = sorted(rd[kind][name])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=kind)
        ax.axvline(TARGET_RATIO, color="grey", lw=0.8)
        ax.axhline(TARGET_SQNR, color="grey", lw=0.8)
        ax.set_xlabel("compression ratio vs FP16 (everything counted)")
        ax.set_title(f"MiniLM {name}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("SQNR (dB)")
    axes[0].legend()
    fig.tight_layout()
    PNG.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PNG, dpi=110)
    plt.close(fig)
    return str(PNG)
