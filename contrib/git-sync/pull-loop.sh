#!/bin/sh
# The simplest feeder without git-sync: keep a work tree at the branch tip with `git pull`.
# `pyapply watch /srv/deploy` sees the files change (and HEAD move) and applies each commit.
set -eu
dir=${1:-/srv/deploy}
period=${2:-30}
while :; do
    git -C "$dir" pull --ff-only --quiet || echo "git pull failed; retrying in ${period}s" >&2
    sleep "$period"
done
