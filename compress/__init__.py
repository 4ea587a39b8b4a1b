"""Bit-exact NumPy golden model: quantization, pruning, clustering, compressed formats.

This package imports NumPy and the standard library only; every hardware block in
:mod:`sparsefab.gen` is checked against it bit for bit.
"""
