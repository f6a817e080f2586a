#!/usr/bin/env bash
# The README's main command: set up what is missing, then run the agent on its embedded
# default (libvirt's test:///default driver, an in-memory bus) and show what it produced.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh >&2
exec .venv/bin/lifecycle-stats-demo "$@"
