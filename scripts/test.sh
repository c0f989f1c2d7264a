#!/usr/bin/env bash
# README command (b): install everything the tests need (apt + venv) and run
# the whole suite: lint, unit, integration (netns, real iptables/nft/sshd),
# end-to-end on a booted node. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
# Every scripts/apt-*.txt: base (runtime), test, and one per heavier suite.
apt_install scripts/apt-*.txt
venv_ready
for hook in scripts/test.d/*.sh; do
  [ -e "$hook" ] && bash "$hook"
done
.venv/bin/ruff check k3s_agent tests bench
.venv/bin/ruff format --check k3s_agent tests bench
set +e
.venv/bin/python -m pytest -p no:cacheprovider -ra "$@"
rc=$?
set -e
# pytest exits 5 when it collected no test at all: that is a failure for us.
if [ $rc -eq 5 ]; then echo "no tests ran" >&2; exit 1; fi
exit $rc
