#!/usr/bin/env bash
# Install everything, then run the whole test suite: unit + namespace integration tests on this host, and the
# SCTP suite on a kernel with SCTP (this one, or a VM booted with tests/vm/run.sh when this kernel has none).
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"
bash scripts/setup.sh || exit $?

export PYTHONDONTWRITEBYTECODE=1
host_rc=0 sctp_rc=0
echo "== host: unit and integration tests"
.venv/bin/python -m pytest -m "not sctp" -p no:cacheprovider -q tests || host_rc=$?

echo "== SCTP suite"
if .venv/bin/python -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132).close()' 2>/dev/null; then
    .venv/bin/python -m pytest -m sctp -p no:cacheprovider -q tests || sctp_rc=$?
else
    tests/vm/run.sh -- .venv/bin/python -m pytest -m sctp -p no:cacheprovider -q tests || sctp_rc=$?
fi
echo "== host suite exit $host_rc, SCTP suite exit $sctp_rc"
[[ $host_rc -eq 0 && $sctp_rc -eq 0 ]]
