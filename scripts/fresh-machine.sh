#!/usr/bin/env bash
# Run a command in this checkout as a newcomer would have it: on a fresh Debian 12 system
# (a debootstrap chroot holding only python3, python3-venv, git, make, curl and
# ca-certificates), so that a set-up step which passes here only because this machine already
# has a package fails instead. `make test` runs it (tests/e2e/test_fresh_machine.py) with
# `make demo`; by hand:
#
#   scripts/fresh-machine.sh                      # make demo
#   scripts/fresh-machine.sh bash -c '...'        # anything, run in the project directory
#
# The project inside is a clone of this repository with the working tree's files (tracked and
# untracked, not ignored) copied over it, so uncommitted changes are what gets tested.
# The base system is made once (about 30 s) and kept in $PYAPPLY_FRESH_CACHE (default
# /var/cache/pyapply-fresh); each run works on a copy of it in /var/tmp, removed afterwards.
# The chroot shares this host's kernel and network namespace: PYAPPLY_ROOT (default
# /var/lib/pyapply-fresh, not the host's /var/lib/pyapply, whose kernel objects are named
# after its path) and DEMO_PORT are passed in. Afterwards it runs `pyapply system reset`
# inside, then kills every process whose root is the chroot and unmounts what is below it.
# Exit status: the command's; 2 when the fresh system could not be made.
set -uo pipefail

[ "$(id -u)" -eq 0 ] || { echo "fresh-machine: needs root (chroot, mounts)" >&2; exit 2; }
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cmd=("$@")
[ ${#cmd[@]} -gt 0 ] || cmd=(make demo)
say() { printf 'fresh-machine: %s\n' "$*" >&2; }

include=python3,python3-venv,git,make,curl,ca-certificates
cache=${PYAPPLY_FRESH_CACHE:-/var/cache/pyapply-fresh}
base=$cache/bookworm-minbase
inner_root=${PYAPPLY_ROOT_INSIDE:-/var/lib/pyapply-fresh}

# --- the base system, made once -------------------------------------------------------------
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9  # two runs at once make it once
if [ "$(cat "$base.stamp" 2>/dev/null)" != "$include" ] || [ ! -x "$base/usr/bin/python3" ]; then
    command -v debootstrap >/dev/null || {
        say "debootstrap is missing: apt-get install debootstrap (scripts/setup.sh does)"
        exit 2
    }
    say "making the base system in $base (once; about 30 s)"
    rm -rf "$base" "$base.tmp" "$base.stamp"
    if ! debootstrap --variant=minbase --include="$include" bookworm "$base.tmp" \
        http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1; then
        say "debootstrap failed; see $cache/debootstrap.log"
        rm -rf "$base.tmp"
        exit 2
    fi
    mv "$base.tmp" "$base"
    echo "$include" >"$base.stamp"
fi
flock -u 9

# --- a scratch copy ---------------------------------------------------------------------------
# a plain copy, not an overlay: the runtime inside mounts overlays, whose upper directory
# cannot be on an overlay itself
scratch=$(mktemp -d /var/tmp/pyapply-fresh.XXXXXX)
root=$scratch/root
tag=$(python3 -c 'import hashlib,sys; print(hashlib.sha256(sys.argv[1].encode()).hexdigest()[:8])' "$inner_root")

# Everything that ran in the fresh system's mount namespace, and everything they started
# (containers sit in namespaces of their own below conmon): killed, then what is left of the
# inner root's cgroups removed. The mount namespace, and every mount in it, goes with its last
# process.
sweep() {
    local ns pass p pids
    ns=$(cat "$scratch/mntns" 2>/dev/null)
    for pass in 1 2 3; do
        pids=$(ps -e -o pid=,ppid= | python3 -c '
import os, sys
ns = sys.argv[1]
children = {}
for line in sys.stdin:
    pid, ppid = line.split()
    children.setdefault(ppid, []).append(pid)
def in_ns(pid):
    try:
        return bool(ns) and os.readlink(f"/proc/{pid}/ns/mnt") == ns
    except OSError:
        return False
todo = [p for kids in children.values() for p in kids if in_ns(p)]
seen = set()
while todo:
    p = todo.pop()
    if p not in seen:
        seen.add(p)
        todo += children.get(p, [])
print(" ".join(sorted(seen)))
' "$ns")
        [ -n "$pids" ] || break
        # shellcheck disable=SC2086
        kill -9 $pids 2>/dev/null
        sleep 0.5
    done
    for p in /sys/fs/cgroup/pyapply/"$tag" /sys/fs/cgroup/*/pyapply/"$tag"; do
        [ -d "$p" ] && find "$p" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    rm -rf "$scratch"
}
trap sweep EXIT
trap 'exit 130' INT TERM

cp -a "$base" "$root" || exit 2
cp /etc/resolv.conf "$root/etc/resolv.conf"
# how this machine reaches the package registries (mirrors, certificates): a newcomer's
# machine is set up to reach them too
for f in /etc/pip.conf /etc/xdg/pip /etc/apt/apt.conf.d /etc/apt/sources.list \
    /etc/apt/sources.list.d /etc/ssl/certs/ca-certificates.crt; do
    [ -e "$f" ] || continue
    mkdir -p "$root$(dirname "$f")"
    cp -a "$f" "$root$(dirname "$f")/"
done
project=$root/root/project
git clone -q "$repo" "$project" || exit 2
(cd "$repo" && git ls-files -z -co --exclude-standard | tar --null -T - -cf -) \
    | tar -xf - -C "$project" || exit 2

passed=()
while IFS= read -r v; do passed+=("$v"); done < <(env | grep -E '^(PIP_[A-Z_]*|CI|DEMO_PORT)=')
say "running '${cmd[*]}' on a fresh Debian 12 (PYAPPLY_ROOT=$inner_root)"
# A mount namespace of its own (mounts made inside stay inside) sharing this host's kernel, pids
# and network, entered with a plain chroot as ../shared/tools/fresh-machine does: there "/"
# is not a mount point, which the native runtime has to handle (supervise.in_root_mount).
# FRESH_ENTER=pivot makes the fresh system the namespace's root instead (pivot_root), as a
# booted machine's "/" is.
printf '%s\0' "${passed[@]}" >"$scratch/env"
cat >"$scratch/enter.sh" <<'INNER'
set -u
root=$1 scratch=$2 inner_root=$3 enter=$4
shift 4
mapfile -d '' passed <"$scratch/env"
readlink /proc/self/ns/mnt >"$scratch/mntns"
[ "$enter" = pivot ] && mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
# the host's lock directory: the fresh system shares this host's network, so its pyapply must
# take the same host lock (firewall.LOCK_PATH) as every other root here before it picks a
# subnet, or a demo and a test running at once take the same one
mkdir -p "$root/run/lock" /run/lock
mount --bind /run/lock "$root/run/lock"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
for d in /opt/pypi /opt/pypi-more /opt/wheels; do
    [ -d "$d" ] || continue
    mkdir -p "$root$d"
    mount --bind -o ro "$d" "$root$d"
done
cd "$root" || exit 2
if [ "$enter" = pivot ]; then
    mkdir -p .old-root && pivot_root . .old-root || exit 2
    drop_old='umount -l /.old-root && rmdir /.old-root || exit 2'
else
    drop_old=:
fi
exec /usr/sbin/chroot . /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYAPPLY_ROOT="$inner_root" "${passed[@]}" DROP_OLD="$drop_old" /bin/bash -c '
        eval "$DROP_OLD"; unset DROP_OLD
        cd /root/project || exit 2
        "$@"
        rc=$?
        # the project'"'"'s own teardown: containers, bridges, rules, cgroups
        if [ -x .venv/bin/pyapply ]; then
            .venv/bin/pyapply system reset --force >/dev/null 2>&1 \
                || echo "fresh-machine: pyapply system reset failed" >&2
        fi
        exit $rc' fresh-machine "$@"
INNER
unshare --mount --propagation private /bin/bash "$scratch/enter.sh" "$root" "$scratch" \
    "$inner_root" "${FRESH_ENTER:-chroot}" "${cmd[@]}"
rc=$?
say "exit status $rc"
exit "$rc"
