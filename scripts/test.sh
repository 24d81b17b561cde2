#!/usr/bin/env bash
# The whole test suite, as CI runs it: provisioning, lint, pytest (PostgreSQL 15 and 18),
# Molecule (every scenario, against a PostgreSQL container).
#
#   scripts/test.sh                 everything
#   scripts/test.sh pytest [ARGS]   only pytest (ARGS go to pytest)
#   scripts/test.sh molecule [S]    only Molecule (scenario S, default all)
#   scripts/test.sh lint            only ansible-lint and yamllint
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
[ $# -gt 0 ] && shift

scripts/provision.sh
export PATH="$PWD/.venv/bin:$PATH"
# No registry here: Molecule uses the image built from Debian's packages unless told otherwise.
export PGPART_PG_IMAGE=${PGPART_PG_IMAGE:-pgpart/postgres:15-local}
export ANSIBLE_FORCE_COLOR=0 PY_COLORS=0

run_lint() {
    echo "== lint"
    timeout 900 yamllint -s .
    timeout 900 ansible-lint
}

run_pytest() {
    echo "== pytest (PostgreSQL ${PGPART_TEST_VERSIONS:-15,18})"
    timeout 2400 python -m pytest -q -p no:cacheprovider "$@" tests
}

run_molecule() {
    local scenarios=("$@")
    if [ ${#scenarios[@]} -eq 0 ]; then
        mapfile -t scenarios < <(find molecule -mindepth 2 -maxdepth 2 -name molecule.yml -printf '%h\n' \
                                  | xargs -n1 basename | sort)
    fi
    for scenario in "${scenarios[@]}"; do
        echo "== molecule test -s $scenario"
        timeout 900 molecule test -s "$scenario"
    done
}

case "$what" in
    all) run_lint; run_pytest; run_molecule ;;
    lint) run_lint ;;
    pytest) run_pytest "$@" ;;
    molecule) run_molecule "$@" ;;
    *) echo "usage: scripts/test.sh [all|lint|pytest [ARGS]|molecule [SCENARIO]]" >&2; exit 2 ;;
esac
echo "== all green"
