#!/usr/bin/env bash
# The e2e scenario on the users' VMs (real boxes, internet), then the cluster
# as `vagrant up` builds it:
#   1. K3SA_STAGE=package vagrant up: the package installed, not started, no K3s
#      (the post-install state the scenario starts from);
#   2. tests/vagrant/run_scenario.py on each node, from this machine over SSH:
#      drift of every kind healed, reload with a broken policy, kill -9, the
#      watchdog, a reboot, remove/reinstall/purge of the package; after every
#      firewall and sshd heal a key login as `operator` from the other VM;
#   3. vagrant provision: the agent reinstalled in enforce mode with the
#      cluster network, then real K3s with the hardening flags.
# Usage: vagrant/e2e.sh [server agent]   (both nodes; throw-away VMs only)
# Needs python3 on this machine (standard library only).
set -euo pipefail
cd "$(dirname "$0")"
nodes=("$@")
[ ${#nodes[@]} -gt 0 ] || nodes=(server agent)
# The lock-out probe logs in to each node from the other one.
if [ ${#nodes[@]} -ne 2 ]; then
  echo "e2e.sh: needs both nodes (server agent): each VM is the other's SSH peer for the lock-out probe" >&2
  exit 1
fi
# The scenario starts from a node that has never been provisioned: refuse VMs
# that exist already (their state is not the post-install one).
for node in "${nodes[@]}"; do
  state=$(vagrant status --machine-readable "$node" | awk -F, '$3 == "state" {print $4; exit}')
  if [ "$state" != not_created ]; then
    echo "e2e.sh: $node exists ($state); run 'vagrant destroy -f $node' first (the scenario needs a fresh VM)" >&2
    exit 1
  fi
done
K3SA_STAGE=package vagrant up "${nodes[@]}"
(cd .. && python3 -m tests.vagrant.run_scenario "${nodes[@]}")
vagrant provision "${nodes[@]}"
for node in "${nodes[@]}"; do
  vagrant ssh "$node" -c 'sudo k3s-agentctl status' || true
done
