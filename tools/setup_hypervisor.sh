#!/usr/bin/env bash
# Bring up a real libvirtd + QEMU (TCG) on this machine for the integration tier and benchmarks.
# Idempotent; needs root. Works in containers without systemd or KVM (QEMU TCG).
#
# It weakens the host's QEMU driver (guests as root, no security driver, no cgroups or
# namespaces in /etc/libvirt/qemu.conf), so it does that only on a host marked as a test host:
# CI=true, or LIFECYCLE_STATS_TEST_HOST=1 set by the operator. Elsewhere it refuses, unless
# qemu.conf already carries this script's block (the host was set up as a test host before).
# Every change to qemu.conf is printed as a diff.
set -euo pipefail

conf=${LIBVIRT_QEMU_CONF:-/etc/libvirt/qemu.conf}  # overridable for the script's own tests
# the file the running libvirtd reads: a change to it needs a restart (a copy's does not)
daemon_conf=${LIBVIRT_DAEMON_QEMU_CONF:-/etc/libvirt/qemu.conf}
marker="# lifecycle-stats test hypervisor"
test_host() { [ "${CI:-}" = "true" ] || [ "${LIFECYCLE_STATS_TEST_HOST:-}" = "1" ]; }
already_set_up() { grep -qF "$marker" "$conf" 2>/dev/null; }

if ! already_set_up && ! test_host; then
  cat >&2 <<MSG
setup_hypervisor: refusing to run: this host is not marked as a test host.
  It would rewrite $conf (user/group root, security_driver "none", no cgroups or
  namespaces): right for a throw-away CI container, wrong for a real hypervisor.
  On a test machine run it with LIFECYCLE_STATS_TEST_HOST=1 (CI=true does the same).
MSG
  exit 3
fi

PKGS=(libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils libvirt-clients
      libvirt-dev pkg-config)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup_hypervisor: installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The daemon refuses to start without these accounts, even when it runs guests as root.
getent group kvm >/dev/null || groupadd --system kvm
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null || useradd --system --no-create-home -g kvm libvirt-qemu

# No cgroups, namespaces or security driver inside a container; run guests as root.
changed=0
if ! already_set_up; then
  changed=1
  before=$(mktemp)
  cp "$conf" "$before" 2>/dev/null || : >"$before"
  cat >>"$conf" <<CONF
$marker
user = "root"
group = "root"
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
CONF
  echo "setup_hypervisor: test host (CI=${CI:-} LIFECYCLE_STATS_TEST_HOST=${LIFECYCLE_STATS_TEST_HOST:-}): changed $conf:"
  diff -u --label "$conf (before)" --label "$conf" "$before" "$conf" || true
  rm -f "$before"
else
  echo "setup_hypervisor: $conf already set up for tests (block '$marker'); unchanged"
fi

stop_libvirtd() {  # and wait until it is gone: a new one loses to the old pid file's lock
  pkill -x libvirtd || return 0
  for _ in $(seq 100); do
    pgrep -x libvirtd >/dev/null || return 0
    sleep 0.1
  done
  echo "setup_hypervisor: libvirtd did not stop" >&2
  exit 1
}

mkdir -p /var/log/libvirt/qemu /var/lib/libvirt/images /run/libvirt
pgrep -x virtlogd >/dev/null || virtlogd -d
restart=0
if [ "$changed" = 1 ] && [ "$conf" = "$daemon_conf" ] && pgrep -x libvirtd >/dev/null; then
  echo "setup_hypervisor: restarting libvirtd: it reads $conf only at start"
  restart=1
fi
if [ "$restart" = 1 ] || ! virsh -c qemu:///system version >/dev/null 2>&1; then
  stop_libvirtd
  libvirtd -d
  for _ in $(seq 50); do
    virsh -c qemu:///system version >/dev/null 2>&1 && break
    sleep 0.2
  done
fi
virsh -c qemu:///system version >/dev/null || { echo "setup_hypervisor: libvirtd did not come up" >&2; exit 1; }
echo "setup_hypervisor: libvirtd ready ($(virsh -c qemu:///system version | awk '/Running hypervisor/ {print $3, $4}'))"
