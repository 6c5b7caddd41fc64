# Two commands for a newcomer:  `make run`  and  `make test`.
# Everything else here is what those two need on a fresh machine.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STARTER_BUNDLE ?= build/bundles/starter
APT_PACKAGES := mosquitto mosquitto-clients libsystemd-dev pkg-config
PYTEST_ARGS ?=

.PHONY: run test test-all test-platform setup system-packages bundle bench lint clean

run: setup bundle
	$(BIN)/python -m agent.demo --bundle $(STARTER_BUNDLE)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest -m "" $(PYTEST_ARGS)

# Issue 21: an emulated arm64 board (qemu-user + debootstrap) and systemd as PID 1
# (systemd-nspawn); root only, slow the first time (root filesystems and wheels are cached
# under build/platform/). Tests skip with the reason where this machine cannot.
# The emulated board's cases are independent (one qemu process each): spread them over
# workers; the systemd cases share one booted container and run in order.
test-platform: setup
	@scripts/platform/setup.sh
	$(BIN)/python -m pytest -m slow tests/platform -v -rs -n 6 --ignore=tests/platform/test_systemd.py $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m slow tests/platform/test_systemd.py -v -rs $(PYTEST_ARGS)

setup: system-packages $(VENV)/.installed

# apt where we can (root or passwordless sudo); otherwise say what is missing and go on:
# only the broker tests and systemd-python need these.
system-packages:
	@scripts/ensure-system-packages.sh $(APT_PACKAGES)

# torch and executorch are pinned together and installed in ONE pip command (see pyproject).
$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0" "executorch==1.5.1" -e ".[dev,bench,federated]"
	@if pkg-config --exists libsystemd 2>/dev/null; then \
	    $(BIN)/python -m pip install --quiet -e ".[systemd]" || echo "systemd-python failed to build; notify falls back to the raw socket protocol"; \
	 else echo "libsystemd-dev missing: systemd-python skipped (notify falls back to the raw socket protocol)"; fi
	@touch $@

# (Re-)exported when missing or written by an older mobizo-export (the agent refuses those).
# Only the shapes the dev profile uses (MeZO 1, eval 2, P-RGE dual q=4 -> 8 slices): every
# extra method adds minutes of XNNPACK lowering on a 2-core machine.
bundle: | $(VENV)/.installed
	@$(BIN)/python -c "from agent.io.bundle_files import read_manifest; read_manifest('$(STARTER_BUNDLE)')" \
	    2>/dev/null || { \
	    echo "exporting the starter bundle (random weights, made here; takes a few minutes once)"; \
	    $(BIN)/mobizo-export --preset starter --slices 1,2,8 --batch 2 --max-length 128 \
	        --max-context 256 --force --out $(STARTER_BUNDLE); }

bench: setup
	$(BIN)/mobizo-bench zo --shape starter

lint: setup
	$(BIN)/ruff check agent exporter tests
	$(BIN)/mypy agent exporter
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf build .pytest_cache
