#!/usr/bin/env bash
# The Milvus server tests (tests/test_milvus_server.py) run a real Milvus standalone server: the PyPI package
# `milvus` (embedded Milvus 2.3.5, the newest on PyPI; a launcher and the server binary, no Python dependencies),
# in its own virtual environment, .venv-milvus-server/, apart from the project's (which has pymilvus 3.x, the
# client). Creates it when missing; quick when it is there. Needs PyPI (or a mirror) the first time only.
#   scripts/ensure-milvus-server.sh [VENV]    (default: .venv-milvus-server beside this script's folder)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-milvus-server}"
MILVUS_VERSION="2.3.5"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
STAMP="$VENV/.installed-milvus-$MILVUS_VERSION"
if [ -f "$STAMP" ] && [ -x "$VENV/bin/python" ]; then exit 0; fi
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64|Linux-aarch64|Darwin-*) ;;
  *) echo "warning: the PyPI package milvus has no build for $(uname -s)-$(uname -m): the Milvus server tests will be skipped" >&2; exit 0 ;;
esac
echo "setting up $VENV (Milvus server $MILVUS_VERSION) for the Milvus server tests" >&2
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "milvus==$MILVUS_VERSION"
"$VENV/bin/python" -c "import milvus; assert milvus.__version__ == '$MILVUS_VERSION', milvus.__version__"
touch "$STAMP"
