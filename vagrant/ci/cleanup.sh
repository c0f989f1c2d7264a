#!/usr/bin/env bash
# Tear down what the CI run made, and only that:
#   cleanup.sh                 vagrant destroy -f, then leftovers of ours
#                              (k3sa_* domains, k3sa-* networks, box volumes)
#   cleanup.sh --daemons       also stop virtlogd/libvirtd if we started them
#                              (PIDs recorded by host-setup.sh)
#   cleanup.sh --volumes-only  only delete libvirt's copies of our box image
set -uo pipefail
. "$(dirname "$0")/lib.sh"
mode=${1:-}

delete_box_volumes() {
  virsh -q vol-list default 2>/dev/null | awk '{print $1}' \
    | grep -E '^k3s-agentd-VAGRANTSLASH-debian12-ci' | while read -r vol; do
      virsh -q vol-delete --pool default "$vol" >/dev/null && log "deleted volume $vol"
    done
}

if [ "$mode" = --volumes-only ]; then
  virsh_ok && delete_box_volumes
  exit 0
fi

if virsh_ok; then
  if [ -d "$REPO_DIR/vagrant/.vagrant/machines" ]; then
    (cd "$REPO_DIR/vagrant" && K3SA_CI=1 \
      timeout 300 vagrant destroy -f) || log "vagrant destroy failed; removing leftovers by hand"
  fi
  # Leftovers of a crashed run: our domains (prefix k3sa_), their disks, our networks.
  for dom in $(virsh -q list --all --name | grep -E '^k3sa_' || true); do
    virsh -q destroy "$dom" >/dev/null 2>&1
    virsh -q undefine "$dom" --remove-all-storage >/dev/null 2>&1 && log "removed domain $dom"
  done
  for vol in $(virsh -q vol-list default 2>/dev/null | awk '{print $1}' | grep -E '^k3sa_' || true); do
    virsh -q vol-delete --pool default "$vol" >/dev/null 2>&1
  done
  for net in $(virsh -q net-list --all --name | grep -E '^k3sa-' || true); do
    virsh -q net-destroy "$net" >/dev/null 2>&1
    virsh -q net-undefine "$net" >/dev/null 2>&1 && log "removed network $net"
  done
  [ "$mode" = --daemons ] && delete_box_volumes
fi
rm -rf "$REPO_DIR/vagrant/.vagrant/machines" "$REPO_DIR/vagrant/.vagrant/ssh_config"

if [ "$mode" = --daemons ]; then
  # Stop only the daemons host-setup.sh started, by the PID it recorded, and
  # only if that PID still is that daemon.
  for name in libvirtd virtlogd; do
    pidfile="$STATE_DIR/$name.pid"
    [ -s "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
      kill "$pid" && log "stopped $name (pid $pid)"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
  done
fi
exit 0
