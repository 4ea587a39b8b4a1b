"""The command-line frame: every command has --help, errors are one line."""

import argparse
import subprocess
import sys

import pytest

from sparsefab.cli import Commands, build_parser, main
from sparsefab.compress.errors import SparsefabError


def _walk(parser, prefix=()):
    """Yield the argument path of every (sub)command."""
    yield prefix
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, prefix + (name,))


def test_every_command_has_help(capsys):
    paths = list(_walk(build_parser()))
    assert len(paths) > 1
    for path in paths:
        with pytest.raises(SystemExit) as exc:
            main([*path, "--help"])
        assert exc.value.code == 0, path
        out = capsys.readouterr().out
        assert out.startswith("usage: sparsefab"), path


def test_unknown_command_is_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_sparsefab_error_becomes_one_line(monkeypatch, capsys):
    parser = argparse.ArgumentParser(prog="sparsefab")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = Commands(sub)

    def boom(args):
        raise SparsefabError("x.npy: non-finite value nan at index (0, 1)")

    commands.add("boom", help="fail on purpose").set_defaults(func=boom)
    monkeypatch.setattr("sparsefab.cli.build_parser", lambda: parser)
    assert main(["boom"]) == 1
    err = capsys.readouterr().err
    assert err == "sparsefab: error: x.npy: non-finite value nan at index (0, 1)\n"


def test_groups_are_created_once():
    parser = argparse.ArgumentParser(prog="sparsefab")
    commands = Commands(parser.add_subparsers(dest="command", required=True))
    commands.add("a", group="sim", help="first").set_defaults(func=lambda a: 3)
    commands.add("b", group="sim", help="second").set_defaults(func=lambda a: 4)
    assert parser.parse_args(["sim", "b"]).func(None) == 4


def test_console_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "sparsefab", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stdout.startswith("sparsefab ")
