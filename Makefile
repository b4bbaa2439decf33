.PHONY: run test test-unit test-fast bench lint
VENV ?= .venv

run:            ## run the hub with ./config.toml (installs into .venv, starts a private broker if needed)
	bash scripts/run.sh

test:           ## the whole suite, as CI runs it
	bash scripts/test.sh

test-unit:      ## unit tests only (seconds)
	bash scripts/test.sh tests/unit

test-fast:      ## everything but the slow suites
	KITT_TEST_MARKS="not fault and not browser and not bench" bash scripts/test.sh

bench:          ## every benchmark, full size
	$(VENV)/bin/python -m bench all

lint:
	$(VENV)/bin/ruff check .
