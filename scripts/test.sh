#!/usr/bin/env bash
# README command (b): install everything the tests need (apt + venv) and run
# the whole suite: lint, unit, integration (netns, real iptables/nft/sshd),
# end-to-end on a booted node. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
# The Vagrant suite (two emulated VMs, ~11 min of the ~23 min here) is part
# of the whole suite; K3S_AGENTD_VAGRANT=0 leaves it out for a quick loop.
vagrant=${K3S_AGENTD_VAGRANT:-1}
lists=()
for list in scripts/apt-*.txt; do
  [ "$list" = scripts/apt-vagrant.txt ] && [ "$vagrant" != 1 ] && continue
  lists+=("$list")
done
apt_install "${lists[@]}"
venv_ready
for hook in scripts/test.d/*.sh; do
  [ -e "$hook" ] && bash "$hook"
done
.venv/bin/ruff check k3s_agent tests bench
.venv/bin/ruff format --check k3s_agent tests bench
set +e
select=()
[ "$vagrant" = 1 ] || select=(-m "not vagrant")
# Our -m comes first so a caller's own -m wins.
.venv/bin/python -m pytest -p no:cacheprovider -ra "${select[@]}" "$@"
rc=$?
set -e
# pytest exits 5 when it collected no test at all: that is a failure for us.
if [ $rc -eq 5 ]; then echo "no tests ran" >&2; exit 1; fi
exit $rc
