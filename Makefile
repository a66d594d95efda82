# export-relay: run `make help` for the list.
SHELL := /bin/bash
VENV := .venv
LINT_VENV := .venv-lint
CHECKOV_VENV := .venv-checkov
BENCH_VENV := .venv-bench
BENCH_EXAMPLES := $(foreach e,bench_copy bench_checks bench_gen bench_serve bench_sim bench_poll bench_poll_timing,--example $(e))
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export CARGO_LAMBDA := $(CURDIR)/$(VENV)/bin/cargo-lambda

.PHONY: help venv test unit lint build deploy demo bench bench-poll mutants clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed ## Install moto, the SAM translator and cargo-lambda into .venv

test: venv ## Run every test: unit, and integration against moto, the simulator and the Runtime API
	scripts/with-moto.sh cargo test --workspace --locked

unit: ## Run the unit tests only (no moto needed)
	cargo test --workspace --locked --lib --bins

$(LINT_VENV)/.installed: requirements-lint.txt
	python3 -m venv $(LINT_VENV)
	$(LINT_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-lint.txt
	touch $@

$(CHECKOV_VENV)/.installed: requirements-checkov.txt
	python3 -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-checkov.txt
	touch $@

lint: $(LINT_VENV)/.installed $(CHECKOV_VENV)/.installed ## cargo fmt, clippy with -D warnings, sam validate --lint, checkov
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	AWS_DEFAULT_REGION=us-east-1 $(LINT_VENV)/bin/sam validate --lint --region us-east-1
	@# --skip-download: no fetching of the vendor's guidelines, which needs the internet.
	$(CHECKOV_VENV)/bin/checkov --file template.yaml --framework cloudformation --skip-download --compact --quiet

build: venv ## Release build, and the arm64 Lambda zip through cargo-lambda
	cargo build --release --locked
	cargo lambda build --release --arm64 --bin bootstrap --output-format zip

deploy: ## Build and deploy with SAM, asking for every setting
	$(LINT_VENV)/bin/sam build && $(LINT_VENV)/bin/sam deploy --guided

demo: venv ## Run the whole relay locally: simulator, moto, webhook receiver and the real Lambda binary
	@echo "building the Lambda binary and the demo driver..."
	@cargo build --locked --bin bootstrap --example demo || { echo "demo FAILED at the build step"; exit 1; }
	@scripts/with-moto.sh target/debug/examples/demo

$(BENCH_VENV)/.installed: bench/requirements.txt
	python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	touch $@

.bench-tools/bin/s3s-fs:
	cargo install s3s-fs@0.14.1 --features binary --locked --root .bench-tools

bench: venv $(BENCH_VENV)/.installed .bench-tools/bin/s3s-fs ## Benchmarks against the peers, on loopback: writes BENCHMARKS.md
	@[ -x /usr/bin/time ] || apt-get install -y time
	cargo build --release --locked --bin bootstrap $(BENCH_EXAMPLES)
	cargo lambda build --release --arm64 --bin bootstrap --output-format zip
	$(BENCH_VENV)/bin/python bench/run.py
	$(BENCH_VENV)/bin/python bench/report.py

bench-poll: venv $(BENCH_VENV)/.installed ## The polling table alone (about 10 min of real delays): into BENCHMARKS.md
	cargo build --release --locked --example bench_poll_timing
	$(BENCH_VENV)/bin/python bench/run.py --only poll-timing
	$(BENCH_VENV)/bin/python bench/report.py

MUTANTS_VERSION := 27.1.0
# The fault-handling modules docs/RELIABILITY.md promises; `make mutants MUTANTS_FILES=src/http.rs`
# runs one of them (docs/RELIABILITY.md says which are done, with the tests each was judged by).
MUTANTS_FILES ?= src/deadletter.rs src/http.rs src/requeue.rs 'src/integrity/*.rs' src/manifest.rs \
	src/notify.rs src/dealmachine.rs 'src/transfer/*.rs'
# The test binaries built and run for each mutant, and a name filter within them (empty: all).
MUTANTS_TARGETS ?= --lib --test=api
MUTANTS_TESTS ?=
MUTANTS_OUT ?= target/mutants-out
# Two mutants at once, each in its own build directory: the tests mostly wait on loopback, so this
# nearly halves a run on 2 cores. A mutant that makes a loop endless is stopped at the timeout.
MUTANTS_ARGS ?= --jobs 2 --timeout 120

# One module at a time, with the tests that exercise it: `make mutants-notify` reruns a row of
# docs/RELIABILITY.md's mutation table.
mutants-http: MUTANTS_FILES = src/http.rs src/deadletter.rs
mutants-http: MUTANTS_TESTS = http:: batch:: hardening:: redrive::
mutants-integrity: MUTANTS_FILES = 'src/integrity/*.rs'
mutants-integrity: MUTANTS_TESTS = integrity:: delivery:: resume:: copy::
mutants-requeue: MUTANTS_FILES = src/requeue.rs
mutants-requeue: MUTANTS_TARGETS = --lib --test=properties --test=api
mutants-requeue: MUTANTS_TESTS = requeue:: poll_delays poll:: timing::
mutants-notify: MUTANTS_FILES = src/notify.rs
mutants-notify: MUTANTS_TESTS = notify:: webhook:: outcomes:: replay:: contract:: a_direct_invoke
mutants-dealmachine: MUTANTS_FILES = src/dealmachine.rs
mutants-dealmachine: MUTANTS_TESTS = dealmachine:: contract:: credentials:: poll:: outcomes:: hardening:: sweep::
mutants-transfer: MUTANTS_FILES = 'src/transfer/*.rs'
mutants-transfer: MUTANTS_TESTS = transfer:: delivery:: resume:: copy:: hardening:: at_least_once:: http2:: \
	contract:: presigned
mutants-manifest: MUTANTS_FILES = src/manifest.rs
mutants-manifest: MUTANTS_TESTS = manifest:: at_least_once:: resume:: replay:: sweep:: contract:: delivery:: \
	redrive:: webhook::
MUTANTS_MODULES := http integrity requeue notify dealmachine transfer manifest
.PHONY: $(addprefix mutants-,$(MUTANTS_MODULES))
$(addprefix mutants-,$(MUTANTS_MODULES)): mutants-%:
	$(MAKE) mutants MUTANTS_FILES="$(MUTANTS_FILES)" MUTANTS_TARGETS="$(MUTANTS_TARGETS)" \
		MUTANTS_TESTS="$(MUTANTS_TESTS)" MUTANTS_OUT=target/mutants-$*

.bench-tools/bin/cargo-mutants:
	cargo install --locked cargo-mutants@$(MUTANTS_VERSION) --root .bench-tools

mutants: venv .bench-tools/bin/cargo-mutants ## Mutation testing of the fault handling against moto (hours; not in CI); mutants-<module> runs one
	CONSUMER_PYTHON=$(CURDIR)/$(VENV)/bin/python3 scripts/with-moto.sh .bench-tools/bin/cargo-mutants mutants \
		--baseline=run --no-shuffle --profile mutants $(foreach f,$(MUTANTS_FILES),--file $(f)) \
		$(foreach t,$(MUTANTS_TARGETS),--cargo-arg=$(t)) --output $(MUTANTS_OUT) $(MUTANTS_ARGS) \
		$(if $(MUTANTS_TESTS),-- -- $(MUTANTS_TESTS))

clean: ## Remove build output and the local virtualenvs
	cargo clean
	rm -rf $(VENV) $(LINT_VENV) $(CHECKOV_VENV) $(BENCH_VENV) .bench-tools
