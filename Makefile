# facial-search: the two commands a fresh machine needs
#   make demo   index the built-in memes, match the sample photos, write demo-out/index.html + results.png
#   make test   set up and run the test suite (lint included)
# Both create or update the virtual environment in .venv/.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
# use the project's copy of the landmarker model when ../shared is beside the checkout (else: cache/download)
ifneq ($(wildcard $(SHARED)/models/face_landmarker.task),)
export FACIAL_SEARCH_MODELS ?= $(abspath $(SHARED)/models)
endif

.PHONY: demo test lint venv browser bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[web,test,train]'
	touch $@

venv: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/facial-search demo --out demo-out

browser:
	@scripts/ensure-chromium.sh
	@scripts/ensure-xvfb.sh

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(BIN)/.installed browser lint
	$(BIN)/python -m pytest

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/bench_index.py
	$(BIN)/python benchmarks/bench_search.py

clean:
	rm -rf demo-out .pytest_cache
