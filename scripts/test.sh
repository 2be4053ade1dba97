#!/usr/bin/env bash
# Install everything the test suite needs into .venv, then run it.
#
#   scripts/test.sh            # the whole suite
#   scripts/test.sh -k stream  # extra arguments go to pytest
#
# torch is pinned to 2.13.0, the version the suite is checked with. A torch
# 2.13.0 already installed in .venv (e.g. the CPU build from PyTorch's CPU
# wheel index) is kept; otherwise pip takes PyPI's, which on Linux x86-64 is
# the multi-GB CUDA build (see README, "Quick start"). The browser test drives Debian's
# chromium (no browser download) and `streamgen camera`'s screen and window
# tests an Xvfb display; both are installed with apt-get when we are root,
# otherwise those tests are skipped with a message saying why.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0" -e '.[test]'

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v Xvfb >/dev/null 2>&1 || missing+=(xvfb)
# the deployment tests run the shipped proxy configs (deploy/) with the real servers
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v turnserver >/dev/null 2>&1 || missing+=(coturn)  # TURN: relay-only clients stream through a real one
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian ${missing[*]} for the browser, screen-capture, preview-window, proxy and TURN tests..."
    apt-get update -qq
    # packages with services (nginx, haproxy, coturn) must not start them here: the tests run their own
    policy=/usr/sbin/policy-rc.d ours=""
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; ours=1; trap 'rm -f "$policy"' EXIT; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    if [ -n "$ours" ]; then rm -f "$policy"; trap - EXIT; fi
fi
export PATH="$PATH:/usr/sbin"

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec .venv/bin/python -m pytest "$@"
