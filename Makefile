# Set-up and the two entry points of the README. Both create (or reuse) .venv.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
# The tests also compile for described TPU slices (libtpu, the tpu extra) and run the record
# writer on Apache Beam's DirectRunner (the beam extra): test runs only.
TPU_STAMP := $(VENV)/.installed-tpu
# jemalloc, where installed (apt-get install libjemalloc2), for the CPU's train steps: tests
# and benchmarks run under it; main.py demo/train/eval/features re-run themselves under it.
# UNIFORMERV2_JEMALLOC=0 turns it off (uniformerv2_jax/cpu.py; docs/performance.md).
WITH_JEMALLOC := $(VENV)/bin/python -m uniformerv2_jax.cpu

.PHONY: demo test bench parity

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# torch is pinned in the same command so that no other package pulls a CUDA build.
	$(VENV)/bin/pip install --quiet -e '.[torch,test]' torch==2.13.0
	touch $(STAMP)

$(TPU_STAMP): $(STAMP)
	$(VENV)/bin/pip install --quiet -e '.[torch,test,tpu,beam]' torch==2.13.0
	touch $(TPU_STAMP)

demo: $(STAMP)
	$(VENV)/bin/python main.py demo

test: $(TPU_STAMP)
	$(VENV)/bin/ruff check .
	$(WITH_JEMALLOC) $(VENV)/bin/python -m pytest -q tests

bench: $(STAMP)
	$(WITH_JEMALLOC) $(VENV)/bin/python benchmarks/forward_speed.py

parity: $(STAMP)
	$(VENV)/bin/python main.py parity
