"""sparsefab: compressed neural networks on small devices and open FPGAs.

Subpackages: :mod:`sparsefab.compress` (NumPy golden model), :mod:`sparsefab.gen`
(Amaranth generators), :mod:`sparsefab.sim` (cocotb / compiled simulation),
:mod:`sparsefab.fpga` (Yosys + nextpnr flows), :mod:`sparsefab.data` (bundled and
packaged real networks), :mod:`sparsefab.cli` (the ``sparsefab`` command).
"""

__version__ = "0.1.0"
