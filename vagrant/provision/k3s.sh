#!/usr/bin/env bash
# Install real K3s with the project's hardening flags (seed guide: "Install K3s
# with Security Hardening Flags", K3s CIS hardening guide).
#   k3s.sh ROLE NODE_IP SERVER_IP        (K3S_TOKEN in the environment)
# Needs internet access (get.k3s.io); used by the users' Vagrantfile, not in
# the offline CI run (which installs the K3s fixture from tests/ instead).
set -euo pipefail
role=$1 node_ip=$2 server_ip=$3
: "${K3S_TOKEN:?K3S_TOKEN must be set}"

iface=$(ip -o -4 addr show | awk -v ip="$node_ip" 'index($4, ip"/")==1 {print $2; exit}')
[ -n "$iface" ] || { echo "no interface carries $node_ip" >&2; exit 1; }

# Node-specific settings go in config.yaml; the hardening flags in
# INSTALL_K3S_EXEC, as the seed guide does, so both are exercised.
install -d -m 0755 /etc/rancher/k3s
umask 077
{
  echo "node-ip: $node_ip"
  echo "flannel-iface: $iface"
  echo "token: $K3S_TOKEN"
  echo "protect-kernel-defaults: true"
  echo "kubelet-arg:"
  echo "  - streaming-connection-idle-timeout=5m"
  if [ "$role" = server ]; then
    echo "advertise-address: $node_ip"
    echo "tls-san:"
    echo "  - $node_ip"
    echo "write-kubeconfig-mode: \"0600\""
  else
    echo "server: https://$server_ip:6443"
  fi
} >/etc/rancher/k3s/config.yaml
umask 022

if [ "$role" = server ]; then
  # Flags from the seed guide (audit log, encryption, kernel defaults) plus
  # the CIS guide's NodeRestriction; anonymous-auth off and RBAC,Node are
  # already K3s's own defaults.
  exec_flags="server --secrets-encryption --protect-kernel-defaults \
--kube-apiserver-arg=audit-log-path=/var/lib/rancher/k3s/server/logs/audit.log \
--kube-apiserver-arg=audit-log-maxage=30 --kube-apiserver-arg=audit-log-maxbackup=10 \
--kube-apiserver-arg=audit-log-maxsize=100 --kube-apiserver-arg=anonymous-auth=false \
--kube-apiserver-arg=authorization-mode=RBAC,Node"
else
  exec_flags="agent --protect-kernel-defaults"
fi

if ! command -v k3s >/dev/null; then
  curl -sfL https://get.k3s.io | INSTALL_K3S_EXEC="$exec_flags" sh -
fi
unit=k3s
[ "$role" = agent ] && unit=k3s-agent
systemctl is-active "$unit"
# Let the agent see the fresh K3s files at once (it also re-checks on its interval).
systemctl reload-or-restart k3s-agentd.service 2>/dev/null || true
