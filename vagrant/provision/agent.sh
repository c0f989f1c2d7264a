#!/usr/bin/env bash
# Install k3s-agentd from a local package and enable it in enforce mode.
#   agent.sh ROLE CLUSTER_CIDR [PACKAGE] [install-only]
# ROLE is server or agent (picks the built-in profile); CLUSTER_CIDR is the
# private network the nodes talk K3s over (the firewall opens 6443/10250 to it
# only). Runs as root inside the VM (Vagrant shell provisioner), on Debian,
# Ubuntu or Rocky; offline when the package's dependencies are already there.
# K3SA_INTERVAL=N in the environment sets the cycle interval (seconds).
# install-only (the package stage: CI, vagrant/e2e.sh): the package as it
# installs, not started, so the e2e scenario finds the node in its
# post-install state and drives the rest; a copy of the package file is kept
# in /var/cache/k3s-agentd-e2e for the scenario's remove/reinstall step.
set -euo pipefail
role=$1 cidr=$2 pkg=${3:-} what=${4:-enforce}

case "$role" in
  server) profile=k3s-cis-server ;;
  agent) profile=k3s-cis-agent ;;
  *) echo "role must be server or agent, not $role" >&2; exit 2 ;;
esac

install_pkg() {
  local file=$1
  case "$file" in
    *.deb)
      # apt resolves the Depends from the mirror; with every dependency already
      # installed (the offline CI box) dpkg alone is enough.
      if ! dpkg -i "$file" >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$file"
      fi ;;
    *.rpm)
      # python3-structlog / pyroute2 / iptables bindings come from EPEL on EL9.
      rpm -q epel-release >/dev/null 2>&1 || dnf install -y -q epel-release
      dnf install -y -q "$file" ;;
    *) echo "unknown package type: $file" >&2; exit 2 ;;
  esac
}

if [ -n "$pkg" ]; then
  install_pkg "$pkg"
fi
# K3s's requirements page recommends turning firewalld off (EL boxes ship it
# on); the agent's own firewall table takes its place.
if systemctl is-enabled -q firewalld.service 2>/dev/null; then
  systemctl disable --now firewalld.service
fi
command -v k3s-agentd >/dev/null || { echo "k3s-agentd is not installed" >&2; exit 1; }
if [ "$what" = install-only ]; then
  [ -z "$pkg" ] || install -D -m 0644 -o root -g root "$pkg" "/var/cache/k3s-agentd-e2e/${pkg##*/}"
  exit 0
fi

# The node's policy: the role's built-in profile, enforce mode, and the
# private network named as the cluster network (root-owned, 0644: the daemon
# refuses a policy others can write).
install -d -m 0755 -o root -g root /etc/k3s-agentd /etc/k3s-agentd/policy.d
umask 022
cat >/etc/k3s-agentd/policy.toml.new <<POLICY
# Written by vagrant/provision/agent.sh for a Vagrant test cluster.
version = 1
extends = "$profile"
mode = "enforce"
# Provisioned by automation, which checks access itself (the suite's operator
# login probe); commit-confirmed is tested in the booted-node e2e.
confirm_timeout = 0
${K3SA_INTERVAL:+interval = $K3SA_INTERVAL}
POLICY
cat >/etc/k3s-agentd/policy.d/50-cluster-network.toml.new <<POLICY
# The nodes' private network (Vagrant private_network) is the cluster
# network: @nodes in the firewall profile, so K3s traffic (6443, 10250,
# flannel) is allowed from here and from nowhere else (the default would be
# every subnet this node is on, the NAT/management network included).
version = 1

[controls.firewall]
node_cidrs = ["$cidr"]
POLICY
chown root:root /etc/k3s-agentd/*.new /etc/k3s-agentd/policy.d/*.new
mv -f /etc/k3s-agentd/policy.toml.new /etc/k3s-agentd/policy.toml
mv -f /etc/k3s-agentd/policy.d/50-cluster-network.toml.new /etc/k3s-agentd/policy.d/50-cluster-network.toml

# Validate before (re)starting: a refused policy fails provisioning loudly
# (the message names the file, key and reason).
k3s-agentctl validate
systemctl enable k3s-agentd.service
systemctl restart k3s-agentd.service
for _ in $(seq 30); do
  systemctl is-active -q k3s-agentd.service && break
  sleep 1
done
systemctl is-active k3s-agentd.service
