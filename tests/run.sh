#!/usr/bin/env bash
# The project's one test command:   bash tests/run.sh [pytest args]
#
# Creates a virtual environment (default: .venv in the repository root; override with CVAE_VENV=DIR), installs the
# project into it with `pip install -e ".[dev]"` when pyproject.toml changed since the last install, then runs pytest
# with the given arguments and exits with pytest's status. Needs only python3 >= 3.11 (override with PYTHON=...).
#
# torch comes from the pin in pyproject.toml. On Linux, PyPI's torch wheels are CUDA builds (several GB); for the CPU
# build run it once as   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu bash tests/run.sh
# (pip honours PIP_* variables and its own configuration, e.g. find-links, as usual).
#
# Examples:   bash tests/run.sh -q            bash tests/run.sh -m "not slow"            bash tests/run.sh -k generate
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$(pwd)"
venv="${CVAE_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

command -v "$python" >/dev/null || { echo "tests/run.sh: $python not found (set PYTHON=...)" >&2; exit 2; }
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "tests/run.sh: needs Python >= 3.11, $python is $("$python" -V 2>&1)" >&2; exit 2; }

if [[ ! -x "$venv/bin/python" ]]; then
    echo "tests/run.sh: creating $venv" >&2
    "$python" -m venv "$venv"
fi

# Reinstall only when the project's metadata, the checkout's location or the venv's Python changed.
stamp="$venv/.cvae-digits-install"
key="$("$venv/bin/python" - "$root" <<'EOF'
import hashlib, sys
root = sys.argv[1]
h = hashlib.sha256(open(f"{root}/pyproject.toml", "rb").read())
h.update(f"{root}\n{sys.version}".encode())
print(h.hexdigest())
EOF
)"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$key" ]]; then
    echo "tests/run.sh: installing the project into $venv (pip install -e \".[dev]\")" >&2
    rm -f "$stamp"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root[dev]"
    echo "$key" >"$stamp"
fi

exec "$venv/bin/python" -m pytest "$@"
