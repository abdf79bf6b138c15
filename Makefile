# Shortcuts for the scripts in scripts/, which are the real commands (a machine without make
# runs them directly). Each creates .venv if missing and installs what it needs.
#   make demo    see the dispatcher work end to end (throwaway PostgreSQL, local receiver)
#   make test    ruff (lint, format check), mypy and the whole test suite
#   make lint    ruff (lint, format check) and mypy only
#   make bench   the benchmark (python -m bench; ARGS=--small for a short run)
# Extra arguments: make test ARGS='-k demo -x'

ARGS ?=

.PHONY: demo test lint bench

demo:
	./scripts/demo $(ARGS)

test:
	./scripts/test $(ARGS)

lint:
	./scripts/lint

bench:
	@test -f bench/__main__.py || { echo "no benchmark in this checkout (bench/)"; exit 1; }
	bash -c 'source scripts/venv.sh && ensure_venv test'
	.venv/bin/python -m bench $(ARGS)
