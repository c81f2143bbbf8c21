#!/usr/bin/env bash
# One-step set-up on a fresh machine (Python 3.11+, git, apt, npm), then either the demo or the tests.
#   bash scripts/bootstrap.sh demo   install, fit a generated demo clip, serve it with the web client
#   bash scripts/bootstrap.sh test   install (with test tools, Chromium, web build), run the test suite
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-demo}"
shift || true

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$python" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip

if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "==> installing PyTorch (CUDA build)"
    python -m pip install -q torch
  else
    echo "==> installing PyTorch (CPU build)"
    python -m pip install -q torch==2.13.0
  fi
fi

sudo_cmd=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then sudo_cmd="sudo"; fi

case "$mode" in
  demo)
    echo "==> installing vatlas"
    python -m pip install -q -e .
    exec vatlas demo "$@"
    ;;
  test)
    echo "==> installing vatlas with test tools"
    python -m pip install -q -e '.[dev]'
    if [ ! -x /usr/bin/chromium ]; then
      echo "==> installing Chromium for the browser tests"
      $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq chromium >/dev/null
    fi
    if [ -f clients/web/package-lock.json ]; then
      echo "==> installing the web client's build tools"
      (cd clients/web && npm ci --no-audit --no-fund --loglevel=error)
    fi
    echo "==> running the tests"
    exec python -m pytest -q "$@"
    ;;
  *)
    echo "usage: bash scripts/bootstrap.sh demo|test [args...]" >&2
    exit 2
    ;;
esac
