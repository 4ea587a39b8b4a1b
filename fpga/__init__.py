"""FPGA flows: board tops, Yosys + nextpnr runs (YoWASP), resource and Fmax reports."""
