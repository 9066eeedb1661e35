# Developer shortcuts. PYTHON defaults to the interpreter on PATH; override with `make bench PYTHON=.venv/bin/python`.
PYTHON ?= python
BENCH_ARGS ?=

.PHONY: test lint bench bench-quick

# The same commands as .ci/run.
test:
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check mtgraph tests bench examples
	$(PYTHON) -m mypy mtgraph

# Every benchmark script, one after another (they must not run concurrently: they time each other otherwise).
bench:
	$(PYTHON) bench/bench_foundation.py $(BENCH_ARGS)
	$(PYTHON) bench/bench_accounting.py $(BENCH_ARGS)
	$(PYTHON) bench/bench_compiled.py $(BENCH_ARGS)
	$(PYTHON) bench/bench_export.py
	$(PYTHON) bench/bench_training.py $(BENCH_ARGS)
	$(PYTHON) bench/bench_scaling.py $(BENCH_ARGS)

bench-quick:
	$(MAKE) bench BENCH_ARGS=--quick
