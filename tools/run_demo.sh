#!/usr/bin/env bash
# The README's main command: set up what is missing, then run the agent on its embedded
# default (libvirt's test:///default driver, an in-memory bus) and show what it produced.
# The set-up is quiet (pip's and setuptools' chatter would bury the demo): its output is kept
# in a log that is shown only if it fails. LIFECYCLE_STATS_BOOTSTRAP names another set-up
# script (tests/unit/test_tools.py).
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp "${TMPDIR:-/tmp}/lifecycle-stats-bootstrap.XXXXXX")
if ! bash "${LIFECYCLE_STATS_BOOTSTRAP:-tools/bootstrap.sh}" >"$log" 2>&1; then
  cat "$log" >&2
  echo "run_demo: the set-up failed (its output is above, kept in $log)" >&2
  exit 1
fi
rm -f "$log"
exec .venv/bin/lifecycle-stats-demo "$@"
