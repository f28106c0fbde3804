#!/usr/bin/env bash
# The project's one test command:   bash tests/run.sh [pytest args]
#
# Creates a virtual environment (default: .venv in the repository root; override with CVAE_VENV=DIR) and, when
# pyproject.toml or the lock changed since the last install, installs into it: torch at the version pyproject.toml
# pins, then requirements/dev.txt (every other package: exact versions with hashes), then the project itself
# (editable, without dependencies), checked with `pip check`; and kserve's client, requirements/kserve.txt, into a
# venv of its own inside it. Then runs pytest with the given arguments and exits with pytest's status. Needs only
# python3 >= 3.11 (override with PYTHON=...).
#
# torch is installed by itself because its build depends on the machine. On Linux, PyPI's torch wheels are CUDA
# builds (several GB); for the CPU build run it once as
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu bash tests/run.sh
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

# Reinstall only when the project's metadata, the lock, the checkout's location or the venv's Python changed.
stamp="$venv/.cvae-digits-install"
key="$("$venv/bin/python" - "$root" <<'EOF'
import hashlib, sys
root = sys.argv[1]
h = hashlib.sha256(open(f"{root}/pyproject.toml", "rb").read() + open(f"{root}/requirements/dev.txt", "rb").read())
h.update(f"{root}\n{sys.version}".encode())
print(h.hexdigest())
EOF
)"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$key" ]]; then
    torch="$("$venv/bin/python" -c 'import re, sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
print(next(d for d in deps if re.match(r"torch\s*==", d)))' "$root/pyproject.toml")"
    echo "tests/run.sh: installing into $venv: $torch, requirements/dev.txt, the project (editable)" >&2
    rm -f "$stamp"
    pip=("$venv/bin/python" -m pip --disable-pip-version-check)
    "${pip[@]}" install --quiet "$torch"
    "${pip[@]}" install --quiet --require-hashes -r "$root/requirements/dev.txt"
    # --no-build-isolation: built with the locked setuptools (a dependency of torch's); nothing unlocked is fetched
    "${pip[@]}" install --quiet --no-deps --no-build-isolation -e "$root"
    "${pip[@]}" check
    echo "$key" >"$stamp"
fi

# kserve's client, for tests/system/test_oip_clients.py: requirements/kserve.txt in a venv of its own (override with
# CVAE_KSERVE_VENV=DIR), since it cannot join requirements/dev.txt (docs/dependencies.md). The test runs its Python,
# CVAE_KSERVE_PYTHON, as a client process against the service. Reinstalled when the lock or the Python changed.
kserve_venv="${CVAE_KSERVE_VENV:-$venv/kserve-client}"
kserve_stamp="$kserve_venv/.cvae-digits-install"
kserve_key="$(sha256sum "$root/requirements/kserve.txt" | cut -d' ' -f1) $("$python" -V 2>&1)"
if [[ "$(cat "$kserve_stamp" 2>/dev/null)" != "$kserve_key" ]]; then
    echo "tests/run.sh: installing requirements/kserve.txt into $kserve_venv (kserve's client)" >&2
    [[ -x "$kserve_venv/bin/python" ]] || "$python" -m venv "$kserve_venv"
    rm -f "$kserve_stamp"
    kserve_pip=("$kserve_venv/bin/python" -m pip --disable-pip-version-check)
    "${kserve_pip[@]}" install --quiet --require-hashes -r "$root/requirements/kserve.txt"
    "${kserve_pip[@]}" check
    echo "$kserve_key" >"$kserve_stamp"
fi
export CVAE_KSERVE_PYTHON="$kserve_venv/bin/python"

exec "$venv/bin/python" -m pytest "$@"
