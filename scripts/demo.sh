#!/usr/bin/env bash
# Install everything, build the default 4-link topology and move 1 GiB over all links next to one plain TCP link.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"
bash scripts/setup.sh
exec .venv/bin/sctpbond demo "$@"
