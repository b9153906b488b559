# The README's two promises: `make demo` and `make test` work on a fresh clone.
# Everything they need is installed here, from the project's own files.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
NODE_STAMP := node_modules/.installed-stamp

.PHONY: setup system-packages demo test lint bench bench-pipeline bench-monitor bench-gateway bench-gateway-quick clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "error: Python 3.11 or newer is needed (set PYTHON=...)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# anvil (a real local EVM node) for the gateway, indexer and pipeline tests, pinned in
# package.json and package-lock.json; `npm ci` installs exactly the lock and never rewrites it.
$(NODE_STAMP): package.json package-lock.json
	@command -v npm >/dev/null || { echo "error: npm is needed to install anvil"; exit 2; }
	npm ci --no-audit --no-fund --loglevel=error
	@test -x node_modules/.bin/anvil || { echo "error: anvil did not install"; exit 2; }
	@touch $(NODE_STAMP)

# Real components the tests run: Prometheus (promtool test rules, a real scrape),
# Alertmanager (delivering to the monitor) and
# headless Chromium (the status page), from Debian's packages.
system-packages:
	@scripts/debian-packages.sh promtool:prometheus prometheus:prometheus \
	  prometheus-alertmanager:prometheus-alertmanager chromium:chromium

setup: $(STAMP) $(NODE_STAMP) system-packages

demo: setup
	bash examples/demo.sh

# Benchmarks are type-checked too (they rot silently otherwise), as scripts from their own
# directory since they import their siblings; cel_compare.py is a one-off comparison with
# optional peer libraries, kept for its write-up (bench/README.md), not maintained code.
BENCH_TYPED := $(filter-out cel_compare.py,$(notdir $(wildcard bench/*.py)))

lint: setup
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/ruff format --check src tests bench scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy tests
	cd bench && ../$(VENV)/bin/mypy --config-file ../pyproject.toml $(BENCH_TYPED)
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest

# The whole ledger benchmark in one run: 10^3 to 10^6 transactions (about 7 minutes here).
bench: setup
	$(PY) bench/ledger.py --full

bench-pipeline: setup
	$(PY) bench/pipeline.py

bench-monitor: setup
	$(PY) bench/monitor.py

# The gateway benchmark runs HAProxy (the generic load balancer baseline) and wrk.
bench-gateway: setup
	@scripts/debian-packages.sh haproxy:haproxy wrk:wrk
	$(PY) bench/gateway.py

bench-gateway-quick: setup
	@scripts/debian-packages.sh haproxy:haproxy wrk:wrk
	$(PY) bench/gateway.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis demo-out
