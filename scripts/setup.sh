#!/usr/bin/env bash
# Set up a fresh machine: Debian's Fashion-MNIST package (real data for the main job), a virtual environment in
# .venv with torch 2.14.1 / torchvision 0.29.1 and vanillanet with every extra. Idempotent: quick when done before.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    echo "setup: installing Debian's dataset-fashion-mnist (real data for the main job)"
    $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq dataset-fashion-mnist >/dev/null \
        || echo "setup: warning: could not install dataset-fashion-mnist; the main job needs it (tests do not)" >&2
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
if ! .venv/bin/python -c "import torch, torchvision, sys; sys.exit(torch.__version__.split('+')[0] != '2.14.1')" \
        2>/dev/null; then
    echo "setup: installing torch 2.14.1 / torchvision 0.29.1 (about a minute)"
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
fi
.venv/bin/pip install -q -e ".[dev]"
echo "setup: done ($(.venv/bin/python -c 'import vanillanet, torch; print("vanillanet", vanillanet.__version__, "torch", torch.__version__)'))"
