# Two commands on a fresh machine: `make run` and `make test`. Both install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: run test lint convex convex-codegen-check pytest bench install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev,containers]' --config-settings editable_mode=compat
	touch $(STAMP)

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $(NODE_STAMP)

install: $(STAMP) $(NODE_STAMP)

run: $(STAMP)
	$(BIN)/bulkjobs serve

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# convex/_generated is checked in; regenerating it offline must change nothing.
convex-codegen-check: $(NODE_STAMP)
	npx convex codegen --system-udfs --typecheck enable
	@if [ -n "$$(git status --porcelain -- convex/_generated)" ]; then \
		git status --short -- convex/_generated; \
		echo "convex/_generated is stale: run 'npx convex codegen --system-udfs --typecheck enable' and commit it"; \
		exit 1; \
	fi

convex: convex-codegen-check
	npx tsc --noEmit -p convex
	npx tsc --noEmit -p tests/convex-server
	npx tsc --noEmit -p examples/convex-frontend
	npx vitest run

# Coverage is measured for the bulk operations module (it must stay at 90% or more).
pytest: $(STAMP) $(NODE_STAMP)
	$(BIN)/pytest -q --cov=src.services.containers.bulk_operations --cov-report=term \
		--cov-fail-under=90

test: lint convex pytest

bench: $(STAMP) $(NODE_STAMP)
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/exports.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/convex_store.py
	$(BIN)/python bench/convex_latency.py
	$(BIN)/python bench/containers.py
	$(BIN)/python bench/worker.py
	$(BIN)/python bench/bulk_ops.py

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache
