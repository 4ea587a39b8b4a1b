"""The bench frame: sections resolve, unknown names are refused in one line."""

import importlib
import json
import sys
import types

import pytest

from sparsefab.cli import bench_cmds, main


def test_every_section_resolves_to_a_callable():
    for name, target in bench_cmds.SECTIONS.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name


def test_unknown_section_is_one_line(capsys):
    assert main(["bench", "--only", "no-such-section"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sparsefab: error: --only: unknown section 'no-such-section'")
    assert err.count("\n") == 1


def test_sections_run_in_order_and_write_json(tmp_path, monkeypatch, capsys):
    calls = []

    def fake(name):
        def run(quick):
            calls.append((name, quick))
            return {"value": len(calls)}
        return run

    mod = types.ModuleType("fake_bench_sections")
    mod.a, mod.b = fake("a"), fake("b")
    monkeypatch.setitem(sys.modules, "fake_bench_sections", mod)
    monkeypatch.setattr(bench_cmds, "SECTIONS", {"a": "fake_bench_sections:a", "b": "fake_bench_sections:b"})
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--only", "b,a", "--json", str(out)]) == 0
    assert calls == [("b", True), ("a", True)]
    assert json.loads(out.read_text()) == {"b": {"value": 1}, "a": {"value": 2}}


@pytest.mark.parametrize("only", ["", ","])
def test_empty_only_runs_every_section(only, monkeypatch):
    ran = []
    mod = types.ModuleType("fake_bench_all")
    mod.run = lambda quick: ran.append(quick) or {}
    monkeypatch.setitem(sys.modules, "fake_bench_all", mod)
    monkeypatch.setattr(bench_cmds, "SECTIONS", {"x": "fake_bench_all:run", "y": "fake_bench_all:run"})
    assert main(["bench", "--only", only]) == 0
    assert ran == [False, False]
