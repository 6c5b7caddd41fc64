#!/usr/bin/env bash
# Install the Debian packages the project needs, where this machine lets us.
# Missing packages are reported, not fatal: only broker tests and systemd-python need them.
set -u
missing=()
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
    echo "note: not a Debian system; please install: ${missing[*]}" >&2; exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
        echo "note: not root; please run: sudo apt-get install ${missing[*]}" >&2; exit 0
    fi
fi
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || {
    $SUDO apt-get update -q >/dev/null 2>&1
    $SUDO apt-get install -y -q "${missing[@]}" >/dev/null || echo "note: could not install ${missing[*]}" >&2
}
# The Debian package enables a system-wide broker; tests start their own on loopback ports.
exit 0
