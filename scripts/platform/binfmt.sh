#!/usr/bin/env bash
# Register qemu-aarch64 with binfmt_misc so Arm binaries run in a chroot (issue 21).
# Needs root and Debian's qemu-user-static + binfmt-support. Exits non-zero, saying why,
# when this machine cannot do it; the tests then skip with that reason.
set -euo pipefail
mnt=/proc/sys/fs/binfmt_misc
if [ ! -e "$mnt/register" ]; then
    mount -t binfmt_misc binfmt_misc "$mnt" || {
        echo "cannot mount binfmt_misc at $mnt (not root, or no CAP_SYS_ADMIN)" >&2; exit 1; }
fi
if [ ! -e "$mnt/qemu-aarch64" ]; then
    command -v update-binfmts >/dev/null || { echo "binfmt-support is not installed" >&2; exit 1; }
    update-binfmts --enable qemu-aarch64
fi
grep -q '^enabled' "$mnt/qemu-aarch64" || { echo "qemu-aarch64 binfmt entry is disabled" >&2; exit 1; }
# The F flag makes the kernel open the interpreter now, so it works inside any chroot.
grep -q '^flags:.*F' "$mnt/qemu-aarch64" || echo "note: qemu-aarch64 registered without the F flag" >&2
