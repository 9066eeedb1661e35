# Developer shortcuts. PYTHON defaults to the interpreter on PATH; override with `make bench PYTHON=.venv/bin/python`.
PYTHON ?= python
BENCH_ARGS ?=

.PHONY: test lint bench bench-quick bench-deploy bench-peers docs-results docs-results-mtsl docs-results-affinity docs-results-grouping \
	docs-results-smtl docs-results-adashare docs-results-protocol

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
	$(PYTHON) bench/bench_adashare_step.py $(BENCH_ARGS)
	$(PYTHON) bench/bench_strategy_runs.py $(BENCH_ARGS)
	$(PYTHON) bench/bench_scaling.py $(BENCH_ARGS)
	$(PYTHON) bench/bench_torch_compile.py $(BENCH_ARGS)
	$(PYTHON) bench/bench_deploy.py --cache $(BENCH_CACHE) $(BENCH_ARGS)

bench-quick:
	$(MAKE) bench BENCH_ARGS=--quick

# Trained weights of bench_deploy.py's three models are kept here between runs (training takes the longest).
BENCH_CACHE ?= build/bench-deploy

# Deployment: torch eager vs onnxruntime float32/int8 on trained resnet_tiny, resnet18 and mobilenet_v3_small,
# with every task's metric before and after int8.
bench-deploy:
	$(PYTHON) bench/bench_deploy.py --cache $(BENCH_CACHE) $(BENCH_ARGS)

# mtgraph against LibMTL (MIT licence), which is not a project dependency and not needed by CI or `make test`:
# it is installed into its own environment, LIBMTL_VENV, which reuses this environment's packages (torch,
# torchvision, mtgraph's dependencies) through a .pth file and adds LibMTL and scipy only.
LIBMTL_VENV ?= build/libmtl-venv

bench-peers: $(LIBMTL_VENV)/bin/python
	$(LIBMTL_VENV)/bin/python bench/bench_peers.py $(BENCH_ARGS)

$(LIBMTL_VENV)/bin/python:
	"$$($(PYTHON) -c 'import sys; print(sys.base_prefix)')/bin/python3" -m venv $(LIBMTL_VENV)
	$(PYTHON) -c "import site; print(site.getsitepackages()[0])" \
		> "$$($(LIBMTL_VENV)/bin/python -c 'import site; print(site.getsitepackages()[0])')/project-env.pth"
	$(LIBMTL_VENV)/bin/pip install LibMTL scipy

# The small-scale results the strategy tutorials show (docs/strategies/*.md include docs/results/<strategy>/).
# Each example runs at its default settings into build/docs-results/<strategy> (minutes each; run without -j,
# concurrent runs slow each other and skew the wall times they record), then only the files the tutorial uses
# (the Markdown fragment, its figures, every number) are copied into docs/results/<strategy>: checkpoints, caches
# and reports stay out of the site. MTSL's threads follow OMP_NUM_THREADS; the others have --threads (default 1).
DOCS_RUNS ?= build/docs-results

# $(call keep-docs-results,STRATEGY,FILES): replace docs/results/STRATEGY with FILES (paths inside the run folder).
define keep-docs-results
	rm -rf docs/results/$(1)
	for f in $(2); do mkdir -p docs/results/$(1)/$$(dirname $$f) && cp $(DOCS_RUNS)/$(1)/$$f docs/results/$(1)/$$f || exit 1; done
endef

docs-results: docs-results-mtsl docs-results-affinity docs-results-grouping docs-results-smtl docs-results-adashare

docs-results-mtsl:
	rm -rf $(DOCS_RUNS)/mtsl
	$(PYTHON) examples/mtsl_scenes.py --out $(DOCS_RUNS)/mtsl
	$(PYTHON) examples/mtsl_gamma_sweep.py --out $(DOCS_RUNS)/mtsl/gamma_sweep.json
	$(PYTHON) examples/mtsl_gamma_sweep.py --preset designed --width 4 --gamma 0.8 0.9 0.95 0.97 0.99 \
		--out $(DOCS_RUNS)/mtsl/gamma_sweep_designed.json
	$(call keep-docs-results,mtsl,results.md.inc results.json gamma_sweep.json gamma_sweep_designed.json \
		MTSL-0.8/tree.svg MTSL-0.95/tree.svg \
		MTSL-0.8/report/similarity_phase_0_block_0_after_input.png)

docs-results-affinity:
	rm -rf $(DOCS_RUNS)/affinity
	$(PYTHON) examples/affinity_scenes.py --out $(DOCS_RUNS)/affinity/results.json
	$(call keep-docs-results,affinity,results.md.inc results.json results-affinity.png results-budgets.png)

docs-results-smtl:
	rm -rf $(DOCS_RUNS)/smtl
	$(PYTHON) examples/smtl_scenes.py --out $(DOCS_RUNS)/smtl/results.json
	$(call keep-docs-results,smtl,results.md.inc results.json results-safety.png)

docs-results-grouping:
	rm -rf $(DOCS_RUNS)/grouping
	$(PYTHON) examples/grouping_scenes.py --out $(DOCS_RUNS)/grouping
	$(call keep-docs-results,grouping,results-seed0.md.inc results-seed0.json curve-seed0.png)

docs-results-adashare:
	rm -rf $(DOCS_RUNS)/adashare
	$(PYTHON) examples/adashare_scenes.py --out $(DOCS_RUNS)/adashare
	$(call keep-docs-results,adashare,results.md.inc results.json policy.png adashare.svg)

# The evaluation protocol on the designed scenes, every strategy (about 15-25 min each on an idle core; reruns
# continue where they stopped): docs/results/protocol/<strategy>/ and the summary the evidence page includes.
PROTOCOL_STRATEGIES ?= mtsl affinity adashare grouping smtl
docs-results-protocol:
	for s in $(PROTOCOL_STRATEGIES); do $(PYTHON) -m mtgraph evaluate --config examples/protocol/$$s.toml --out $(DOCS_RUNS)/protocol/$$s --threads 1 --no-progress || exit 1; done
	$(PYTHON) examples/protocol_evidence.py $(DOCS_RUNS)/protocol --out docs/results/protocol
