# Shared settings for the offline Vagrant CI path (sourced by vagrant/ci/*.sh).
# Everything stays on this machine: a box built here, libvirt networks with no
# forwarding, no NAT, no default route in the guests.

CI_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$CI_DIR/../.." && pwd)
# Kept between runs (and between clones of the repo): the box and debootstrap's
# .deb cache. A rebuild happens only when the box recipe changes (see box_key).
CACHE_DIR=${K3S_AGENTD_VAGRANT_CACHE:-/var/cache/k3s-agentd-vagrant}
# Our own Vagrant home, so boxes and plugins state never mix with a user's ~/.vagrant.d.
export VAGRANT_HOME=${VAGRANT_HOME:-$CACHE_DIR/vagrant.d}
export VAGRANT_CHECKPOINT_DISABLE=1
export VAGRANT_BOX_UPDATE_CHECK_DISABLE=1
export VAGRANT_DEFAULT_PROVIDER=libvirt
export LIBVIRT_DEFAULT_URI=qemu:///system
# PIDs of the daemons this project started (so clean-up stops only those).
STATE_DIR=${K3S_AGENTD_VAGRANT_STATE:-/run/k3s-agentd-vagrant}
BOX_NAME=k3s-agentd/debian12-ci
# The Debian mirror apt already uses on this host (debootstrap fetches from it).
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

log() { printf '%s [vagrant-ci] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

virsh_ok() { timeout 10 virsh -c qemu:///system version >/dev/null 2>&1; }

# box_key: a hash of everything that goes into the box, so a changed recipe or
# dependency list builds a new box and an unchanged one reuses the cache.
box_key() {
  cat "$CI_DIR/build-box.sh" "$CI_DIR/box-packages.txt" "$REPO_DIR/scripts/apt-base.txt" \
    | sha256sum | cut -c1-16
}
