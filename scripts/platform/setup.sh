#!/usr/bin/env bash
# What `make test-platform` needs before pytest (issue 21): Debian packages for the emulated
# Arm board (qemu-user-static, binfmt-support, debootstrap, a cross gcc for the CUDA stubs)
# and for systemd as PID 1 in a container (systemd-container), then qemu-aarch64 in
# binfmt_misc. Not fatal: the tests skip with the reason when something is missing.
set -u
here=$(dirname "$(realpath "$0")")
"$here/../ensure-system-packages.sh" qemu-user-static binfmt-support debootstrap \
    systemd-container gcc-aarch64-linux-gnu util-linux
if [ "$(id -u)" -eq 0 ]; then
    "$here/binfmt.sh" || echo "note: no binfmt_misc: the aarch64 tests will skip" >&2
else
    echo "note: not root: the platform tests will skip (they need chroot, mounts, nspawn)" >&2
fi
exit 0
