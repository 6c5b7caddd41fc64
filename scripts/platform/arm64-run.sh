#!/usr/bin/env bash
# Run a command on the emulated Arm board: chroot into the arm64 root filesystem, whose
# binaries the kernel hands to qemu-aarch64 through binfmt_misc (issue 21).
#
#   scripts/platform/arm64-run.sh ROOTFS SHARE COMMAND...
#
# SHARE (a host directory) is bind-mounted at /share inside. The mounts live in a private
# mount namespace (unshare -m), so they vanish with the command and never leak to the host.
# QEMU_CPU (default "max") picks the emulated CPU: "max" exposes dotprod and i8mm.
set -euo pipefail
rootfs=$(realpath "${1:?rootfs}")
share=$(realpath "${2:?share directory}")
shift 2
export QEMU_CPU=${QEMU_CPU:-max}
# The /proc/cpuinfo feature line the board shows; keep it in step with QEMU_CPU.
case "$QEMU_CPU" in
    max) features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp sve i8mm bf16" ;;
    neoverse-n1|cortex-a76) features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;;
    *) features="fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid" ;;
esac
export CPU_FEATURES=${CPU_FEATURES:-$features}
exec unshare -m --propagation private -- bash -c '
    set -e
    rootfs=$1; share=$2; shift 2
    mount -t proc proc "$rootfs/proc"
    mount --rbind /dev "$rootfs/dev"
    mount -t tmpfs tmpfs "$rootfs/tmp"
    # cpuinfo (under XNNPACK and torch) reads the CPU lists from sysfs and the Arm CPU
    # description from /proc/cpuinfo, which under user emulation is that of the x86 host, so
    # it gets an Arm one naming the features qemu -cpu max emulates (the AT_HWCAP bits agree).
    mount --rbind /sys "$rootfs/sys"
    fake=$(mktemp /tmp/arm64-cpuinfo.XXXXXX)
    for cpu in $(seq 0 $(($(nproc --all) - 1))); do
        printf "processor\t: %s\nBogoMIPS\t: 50.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: 0xd40\nCPU revision\t: 1\n\n" \
            "$cpu" "$CPU_FEATURES" >> "$fake"
    done
    mount --bind "$fake" "$rootfs/proc/cpuinfo"
    mkdir -p "$rootfs/share"
    mount --bind "$share" "$rootfs/share"
    cp -L /etc/resolv.conf "$rootfs/etc/resolv.conf" 2>/dev/null || true
    exec chroot "$rootfs" /usr/bin/env -i PATH=/opt/venv/bin:/usr/bin:/bin HOME=/root \
        LANG=C.UTF-8 QEMU_CPU="$QEMU_CPU" "$@"
' arm64-run "$rootfs" "$share" "$@"
