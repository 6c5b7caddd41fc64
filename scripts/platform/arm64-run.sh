#!/usr/bin/env bash
# Run a command on the emulated Arm board: chroot into the arm64 root filesystem, whose
# binaries the kernel hands to qemu-aarch64 through binfmt_misc (issue 21).
#
#   scripts/platform/arm64-run.sh ROOTFS SHARE COMMAND...
#
# SHARE (a host directory) is bind-mounted at /share inside. The mounts live in a private
# mount namespace (unshare -m), so they vanish with the command and never leak to the host.
# QEMU_CPU (default "max") picks the emulated CPU: "max" exposes dotprod, i8mm, SVE and SME;
# "cortex-a76" dotprod; "cortex-a72" (the Raspberry Pi 4) ARMv8.0 only.
set -euo pipefail
rootfs=$(realpath "${1:?rootfs}")
share=$(realpath "${2:?share directory}")
shift 2
export QEMU_CPU=${QEMU_CPU:-max}
probe=$(dirname "$(realpath "$0")")/arm64-cpuinfo.py
exec unshare -m --propagation private -- bash -c '
    set -e
    rootfs=$1; share=$2; probe=$3; shift 3
    mount -t proc proc "$rootfs/proc"
    mount --rbind /dev "$rootfs/dev"
    mount -t tmpfs tmpfs "$rootfs/tmp"
    # cpuinfo (under XNNPACK and torch) reads the CPU lists from sysfs and the core (MIDR)
    # from /proc/cpuinfo, which under user emulation is that of the x86 host. The board gets
    # the Arm one of the CPU qemu emulates, written by that CPU itself (arm64-cpuinfo.py):
    # cpuinfo enables dotprod by part number alone, so it must be the emulated part.
    mount --rbind /sys "$rootfs/sys"
    cp "$probe" "$rootfs/tmp/arm64-cpuinfo.py"
    chroot "$rootfs" /usr/bin/python3 /tmp/arm64-cpuinfo.py "$(nproc --all)" > "$rootfs/tmp/cpuinfo"
    mount --bind "$rootfs/tmp/cpuinfo" "$rootfs/proc/cpuinfo"
    mkdir -p "$rootfs/share"
    mount --bind "$share" "$rootfs/share"
    cp -L /etc/resolv.conf "$rootfs/etc/resolv.conf" 2>/dev/null || true
    exec chroot "$rootfs" /usr/bin/env -i PATH=/opt/venv/bin:/usr/bin:/bin HOME=/root \
        LANG=C.UTF-8 QEMU_CPU="$QEMU_CPU" "$@"
' arm64-run "$rootfs" "$share" "$probe" "$@"
