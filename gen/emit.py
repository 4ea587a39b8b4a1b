"""Verilog + JSON sidecar emission, shared by every generator.

Every generated ``NAME.v`` gets a ``NAME.json`` beside it, written from the same frozen
config object that built the RTL, so testbenches and flows read widths, latency and the
format version from it instead of hard-coding them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from amaranth.back import verilog
from amaranth.hdl import Value
from amaranth.lib import wiring

from sparsefab import __version__
from sparsefab.compress.fileio import atomic_write_bytes

SIDECAR_VERSION = 1


def port_table(component: wiring.Component) -> list[dict[str, Any]]:
    """Flattened top-level ports of ``component`` as they appear in the Verilog.

    ``clk`` and ``rst`` (synchronous, active high) come first.  Each entry: ``name`` (Verilog port name, e.g. ``i_mask__payload``), ``dir``
    (``in``/``out``) and ``width`` in bits.
    """
    ports = [{"name": "clk", "dir": "in", "width": 1}, {"name": "rst", "dir": "in", "width": 1}]
    for path, member, value in component.signature.flatten(component):
        name = "__".join(str(p) for p in path)
        ports.append({"name": name, "dir": "in" if member.flow == wiring.In else "out",
                      "width": Value.cast(value).shape().width})
    return ports


def config_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict from a frozen dataclass config (or a plain dict)."""
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return dict(config)


def to_verilog(component: wiring.Component, *, name: str) -> str:
    """Convert ``component`` to Verilog text with top module ``name``."""
    return verilog.convert(component, name=name, emit_src=False)


def emit(component: wiring.Component, *, name: str, config: Any, out_dir: str | Path,
         extra: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``out_dir/name.v`` and its sidecar ``out_dir/name.json``.

    Parameters
    ----------
    component : wiring.Component
        The elaboratable top.
    name : str
        Verilog module name and file stem.
    config : dataclass or dict
        The frozen config that built ``component``; stored under ``"config"``.
    out_dir : path
        Created if missing.
    extra : dict, optional
        Further sidecar keys (e.g. ``"latency"``, ``"format_version"``).

    Returns
    -------
    (verilog_path, sidecar_path)
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = to_verilog(component, name=name)
    sidecar = {
        "sidecar_version": SIDECAR_VERSION,
        "generator": f"sparsefab {__version__}",
        "top": name,
        "verilog": f"{name}.v",
        "verilog_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "config": config_dict(config),
        "ports": port_table(component),
    }
    if extra:
        sidecar.update(extra)
    v_path, j_path = out / f"{name}.v", out / f"{name}.json"
    atomic_write_bytes(v_path, text.encode())
    atomic_write_bytes(j_path, (json.dumps(sidecar, indent=2, sort_keys=False) + "\n").encode())
    return v_path, j_path
