#!/usr/bin/env bash
# Host set-up for the Vagrant tests on a machine without systemd as PID 1:
# the packages (scripts/apt-vagrant.txt), qemu running as root (so libvirt does
# not re-probe QEMU on every define), no auto-started NAT network, and
# virtlogd + libvirtd started by hand. Idempotent; records the PIDs of the
# daemons it started in $STATE_DIR so clean-up stops only those.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$REPO_DIR/scripts/lib.sh"

apt_install "$REPO_DIR/scripts/apt-vagrant.txt"
mkdir -p "$STATE_DIR" "$CACHE_DIR"

# /dev/kvm is 0600 root: libvirt's KVM usability probe runs as the qemu user
# and fails, and then re-probes the emulator at every define (~110 s each).
conf=/etc/libvirt/qemu.conf
if ! grep -qE '^user = "root"' "$conf"; then
  printf '\n# k3s-agentd vagrant CI: run QEMU as root (see vagrant/ci/host-setup.sh)\nuser = "root"\ngroup = "root"\n' >>"$conf"
  if virsh_ok; then log "qemu.conf changed while libvirtd runs: restart it to take effect"; fi
fi
# libvirt's stock "default" network NATs guests to the outside world; our VMs
# never use it, so keep it from starting with the daemon.
rm -f /etc/libvirt/qemu/networks/autostart/default.xml

start_daemon() { # name binary
  local name=$1 bin=$2 pid
  if pid=$(pgrep -x -r S,R,D "$name" | head -n1) && [ -n "$pid" ]; then
    return 0 # someone runs it already: use it, never stop it
  fi
  "$bin" -d
  for _ in $(seq 50); do
    pid=$(pgrep -x -r S,R,D "$name" | head -n1) && [ -n "$pid" ] && break
    sleep 0.2
  done
  [ -n "${pid:-}" ] || { log "$name did not start"; return 1; }
  echo "$pid" >"$STATE_DIR/$name.pid"
  log "started $name (pid $pid)"
}

if ! virsh_ok; then
  start_daemon virtlogd /usr/sbin/virtlogd
  start_daemon libvirtd /usr/sbin/libvirtd
  for _ in $(seq 60); do virsh_ok && break; sleep 1; done
  virsh_ok || { log "libvirtd does not answer"; exit 1; }
fi
# vagrant-libvirt puts box volumes in the "default" storage pool.
if ! virsh pool-info default >/dev/null 2>&1; then
  mkdir -p /var/lib/libvirt/images
  virsh pool-define-as default dir --target /var/lib/libvirt/images >/dev/null
  virsh pool-autostart default >/dev/null
fi
virsh pool-start default >/dev/null 2>&1 || true
log "libvirt ready"
