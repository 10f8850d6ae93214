# Everything a fresh machine needs: `make demo` and `make test` install into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch; override with e.g. TORCH=torch for a CUDA machine.
TORCH ?= torch==2.13.0
CONFIG ?= configs/en-pt.yaml
# The demo reads a local copy of the corpora when one sits beside the checkout.
LOCAL_DATA := $(wildcard ../shared/data)
DEMO_DATA := $(or $(NMT_DATA_DIR),$(LOCAL_DATA))

.PHONY: install test test-plain demo serve compare bench race lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

test: install
	$(PY) -m pytest

# The suite again on the plain PyTorch model, every fast path off (nmt/fast).
test-plain: install
	NMT_FAST=0 $(PY) -m pytest

# The demo trains the default config on a shorter budget (DEMO_MINUTES) under runs/demo/.
DEMO_MINUTES ?= 10
NMT := $(VENV)/bin/nmt

demo: install
	@if [ -z "$(DEMO_DATA)" ]; then $(NMT) data download tatoeba; fi
	NMT_DATA_DIR=$(DEMO_DATA) $(NMT) data prepare --config $(CONFIG)
	NMT_DATA_DIR=$(DEMO_DATA) $(NMT) train --config $(CONFIG) --overwrite --set name=demo \
		--set train.max_minutes=$(DEMO_MINUTES) --set train.valid_every=250
	$(NMT) eval --checkpoint runs/demo --chrf
	$(NMT) translate --checkpoint runs/demo "The cat sleeps on the sofa." \
		"I would like to book a table for two, please." "Where is the nearest train station?"

# The newest run behind the page and the API on http://127.0.0.1:8000/ (Ctrl-C stops);
# SERVE_ARGS passes options, e.g. SERVE_ARGS="--checkpoint runs/demo --port 8080".
SERVE_ARGS ?=

serve: install
	$(NMT) serve $(SERVE_ARGS)

# Trains every attention variant on the same budget and writes docs/compare/ (under an hour
# on 2 CPU cores); COMPARE_ARGS passes options, e.g. COMPARE_ARGS="--steps 20000".
COMPARE_ARGS ?=

compare: install
	@if [ -z "$(DEMO_DATA)" ]; then $(NMT) data download tatoeba; fi
	NMT_DATA_DIR=$(DEMO_DATA) $(PY) scripts/compare_attention.py $(COMPARE_ARGS)

# Speed of data preparation, training and translation, with the matmul peak, in one run (about
# 4 minutes; 20-25 with all three peers). BENCH_ARGS="--peer onmt --peer joey" adds the reference
# toolkits, which ../shared/bench/setup-peers.sh installs once.
BENCH_ARGS ?=

bench: install
	@if [ -z "$(DEMO_DATA)" ]; then $(NMT) data download tatoeba; fi
	NMT_DATA_DIR=$(DEMO_DATA) $(PY) scripts/bench.py $(BENCH_ARGS)

# Time-to-BLEU race: nmt's default config, OpenNMT-py and Joey NMT trained RACE_MINUTES each
# after their first update, with nmt's recipe, on the same data and pieces, one after the other
# (two seeds for nmt and OpenNMT-py, one for Joey NMT), scored on one test split; writes
# docs/race/ (about 6 x RACE_MINUTES in all). Needs the peers of ../shared/bench/setup-peers.sh.
RACE_MINUTES ?= 20
RACE_ARGS ?=

race: install
	@if [ -z "$(DEMO_DATA)" ]; then $(NMT) data download tatoeba; fi
	test -x "$${NMT_PEERS:-$${XDG_CACHE_HOME:-$$HOME/.cache}/nmt-peers}/onmt/bin/onmt-ok" || \
		bash ../shared/bench/setup-peers.sh
	NMT_DATA_DIR=$(DEMO_DATA) $(PY) scripts/race.py --minutes $(RACE_MINUTES) $(RACE_ARGS)

lint: install
	$(VENV)/bin/ruff check nmt tests scripts

clean:
	rm -rf $(VENV) data/prepared runs .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
