"""The ``sparsefab`` command line.

Each area of the project registers its own subcommands from a module listed in
:data:`COMMAND_MODULES`; a module exposes ``register(commands)`` where ``commands`` is a
:class:`Commands`.  Handlers take the parsed arguments and return an exit status.
Heavy imports (Amaranth, cocotb) happen inside handlers so ``--help`` stays fast.

Errors: a :class:`~sparsefab.compress.errors.SparsefabError` raised anywhere becomes
one line ``sparsefab: error: ...`` on stderr and exit status 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sparsefab import __version__
from sparsefab.compress.errors import SparsefabError

COMMAND_MODULES = (
    "sparsefab.cli.compress_cmds",
    "sparsefab.cli.gen_cmds",
    "sparsefab.cli.sim_cmds",
    "sparsefab.cli.kv_cmds",
    "sparsefab.cli.crossbar_cmds",
    "sparsefab.cli.fpga_cmds",
    "sparsefab.cli.demo_cmds",
    "sparsefab.cli.bench_cmds",
)


class Commands:
    """Where command modules add their subcommands.

    ``commands.add("compress", help=...)`` adds a top-level command;
    ``commands.add("spmv", group="sim", help=...)`` adds ``sparsefab sim spmv``, creating
    the ``sim`` group on first use.  Both return the new :class:`argparse.ArgumentParser`;
    call ``set_defaults(func=handler)`` on it.
    """

    GROUP_HELP = {
        "gen": "generate Verilog + JSON sidecar from the Amaranth generators",
        "sim": "run RTL in simulation against the golden model",
        "fpga": "synthesis, place and route, bitstreams (Yosys + nextpnr)",
        "kv": "entropy-coded KV-cache codec",
        "crossbar": "crossbar tiling, neuron clustering and tile mapping",
    }

    def __init__(self, top: argparse._SubParsersAction):
        self._top = top
        self._groups: dict[str, argparse._SubParsersAction] = {}

    def add(self, name: str, *, help: str, group: str | None = None, **kwargs) -> argparse.ArgumentParser:
        kwargs.setdefault("description", help[:1].upper() + help[1:] + ".")
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        if group is None:
            return self._top.add_parser(name, help=help, **kwargs)
        if group not in self._groups:
            gp = self._top.add_parser(group, help=self.GROUP_HELP.get(group, group),
                                      description=self.GROUP_HELP.get(group, group))
            self._groups[group] = gp.add_subparsers(dest=f"{group}_command", required=True,
                                                    metavar="COMMAND")
        return self._groups[group].add_parser(name, help=help, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparsefab",
        description="Compressed neural networks on small devices and open FPGAs: "
                    "golden model, Amaranth generators, RTL simulation and FPGA flows.",
    )
    parser.add_argument("--version", action="version", version=f"sparsefab {__version__}")
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = Commands(top)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SparsefabError as exc:
        print(f"sparsefab: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sparsefab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
