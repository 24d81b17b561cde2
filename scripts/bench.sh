#!/usr/bin/env bash
# The benchmarks (bench/README.md): creates the virtual environment, then runs bench/run.py on
# a throwaway PostgreSQL.  `scripts/bench.sh --help` for the options; --ablate for bench/ablate.py.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
if [ "${1:-}" = "--ablate" ]; then
    shift
    exec .venv/bin/python bench/ablate.py "$@"
fi
exec .venv/bin/python bench/run.py "$@"
