#!/usr/bin/env bash
# Bring up the CI nodes offline: host set-up, box (built or cached), the box
# registered with our Vagrant home, `vagrant up` in CI mode, then an ssh_config
# that the tests use to reach the nodes without a Ruby start per command.
#   up.sh [NODE...]            (default: server agent)
# Env: K3SA_PKG_DIR (the directory with the built .deb).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
nodes=("$@")
[ ${#nodes[@]} -gt 0 ] || nodes=(server agent)

t0=$(date +%s)
"$CI_DIR/host-setup.sh"
box=$("$CI_DIR/build-box.sh")
t1=$(date +%s)
key=$(box_key)
if [ "$(cat "$VAGRANT_HOME/k3sa-box-key" 2>/dev/null)" != "$key" ] \
  || ! vagrant box list 2>/dev/null | grep -q "^$BOX_NAME "; then
  # A new recipe: drop the old box and libvirt's copy of its image.
  vagrant box remove -f --all "$BOX_NAME" >/dev/null 2>&1 || true
  "$CI_DIR/cleanup.sh" --volumes-only
  vagrant box add -f --name "$BOX_NAME" "$box" >/dev/null
  echo "$key" >"$VAGRANT_HOME/k3sa-box-key"
fi
t2=$(date +%s)
cd "$REPO_DIR/vagrant"
export K3SA_CI=1 K3SA_NODES
K3SA_NODES=$(IFS=,; echo "${nodes[*]}")
log "vagrant up ${nodes[*]}"
# Box upload progress comes with carriage returns: keep the log readable.
up() { vagrant up --provider=libvirt "${nodes[@]}" 2>&1 | sed -u 's/\r/\n/g' | grep --line-buffered -v 'Progress: '; }
if ! up; then
  # One more try from scratch: a guest that missed its DHCP lease or SSH
  # window on a loaded machine is not worth failing the run for.
  log "vagrant up failed; destroying and trying once more"
  vagrant destroy -f || true
  up
fi
vagrant ssh-config "${nodes[@]}" >.vagrant/ssh_config
t3=$(date +%s)
log "timings: host+box $((t1 - t0))s, box add $((t2 - t1))s, up $((t3 - t2))s"
