# Relay — the two commands a fresh machine needs are `make run` and `make test`.
SHELL := /usr/bin/env bash
CARGO ?= cargo

.PHONY: help run test lint bench up build check-toolchain

## This list of targets.
help:
	@awk '/^## /{doc=substr($$0,4); next} /^[a-z-]+:/{if(doc!=""){sub(":.*","",$$1); printf "  make %-16s %s\n", $$1, doc}; doc=""}' $(MAKEFILE_LIST)

## Checks that cargo, a C compiler and libpq are there (installs libpq when it can).
check-toolchain:
	@command -v $(CARGO) >/dev/null || { echo "missing: Rust (cargo). Install it from https://rustup.rs and run again." >&2; exit 1; }
	@command -v cc >/dev/null || { echo "missing: a C compiler (Debian: apt-get install -y build-essential)." >&2; exit 1; }
	@scripts/native-deps.sh

## The three service binaries, and nothing else (what `make run` runs).
build: check-toolchain
	$(CARGO) build -p ingest-api -p persister -p push-gateway --bins

## The whole pipeline in the foreground, with local Redis and Postgres started if none answers.
run: build
	scripts/run.sh

## Every test, against real Redis and Postgres (started if none answers).
test: check-toolchain
	scripts/services.sh up
	scripts/browser-deps.sh
	$(CARGO) build --bins  # the fault tests run the real binaries
	scripts/check-openapi.sh  # the generated OpenAPI document, validated as OpenAPI 3.1
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --no-fail-fast; \
	else \
	  echo "cargo-nextest not found: running cargo test instead (cargo install cargo-nextest for nicer output)"; \
	  $(CARGO) test --workspace --no-fail-fast; \
	fi
	# The benchmark at its quick size, once, on the debug build, so it never rots.
	scripts/bench-deps.sh
	@ulimit -n 65536 2>/dev/null || true; $(CARGO) run -q -p bench --bin relay-bench -- --quick

## Formatting, lints, unused dependencies and the deployment files, as CI checks them.
lint: check-toolchain
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@$(CARGO) machete --version >/dev/null 2>&1 || { echo "installing cargo-machete (crates.io) to find unused dependencies"; $(CARGO) install --locked --quiet cargo-machete; }
	$(CARGO) machete
	scripts/lint-deploy.sh

## The load benchmark: prints its table and writes bench/results/latest.md. QUICK=1: tiny sizes, < 1 min.
bench: check-toolchain
	scripts/services.sh up
	scripts/bench-deps.sh
	$(CARGO) build --release --bins
	@ulimit -n 65536 2>/dev/null || echo "bench: cannot raise the open-files limit (now $$(ulimit -n)): the socket scenarios may fail"; \
	  target/release/relay-bench $(if $(QUICK),--quick)

## The same pipeline in containers (docker compose up --build).
up:
	docker compose up --build
