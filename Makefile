# medbook: the two commands are `make dev` (run the system) and `make test` (run the tests).
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: dev test bench lint format lock system-deps install install-dev clean-dev images

## Run the whole system locally (installs what is missing first). Ctrl-C stops everything.
dev: install
	scripts/install-system-deps
	$(BIN)/medbook dev

## Install what the tests need, then run them (slowest tests listed at the end).
test: install-dev
	scripts/install-system-deps --test
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest $(PYTEST_ARGS)

## The benchmark on a fresh local system, in one run: the design's ceiling and medbook's ratio to
## it, the closed-loop figure, open-loop latency at 50% and 80% of it, tracing off/10%/100%,
## and the good bookings' latency with 1 request in 10 hostile.
## BENCH_ARGS adds options (e.g. BENCH_ARGS="--data 1000000 --backlog 100000", or -n, -c, --json).
BENCH_RUNS ?= --ceiling --rate 50% --rate 80% --sampling 10% --sampling 100% --hostile 10%
bench: install
	scripts/install-system-deps
	$(BIN)/medbook bench --local $(BENCH_RUNS) $(BENCH_ARGS)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## Re-resolve the lock files after changing pyproject.toml: the whole development set first,
## then each image's subset (and `make dev`'s) at the same versions.
COMPILE := $(BIN)/uv pip compile -q pyproject.toml --python-version 3.11 --universal
lock:
	$(COMPILE) --extra dev -o requirements-dev.lock
	$(COMPILE) -c requirements-dev.lock --extra booking --extra discount --extra operator \
		--extra cli --extra dev-stack -o requirements.lock
	$(COMPILE) -c requirements-dev.lock --extra booking -o requirements-booking.lock
	$(COMPILE) -c requirements-dev.lock --extra discount --extra operator -o requirements-discount.lock

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(VENV)/.installed: pyproject.toml requirements.lock scripts/bootstrap
	scripts/bootstrap
	touch $@

$(VENV)/.installed-dev: pyproject.toml requirements-dev.lock scripts/bootstrap
	scripts/bootstrap --dev
	touch $@ $(VENV)/.installed

clean-dev:
	rm -rf .data

## Build the container images (medbook-booking, medbook-discount) with buildah; IMAGES_ARGS
## goes to scripts/build-images (e.g. IMAGES_ARGS="--tag dev --archive build/images").
images:
	scripts/build-images $(IMAGES_ARGS)
