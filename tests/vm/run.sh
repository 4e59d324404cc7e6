#!/usr/bin/env bash
# Run a command inside a throw-away VM whose kernel has SCTP.
#
#   tests/vm/run.sh [--memory 2G] [--cpus 2] -- CMD ARGS...
#
# The host kernel may lack SCTP (socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP) ->
# EPROTONOSUPPORT), so we boot Debian's kernel with virtme-ng (vng) over the
# host's own filesystem (read-only 9p root, copy-on-write overlays on /etc,
# /usr, /var, /tmp, ...). Software emulation only (--disable-kvm): a boot
# costs ~30-40 s on an idle 2-core machine (~28 s until CMD starts), and
# runs are serialized with a lock (see below).
#
# Inside the VM:
#   * cwd is the caller's cwd; PATH is the caller's PATH with the repo's
#     .venv/bin first; HOME, VIRTUAL_ENV, PYTHONPATH, CI, PYTEST_ADDOPTS and
#     all SCTPBOND_* variables are passed through; SCTPBOND_IN_VM=1 is set.
#   * `modprobe sctp` (must work) and `modprobe sch_netem` (may fail) run first.
#   * the repo root (and the cwd, if outside it) is mounted read-write, so
#     result files written there are visible on the host afterwards. /tmp is
#     writable but is a tmpfs overlay: lost when the VM exits.
#   * the script exits with CMD's exit code; CMD's stdout/stderr go to ours.
set -euo pipefail

usage() {
    echo "usage: $0 [--memory SIZE] [--cpus N] -- CMD [ARGS...]" >&2
    exit 2
}

memory=2G
cpus=2
while [[ $# -gt 0 ]]; do
    case "$1" in
        --memory|-m) [[ $# -ge 2 ]] || usage; memory=$2; shift 2 ;;
        --memory=*) memory=${1#*=}; shift ;;
        --cpus) [[ $# -ge 2 ]] || usage; cpus=$2; shift 2 ;;
        --cpus=*) cpus=${1#*=}; shift ;;
        --) shift; break ;;
        -h|--help) usage ;;
        *) break ;;
    esac
done
[[ $# -ge 1 ]] || usage

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
cwd=$(pwd -P)

# Newest kernel image whose modules include SCTP.
kernel= kver=
while read -r img; do
    [[ -n "$img" ]] || continue
    v=${img#/boot/vmlinuz-}
    if [[ -r "$img" && -d "/lib/modules/$v/kernel/net/sctp" ]]; then
        kernel=$img kver=$v
    fi
done < <(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V)
if [[ -z "$kernel" ]]; then
    echo "tests/vm/run.sh: no /boot/vmlinuz-* with SCTP modules in /lib/modules/<ver>/kernel/net/sctp; run: bash scripts/setup.sh" >&2
    exit 2
fi

# vng runs virtme-run etc. by name, so its bin dir must be on PATH.
# The venv's bin goes first on PATH, on the host and in the guest.
if [[ -d "$repo/.venv/bin" && ":$PATH:" != *":$repo/.venv/bin:"* ]]; then
    export PATH="$repo/.venv/bin:$PATH"
fi
if [[ -x "$repo/.venv/bin/vng" ]]; then
    vng=$repo/.venv/bin/vng
elif vng=$(command -v vng); then
    :
else
    echo "tests/vm/run.sh: vng (virtme-ng) not found in $repo/.venv/bin or PATH; run: bash scripts/setup.sh" >&2
    exit 2
fi
for tool in qemu-system-x86_64 busybox; do
    if ! command -v "$tool" >/dev/null; then
        echo "tests/vm/run.sh: $tool not found; run: bash scripts/setup.sh" >&2
        exit 2
    fi
done

# Build the guest script. vng base64-encodes it onto the kernel command line,
# so any quoting survives; %q-quote everything we interpolate.
script="export PATH=$(printf %q "$PATH") SCTPBOND_IN_VM=1 HOME=$(printf %q "${HOME:-/root}")"
for var in VIRTUAL_ENV PYTHONPATH CI PYTEST_ADDOPTS $(compgen -e | grep '^SCTPBOND_' || true); do
    [[ "$var" == SCTPBOND_IN_VM ]] && continue
    if [[ -n "${!var+x}" ]]; then
        script+=" $var=$(printf %q "${!var}")"
    fi
done
script+="; cd $(printf %q "$cwd") || exit 125"
script+="; modprobe sctp || { echo 'tests/vm/run.sh: modprobe sctp failed in the VM' >&2; exit 125; }"
script+="; modprobe sch_netem 2>/dev/null || echo 'tests/vm/run.sh: note: sch_netem not available' >&2"
script+="; exec"
for arg in "$@"; do
    script+=" $(printf %q "$arg")"
done

rw=(--rwdir "$repo")
case "$cwd/" in
    "$repo"/*) ;;
    *) rw+=(--rwdir "$cwd") ;;
esac

# One VM at a time: each TCG guest keeps 2 host cores busy, so parallel runs
# on a 2-core machine slow each other several-fold and wreck timings and
# throughput numbers. The lock fd is inherited by qemu and freed when it exits.
if [[ "${SCTPBOND_VM_PARALLEL:-0}" != 1 ]] && command -v flock >/dev/null; then
    exec 9>"${TMPDIR:-/tmp}/sctpbond-vm.lock"
    if ! flock -n 9; then
        echo "tests/vm/run.sh: another VM run is active; waiting for it (SCTPBOND_VM_PARALLEL=1 skips this)" >&2
        flock 9
    fi
fi

# QEMU opens /proc/self/fd/1 and /proc/self/fd/2 as "file" chardevs, which
# truncates a regular file and writes from offset 0. Route both through pipes
# so redirecting this script to a log file behaves normally.
# stdin must be /dev/null: vng misbehaves when stdin is closed (as in CI).
set +e
"$vng" --run "$kernel" --disable-kvm --cpus "$cpus" --memory "$memory" \
    "${rw[@]}" --cwd "$cwd" -- "$script" </dev/null 2> >(cat >&2) | cat
rc=${PIPESTATUS[0]}
set -e
wait 2>/dev/null || true
exit "$rc"
