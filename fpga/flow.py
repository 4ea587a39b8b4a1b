"""Build driver: design -> harness -> Amaranth build plan -> Yosys, nextpnr, pack (YoWASP).

:func:`build` elaborates a registered design (:mod:`sparsefab.gen.designs`) inside the
generic :class:`~sparsefab.fpga.harness.Harness`, asks the amaranth-boards platform for its
build plan (``do_build=False``; the plan's files and its command list ``build_top.json`` are
extracted into the build directory), then runs the plan's commands itself with the YoWASP
tools named by the platform's environment variables (``YOSYS``, ``NEXTPNR_ICE40``,
``ICEPACK``, ``NEXTPNR_ECP5``, ``ECPPACK``; ``OPENFPGALOADER=true``).  Running the commands
itself, rather than the plan's shell script, lets the driver:

* show each tool's progress on stderr (stage lines tailed from the tool's own log);
* run nextpnr with several seeds on one synthesis and keep the best Fmax;
* turn a failure into ONE line (the design does not fit: which resource, used/available;
  otherwise nextpnr's or Yosys's first ``ERROR:``), never a traceback.

The ``build_top.sh`` left in the build directory repeats the default-seed build by hand.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sparsefab.compress.errors import SparsefabError
from sparsefab.fpga import report as rpt
from sparsefab.fpga.boards import Board, get_board, make_platform

TOP = "top"
DEFAULT_SEED = 1

# stage lines worth showing from each tool's log (prefix match after "Info: " is stripped)
_NEXTPNR_STAGES = ("Packing", "Running placer", "Running main analytical", "Placed ", "HeAP Placer Time",
                   "Running simulated annealing", "SA placement time", "Routing..", "Router1 time",
                   "Router2 time", "Max frequency", "Program finished", "Checksum", "Device utilisation")


def _tool_path(name: str) -> str:
    """An executable for ``name``: next to this interpreter if there, else on PATH, else the name."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    return shutil.which(name) or name


def tool_env(board: Board) -> dict[str, str]:
    """The environment for Amaranth's build of ``board``: every tool variable set to a YoWASP tool.

    A variable already set in the environment (e.g. ``NEXTPNR_ICE40=/opt/nextpnr-ice40``) is kept.
    """
    env = dict(os.environ)
    for var, exe in board.tools.values():
        env.setdefault(var, _tool_path(exe))
    env.setdefault("OPENFPGALOADER", "true")
    return env


def _param_tag(params: dict) -> str:
    return "-".join(f"{k}{v}" for k, v in sorted(params.items())) or "default"


def default_build_dir(board: str, design: str, params: dict, freq_mhz: float) -> Path:
    """``build/fpga/<board>/<design>-<params>-<freq>MHz`` (relative to the working directory)."""
    return Path("build") / "fpga" / board / f"{design}-{_param_tag(params)}-{freq_mhz:g}MHz"


class _Tail:
    """Reads the new lines of a growing log file."""

    def __init__(self, path: Path):
        self.path, self.pos, self.buf = path, 0, ""

    def lines(self) -> list[str]:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                f.seek(self.pos)
                chunk = f.read()
                self.pos = f.tell()
        except OSError:
            return []
        self.buf += chunk
        *done, self.buf = self.buf.split("\n")
        return done


def _stage_line(tool: str, line: str) -> str | None:
    s = line.strip()
    if tool.startswith("yosys"):
        # top-level steps of synth_<family>: "2.13. Executing ABC pass ..." -> keep short headers only
        if s and s[0].isdigit() and ". Executing " in s and s.count(".") <= 4:
            return s[:100]
        return None
    if tool.startswith("nextpnr"):
        body = s.removeprefix("Info:").strip()
        if body.startswith(_NEXTPNR_STAGES) or s.startswith(("ERROR", "Warning: Max frequency")):
            return body[:110]
    return None


def _run(argv: list[str], *, cwd: Path, env: dict, log: Path | None, tool: str,
         progress: Callable[[str], None] | None, timeout: float | None) -> tuple[int, str]:
    """Run one tool, tailing ``log`` for stage lines; returns (exit status, stdout+stderr text)."""
    out_path = cwd / f"{tool}.out"
    if log is not None:   # a previous run's log would be tailed (and parsed) as this run's
        log.unlink(missing_ok=True)
    t0 = time.monotonic()
    with open(out_path, "w") as out:
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        except OSError as exc:
            raise SparsefabError(f"cannot run {argv[0]} ({exc}); install the YoWASP tools or set the tool variable") from None
        tail = _Tail(log) if log is not None else None
        last_print = 0.0
        try:
            while True:
                try:
                    rc = proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    rc = None
                if tail is not None and progress is not None:
                    for line in tail.lines():
                        msg = _stage_line(tool, line)
                        now = time.monotonic()
                        if msg and (tool.startswith("nextpnr") or now - last_print > 2.0):
                            progress(f"[{tool} {now - t0:5.0f}s] {msg}")
                            last_print = now
                if rc is not None:
                    break
                if timeout is not None and time.monotonic() - t0 > timeout:
                    proc.kill()
                    proc.wait()
                    raise SparsefabError(f"{tool} exceeded the {timeout:g} s time limit (log: {log or out_path})")
        except KeyboardInterrupt:
            proc.kill()
            proc.wait()
            raise
    text = out_path.read_text(errors="replace")
    if rc < 0:  # killed (OOM killer, kill, ^C in another shell): say so rather than quote the log
        text += f"\nERROR: {tool} was killed by signal {-rc}\n"
    return rc, text


def _with_opt(argv: list[str], opt: str, value: str | None) -> list[str]:
    """``argv`` with option ``opt`` set to ``value`` (replaced if present, appended otherwise)."""
    argv = list(argv)
    if opt in argv:
        i = argv.index(opt)
        if value is None:
            return argv
        argv[i + 1] = value
        return argv
    return argv + ([opt] if value is None else [opt, value])


def _fail_line(tool: str, text: str, device: str, util: dict) -> str:
    over = rpt.overflow_message(device, util)
    if over:
        return over
    errors = rpt._ERROR.findall(text)
    killed = [e for e in errors if "was killed by signal" in e]
    if killed:
        return killed[0].strip()
    if errors:
        return f"{tool}: {errors[0].strip()}"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return f"{tool} failed: {lines[-1].strip() if lines else 'no output'}"


def build(design: str, *, board: str = "icebreaker", params: dict | None = None,
          freq_mhz: float | None = None, seed: int = DEFAULT_SEED, seeds: int = 1,
          build_dir: str | Path | None = None, progress: Callable[[str], None] | None = None,
          timeout: float | None = None) -> dict:
    """Synthesize, place and route ``design`` on ``board`` and write its bitstream.

    Parameters
    ----------
    design : str
        A name in :data:`sparsefab.gen.designs.DESIGNS`.
    board : str
        A name in :data:`sparsefab.fpga.boards.BOARDS`.
    params : dict, optional
        Keyword parameters of the design's factory.
    freq_mhz : float, optional
        Clock constraint (nextpnr optimises for it); default: the board's target.
    seed : int
        nextpnr seed (the first one tried).
    seeds : int
        Number of seeds to try (``seed``, ``seed + 1``, ...); the best Fmax is kept.
    build_dir : path, optional
        Default :func:`default_build_dir`.  Created; files of a previous build are overwritten.
    progress : callable(str), optional
        Receives one line per tool stage (e.g. ``print`` to stderr).
    timeout : float, optional
        Seconds allowed per tool run.

    Returns
    -------
    dict
        ``board``, ``device``, ``design``, ``params``, ``freq_mhz`` (constraint), ``fmax_mhz``,
        ``meets_target``, ``luts``, ``lcs``, ``ffs``, ``dsps``, ``brams``, ``spram``, ``carries``,
        ``capacity``, ``harness`` (FFs/LUTs the harness adds, by construction), ``seed``,
        ``seeds_tried`` ([{seed, fmax_mhz}]), ``bitstream``, ``build_dir``, ``critical_path``,
        ``times_s``.

    Raises
    ------
    SparsefabError
        Bad board/design/parameters, a missing tool, or a tool failure (one line: e.g. the
        design does not fit, naming the over-used resource).
    """
    from sparsefab.fpga.harness import Harness
    from sparsefab.gen import designs

    b = get_board(board)
    params = {**designs.board_defaults(design, b.name), **(params or {})}
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise SparsefabError(f"--seed {seed!r}: expected a non-negative integer")
    if not isinstance(seeds, int) or isinstance(seeds, bool) or not 1 <= seeds <= 64:
        raise SparsefabError(f"--seeds {seeds!r}: expected an integer in [1, 64]")
    platform = make_platform(b, freq_mhz=freq_mhz)
    freq = b.default_freq_mhz if freq_mhz is None else float(freq_mhz)
    say = progress or (lambda s: None)
    times: dict[str, float] = {}

    t0 = time.monotonic()
    core = designs.build(design, **params)
    top = Harness(core, in_pins=b.in_pins, out_pins=b.out_pins)
    cost = top.cost()
    out = Path(build_dir) if build_dir is not None else default_build_dir(b.name, design, params, freq)
    out.mkdir(parents=True, exist_ok=True)
    nextpnr_opts = f"--seed {seed} --report {TOP}.report.json --timing-allow-fail {b.pnr_opts}".strip()
    try:
        plan = platform.build(top, name=TOP, build_dir=str(out), do_build=False,
                              synth_opts=b.synth_opts, nextpnr_opts=nextpnr_opts)
    except SparsefabError:
        raise
    except Exception as exc:  # elaboration errors of the design itself
        raise SparsefabError(f"design {design!r} does not elaborate on {b.name}: {type(exc).__name__}: {exc}") from None
    plan.extract(str(out))
    times["elaborate"] = time.monotonic() - t0
    say(f"[flow] {design} {params or ''} on {b.name} ({b.device}) at {freq:g} MHz -> {out}")

    commands = json.loads((out / "build_top.json").read_text())["commands"]
    env = tool_env(b)
    exe = {name: env[var] for name, (var, _) in b.tools.items()}
    pnr_tool = f"nextpnr-{b.family}"
    pnr_out_opt = "--asc" if b.family == "ice40" else "--textcfg"
    tried = []
    best = None
    for argv in commands:
        tool = argv[0]
        if tool not in exe:
            raise SparsefabError(f"build plan uses {tool!r}, which board {b.name} does not configure")
        run_argv = [exe[tool], *argv[1:]]
        if tool == "yosys":
            t = time.monotonic()
            say(f"[flow] yosys: synthesis ({' '.join(argv[1:])})")
            rc, text = _run(run_argv, cwd=out, env=env, log=out / f"{TOP}.rpt", tool="yosys",
                            progress=progress, timeout=timeout)
            times["synth"] = time.monotonic() - t
            if rc != 0:
                log_text = (out / f"{TOP}.rpt").read_text(errors="replace") if (out / f"{TOP}.rpt").exists() else text
                raise SparsefabError(_fail_line("yosys", log_text + "\n" + text, b.device, {})
                                     + f" (log: {out / (TOP + '.rpt')})")
        elif tool == pnr_tool:
            t = time.monotonic()
            for k in range(seeds):
                s = seed + k
                tag = f"{TOP}.seed{s}"
                a = _with_opt(run_argv, "--seed", str(s))
                a = _with_opt(a, "--log", f"{tag}.tim")
                a = _with_opt(a, "--report", f"{tag}.report.json")
                a = _with_opt(a, pnr_out_opt, f"{tag}.pnr")
                say(f"[flow] {pnr_tool}: place and route, seed {s} ({k + 1}/{seeds})")
                rc, text = _run(a, cwd=out, env=env, log=out / f"{tag}.tim", tool=pnr_tool,
                                progress=progress, timeout=timeout)
                log_text = (out / f"{tag}.tim").read_text(errors="replace") if (out / f"{tag}.tim").exists() else ""
                parsed = rpt.parse_nextpnr_log(log_text)
                if rc != 0:
                    raise SparsefabError(_fail_line(pnr_tool, log_text + "\n" + text, b.device, parsed["utilization"])
                                         + f" (log: {out / (tag + '.tim')})")
                pnr = rpt.parse_nextpnr_report(out / f"{tag}.report.json")
                fmax = min((v["achieved"] for v in pnr["fmax"].values()), default=0.0)
                tried.append({"seed": s, "fmax_mhz": fmax})
                if best is None or fmax > best[1]:
                    best = (s, fmax, pnr, parsed)
            times["pnr"] = time.monotonic() - t
            s = best[0]
            # the chosen seed's files take the plan's names, so the packer step runs unchanged
            for src, dst in ((f"{TOP}.seed{s}.tim", f"{TOP}.tim"), (f"{TOP}.seed{s}.report.json", f"{TOP}.report.json"),
                             (f"{TOP}.seed{s}.pnr", argv[argv.index(pnr_out_opt) + 1])):
                shutil.copyfile(out / src, out / dst)
        else:
            t = time.monotonic()
            say(f"[flow] {tool}: bitstream")
            rc, text = _run(run_argv, cwd=out, env=env, log=None, tool=tool, progress=progress, timeout=timeout)
            times["pack"] = time.monotonic() - t
            if rc != 0:
                raise SparsefabError(_fail_line(tool, text, b.device, {}) + f" (in {out})")

    if best is None:
        raise SparsefabError(f"build plan of {b.name} ran no {pnr_tool}")
    s, _, pnr, parsed = best
    cells = rpt.parse_yosys_stat((out / f"{TOP}.rpt").read_text(errors="replace"))
    summary = rpt.summarize(b.family, pnr=pnr, yosys_cells=cells)
    bitstream = out / f"{TOP}.{b.bitstream_ext}"
    if not bitstream.exists():
        raise SparsefabError(f"no bitstream {bitstream} after a successful build")
    times["total"] = time.monotonic() - t0
    result = {
        "board": b.name,
        "device": b.device,
        "design": design,
        "params": params,
        "freq_mhz": freq,
        **{k: summary[k] for k in ("fmax_mhz", "luts", "lcs", "ffs", "dsps", "brams", "spram", "carries")},
        "meets_target": summary["fmax_mhz"] >= freq,
        "clock": summary["clock"],
        "capacity": summary["capacity"],
        "utilization": summary["utilization"],
        "harness": {"in_bits": cost.in_bits, "out_bits": cost.out_bits, "ffs": cost.ffs, "luts": cost.luts},
        "seed": s,
        "seeds_tried": tried,
        "bitstream": str(bitstream),
        "build_dir": str(out),
        "log": str(out / f"{TOP}.tim"),
        "critical_path": parsed["critical_path"],
        "times_s": {k: round(v, 2) for k, v in times.items()},
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
