# nibble: two commands do all the set-up (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
HOST ?= 127.0.0.1
PORT ?= 8000
# Seconds in-flight requests get after SIGTERM before they are stopped (SECURITY.md, graceful shutdown).
GRACE ?= 30
# What one server process holds (SECURITY.md, "Connections"; the same as `nibble serve` and the Dockerfile).
# The guarded event loop bounds each request head in time and size, and the open connections (app/connections.py).
UVICORN_LIMITS ?= --loop app.connections:GuardedEventLoop --limit-concurrency 256 --timeout-keep-alive 5 --backlog 256

.PHONY: run test lint bench openapi docker-smoke clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['tool']['nibble']['reference-decoders'])" \
		| xargs $(BIN)/pip install --quiet --no-deps
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/uvicorn app.main:app --host $(HOST) --port $(PORT) --timeout-graceful-shutdown $(GRACE) $(UVICORN_LIMITS)

lint: $(STAMP)
	$(BIN)/ruff check app quant_core tests benchmarks
	$(BIN)/mypy --strict quant_core

test: lint
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/plan_bench.py
	$(BIN)/python benchmarks/quantize_bench.py
	$(BIN)/python benchmarks/api_bench.py
	$(BIN)/python benchmarks/load_test.py
	$(BIN)/python benchmarks/upload_under_load.py

openapi: $(STAMP)
	$(BIN)/python -m app.openapi_export openapi/openapi.json

# Needs a Docker daemon and the base image; not part of `make test` (BASE_IMAGE: see README, Docker).
BASE_IMAGE ?= python:3.11-slim
docker-smoke:
	.ci/docker_smoke $(BASE_IMAGE)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
