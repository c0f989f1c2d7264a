#!/usr/bin/env bash
# `make vagrant-test`: the whole offline Vagrant cycle through its pytest
# suite (tests/vagrant): host packages + venv, libvirtd started by hand, the
# box built or taken from the cache, two VMs up, the e2e scenario in each,
# the cross-node checks, then destroy and clean-up (even on failure).
# Extra arguments go to pytest (e.g. -k ports, -x). K3SA_KEEP=1 keeps the VMs.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh
apt_install scripts/apt-*.txt
venv_ready
exec .venv/bin/python -m pytest -p no:cacheprovider -ra -m vagrant tests/vagrant "$@"
