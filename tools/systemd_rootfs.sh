#!/usr/bin/env bash
# A Debian rootfs that boots systemd as PID 1 under systemd-nspawn, for the test that runs the
# shipped unit under a real systemd (tests/system/test_unit_systemd.py). Built once with
# debootstrap and cached: a stamp records the package list, so a changed list rebuilds it.
# ROOTFS overrides the location. Prints the rootfs path on its last line.
set -euo pipefail
ROOTFS=${ROOTFS:-/var/cache/lifecycle-stats/systemd-rootfs}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
# systemd + dbus: PID 1 and systemctl; python3-venv: the unit's /opt/lifecycle-stats venv;
# libvirt0: libvirt-python's shared library (the agent talks to libvirt's test:///default).
PACKAGES=systemd,systemd-sysv,dbus,python3,python3-venv,libvirt0,iproute2
stamp="$ROOTFS/.lifecycle-stats-rootfs-$(echo "$SUITE $PACKAGES" | sha1sum | cut -c1-12)"

need=()
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi
if [ ! -f "$stamp" ]; then
  rm -rf "$ROOTFS"
  mkdir -p "$(dirname "$ROOTFS")"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS.partial" "$MIRROR" >&2
  mv "$ROOTFS.partial" "$ROOTFS"
  touch "$stamp"
fi
echo "$ROOTFS"
