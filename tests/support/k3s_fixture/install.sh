#!/bin/sh
# Lay down a faithful K3s node under ROOT (default /): unit + env file,
# /usr/local/bin/k3s (the fixture program), /etc/rancher/k3s/config.yaml and
# the data dir. Self-contained: copy this folder anywhere and run it.
# Usage: install.sh [ROOT] [server|agent]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
exec python3 "$here/layout.py" "${1:-/}" "${2:-server}"
