#!/usr/bin/env bash
# Bring up a real libvirtd + QEMU (TCG) on this machine for the integration tier and benchmarks.
# Idempotent; needs root. Works in containers without systemd or KVM (QEMU TCG).
set -euo pipefail

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
conf=/etc/libvirt/qemu.conf
marker="# lifecycle-stats test hypervisor"
if ! grep -qF "$marker" "$conf" 2>/dev/null; then
  cat >>"$conf" <<CONF
$marker
user = "root"
group = "root"
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
CONF
fi

mkdir -p /var/log/libvirt/qemu /var/lib/libvirt/images /run/libvirt
pgrep -x virtlogd >/dev/null || virtlogd -d
if ! virsh -c qemu:///system version >/dev/null 2>&1; then
  pgrep -x libvirtd >/dev/null && pkill -x libvirtd && sleep 1
  libvirtd -d
  for _ in $(seq 50); do
    virsh -c qemu:///system version >/dev/null 2>&1 && break
    sleep 0.2
  done
fi
virsh -c qemu:///system version >/dev/null || { echo "setup_hypervisor: libvirtd did not come up" >&2; exit 1; }
echo "setup_hypervisor: libvirtd ready ($(virsh -c qemu:///system version | awk '/Running hypervisor/ {print $3, $4}'))"
