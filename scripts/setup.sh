#!/usr/bin/env bash
# Prepare a host for pyapply's development and tests: system packages, the virtualenv,
# a running dockerd and the locally built test image. Idempotent: on a host where all of it
# is already present it only checks, and finishes in a few seconds.
#
# Usage: scripts/setup.sh [--dry-run]   (or DRY_RUN=1) prints the steps it would take.
# Overrides (mainly for testing the start path on a scratch daemon):
#   PYAPPLY_DOCKERD_LOG, PYAPPLY_DOCKERD_PIDFILE, PYAPPLY_DOCKERD_ARGS, PYAPPLY_DOCKERD_WAIT.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

dry_run=${DRY_RUN:-0}
for arg in "$@"; do
    case "$arg" in
        --dry-run|-n) dry_run=1 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
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
# A package counts as present when dpkg has it installed (not merely known or half-removed).
packages=(docker.io busybox-static docker-compose runc git iptables ca-certificates
          conmon skopeo docker-registry)
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
    run "$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]'
    run touch "$stamp"
else
    step "virtualenv: dependencies up to date"
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

step "done"
