#!/usr/bin/env bash
# Install everything, then run the whole test suite: unit + namespace integration tests on this host, and the
# SCTP suite on a kernel with SCTP (this one, or a VM booted with tests/vm/run.sh when this kernel has none).
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"
bash scripts/setup.sh || exit $?

export PYTHONDONTWRITEBYTECODE=1
mkdir -p out
rm -f out/junit-*.xml
host_rc=0 sctp_rc=0
echo "== host: unit and integration tests"
.venv/bin/python -m pytest -m "not sctp" -p no:cacheprovider -q --junitxml=out/junit-host.xml tests || host_rc=$?

echo "== SCTP suite (kernel SCTP; a VM when this kernel has none)"
sctp_cmd=(.venv/bin/python -m pytest -m sctp -p no:cacheprovider -q --junitxml=out/junit-sctp.xml tests)
if .venv/bin/python -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132).close()' 2>/dev/null; then
    "${sctp_cmd[@]}" || sctp_rc=$?
else
    tests/vm/run.sh -- "${sctp_cmd[@]}" || sctp_rc=$?
fi

echo "== host suite exit $host_rc, SCTP suite exit $sctp_rc"
# One closing line over both runs (a missing report counts as a failure).
.venv/bin/python - <<'PY'
import pathlib, xml.etree.ElementTree as ET
total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
for name in ("host", "sctp"):
    path = pathlib.Path(f"out/junit-{name}.xml")
    if not path.exists():
        print(f"no test report from the {name} run")
        total["errors"] += 1
        continue
    for suite in ET.parse(path).getroot().iter("testsuite"):
        for key in total:
            total[key] += int(suite.get(key, 0))
failed = total["failures"] + total["errors"]
passed = total["tests"] - failed - total["skipped"]
print(f"{passed} passed, {failed} failed, {total['skipped']} skipped")
PY
[[ $host_rc -eq 0 && $sctp_rc -eq 0 ]]
