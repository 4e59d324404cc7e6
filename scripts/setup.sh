#!/usr/bin/env bash
# Install everything sctpbond needs on a fresh Debian 12 machine, as root: Debian packages, a virtualenv in
# .venv with sctpbond and its test tools, and (when this kernel has no SCTP) a VM kernel to test SCTP on.
# Idempotent and quiet: one line per step.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"

if [[ $(id -u) -ne 0 ]]; then
    echo "setup: must run as root (network namespaces, tc and apt need it)" >&2
    exit 2
fi

pkgs=(iproute2 nftables iperf3 util-linux procps python3-venv ethtool iputils-ping openssh-server openssh-client)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "setup: apt-get install ${missing[*]}"
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ ! -x .venv/bin/python ]]; then
    echo "setup: python3 -m venv .venv"
    python3 -m venv .venv
fi
echo "setup: pip install -e '.[test,bench,vm]'"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,bench,vm]'

# Kernel SCTP: use the host's when it has one, otherwise prepare a VM (tests/vm/run.sh) that boots Debian's kernel.
if .venv/bin/python -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132).close()' 2>/dev/null; then
    echo "setup: this kernel has SCTP"
else
    echo "setup: this kernel has no SCTP; preparing a VM kernel for the SCTP tests"
    bash scripts/setup-vm.sh .venv
fi
echo "setup: done"
