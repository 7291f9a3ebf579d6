#!/usr/bin/env bash
# The test command: set up the environment, then run the default test suite (arguments go to pytest).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
exec python -m pytest -q "$@"
