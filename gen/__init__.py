"""Amaranth generators: hardware blocks as ``wiring.Component``s with stream ports,
each emitted as Verilog plus a JSON sidecar built from one frozen config object."""
