#!/usr/bin/env bash
# Build (once) a Debian bookworm root filesystem for the platform tests (issue 21).
#
#   scripts/platform/rootfs.sh arm64 build/platform/arm64   # the emulated Arm board
#   scripts/platform/rootfs.sh amd64 build/platform/amd64   # the systemd-as-PID-1 container
#
# Cached: a finished tree carries a .complete stamp and is left alone on the next call.
# arm64 needs qemu-aarch64 registered with binfmt_misc (scripts/platform/binfmt.sh), so the
# second debootstrap stage can run the Arm binaries in a chroot.
set -euo pipefail
arch=${1:?arch: arm64 or amd64}
dest=${2:?destination directory}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm

# polkitd (amd64): the burst-scope check grants user mobizo StartTransientUnit through a
# polkit rule (tests/platform/test_systemd.py). Added to an older cached tree in place.
add_polkitd() {
    [ "$arch" = amd64 ] && [ ! -x "$dest/usr/lib/polkit-1/polkitd" ] || return 0
    echo "adding polkitd to $dest"
    chroot "$dest" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
        sh -c 'apt-get update -q && apt-get install -y -q --no-install-recommends polkitd' >/dev/null
}

if [ -e "$dest/.complete" ]; then add_polkitd; exit 0; fi
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
# python3 in bookworm is 3.11, the version the project pins; venv gives us pip via ensurepip.
packages=python3,python3-venv,ca-certificates
if [ "$arch" = amd64 ]; then
    # systemd as PID 1 needs systemd itself and dbus (systemctl talks to PID 1 over it);
    # libsystemd0 serves sd_notify, procps/iproute2 help when a check fails.
    packages=$packages,systemd,systemd-sysv,dbus,libsystemd0,procps,iproute2,polkitd
fi
echo "debootstrap $arch $suite -> $dest (a few minutes, once)"
nice -n 19 debootstrap --arch="$arch" --variant=minbase --include="$packages" \
    "$suite" "$dest" "$mirror"
touch "$dest/.complete"
