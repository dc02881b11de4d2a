#!/usr/bin/env bash
# Prepare a host for pyapply's development and tests: system packages, the virtualenv,
# a running dockerd, the locally built test image and a local registry holding it (for the
# pull tests), then our modules' bytecode. Idempotent: on a host where all of it
# is already present it only checks, and finishes in a few seconds.
#
# Usage: scripts/setup.sh [--dry-run] [--native] [--list-packages]
#   --dry-run (or DRY_RUN=1) prints the steps it would take;
#   --native prepares only what the native runtime needs (the demo): the packages of the
#   programs it runs (runtime/native/hostbins.py: runc, conmon, tini, iptables, git),
#   busybox-static and the virtualenv; no dockerd, no registry;
#   --list-packages prints the Debian packages it would make sure of, and stops.
# Overrides (mainly for testing the start path on a scratch daemon):
#   PYAPPLY_DOCKERD_LOG, PYAPPLY_DOCKERD_PIDFILE, PYAPPLY_DOCKERD_ARGS, PYAPPLY_DOCKERD_WAIT,
#   PYAPPLY_REGISTRY_ADDR, PYAPPLY_REGISTRY_DIR, PYAPPLY_REGISTRY_LOG, PYAPPLY_REGISTRY_PIDFILE,
#   PYAPPLY_REGISTRY_WAIT.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

dry_run=${DRY_RUN:-0}
native_only=0
list_packages=0
for arg in "$@"; do
    case "$arg" in
        --dry-run|-n) dry_run=1 ;;
        --native) native_only=1 ;;
        --list-packages) list_packages=1 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "setup: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

dockerd_log=${PYAPPLY_DOCKERD_LOG:-/var/log/pyapply-dockerd.log}
dockerd_pidfile=${PYAPPLY_DOCKERD_PIDFILE:-/run/pyapply-dockerd.pid}
dockerd_wait=${PYAPPLY_DOCKERD_WAIT:-60}
# Word-split on purpose: extra daemon flags.
read -r -a dockerd_args <<<"${PYAPPLY_DOCKERD_ARGS:-}"

venv=.venv
stamp=$venv/.pyapply-installed

step() { printf 'setup: %s\n' "$*"; }
run() {
    if [ "$dry_run" = 1 ]; then
        printf 'setup: [dry-run] would run: %s\n' "$*"
    else
        "$@"
    fi
}
as_root() {
    if [ "$(id -u)" -eq 0 ]; then run "$@"; else run sudo "$@"; fi
}

# --- 1. system packages --------------------------------------------------------------------
# Every program the native runtime runs comes from a package named next to it in
# runtime/native/hostbins.py (one list; a test holds the code to it). busybox-static makes the
# demo's image.
mapfile -t runtime_packages < <(python3 runtime/native/hostbins.py packages)
[ ${#runtime_packages[@]} -gt 0 ] || { echo "setup: runtime/native/hostbins.py listed no packages" >&2; exit 1; }
packages=("${runtime_packages[@]}" busybox-static ca-certificates)
if [ "$native_only" = 0 ]; then
    # the docker runtime and the tests: dockerd, compose and skopeo to compare with, a
    # registry, a C compiler for the syscall probes, debootstrap for the fresh-machine check,
    # chattr (e2fsprogs) for the read-only history fault, sshd (openssh-server) for the
    # agent's git-over-ssh test, headless chromium and its driver for the dashboard's browser
    # tests, buildah for bench_build to compare with
    packages+=(docker.io docker-compose skopeo docker-registry gcc libc6-dev debootstrap e2fsprogs
        openssh-server chromium chromium-driver buildah)
fi
if [ "$list_packages" = 1 ]; then
    printf '%s\n' "${packages[@]}"
    exit 0
fi
missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$pkg")
    fi
done
# `python3 -m venv` needs ensurepip; Debian's own python3 ships it separately.
if [ ! -x "$venv/bin/python" ] && ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
    step "installing packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -q
    as_root apt-get install -y -q --no-install-recommends "${missing[@]}"
    if [[ " ${missing[*]} " == *" openssh-server "* ]]; then
        # The tests start their own sshd on a loopback port. The package's service would
        # listen on every address of this machine: stop and disable what we just installed
        # (an sshd that was here before is not touched).
        if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
            as_root systemctl disable --now ssh.service ssh.socket >/dev/null 2>&1 || true
        else
            as_root service ssh stop >/dev/null 2>&1 || true
            as_root update-rc.d ssh disable >/dev/null 2>&1 || true
        fi
    fi
else
    step "packages: all present"
fi

# --- 2. virtualenv ---------------------------------------------------------------------------
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c '' >/dev/null 2>&1; then
    step "virtualenv: $venv exists"
else
    step "virtualenv: creating $venv"
    run rm -rf "$venv"
    run python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    step "virtualenv: pip install -e '.[dev]' (pyproject.toml changed or never installed)"
    # compat mode: a plain path entry in a .pth file. The default (an import-hook finder) costs
    # every pyapply start about 25 ms, a tenth of a no-op apply.
    run "$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]' \
        --config-settings editable_mode=compat
    run touch "$stamp"
else
    step "virtualenv: dependencies up to date"
fi

if [ "$native_only" = 1 ]; then
    run "$venv/bin/python" -m compileall -q reconciler runtime
    step "done (native runtime only)"
    exit 0
fi

# --- 3. dockerd ------------------------------------------------------------------------------
docker_up() { docker info >/dev/null 2>&1; }

# A dockerd that is already starting (ours from an earlier run, or the system's) is waited
# for, not started twice.
starting_pid() {
    local f pid
    for f in "$dockerd_pidfile" /var/run/docker.pid; do
        [ -r "$f" ] || continue
        pid=$(cat "$f" 2>/dev/null) || continue
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
            && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
            echo "$pid"
            return 0
        fi
    done
    return 1
}

if docker_up; then
    step "dockerd: running"
else
    if pid=$(starting_pid); then
        step "dockerd: pid $pid is starting; waiting up to ${dockerd_wait}s"
    else
        step "dockerd: not reachable; starting it (log: $dockerd_log, pid file: $dockerd_pidfile)"
        if [ "$dry_run" = 1 ]; then
            run setsid dockerd "${dockerd_args[@]}"
        else
            mkdir -p "$(dirname "$dockerd_log")" "$(dirname "$dockerd_pidfile")"
            setsid dockerd "${dockerd_args[@]}" >"$dockerd_log" 2>&1 </dev/null &
            pid=$!
            echo "$pid" >"$dockerd_pidfile"
        fi
    fi
    if [ "$dry_run" != 1 ]; then
        deadline=$((SECONDS + dockerd_wait))
        until docker_up; do
            if [ -n "${pid:-}" ] && ! kill -0 "$pid" 2>/dev/null; then
                echo "setup: dockerd (pid $pid) exited; last lines of $dockerd_log:" >&2
                tail -n 30 "$dockerd_log" >&2 || true
                exit 1
            fi
            if [ "$SECONDS" -ge "$deadline" ]; then
                echo "setup: dockerd did not answer within ${dockerd_wait}s; last lines of $dockerd_log:" >&2
                tail -n 30 "$dockerd_log" >&2 || true
                exit 1
            fi
            sleep 1
        done
        step "dockerd: up (pid $pid)"
    fi
fi

# --- 4. test image ---------------------------------------------------------------------------
run "$repo/scripts/build-test-image.sh"

# --- 5. local registry -----------------------------------------------------------------------
# Debian's docker-registry (distribution v2) on loopback, plain HTTP, no auth, deletes
# enabled; dockerd treats 127.0.0.0/8 as an insecure registry by default. Started here (not
# by systemd: policy-rc.d blocks service starts), and left running for the e2e tests.
registry_addr=${PYAPPLY_REGISTRY_ADDR:-127.0.0.1:5000}
registry_dir=${PYAPPLY_REGISTRY_DIR:-/var/lib/pyapply-test-registry}
registry_log=${PYAPPLY_REGISTRY_LOG:-/var/log/pyapply-registry.log}
registry_pidfile=${PYAPPLY_REGISTRY_PIDFILE:-/run/pyapply-registry.pid}
registry_wait=${PYAPPLY_REGISTRY_WAIT:-30}
registry_image=$registry_addr/pyapply-test/busybox:latest

# GET http://$registry_addr$1 and print the body; fails when nothing answers or on an HTTP
# error. Never through a proxy from the environment: the registry is on loopback.
registry_get() {
    python3 - "http://$registry_addr$1" <<'PY'
import sys
import urllib.request

opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(sys.argv[1], timeout=3) as resp:
        sys.stdout.write(resp.read().decode("utf-8", "replace"))
except Exception:
    sys.exit(1)
PY
}
registry_up() { registry_get /v2/ >/dev/null; }

registry_config() {
    cat <<YAML
# Written by scripts/setup.sh: the local registry of pyapply's end-to-end tests.
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $registry_dir/data
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: $registry_addr
YAML
}

# The pid in the pid file when it is a live docker-registry (ours, from an earlier run).
registry_pid() {
    local pid
    [ -r "$registry_pidfile" ] || return 1
    pid=$(cat "$registry_pidfile" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
        && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = docker-registry ] || return 1
    echo "$pid"
}

registry_start() {
    step "registry: starting on $registry_addr (state: $registry_dir, log: $registry_log)"
    if [ "$dry_run" = 1 ]; then
        run setsid docker-registry serve "$registry_dir/config.yml"
        return 0
    fi
    mkdir -p "$registry_dir/data" "$(dirname "$registry_log")" "$(dirname "$registry_pidfile")"
    registry_config >"$registry_dir/config.yml.new"
    mv "$registry_dir/config.yml.new" "$registry_dir/config.yml"
    setsid docker-registry serve "$registry_dir/config.yml" >>"$registry_log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$registry_pidfile"
}

# Wait for registry pid $pid to answer: 0 when it does, 1 when it exited, 2 on timeout.
registry_wait_for() {
    local deadline=$((SECONDS + registry_wait))
    until registry_up; do
        kill -0 "$pid" 2>/dev/null || return 1
        [ "$SECONDS" -lt "$deadline" ] || return 2
        sleep 0.2
    done
}

if registry_up; then
    step "registry: answering on $registry_addr"
else
    started=0
    if pid=$(registry_pid); then
        step "registry: pid $pid is starting; waiting up to ${registry_wait}s"
    else
        registry_start
        started=1
    fi
    if [ "$dry_run" != 1 ]; then
        status=0
        registry_wait_for || status=$?
        # One that was already there may have been on its way out: start ours instead.
        if [ "$status" = 1 ] && [ "$started" = 0 ]; then
            registry_start
            status=0
            registry_wait_for || status=$?
        fi
        case "$status" in
            0) step "registry: up (pid $pid)" ;;
            1) echo "setup: the registry (pid $pid) exited; last lines of $registry_log:" >&2 ;;
            *) echo "setup: the registry did not answer on $registry_addr within" \
                    "${registry_wait}s; last lines of $registry_log:" >&2 ;;
        esac
        if [ "$status" != 0 ]; then
            tail -n 30 "$registry_log" >&2 || true
            exit 1
        fi
    fi
fi

# The test image, pushed once; `tags/list` answers 404 while the repository does not exist.
tags=$(registry_get /v2/pyapply-test/busybox/tags/list 2>/dev/null || true)
if [[ "$tags" == *'"latest"'* ]]; then
    step "registry: $registry_image present"
else
    step "registry: pushing $registry_image"
    run docker tag pyapply-test/busybox:latest "$registry_image"
    run docker push -q "$registry_image"
    # Only the registry needs that name; the local tag would just be clutter.
    run docker rmi "$registry_image"
fi

# --- 6. bytecode -----------------------------------------------------------------------------
# PYTHONDONTWRITEBYTECODE=1 may be set (it is in CI): compile once here, or every pyapply run
# compiles our modules again. Only out-of-date files are rewritten.
run "$venv/bin/python" -m compileall -q reconciler runtime

step "done"
