# convserve: `make demo` and `make test` set up .venv/ when missing (idempotent, fast when present).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SERVE_STAMP := $(VENV)/.installed-serve
FULL_STAMP := $(VENV)/.installed-full
PYTEST_ARGS ?=
MODELS_ARGS ?=

.PHONY: demo console test lint models protos bench bench-quick loadtest fuzz soak clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Serving dependencies only (no torch): what `make demo` needs.
$(SERVE_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[cpu]'
	touch $@

# Everything: serving, export (torch, onnx, training data), dev tools.
$(FULL_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[cpu,export,dev]'
	touch $@ $(SERVE_STAMP)

demo: $(SERVE_STAMP)
	$(PY) -m examples.demo

# The demo, then the server stays up with the browser console on http://127.0.0.1:8000/ until Ctrl-C.
console: $(SERVE_STAMP)
	$(PY) -m examples.demo --serve --http-port $${CONSOLE_PORT:-8000}

# pytest exits 5 when it collected no tests: that must fail, not pass silently.
# The Prometheus test runs a real Prometheus server: installed (Debian package) when missing; the
# perf_analyzer test runs Triton's perf_analyzer: fetched (PyPI wheels, Debian libb64) when missing;
# the browser-console test runs Debian's chromium and chromium-driver: installed when missing.
test: $(FULL_STAMP)
	@$(MAKE) --no-print-directory lint
	@bash scripts/ensure_prometheus.sh
	@bash scripts/ensure_perf_analyzer.sh
	@bash scripts/ensure_chromium.sh
	@$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# ruff (pinned in the dev extra, configured in pyproject.toml): lint findings and formatting, zero of each.
lint: $(FULL_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Rebuilds every bundled model whose training fits --max-minutes (default 30) and prints which it
# skips and why; `make models MODELS_ARGS=--list` prints the plan only, MODELS_ARGS="--only yolo_grid" forces one.
models: $(FULL_STAMP)
	$(PY) -m export.cli models $(MODELS_ARGS)

protos: $(FULL_STAMP)
	$(PY) scripts/generate_protos.py

bench: $(FULL_STAMP)
	$(PY) -m bench.run

bench-quick: $(FULL_STAMP)
	$(PY) -m bench.run --quick

loadtest: $(SERVE_STAMP)
	$(PY) -m bench.loadtest_demo

fuzz: $(FULL_STAMP)
	$(PY) -m pytest -q tests/fuzz --hypothesis-profile=long

soak: $(FULL_STAMP)
	$(PY) -m bench.soak

clean-venv:
	rm -rf $(VENV)
