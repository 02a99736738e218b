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

.PHONY: demo test lint venv browser npm milvus-server bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[web,test,train]'
	touch $@

venv: $(BIN)/.installed

# the on-device page's npm packages (package.json, pinned by package-lock.json), served by our server under
# /vendor/; `npm ci` runs again only when either file changed (node and npm are Debian packages)
node_modules/.installed: package.json package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "npm is missing: apt-get install -y npm (the page's on-device mode needs it)" >&2; exit 1; }
	npm ci --no-audit --no-fund
	touch $@

npm: node_modules/.installed

demo: $(BIN)/.installed node_modules/.installed
	$(BIN)/facial-search demo --out demo-out

browser:
	@scripts/ensure-chromium.sh
	@scripts/ensure-xvfb.sh

# the Milvus server the tests start (PyPI `milvus`, Milvus 2.3.5 standalone) in its own .venv-milvus-server/
milvus-server:
	@scripts/ensure-milvus-server.sh

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(BIN)/.installed node_modules/.installed browser milvus-server lint
	$(BIN)/python -m pytest

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/bench_index.py
	$(BIN)/python benchmarks/bench_search.py

clean:
	rm -rf demo-out .pytest_cache
