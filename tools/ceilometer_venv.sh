#!/usr/bin/env bash
# The interop tier's Ceilometer: a separate, git-ignored virtualenv (.ceilometer-venv/) holding a
# PINNED Ceilometer from PyPI plus libvirt-python, so tests can run Ceilometer's own code
# (notification meters, the telemetry.polling endpoint, signature checks, its libvirt inspector)
# in a subprocess. It is never the product's .venv: Ceilometer drags in ~80 packages we do not
# ship. Rebuilt only when this script changes (stamp), so CI pays the install once per cache.
# CEILOMETER_VENV overrides the location. Issue 14 imports its LibvirtInspector as a baseline.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CEILOMETER_VENV:-.ceilometer-venv}

# 27.0.0 = 2025.2 "Flamingo" (MiB units, current pollster set); needs Python >= 3.11.
CEILOMETER_VERSION=27.0.0
LIBVIRT_PYTHON_VERSION=$(pkg-config --modversion libvirt 2>/dev/null || echo 9.0.0)

stamp=$VENV/.installed-$( (cat "$0"; echo "$LIBVIRT_PYTHON_VERSION") | sha1sum | cut -c1-12)
if [ -f "$stamp" ]; then
  exit 0
fi
echo "ceilometer_venv: building $VENV (ceilometer==$CEILOMETER_VERSION, libvirt-python==$LIBVIRT_PYTHON_VERSION)"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
quiet() { "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }; return "${PIPESTATUS[0]}"; }
quiet "$VENV/bin/pip" install -q --upgrade pip
quiet "$VENV/bin/pip" install -q "ceilometer==$CEILOMETER_VERSION" "libvirt-python==$LIBVIRT_PYTHON_VERSION"
# What the tests and the issue-14 benchmark import; fail here, not in a test.
"$VENV/bin/python" -W ignore - <<'PY'
import ceilometer.meter.notifications          # noqa: F401  notification meters
import ceilometer.publisher.utils              # noqa: F401  signing
import ceilometer.telemetry.notifications      # noqa: F401  telemetry.polling endpoint
import ceilometer.compute.virt.libvirt.inspector  # noqa: F401  LibvirtInspector
PY
rm -f "$VENV"/.installed-*
touch "$stamp"
