# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test torture lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,demo]'
	@rm -f $(VENV)/.installed-* && touch $@

# The daemon on the shipped config.toml, with a local capture SMTP server on
# 127.0.0.1:2525 that saves every message under var/outbox/ as an .eml file.
run: $(STAMP)
	$(BIN)/warmupd check --config config.toml
	@mkdir -p var/outbox
	@set -e; \
	$(BIN)/python -m warmupd.capture --host 127.0.0.1 --port 2525 --dir var/outbox & cap=$$!; \
	trap 'kill $$cap 2>/dev/null; wait $$cap 2>/dev/null' EXIT INT TERM; \
	$(BIN)/warmupd run --config config.toml

# Sets everything up (Dovecot and libfaketime through apt when missing), lints,
# type-checks the package (mypy --strict) and runs the tests. The tests start and
# stop their own SMTP and IMAP servers.
test: $(STAMP)
	bash tests/rig/ensure_packages.sh
	$(BIN)/ruff check warmupd tests bench
	$(BIN)/mypy --strict warmupd
	@set +e; $(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests (exit 5): nothing to fail"; exit 0; fi; exit $$rc

# The torture suite's long forms (many kills, fuzz examples and faults): the figures in
# the README. The quick forms run in `make test`.
torture: $(STAMP)
	bash tests/rig/ensure_packages.sh
	$(BIN)/python -m pytest -q -s tests/torture --long

lint: $(STAMP)
	$(BIN)/ruff check warmupd tests bench
	$(BIN)/mypy --strict warmupd

bench: $(STAMP)
	$(BIN)/python bench/plan.py
	$(BIN)/python bench/fire.py

clean:
	rm -rf $(VENV) var build *.egg-info
