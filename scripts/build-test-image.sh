#!/usr/bin/env bash
# Build the end-to-end tests' and the demo's image, pyapply-test/busybox:latest, without any
# registry: a rootfs made from Debian's static busybox, as a single layer.
#
#   scripts/build-test-image.sh             import it into the local dockerd (skips when the
#                                           image exists, unless FORCE=1)
#   scripts/build-test-image.sh --tar OUT   write the rootfs tarball to OUT instead, for
#                                           `pyapply image import OUT --ref ...` (no docker)
set -euo pipefail

image=${PYAPPLY_TEST_IMAGE:-pyapply-test/busybox:latest}
busybox=${BUSYBOX:-/bin/busybox}
out=""
case "${1:-}" in
    --tar) out=${2:?--tar needs a path}; mkdir -p "$(dirname "$out")"; out=$(realpath "$out") ;;
    "") ;;
    *) echo "build-test-image: unknown argument: $1" >&2; exit 2 ;;
esac

if [ -z "$out" ] && [ "${FORCE:-0}" != 1 ] && docker image inspect "$image" >/dev/null 2>&1; then
    echo "build-test-image: $image exists (FORCE=1 rebuilds)"
    exit 0
fi

if ! "$busybox" --list >/dev/null 2>&1; then
    echo "build-test-image: $busybox is not a working busybox (install busybox-static)" >&2
    exit 1
fi
# A dynamically linked busybox would not run inside an image that has no libc.
if command -v ldd >/dev/null 2>&1 && ldd "$busybox" >/dev/null 2>&1; then
    echo "build-test-image: $busybox is dynamically linked; install busybox-static" >&2
    exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
root=$tmp/rootfs

mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,www,var/www,tmp,proc,sys,dev}
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"
cp "$busybox" "$root/bin/busybox"
chmod 0755 "$root/bin/busybox"

# `busybox --list` gives bare applet names; put each in /bin (sh, ls, wget, httpd, ...).
while read -r applet; do
    [ -n "$applet" ] && [ "$applet" != busybox ] || continue
    ln -sf busybox "$root/bin/$applet"
done < <("$busybox" --list)

cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
nobody:x:65534:
GROUP
echo "pyapply test image" >"$root/www/index.html"

if [ -n "$out" ]; then
    tar --numeric-owner --owner=0 --group=0 --sort=name --mtime=@0 -C "$root" -cf "$out.tmp" .
    mv "$out.tmp" "$out"
    echo "build-test-image: wrote the rootfs of $image to $out"
    exit 0
fi

tar --numeric-owner --owner=0 --group=0 -C "$root" -c . \
    | docker import \
        --change 'ENV PATH=/bin:/sbin:/usr/bin' \
        --change 'CMD ["sh"]' \
        - "$image" >/dev/null
echo "build-test-image: built $image"
