#!/usr/bin/env bash
# Build-time set-up shared by run_demo.sh and run_tests.sh: the system headers libvirt-python
# compiles against, and a virtualenv (.venv) holding the package with its test extras.
# VENV overrides the location (default .venv). To time a fresh bootstrap while others use the
# shared .venv, run `VENV=/tmp/fresh-venv bash tools/bootstrap.sh` -- never move .venv aside.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

need=()
for p in libvirt-dev pkg-config gcc; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
# systemd-analyze verifies the shipped unit (tests/unit/test_systemd_unit.py); it needs no
# systemd running as PID 1.
command -v systemd-analyze >/dev/null || need+=(systemd)
# openssl makes the certificates of the router's TLS test (tests/integration/test_router_real.py).
command -v openssl >/dev/null || need+=(openssl)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' || need+=(python3-dev)
if ((${#need[@]})); then
  echo "bootstrap: installing ${need[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

stamp=$VENV/.installed-$(cat setup.cfg | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e '.[test]'
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
