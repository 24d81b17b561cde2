#!/usr/bin/env bash
# The demo: creates the virtual environment, starts a throwaway PostgreSQL, generates the
# sample database and deploys it with a live writer. `scripts/demo.sh --help` for the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python tools/demo.py "$@"
