#!/usr/bin/env bash
# Install what the web-page test (tests/test_web_page.py) drives: Debian's Chromium, and optionally the playwright
# Python package into a virtual environment. Does nothing that is already there. Never runs `playwright install`
# (that downloads browser builds); playwright drives the system Chromium through executable_path.
#
# Usage: scripts/install_chromium.sh [PYTHON]     e.g. scripts/install_chromium.sh .venv/bin/python
#   PYTHON  the interpreter whose environment needs playwright (skipped when omitted)
# Env: PERSONAFUSE_SKIP_CHROMIUM=1 skips everything (the test then skips itself with the reason).
set -euo pipefail

if [[ "${PERSONAFUSE_SKIP_CHROMIUM:-0}" == "1" ]]; then
  echo "install_chromium: skipped (PERSONAFUSE_SKIP_CHROMIUM=1)"
  exit 0
fi

if command -v chromium >/dev/null 2>&1 || [[ -x /usr/bin/chromium ]]; then
  :
elif command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [[ "$(id -u)" != "0" ]]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
      echo "install_chromium: not root and no sudo; install Debian's chromium by hand (the web test will skip)" >&2
      exit 0
    fi
  fi
  echo "install_chromium: installing Debian's chromium (apt-get)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
else
  echo "install_chromium: no apt-get here; install Chromium by hand (the web test will skip)" >&2
  exit 0
fi

if [[ $# -ge 1 ]]; then
  PYTHON="$1"
  if ! "$PYTHON" -c "import playwright.sync_api" >/dev/null 2>&1; then
    echo "install_chromium: installing the playwright package into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
    "$PYTHON" -m pip install -q playwright
  fi
fi
echo "install_chromium: $(chromium --version 2>/dev/null || echo 'chromium present')"
