"""Simulation: cocotb testbenches, cached simulator runners, compiled flow-level harnesses."""
