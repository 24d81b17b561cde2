#!/usr/bin/env bash
# Create or refresh the project's virtual environment in .venv.
#   scripts/bootstrap.sh          runtime only (the demo, the playbooks)
#   scripts/bootstrap.sh --dev    plus pytest, Molecule and the linters
# Re-running is cheap: pip runs only when a requirements file changed.
set -euo pipefail
cd "$(dirname "$0")/.."

req=requirements.txt
[ "${1:-}" = "--dev" ] && req=requirements-dev.txt

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "bootstrap: Python 3.11 or newer is required (found: $("$python" --version 2>&1))" >&2
    exit 1
fi

if [ ! -x .venv/bin/python ]; then
    if ! "$python" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        # Debian and Ubuntu ship venv separately; install it when we may.
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            ver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q "python${ver}-venv" >/dev/null \
                || DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
            "$python" -m venv .venv
        else
            echo "bootstrap: '$python -m venv' failed; install your distribution's python3-venv package" >&2
            exit 1
        fi
    fi
fi

stamp=".venv/.installed-$(basename "$req" .txt)"
want=$(cat requirements*.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "bootstrap: installing $req into .venv (first run takes a minute)"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -r "$req"
    echo "$want" > "$stamp"
fi
