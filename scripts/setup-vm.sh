#!/usr/bin/env bash
# Install what tests/vm/run.sh needs to boot a kernel with SCTP under QEMU
# (the host kernel may have no SCTP). Idempotent, non-interactive, quiet:
# one line per step. Debian 12, as root.
#
#   bash scripts/setup-vm.sh [VENV]      # VENV defaults to <repo>/.venv
#
# Meant to be pasted into / sourced from scripts/setup.sh.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
venv=${1:-$repo/.venv}

# qemu-system-x86: the emulator (KVM is not available, we use TCG).
# linux-image-amd64: a kernel image plus modules that include sctp.ko.
# busybox-static: virtme-ng's init needs a static busybox.
# iproute2, nftables, iperf3: netns/veth/tc, firewall rules, reference numbers.
apt_pkgs=(qemu-system-x86 linux-image-amd64 busybox-static iproute2 nftables iperf3)
missing=()
for p in "${apt_pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "setup-vm: apt-get update"
    apt-get update -qq >/dev/null
    echo "setup-vm: apt-get install ${missing[*]}"
    apt-get install -y -qq "${missing[@]}" >/dev/null
else
    echo "setup-vm: apt packages present (${apt_pkgs[*]})"
fi

# A kernel image with SCTP modules must now exist.
kernel=
for img in $(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V); do
    v=${img#/boot/vmlinuz-}
    [[ -d /lib/modules/$v/kernel/net/sctp ]] && kernel=$img
done
if [[ -z "$kernel" ]]; then
    echo "setup-vm: ERROR: no /boot/vmlinuz-* with /lib/modules/<ver>/kernel/net/sctp after install" >&2
    exit 1
fi
echo "setup-vm: kernel $kernel"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "setup-vm: python3 -m venv $venv"
    python3 -m venv "$venv"
fi
if [[ -x "$venv/bin/vng" ]]; then
    echo "setup-vm: virtme-ng present in $venv"
else
    echo "setup-vm: pip install virtme-ng into $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check 'virtme-ng>=1.30'
fi
