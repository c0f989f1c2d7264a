#!/usr/bin/env bash
# README command (a): a read-only compliance check of THIS machine against the
# built-in default profile. Installs only Debian's runtime packages; changes
# nothing else on the host (the check never writes).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
apt_install scripts/apt-base.txt
# No .pyc files in the checkout either: the check writes nothing at all.
exec env PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$PWD" /usr/bin/python3 -m k3s_agent.cli check "$@"
