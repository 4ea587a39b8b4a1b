"""Run ``.sfk`` files through the RTL KV codec in simulation (cocotb + Verilator).

Used by ``sparsefab kv decompress --rtl`` / ``kv compress --rtl``, the ``kv`` bench section and
tests/test_kv_decompress.py.  Decompressor: one build per geometry (the codebooks are runtime
tables written through ``i_cfg``, so any trained codebook set runs on the same compiled model).
Compressor: the codebooks are generator parameters, so each codebook set is its own (cached) build.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np

from sparsefab.compress import kv
from sparsefab.compress.errors import SparsefabError

TEST_MODULE = "sparsefab.sim.tb_kv_decompress"


def _verilog(cfg, build_root: Path) -> tuple[Path, str]:
    """Verilog of the decompressor for ``cfg``, cached by (config, generator source)."""
    from sparsefab.gen import kv_decompress as g

    src = Path(g.__file__).read_bytes()
    key = hashlib.sha256(json.dumps(cfg.__dict__, sort_keys=True).encode() + src).hexdigest()[:16]
    out = build_root / "kv_verilog" / f"kvd_{key}.v"
    if not out.exists():
        from sparsefab.gen.emit import emit
        v, _ = emit(g.KVDecompressor(config=cfg), name="kv_decompress", config=cfg,
                    out_dir=out.parent / key, extra=g.sidecar_extra(cfg))
        out.parent.mkdir(parents=True, exist_ok=True)
        v.replace(out)
    return out, "kv_decompress"


def golden_beats(blocks: np.ndarray, cb, params, ebias: int, values_per_cycle: int) -> list[tuple]:
    """Expected output beats of the decompressor for golden ``blocks`` (golden decoder)."""
    vals, _ = kv.decode_blocks(blocks, cb, params, ebias)
    bits = kv.round_to(vals, "fp16").view(np.uint16).reshape(len(blocks), -1, values_per_cycle)
    nb, bpb, _ = bits.shape
    last = np.zeros((nb, bpb), np.int64)
    last[:, -1] = 1
    return [(*map(int, bits[b, j]), int(last[b, j]), 0) for b in range(nb) for j in range(bpb)]


def block_words(blocks: np.ndarray, bus_bits: int) -> list[int]:
    """Each block as ``ceil(8*block_bytes/bus_bits)`` little-endian words (last zero-padded)."""
    nb, bb = blocks.shape
    wb = bus_bits // 8
    pad = (-bb) % wb
    padded = np.concatenate([blocks, np.zeros((nb, pad), np.uint8)], axis=1)
    w = padded.reshape(-1).view("<u8" if bus_bits == 64 else "<u4")
    return [int(x) for x in w]


def run_case(data: bytes, *, decoder: str = "auto", bus_bits: int = 64, idle: float = 0.0,
             backpressure: float = 0.0, check: bool = True, dump: bool = False,
             expect_errors: int | None = None, seed: int | None = None, simulator: str = "verilator",
             build_root: str | Path | None = None, values_per_cycle: int = 8,
             blocks: np.ndarray | None = None) -> dict:
    """Simulate the decompressor on every block of the ``.sfk`` image ``data``.

    ``blocks`` (optional) replaces the file's blocks (e.g. corrupted ones, with
    ``check=False``).  Returns the bench's result dict (``beats`` when ``dump``; per-block
    input/output cycles; counters) plus ``config``.
    """
    from sparsefab.gen.kv_decompress import KVDecompressConfig, cfg_layout, config_words, out_layout
    from sparsefab.sim.runner import default_build_root, run_cocotb
    from sparsefab.sim.streams import layout_json

    hdr, cb = kv.read_header(bytes(data))
    if hdr.dtype != "fp16":
        raise SparsefabError(f"RTL decompressor outputs FP16; this file is {hdr.dtype}")
    cfg = KVDecompressConfig.from_codec(hdr.params, cb, decoder=decoder, bus_bits=bus_bits,
                                        values_per_cycle=values_per_cycle)
    if hdr.ebias < -128 or hdr.ebias > 127:
        raise SparsefabError(f"ebias {hdr.ebias} outside the decompressor's signed 8-bit port")
    blk = kv.file_blocks(data, hdr) if blocks is None else np.asarray(blocks, np.uint8)
    root = Path(build_root) if build_root else default_build_root()
    vpath, top = _verilog(cfg, root)
    bpb = cfg.cycles_per_block
    with tempfile.TemporaryDirectory(prefix="kvcase") as tmp:
        case = {
            "cfg": config_words(cb, cfg), "ebias": hdr.ebias,
            "cfg_layout": layout_json(cfg_layout()),
            "out_layout": layout_json(out_layout(cfg.values_per_cycle)),
            "values_per_cycle": cfg.values_per_cycle, "words": block_words(blk, bus_bits),
            "words_per_block": cfg.words_per_block, "blocks": int(blk.shape[0]), "beats_per_block": bpb,
            "expected": golden_beats(blk, cb, hdr.params, hdr.ebias, cfg.values_per_cycle) if check else None,
            "dump": dump, "idle": idle, "backpressure": backpressure, "expect_errors": expect_errors,
            "timeout": 200 + int(blk.shape[0]) * (bpb + cfg.words_per_block) * 20,
            "result": str(Path(tmp) / "result.json"),
        }
        path = Path(tmp) / "case.json"
        path.write_text(json.dumps(case))
        env = {"SPARSEFAB_KV_CASE": str(path)}
        if seed is not None:
            env["SPARSEFAB_SEED"] = str(seed)
        run_cocotb(vpath, toplevel=top, test_module=TEST_MODULE, simulator=simulator,
                   parameters={"config": cfg.__dict__}, extra_env=env, build_root=root)
        res = json.loads(Path(case["result"]).read_text())
    res["config"] = cfg
    return res


def measure(res: dict) -> dict:
    """Throughput and latency figures from a run without stalls."""
    cfg = res["config"]
    nb = len(res["last_beat_cycle"])
    values = nb * cfg.group
    span = res["last_beat_cycle"][-1] - res["first_word_cycle"][0] + 1
    c = res["counters"]
    # sustained: output rate between the first and the last block's final beat (pipeline full);
    # latency: of the first block, which meets an empty pipeline (later blocks also queue)
    sustained = ((nb - 1) * cfg.group / (res["last_beat_cycle"][-1] - res["last_beat_cycle"][0])
                 if nb > 1 else float("nan"))
    return {"decoder": cfg.decoder, "blocks": nb, "values": values, "cycles": span,
            "values_per_cycle": sustained, "values_per_cycle_with_fill": values / span,
            "decode_values_per_cycle": values / max(c["count_decode_cycles"], 1),
            "ideal_values_per_cycle": cfg.values_per_cycle,
            "latency_cycles": res["last_beat_cycle"][0] - res["last_word_cycle"][0],
            "latency_first_word_cycles": res["last_beat_cycle"][0] - res["first_word_cycle"][0],
            "latency_first_beat_cycles": res["first_beat_cycle"][0] - res["last_word_cycle"][0],
            "errors": c["count_errors"], "stall_cycles": c["count_stall_cycles"]}


def rtl_decompress(data: bytes, *, stalls: bool = False, decoder: str = "auto") -> tuple[np.ndarray, dict]:
    """Decode a whole ``.sfk`` image on the RTL; return (array like :func:`kv.decompress`, figures)."""
    hdr, _ = kv.read_header(bytes(data))
    res = run_case(data, decoder=decoder, check=False, dump=True,
                   idle=0.2 if stalls else 0.0, backpressure=0.2 if stalls else 0.0)
    cfg = res["config"]
    beats = np.array(res["beats"], dtype=np.int64)
    if beats.shape[0] != hdr.nblocks * cfg.cycles_per_block:
        raise SparsefabError(f"RTL produced {beats.shape[0]} beats, expected {hdr.nblocks * cfg.cycles_per_block}")
    if beats[:, -1].any():
        bad = int(np.flatnonzero(beats[:, -1])[0]) // cfg.cycles_per_block
        raise SparsefabError(f"RTL decompressor flagged block {bad} as malformed")
    groups = beats[:, :cfg.values_per_cycle].astype(np.uint16).reshape(hdr.nblocks, cfg.group)
    out = kv.from_groups(groups, hdr.shape, hdr.params).view(np.float16)
    fig = measure(res) if not stalls else {"blocks": hdr.nblocks, **res["counters"]}
    return out, fig


def rtl_compress(x: np.ndarray, data: bytes) -> dict:
    """Run the groups of ``x`` through the RTL compressor; its blocks must equal those of ``data``.

    ``data`` is the ``.sfk`` image that :func:`sparsefab.compress.kv.compress` made of ``x`` with
    the hardware policy.  The cocotb scoreboard compares every RTL block, byte for byte, with the
    golden ``encode_groups(..., policy="hw")`` blocks, and this function checks that those are the
    blocks of the file, so a pass means the RTL writes the file's blocks.  Returns the hardware
    figures (``blocks``, ``cycles``, ``values_per_cycle``, counters).  Raises SparsefabError (one
    line) when the file is not FP16, when the geometry is outside the compressor's range, or when
    any block differs.
    """
    from sparsefab.sim.tb_kv_compress import run_case as run_compressor

    hdr, cb = kv.read_header(bytes(data))
    if hdr.dtype != "fp16":
        raise SparsefabError(f"RTL compressor takes FP16; this file is {hdr.dtype}")
    if hdr.ebias < -128 or hdr.ebias > 127:
        raise SparsefabError(f"ebias {hdr.ebias} outside the compressor's signed 8-bit port")
    vals, _ = kv.input_values(np.asarray(x), "fp16")
    groups = kv.to_groups(vals, hdr.params)
    blocks, _ = kv.encode_groups(groups, cb, hdr.params, hdr.ebias, policy="hw")
    if not np.array_equal(blocks, kv.file_blocks(data, hdr)):
        raise SparsefabError("the file's blocks are not the hardware policy's (compress with --policy hw)")
    res = run_compressor(groups.astype(np.float16), codebooks=cb, params=hdr.params, ebias=hdr.ebias,
                         idle=0.0, backpressure=0.0)
    return {"blocks": res["count_blocks"], "values": res["values"], "cycles": res["cycles"],
            "values_per_cycle": res["values_per_cycle"],
            "sustained_values_per_cycle": res["sustained_values_per_cycle"],
            "fallback_blocks": res["count_fallback"], "escapes": res["count_escapes"]}
